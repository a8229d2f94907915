"""benchmarks/profile_tape.py times every step of a compiled program."""

from bench_loader import load


def test_every_step_of_the_mlp_is_timed_and_the_steps_add_up():
    prof = load("profile_tape")
    r = prof.profile("mlp", "float64", calls=3)
    labels = set(r["steps_s"])
    assert {"forward  matmul (node 4)", "forward  matmul (node 6)"} <= labels
    assert any(label.startswith("backward matmul") for label in labels)
    assert 0 < sum(r["steps_s"].values()) <= r["wrapped_s"]
    assert r["plain_s"] > 0
