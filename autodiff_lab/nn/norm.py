"""Batch normalisation: ``BatchNorm1d`` (rows (N, C), or (N, C, L)) and ``BatchNorm2d``
(images (N, C, H, W)), with PyTorch's behaviour and state.

* Training mode normalises with the batch's per-channel mean and *biased* variance and
  updates the running statistics with ``momentum`` (0.1):
  ``running = (1 − momentum)·running + momentum·batch``, where the batch variance used
  here is the *unbiased* one (divided by m − 1, m = values per channel), as PyTorch does;
  ``num_batches_tracked`` counts the updates (``momentum=None``: a cumulative average).
* Evaluation mode normalises with the running statistics.

Eagerly the running statistics are updated in the forward pass. In a trace the forward
cannot change state, so the layer adds two auxiliary outputs to the graph,
``"<path>.batch_mean"`` and ``"<path>.batch_var"`` (unbiased); every engine returns them in
``GradientResult.outputs`` and ``model.update_running_stats(result.outputs)`` applies the
update (``compile_step`` does it after each step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.graph.tensor import Tensor
from autodiff_lab.nn.module import Module, float_dtype, join, positive, shape_of, unique_key
from autodiff_lab.nn.parameter import Parameter


class _BatchNorm(Module):
    """Shared implementation; ``_ndims`` are the input ranks the subclass accepts."""

    _ndims: tuple[int, ...] = ()
    _pattern = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 dtype: Any = None) -> None:
        super().__init__()
        self.num_features = positive(num_features, f"{type(self).__name__} num_features")
        self.eps = float(eps)
        if not self.eps > 0:
            raise InputError(f"{type(self).__name__} eps must be positive, got {eps}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise InputError(f"{type(self).__name__} momentum must be in [0, 1] or None, got "
                             f"{momentum}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dt = float_dtype(dtype)
        c = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(c, dtype=dt))
            self.bias = Parameter(np.zeros(c, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, dtype=dt))
            self.register_buffer("running_var", np.ones(c, dtype=dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = np.array(0, dtype=np.int64)

    # --- forward ---------------------------------------------------------------------------
    def _check(self, x: Any) -> tuple[int, ...]:
        s = shape_of(x)
        if len(s) not in self._ndims or s[1] != self.num_features:
            raise ShapeError(f"expects input {self._pattern.format(c=self.num_features)}, got "
                             f"{s}")
        return s

    def _affine(self, x: Any) -> tuple[Any, Any]:
        if self.affine:
            return self.tensor("weight", x), self.tensor("bias", x)
        dt = np.dtype(x.dtype) if isinstance(x, Tensor) else np.asarray(x).dtype
        dt = dt if dt.kind == "f" else np.dtype(np.float64)
        return np.ones(self.num_features, dt), np.zeros(self.num_features, dt)

    def forward(self, x: Any) -> Any:
        s = self._check(x)
        if len(s) == 3:  # (N, C, L): normalise as (N, C, L, 1)
            return F.reshape(self._normalise(F.reshape(x, s + (1,)), s + (1,)), s)
        return self._normalise(x, s)

    def _normalise(self, x: Any, s: tuple[int, ...]) -> Any:
        gamma, beta = self._affine(x)
        if self.training or not self.track_running_stats:
            per_channel = int(np.prod(s, dtype=np.int64)) // s[1]
            if self.training and per_channel < 2:
                raise ShapeError(f"needs more than 1 value per channel in training mode, got "
                                 f"input {s}")
            y = F.batch_norm(x, gamma, beta, training=True, eps=self.eps)
            if self.training and self.track_running_stats:
                if isinstance(x, Tensor):
                    self._register_batch_statistics(x, per_channel)
                else:
                    xs = np.asarray(x)
                    axes = (0,) + tuple(range(2, xs.ndim))
                    self._update(xs.mean(axis=axes), xs.var(axis=axes, ddof=1))
            return y
        return F.batch_norm(x, gamma, beta, self.tensor("running_mean", x),
                            self.tensor("running_var", x), training=False, eps=self.eps)

    def _register_batch_statistics(self, x: Tensor, per_channel: int) -> None:
        """The batch mean and unbiased variance as auxiliary outputs of the trace."""
        stats = F.batch_stats(x)  # one op: [mean; unbiased variance], one pass over x
        builder = x.builder
        name_mean, name_var = self.stat_names
        key_mean = unique_key(builder, name_mean)
        key_var = name_var + key_mean[len(name_mean):]  # the same "@k" suffix
        builder.aux_outputs[key_mean] = stats[0]
        builder.aux_outputs[key_var] = stats[1]

    # --- running statistics -------------------------------------------------------------------
    @property
    def stat_names(self) -> tuple[str, str]:
        """Names of the auxiliary outputs a traced training step gives this layer's batch
        statistics (a second use in one trace adds ``@2``)."""
        return join(self.path, "batch_mean"), join(self.path, "batch_var")

    def _update(self, batch_mean: np.ndarray, batch_var: np.ndarray) -> None:
        self.num_batches_tracked = np.array(int(self.num_batches_tracked) + 1, dtype=np.int64)
        m = self.momentum if self.momentum is not None else 1.0 / int(self.num_batches_tracked)
        rm, rv = self.running_mean, self.running_var
        rm *= 1.0 - m
        rm += (m * np.asarray(batch_mean)).astype(rm.dtype, copy=False)
        rv *= 1.0 - m
        rv += (m * np.asarray(batch_var)).astype(rv.dtype, copy=False)

    def apply_batch_statistics(self, outputs: Mapping[str, np.ndarray], strict: bool = True
                               ) -> bool:
        """Update the running statistics from a traced step's outputs (each use of the layer
        in the trace, in order). Returns whether any were found."""
        name_mean, name_var = self.stat_names
        found = False
        k = 1
        while True:
            suffix = "" if k == 1 else f"@{k}"
            if name_mean + suffix not in outputs:
                break
            if name_var + suffix not in outputs:
                raise InputError(f"{self._describe()}: outputs have {name_mean + suffix!r} but "
                                 f"not {name_var + suffix!r}")
            self._update(outputs[name_mean + suffix], outputs[name_var + suffix])
            found = True
            k += 1
        if not found and strict:
            raise InputError(f"{self._describe()} is in training mode but the outputs have no "
                             f"{name_mean!r}: the graph was traced in evaluation mode, or from "
                             "another model (pass strict=False to skip such layers)")
        return found

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of rows (N, C) or sequences (N, C, L), per channel C."""

    _ndims = (2, 3)
    _pattern = "(N, {c}) or (N, {c}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of images (N, C, H, W), per channel C."""

    _ndims = (4,)
    _pattern = "(N, {c}, H, W)"


__all__ = ["BatchNorm1d", "BatchNorm2d"]
