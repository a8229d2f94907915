"""Learning-rate schedules: values at chosen steps, checkpoints, checks, PyTorch as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autodiff_lab.errors import InputError
from autodiff_lab.nn.optim import SGD, Adam
from autodiff_lab.nn.parameter import Parameter
from autodiff_lab.nn.schedules import CosineLR, StepLR


def sgd(lr=0.5, groups=None):
    if groups:
        return SGD([{"params": [Parameter([0.0], name=f"p{i}")], "lr": g} for i, g in enumerate(groups)], lr=lr)
    return SGD([Parameter([0.0], name="p")], lr=lr)


def trace(sched, n):
    out = [sched.lr]
    for _ in range(n):
        out.append(sched.step())
    return out


def test_step_lr_values():
    s = StepLR(sgd(0.5), step_size=3, gamma=0.5)
    # t = 0,1,2 → .5; 3,4,5 → .25; 6,7,8 → .125; 9 → .0625
    assert trace(s, 9) == [0.5] * 3 + [0.25] * 3 + [0.125] * 3 + [0.0625]
    assert s.last_step == 9


def test_cosine_values():
    s = CosineLR(sgd(1.0), total_steps=4, min_lr=0.2)
    # 0.2 + 0.8·(1 + cos(πt/4))/2 at t = 0..4, then min_lr
    c = math.sqrt(2) / 2
    expected = [1.0, 0.2 + 0.4 * (1 + c), 0.6, 0.2 + 0.4 * (1 - c), 0.2, 0.2, 0.2]
    np.testing.assert_allclose(trace(s, 6), expected, rtol=1e-15)


def test_cosine_with_warmup_values():
    s = CosineLR(sgd(0.4), total_steps=7, warmup_steps=3)
    # warm-up: .4·(t+1)/4 = .1, .2, .3; then the cosine over 4 steps from t = 3
    c = math.sqrt(2) / 2
    expected = [0.1, 0.2, 0.3, 0.4, 0.2 * (1 + c), 0.2, 0.2 * (1 - c), 0.0, 0.0]
    np.testing.assert_allclose(trace(s, 8), expected, rtol=1e-14, atol=1e-17)
    assert s.lr_at(5) == [pytest.approx(0.2)]


def test_schedules_set_every_group_and_the_optimiser():
    opt = sgd(groups=[1.0, 0.1])
    s = StepLR(opt, step_size=1, gamma=0.5)
    s.step()
    assert s.lrs == [0.5, 0.05] and [g["lr"] for g in opt.param_groups] == [0.5, 0.05]
    p = opt.param_groups[0]["params"][0]
    p.grad = np.array([1.0])
    opt.step()
    assert p.data[0] == -0.5  # the optimiser used the scheduled rate


def test_state_dict_round_trip():
    opt = Adam([Parameter([0.0], name="p")], lr=0.01)
    s = CosineLR(opt, total_steps=20, min_lr=1e-4, warmup_steps=2)
    for _ in range(7):
        s.step()
    sd = s.state_dict()
    assert sd["schedule"] == "CosineLR" and sd["last_step"] == 7 and sd["base_lrs"] == [0.01]
    opt2 = Adam([Parameter([0.0], name="p")], lr=0.01)
    s2 = CosineLR(opt2, total_steps=20, min_lr=1e-4, warmup_steps=2)
    s2.load_state_dict(sd)
    assert s2.lr == s.lr and opt2.param_groups[0]["lr"] == s.lr
    assert trace(s2, 5) == trace(s, 5)
    with pytest.raises(InputError, match="total_steps"):
        CosineLR(opt2, total_steps=30).load_state_dict(sd)
    with pytest.raises(InputError, match="not a StepLR checkpoint"):
        StepLR(opt2, 2).load_state_dict(sd)


@pytest.mark.parametrize("make,match", [
    (lambda o: StepLR(o, 0), "step_size"),
    (lambda o: StepLR(o, 2.5), "step_size"),
    (lambda o: StepLR(o, 2, gamma=0), "gamma"),
    (lambda o: StepLR(o, 2, gamma=float("nan")), "gamma"),
    (lambda o: CosineLR(o, 0), "total_steps"),
    (lambda o: CosineLR(o, 10, min_lr=-1), "min_lr"),
    (lambda o: CosineLR(o, 10, warmup_steps=10), "warmup_steps"),
    (lambda o: StepLR("not an optimiser", 2), "Optimizer"),
])
def test_bad_arguments(make, match):
    with pytest.raises(InputError, match=match):
        make(sgd())


def test_against_torch():
    torch = pytest.importorskip("torch")
    L = torch.optim.lr_scheduler

    def theirs(make, n):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.5)
        s = make(opt, L)
        out = [opt.param_groups[0]["lr"]]
        for _ in range(n):
            opt.step()
            s.step()
            out.append(opt.param_groups[0]["lr"])
        return out

    w, total = 3, 10
    cases = [
        (lambda o: StepLR(o, 3, 0.5), lambda o, L: L.StepLR(o, 3, 0.5)),
        (lambda o: CosineLR(o, total, 0.01), lambda o, L: L.CosineAnnealingLR(o, total, 0.01)),
        (lambda o: CosineLR(o, total, 0.01, warmup_steps=w),
         lambda o, L: L.SequentialLR(o, [L.LinearLR(o, 1 / (w + 1), 1.0, w),
                                         L.CosineAnnealingLR(o, total - w, 0.01)], [w])),
    ]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on SequentialLR / step order
        for ours, torch_make in cases:
            np.testing.assert_allclose(trace(ours(sgd(0.5)), total), theirs(torch_make, total),
                                       rtol=1e-12, atol=1e-15)
