"""Optimisers against hand-computed updates, their checks, checkpoints and (optionally) PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autodiff_lab.errors import InputError, NonFiniteError
from autodiff_lab.nn.optim import SGD, Adam, AdamW, Optimizer
from autodiff_lab.nn.parameter import Parameter

THETA0 = [1.0, -2.0]
GRADS = [[0.5, 1.0], [-1.0, 0.5], [0.25, -0.5]]


def run(make, grads=GRADS, theta0=THETA0, dtype=np.float64):
    """Steps of a fresh optimiser on one parameter; the parameter after each step."""
    p = Parameter(np.array(theta0, dtype=dtype), name="w")
    opt = make([p])
    out = []
    for g in grads:
        p.grad = np.array(g, dtype=dtype)
        opt.step()
        out.append(p.data.copy())
    return out, p, opt


# -- SGD: the numbers worked out by hand from θ ← θ − γ·(update) --------------------------------

def test_sgd_plain_three_steps():
    out, _, _ = run(lambda ps: SGD(ps, lr=0.1))
    # θ1 = θ0 − 0.1·g1, θ2 = θ1 − 0.1·g2, θ3 = θ2 − 0.1·g3
    np.testing.assert_allclose(out, [[0.95, -2.1], [1.05, -2.15], [1.025, -2.10]], rtol=0, atol=1e-15)


def test_sgd_momentum_three_steps():
    out, _, opt = run(lambda ps: SGD(ps, lr=0.1, momentum=0.9))
    # b1 = g1 = [.5, 1]; b2 = .9·b1 + g2 = [−.55, 1.4]; b3 = .9·b2 + g3 = [−.245, .76]
    np.testing.assert_allclose(out, [[0.95, -2.1], [1.005, -2.24], [1.0295, -2.316]], rtol=0, atol=1e-15)
    buf = next(iter(opt.state.values()))["momentum_buffer"]
    np.testing.assert_allclose(buf, [-0.245, 0.76], atol=1e-15)


def test_sgd_nesterov_three_steps():
    out, _, _ = run(lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True))
    # d_t = g_t + .9·b_t: d1 = [.95, 1.9], d2 = [−1.495, 1.76], d3 = [.0295, .184]
    np.testing.assert_allclose(out, [[0.905, -2.19], [1.0545, -2.366], [1.05155, -2.3844]],
                               rtol=0, atol=1e-14)


def test_sgd_weight_decay_and_dampening_three_steps():
    out, _, _ = run(lambda ps: SGD(ps, lr=0.1, momentum=0.5, dampening=0.5, weight_decay=0.1))
    # d1 = g1 + .1·θ0 = [.6, .8], b1 = d1 (no dampening on the first step)
    # d2 = g2 + .1·θ1 = [−.906, .292], b2 = .5·b1 + .5·d2 = [−.153, .546]
    # d3 = g3 + .1·θ2 = [.34553, −.71346], b3 = .5·b2 + .5·d3 = [.096265, −.08373]
    np.testing.assert_allclose(out, [[0.94, -2.08], [0.9553, -2.1346], [0.9456735, -2.126227]],
                               rtol=0, atol=1e-14)


# -- Adam: a scalar transcription of the paper's algorithm (m̂, v̂ with bias correction) -----------

def adam_reference(theta0, grads, lr, b1, b2, eps, wd=0.0, decoupled=False, amsgrad=False):
    theta = list(theta0)
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    vmax = [0.0] * len(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        for i in range(len(theta)):
            gi = g[i]
            if decoupled:
                theta[i] = theta[i] - lr * wd * theta[i]
            else:
                gi = gi + wd * theta[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat = m[i] / (1 - b1 ** t)
            if amsgrad:
                vmax[i] = max(vmax[i], v[i])
                v_hat = vmax[i] / (1 - b2 ** t)
            else:
                v_hat = v[i] / (1 - b2 ** t)
            theta[i] = theta[i] - lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(list(theta))
    return out


def test_adam_three_steps():
    out, _, opt = run(lambda ps: Adam(ps, lr=0.1))
    # step 1: m̂ = g, v̂ = g², so θ moves by lr against the sign of g
    np.testing.assert_allclose(out[0], [0.9, -2.1], rtol=1e-7)  # ε = 1e-8 shifts it by ~lr·ε/|g|
    # step 2, element 0 by hand: m2 = −.055, v2 = .00124975, m̂ = −.28947.., v̂ = .62519..
    assert out[1][0] == pytest.approx(0.9366103522405654, rel=1e-8)  # θ1 taken as exactly 0.9
    np.testing.assert_allclose(out, adam_reference(THETA0, GRADS, 0.1, 0.9, 0.999, 1e-8), rtol=1e-13)
    assert next(iter(opt.state.values()))["step"] == 3


def test_adam_l2_weight_decay_and_amsgrad():
    grads = [[2.0, -1.0], [0.1, 0.2], [0.3, -0.05]]  # v shrinks after step 1: AMSGrad keeps the max
    out, _, _ = run(lambda ps: Adam(ps, lr=0.05, betas=(0.8, 0.9), weight_decay=0.2, amsgrad=True), grads)
    ref = adam_reference(THETA0, grads, 0.05, 0.8, 0.9, 1e-8, wd=0.2, amsgrad=True)
    np.testing.assert_allclose(out, ref, rtol=1e-13)
    plain = adam_reference(THETA0, grads, 0.05, 0.8, 0.9, 1e-8, wd=0.2)
    assert not np.allclose(ref, plain)  # the AMSGrad branch mattered


def test_adamw_decay_is_decoupled():
    # with zero gradients Adam+L2 moves θ by ~lr per step (the decay goes through m/√v) ...
    zero = [[0.0, 0.0]] * 3
    out_l2, _, _ = run(lambda ps: Adam(ps, lr=0.1, weight_decay=0.1), zero)
    np.testing.assert_allclose(out_l2[0], [0.9, -1.9], rtol=1e-6)
    # ... AdamW only shrinks it: θ_t = θ0·(1 − lr·λ)^t, as m = v = 0
    out_w, _, _ = run(lambda ps: AdamW(ps, lr=0.1, weight_decay=0.1), zero)
    np.testing.assert_allclose(out_w, [[0.99, -1.98], [0.9801, -1.9602], [0.970299, -1.940598]], rtol=1e-14)


def test_adamw_three_steps():
    out, _, _ = run(lambda ps: AdamW(ps, lr=0.1, weight_decay=0.5, amsgrad=True))
    ref = adam_reference(THETA0, GRADS, 0.1, 0.9, 0.999, 1e-8, wd=0.5, decoupled=True, amsgrad=True)
    np.testing.assert_allclose(out, ref, rtol=1e-13)
    assert AdamW([Parameter([1.0])]).param_groups[0]["weight_decay"] == 1e-2


# -- dtype, in place, groups, skipping ------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                                  lambda ps: Adam(ps, lr=0.1, amsgrad=True, weight_decay=0.1),
                                  lambda ps: AdamW(ps, lr=0.1)], ids=["sgd", "adam", "adamw"])
def test_float32_stays_float32_in_place(make):
    p = Parameter(np.array(THETA0, dtype=np.float32), name="w")
    data = p.data
    opt = make([p])
    ref_out, _, _ = run(make)  # float64
    for g, ref in zip(GRADS, ref_out):
        p.grad = np.array(g)  # a float64 gradient is used in the parameter's dtype
        opt.step()
        np.testing.assert_allclose(p.data, ref, rtol=2e-6)
    assert p.data is data and p.data.dtype == np.float32
    for value in next(iter(opt.state.values())).values():
        if isinstance(value, np.ndarray):
            assert value.dtype == np.float32


def test_param_groups_and_skipped_parameters():
    a, b, c = Parameter([1.0], name="a"), Parameter([1.0], name="b"), Parameter([1.0], name="c")
    opt = SGD([{"params": [a]}, {"params": [b, c], "lr": 0.5}], lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["momentum"] == 0.0
    a.grad, b.grad = np.array([1.0]), np.array([1.0])  # c has no gradient
    opt.step()
    assert a.data[0] == 0.9 and b.data[0] == 0.5 and c.data[0] == 1.0
    c.requires_grad = False
    c.grad = np.array([1.0])
    opt.step()
    assert c.data[0] == 1.0


def test_non_contiguous_parameter_updated_in_place():
    base = np.arange(6.0).reshape(2, 3)
    p = Parameter(base, name="w")
    p.data = p.data.T  # a transposed view, not C-contiguous
    view = p.data
    opt = SGD([p], lr=1.0)
    p.grad = np.ones((3, 2))
    opt.step()
    assert p.data is view
    np.testing.assert_array_equal(p.data, base.T - 1)


def test_zero_grad():
    p = Parameter([1.0, 2.0], name="w")
    opt = SGD([p], lr=0.1)
    p.grad = np.array([3.0, 4.0])
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad, [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None


def test_step_returns_closure_value():
    p = Parameter([1.0], name="w")
    opt = SGD([p], lr=0.1)

    def closure():
        p.grad = np.array([2.0])
        return 7.0

    assert opt.step(closure) == 7.0 and p.data[0] == pytest.approx(0.8)


# -- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", [0, -1e-3, float("nan"), float("inf"), "0.1", True])
def test_bad_learning_rate(lr):
    for cls in (SGD, Adam, AdamW):
        with pytest.raises(InputError, match="lr"):
            cls([Parameter([1.0])], lr=lr)


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.9), (0.9,), 0.9, (0.9, float("nan"))])
def test_bad_betas(betas):
    with pytest.raises(InputError, match="betas"):
        Adam([Parameter([1.0])], betas=betas)


def test_bad_options():
    p = Parameter([1.0])
    with pytest.raises(InputError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(InputError, match="Nesterov"):
        SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(InputError, match="momentum"):
        SGD([p], lr=0.1, momentum=-0.9)
    with pytest.raises(InputError, match="weight_decay"):
        Adam([p], weight_decay=-1)
    with pytest.raises(InputError, match="eps"):
        Adam([p], eps=float("nan"))
    with pytest.raises(InputError, match="unknown option"):
        SGD([{"params": [p], "momentun": 0.9}], lr=0.1)
    with pytest.raises(InputError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(InputError, match="not a Parameter"):
        SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(InputError, match="twice"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(InputError, match="single Parameter"):
        SGD(p, lr=0.1)


def test_wrong_gradient_shape_names_the_parameter_and_changes_nothing():
    a, b = Parameter([1.0, 2.0], name="0.weight"), Parameter([[1.0, 2.0]], name="0.bias")
    opt = Adam([a, b])
    a.grad, b.grad = np.array([1.0, 1.0]), np.array([1.0, 1.0])  # b's gradient lost a dimension
    with pytest.raises(InputError, match=r"'0\.bias'.*\(2,\).*\(1, 2\)"):
        opt.step()
    np.testing.assert_array_equal(a.data, [1.0, 2.0])  # a's update was not taken either
    assert opt.state == {}


def test_nonfinite_gradient_names_the_parameter_and_changes_nothing():
    a, b = Parameter([1.0, 2.0], name="w1"), Parameter([3.0, 4.0], name="w2")
    opt = SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = np.array([1.0, 1.0]), np.array([1.0, np.nan])
    with pytest.raises(NonFiniteError, match=r"'w2'.*nan.*\(1,\)"):
        opt.step()
    np.testing.assert_array_equal(a.data, [1.0, 2.0])
    assert opt.state == {}


def test_unsupported_parameter_arrays():
    half = Parameter(np.ones(3, dtype=np.float16), name="h")
    half.grad = np.ones(3, dtype=np.float16)
    with pytest.raises(InputError, match="'h' is float16"):
        Adam([half]).step()
    frozen = Parameter(np.ones(3), name="f")
    frozen.data = np.broadcast_to(np.ones(1), (3,))
    frozen.grad = np.ones(3)
    with pytest.raises(InputError, match="'f' holds a read-only array"):
        SGD([frozen], lr=0.1).step()
    p = Parameter(np.ones(2), name="s")
    p.grad = np.array(["a", "b"])
    with pytest.raises(InputError, match="dtype"):
        SGD([p], lr=0.1).step()


def test_negative_lr_set_by_hand_is_refused_at_step():
    p = Parameter([1.0], name="w")
    opt = SGD([p], lr=0.1)
    opt.param_groups[0]["lr"] = float("nan")
    p.grad = np.array([1.0])
    with pytest.raises(InputError, match="lr of parameter group 0"):
        opt.step()


# -- checkpoints --------------------------------------------------------------------------------------

def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal((3, 4)).astype(dtype), name="0.weight"),
            Parameter(rng.standard_normal(4).astype(dtype), name="0.bias"),
            Parameter(rng.standard_normal(2).astype(dtype), name="1.weight")]


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}],
                                                  amsgrad=True),
                                  lambda ps: AdamW(ps, lr=0.01)], ids=["sgd", "adam", "adamw"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_dict_round_trip_continues_bit_identically(make, dtype):
    rng = np.random.default_rng(1)
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in make_params()] for _ in range(8)]

    def train(params, opt, steps):
        for gs in steps:
            for p, g in zip(params, gs):
                p.grad = g
            opt.step()

    params = make_params(dtype=dtype)
    opt = make(params)
    train(params, opt, grads[:4])
    checkpoint = opt.state_dict()
    weights = {p.name: p.data.copy() for p in params}
    train(params, opt, grads[4:])

    # a rebuilt model: new Parameter objects, in another order, same names
    rebuilt = make_params(seed=5, dtype=dtype)[::-1]
    for p in rebuilt:
        p.data[...] = weights[p.name]
    order = {p.name: p for p in rebuilt}
    rebuilt = [order["0.weight"], order["0.bias"], order["1.weight"]]
    opt2 = make(rebuilt)
    opt2.load_state_dict(checkpoint)
    train(rebuilt, opt2, grads[4:])
    for p, q in zip(params, rebuilt):
        assert np.array_equal(p.data, q.data) and p.data.dtype == q.data.dtype
        for key, value in opt.state[p].items():
            np.testing.assert_array_equal(value, opt2.state[q][key])


def test_state_dict_is_a_snapshot_keyed_by_name():
    params = make_params()
    opt = Adam(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    assert sd["optimizer"] == "Adam"
    assert sd["param_groups"][0]["params"] == ["0.weight", "0.bias", "1.weight"]
    assert set(sd["state"]) == {"0.weight", "0.bias", "1.weight"}
    before = sd["state"]["0.bias"]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"]["0.bias"]["exp_avg"], before)


def test_load_state_dict_mismatches():
    params = make_params()
    sgd = SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = np.ones(p.shape)
    sgd.step()
    sd = sgd.state_dict()
    with pytest.raises(InputError, match="SGD optimiser, this is Adam"):
        Adam(make_params()).load_state_dict(sd)
    with pytest.raises(InputError, match="lacks"):
        SGD(make_params()[:2], lr=0.1).load_state_dict(sd)
    renamed = make_params()
    renamed[2].name = "2.weight"
    with pytest.raises(InputError, match=r"1\.weight"):
        SGD(renamed, lr=0.1).load_state_dict(sd)
    reshaped = make_params()
    reshaped[1].data = np.zeros(5)
    target = SGD(reshaped, lr=0.1)
    with pytest.raises(InputError, match=r"'0\.bias'.*\(4,\).*\(5,\)"):
        target.load_state_dict(sd)
    assert target.state == {} and target.param_groups[0]["momentum"] == 0.0  # unchanged
    with pytest.raises(InputError, match="not an optimiser checkpoint"):
        target.load_state_dict({"state": {}})
    with pytest.raises(InputError, match="no name"):
        SGD([Parameter([1.0])], lr=0.1).state_dict()
    with pytest.raises(InputError, match="unique"):
        SGD([Parameter([1.0], name="w"), Parameter([2.0], name="w")], lr=0.1).state_dict()


def test_optimizer_base_is_exported():
    assert issubclass(AdamW, Adam) and issubclass(Adam, Optimizer)
    assert "Adam(" in repr(Adam(make_params()))


# -- PyTorch as an oracle: 10 steps on random gradients ----------------------------------------------

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.3, 0.6), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3)),
    ("AdamW", dict(lr=0.01, amsgrad=True, eps=1e-6)),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_against_torch(name, kwargs, dtype):
    torch = pytest.importorskip("torch")
    ours = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name]
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((4, 5)).astype(dtype)
    p = Parameter(w0, name="w")
    opt = ours([p], **kwargs)
    tp = torch.nn.Parameter(torch.tensor(w0))
    topt = getattr(torch.optim, name)([tp], **kwargs)
    for _ in range(10):
        g = rng.standard_normal(w0.shape).astype(dtype)
        p.grad = g
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=tol, atol=tol)
