"""Optimisers: SGD (with momentum, Nesterov, weight decay), Adam (with AMSGrad) and AdamW.

Each follows PyTorch's ``torch.optim`` update rule exactly, so a model trained here and the
same model trained with PyTorch walk the same path (up to rounding):

SGD (γ lr, μ momentum, τ dampening, λ weight decay)::

    g ← g + λθ                                   (λ ≠ 0)
    b ← g on the first step, else μb + (1 − τ)g  (μ ≠ 0)
    g ← g + μb (Nesterov) or g ← b               (μ ≠ 0)
    θ ← θ − γg

Adam (β1, β2, ε; t counts the steps of each parameter)::

    g ← g + λθ                       (Adam, λ ≠ 0: L2 penalty through the gradient)
    θ ← θ(1 − γλ)                    (AdamW: decay decoupled from the gradient)
    m ← β1 m + (1 − β1) g
    v ← β2 v + (1 − β2) g²
    v_max ← max(v_max, v)            (AMSGrad; v_max then replaces v below)
    θ ← θ − γ/(1 − β1ᵗ) · m / (√v · (1/√(1 − β2ᵗ)) + ε)

Usage mirrors PyTorch::

    opt = Adam(model.parameters(), lr=1e-3)
    for batch in ...:
        opt.zero_grad()
        ... compute the loss and write each parameter's ``grad`` ...
        opt.step()

``params`` is a list of :class:`~autodiff_lab.nn.parameter.Parameter`, or a list of
parameter groups (dicts with ``"params"`` and any per-group options, the others taken from
the constructor's arguments). ``step()`` updates ``p.data`` in place and keeps its dtype
(state buffers have the parameter's dtype too); parameters whose ``grad`` is ``None`` are
skipped. Before anything is changed, every gradient is checked: a wrong shape raises
:class:`~autodiff_lab.errors.InputError` and a NaN or Inf raises
:class:`~autodiff_lab.errors.NonFiniteError`, each naming the parameter, so a failed step
leaves the model and the optimiser as they were.

``state_dict()`` keys the state by parameter *name* (``p.name``, the module path such as
``"0.weight"``), not by object, so a checkpoint loads into a freshly built model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, NonFiniteError
from autodiff_lab.nn.parameter import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]

Group = dict[str, Any]
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_OPTIM_FAST: Any = None


def _kernels() -> Any:
    # imported on the first step: building an optimiser does not pay for Numba
    global _OPTIM_FAST
    if _OPTIM_FAST is None:
        from autodiff_lab.kernels import optim_fast
        _OPTIM_FAST = optim_fast
    return _OPTIM_FAST


def _number(name: str, value: Any, *, positive: bool = False, where: str = "") -> float:
    """``value`` as a finite float (> 0 when ``positive``, else ≥ 0), or an InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}{where} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name}{where} must be finite, got {v}")
    if positive and v <= 0:
        raise InputError(f"{name}{where} must be > 0, got {v}")
    if not positive and v < 0:
        raise InputError(f"{name}{where} must be ≥ 0, got {v}")
    return v


def _flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous array (the kernels index elements linearly)."""
    return a.reshape(-1)


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad``, ``state_dict``.

    Subclasses set ``defaults`` (every option with its value), implement
    :meth:`_check_group` (validate and normalise one group's options) and :meth:`_update`
    (one parameter's step).
    """

    #: the options a group may carry, with the constructor's values
    defaults: dict[str, Any]

    def __init__(self, params: Iterable[Parameter] | Iterable[Group], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self._scalars: dict[tuple, tuple] = {}  # per-step scalars shared by a group's parameters
        self.param_groups: list[Group] = []
        #: per-parameter state, keyed by the Parameter object
        self.state: dict[Parameter, dict[str, Any]] = {}
        if isinstance(params, (Parameter, dict)):
            raise InputError("params must be a list of Parameters or of parameter groups (dicts), "
                             f"got a single {type(params).__name__}")
        items = list(params)
        if not items:
            raise InputError("the optimiser got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        for group in groups:
            self.add_param_group(group)

    # -- groups --------------------------------------------------------------------------------
    def add_param_group(self, group: Group) -> None:
        """Add a group of parameters with its own options (missing ones from ``defaults``)."""
        where = f" (parameter group {len(self.param_groups)})"
        if not isinstance(group, dict) or "params" not in group:
            raise InputError(f"a parameter group must be a dict with a 'params' entry{where}, got {group!r}")
        unknown = sorted(set(group) - set(self.defaults) - {"params"})
        if unknown:
            raise InputError(f"unknown option(s) {unknown}{where} for {type(self).__name__}; "
                             f"valid: {sorted(self.defaults)}")
        raw = group["params"]
        params = [raw] if isinstance(raw, Parameter) else list(raw)
        if not params:
            raise InputError(f"empty parameter list{where}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise InputError(f"params[{i}]{where} is a {type(p).__name__}, not a Parameter")
            if id(p) in seen:
                raise InputError(f"parameter {p.name or i!r} appears twice in the optimiser's groups{where}")
            seen.add(id(p))
        new: Group = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        new = self._check_group(new, where)
        new["params"] = params
        self.param_groups.append(new)

    def _check_group(self, group: Group, where: str) -> Group:
        raise NotImplementedError

    # -- the step ------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: ``grad = None`` (PyTorch's default), or fill them with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def _checked_grad(self, p: Parameter, index: int, group_index: int) -> np.ndarray:
        name = repr(p.name) if p.name else f"#{index} of group {group_index}"
        if p.data.dtype not in _DTYPES:
            raise InputError(f"parameter {name} is {p.data.dtype}; the optimisers update float32 and "
                             "float64 parameters")
        if not p.data.flags.writeable:
            raise InputError(f"parameter {name} holds a read-only array; the optimiser updates it in place")
        g = p.grad
        if type(g) is np.ndarray and g.dtype is p.data.dtype and g.shape == p.data.shape \
                and g.flags.c_contiguous:  # the usual case, checked in one go
            if _kernels().any_nonfinite(g.reshape(-1)):
                self._nonfinite(g, name)
            return g
        if not isinstance(g, np.ndarray):
            g = np.asarray(g)
        if g.shape != p.data.shape:
            raise InputError(f"gradient of parameter {name} has shape {g.shape}, "
                             f"the parameter has shape {p.data.shape}")
        if g.dtype != p.data.dtype or not g.flags.c_contiguous:
            if not (np.issubdtype(g.dtype, np.floating) or np.issubdtype(g.dtype, np.integer)):
                raise InputError(f"gradient of parameter {name} has dtype {g.dtype}, "
                                 f"expected real numbers ({p.data.dtype})")
            g = np.ascontiguousarray(g, dtype=p.data.dtype)
        if _kernels().any_nonfinite(_flat(g)):
            self._nonfinite(g, name)
        return g

    @staticmethod
    def _nonfinite(g: np.ndarray, name: str) -> None:
        bad = int(np.flatnonzero(~np.isfinite(_flat(g)))[0])
        idx = tuple(int(i) for i in np.unravel_index(bad, g.shape)) if g.ndim else ()
        raise NonFiniteError(f"gradient of parameter {name} has {_flat(g)[bad]} at index "
                             f"{idx}; the step was not taken")

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()`` when given.

        All gradients are checked first (shape, finiteness), so an error leaves the
        parameters and the state untouched.
        """
        loss = closure() if closure is not None else None
        work = []
        for gi, group in enumerate(self.param_groups):
            lr = group["lr"]
            if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(lr) or lr < 0:
                raise InputError(f"lr of parameter group {gi} is {lr!r}; it must be a finite number ≥ 0")
            for i, p in enumerate(group["params"]):
                if p.grad is None or not p.requires_grad:
                    continue
                work.append((p, self._checked_grad(p, i, gi), group))
        for p, g, group in work:
            contiguous = p.data.flags.c_contiguous
            data = p.data if contiguous else np.ascontiguousarray(p.data)
            self._update(data, g, group, self.state.setdefault(p, {}))
            if not contiguous:
                p.data[...] = data
        return loss

    def _update(self, data: np.ndarray, grad: np.ndarray, group: Group, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _coefficients(self, key: tuple, make: Callable[[], tuple[float, ...]]) -> np.ndarray:
        """The scalars of an update rule as one array of the parameter dtype (``key[-1]``),
        made once per key (a group's parameters share them at each step): the kernels take
        them as an array, which Numba's dispatcher types ~20 times faster than scalars."""
        c = self._scalars.get(key)
        if c is None:
            if len(self._scalars) > 64:
                self._scalars.clear()
            c = self._scalars[key] = np.array(make(), dtype=key[-1])
            c.flags.writeable = False
        return c

    # -- checkpoints ---------------------------------------------------------------------------
    def _names(self) -> dict[str, Parameter]:
        names: dict[str, Parameter] = {}
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if not p.name:
                    raise InputError(f"parameter #{i} of group {gi} ({p!r}) has no name; checkpoints key "
                                     "the state by name (a Module names its parameters when they are "
                                     "registered)")
                if p.name in names:
                    raise InputError(f"two parameters are named {p.name!r}; checkpoints key the state by "
                                     "name, so names must be unique")
                names[p.name] = p
        return names

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies) of the options and the state, keyed by parameter name::

            {"optimizer": "Adam",
             "param_groups": [{"params": ["0.weight", ...], "lr": 0.001, ...}, ...],
             "state": {"0.weight": {"step": 3, "exp_avg": array, ...}, ...}}
        """
        self._names()
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [p.name for p in g["params"]]}
                  for g in self.param_groups]
        state = {p.name: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                 for p, st in self.state.items()}
        return {"optimizer": type(self).__name__, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore options and state saved by :meth:`state_dict`, matching parameters by name.

        The groups must hold the same parameter names as when the checkpoint was saved; state
        arrays are copied into the parameters' dtype. Nothing changes if anything mismatches.
        """
        names = self._names()
        if not isinstance(state_dict, dict) or not {"optimizer", "param_groups", "state"} <= set(state_dict):
            raise InputError("not an optimiser checkpoint: expected a dict with 'optimizer', "
                             "'param_groups' and 'state'")
        kind = state_dict["optimizer"]
        if kind != type(self).__name__:
            raise InputError(f"the checkpoint is of a {kind} optimiser, this is {type(self).__name__}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise InputError(f"the checkpoint has {len(saved_groups)} parameter group(s), "
                             f"this optimiser {len(self.param_groups)}")
        new_groups = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            ours = {p.name for p in group["params"]}
            theirs = set(saved.get("params", []))
            if ours != theirs:
                raise InputError(f"parameter group {gi}: the checkpoint has {sorted(theirs - ours)} that "
                                 f"this optimiser lacks and lacks {sorted(ours - theirs)}")
            opts = {**self.defaults, **{k: v for k, v in saved.items() if k in self.defaults}}
            new_groups.append(self._check_group(opts, f" (checkpoint group {gi})"))
        new_state: dict[Parameter, dict[str, Any]] = {}
        for name, saved_state in dict(state_dict["state"]).items():
            if name not in names:
                raise InputError(f"the checkpoint has state for parameter {name!r}, which this optimiser "
                                 f"does not hold (it holds {sorted(names)})")
            p = names[name]
            st: dict[str, Any] = {}
            for key, value in saved_state.items():
                if key == "step":
                    st[key] = int(value)
                    continue
                arr = np.asarray(value)
                if arr.shape != p.data.shape:
                    raise InputError(f"checkpoint state {key!r} of parameter {name!r} has shape {arr.shape}, "
                                     f"the parameter {p.data.shape}")
                st[key] = np.array(arr, dtype=p.data.dtype, copy=True)
            new_state[p] = st
        for group, opts in zip(self.param_groups, new_groups):
            group.update(opts)
        self.state = new_state

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        n = sum(len(g["params"]) for g in self.param_groups)
        return f"{type(self).__name__}({n} parameters in {len(self.param_groups)} group(s); {opts})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum and weight decay.

    PyTorch's ``torch.optim.SGD``: the momentum buffer starts as the first gradient (no
    dampening on that step) and the learning rate multiplies the whole buffer (``θ ← θ − γb``,
    not Sutskever's ``b ← μb + γg``). ``weight_decay`` λ adds λθ to the gradient (an L2
    penalty ½λ‖θ‖²). State: ``"momentum_buffer"``.
    """

    def __init__(self, params: Iterable[Parameter] | Iterable[Group], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group: Group, where: str) -> Group:
        group["lr"] = _number("lr", group["lr"], positive=True, where=where)
        group["momentum"] = _number("momentum", group["momentum"], where=where)
        damp = group["dampening"]
        if isinstance(damp, bool) or not isinstance(damp, (int, float, np.integer, np.floating)) \
                or not math.isfinite(damp):
            raise InputError(f"dampening{where} must be a finite number, got {damp!r}")
        group["dampening"] = float(damp)
        group["weight_decay"] = _number("weight_decay", group["weight_decay"], where=where)
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise InputError(f"Nesterov momentum needs momentum > 0 and dampening = 0{where}, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")
        return group

    def _update(self, data: np.ndarray, grad: np.ndarray, group: Group, state: dict[str, Any]) -> None:
        k = _OPTIM_FAST or _kernels()
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        if mu == 0:
            k.sgd_plain(data.reshape(-1), grad.reshape(-1), self._coefficients(
                ("sgd", lr, wd, data.dtype), lambda: (lr, wd)))
            return
        first = "momentum_buffer" not in state
        if first:  # b ← g: b·0 + 1·g
            state["momentum_buffer"] = np.zeros_like(data)
        nesterov, damp = group["nesterov"], group["dampening"]
        keep_g, buf_factor = (1.0, mu) if nesterov else (0.0, 1.0)
        c = self._coefficients(("momentum", first, lr, wd, mu, damp, nesterov, data.dtype),
                               lambda: (lr, wd, 0.0 if first else mu,
                                        1.0 if first else 1.0 - damp, keep_g, buf_factor))
        k.sgd_momentum(data.reshape(-1), grad.reshape(-1), state["momentum_buffer"].reshape(-1), c)


class Adam(Optimizer):
    """Adam (Kingma & Ba), with the AMSGrad variant, as ``torch.optim.Adam``.

    ``weight_decay`` λ is the L2 penalty added to the gradient (so it passes through the
    moment estimates); :class:`AdamW` decays the weights directly instead. State per
    parameter: ``"step"`` (int), ``"exp_avg"`` (m), ``"exp_avg_sq"`` (v) and, with AMSGrad,
    ``"max_exp_avg_sq"``.
    """

    _decoupled = False

    def __init__(self, params: Iterable[Parameter] | Iterable[Group], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def _check_group(self, group: Group, where: str) -> Group:
        group["lr"] = _number("lr", group["lr"], positive=True, where=where)
        betas = group["betas"]
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise InputError(f"betas{where} must be a pair (β1, β2), got {betas!r}") from None
        for i, b in enumerate((b1, b2)):
            v = _number(f"betas[{i}]", b, where=where)
            if not v < 1:
                raise InputError(f"betas[{i}]{where} must be in [0, 1), got {v}")
        group["betas"] = (float(b1), float(b2))
        group["eps"] = _number("eps", group["eps"], where=where)
        group["weight_decay"] = _number("weight_decay", group["weight_decay"], where=where)
        group["amsgrad"] = bool(group["amsgrad"])
        return group

    def _update(self, data: np.ndarray, grad: np.ndarray, group: Group, state: dict[str, Any]) -> None:
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(data)
            state["exp_avg_sq"] = np.zeros_like(data)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = np.zeros_like(data)
        state["step"] += 1
        step = state["step"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]

        def coefficients() -> tuple[float, ...]:
            # the bias corrections in double precision, as PyTorch computes them
            step_size = lr / (1.0 - b1 ** step)
            inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - b2 ** step)
            if self._decoupled:  # θ ← θ(1 − γλ), the gradient left alone
                coupled, decay = 0.0, 1.0 - lr * wd
            else:  # g ← g + λθ, θ·1
                coupled, decay = wd, 1.0
            return (coupled, decay, 1.0 - b1, b2, 1.0 - b2, step_size, inv_bc2_sqrt, eps)

        c = self._coefficients((step, lr, wd, eps, b1, b2, data.dtype), coefficients)
        k = _OPTIM_FAST or _kernels()
        p, g = data.reshape(-1), grad.reshape(-1)
        m, v = state["exp_avg"].reshape(-1), state["exp_avg_sq"].reshape(-1)
        if group["amsgrad"]:
            k.adam_amsgrad(p, g, m, v, state["max_exp_avg_sq"].reshape(-1), c)
        else:
            k.adam(p, g, m, v, c)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Each step first shrinks the weights, θ ← θ(1 − γλ), then takes the Adam step on the
    plain gradient: the decay does not pass through m and v, so it is the same for every
    weight whatever its gradient's scale.
    """

    _decoupled = True

    def __init__(self, params: Iterable[Parameter] | Iterable[Group], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
