"""Losses, with the conventions of the textbooks (and how they differ from PyTorch's).

``MSELoss`` and ``L1Loss`` sum over each sample's elements and average over the batch
(``reduction="batch_mean"``, the default): for a batch of N samples,

* ``MSELoss``:  L = (1/N) Σₙ ½‖yₙ − ŷₙ‖²   (so dL/dŷ = (ŷ − y)/N);
* ``L1Loss``:   L = (1/N) Σₙ ‖yₙ − ŷₙ‖₁.

PyTorch's ``nn.MSELoss()`` is instead the *mean over all elements* of (ŷ − y)², without
the ½, and ``nn.L1Loss()`` the mean over all elements of |ŷ − y|. Other reductions:
``"sum"`` (over the whole batch: L = ½‖y − ŷ‖², as textbooks write it) and ``"mean"`` (over all
elements: ``MSELoss(reduction="mean")`` is ½ × PyTorch's ``MSELoss()``,
``L1Loss(reduction="mean")`` equals PyTorch's ``L1Loss()``).

``CrossEntropyLoss`` takes logits (N, K) and integer class labels (N,) and, like
PyTorch's, averages −log softmax(logits)[label] over the batch (``"sum"``: the sum).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autodiff_lab.errors import InputError, ShapeError
from autodiff_lab.graph import functions as F
from autodiff_lab.graph.tensor import Tensor
from autodiff_lab.nn.module import Module, shape_of

PAIR_REDUCTIONS = ("batch_mean", "sum", "mean")


class _PairLoss(Module):
    def __init__(self, reduction: str = "batch_mean") -> None:
        super().__init__()
        if reduction not in PAIR_REDUCTIONS:
            raise InputError(f"{type(self).__name__} reduction must be one of "
                             f"{', '.join(PAIR_REDUCTIONS)}; got {reduction!r}")
        self.reduction = reduction

    def _shapes(self, pred: Any, target: Any) -> tuple[int, ...]:
        sp, st = shape_of(pred), shape_of(target)
        if sp != st:
            raise ShapeError(f"expects prediction and target of one shape, got prediction {sp} "
                             f"and target {st}")
        return sp

    def _reduce(self, op: Any, pred: Any, target: Any) -> Any:
        s = self._shapes(pred, target)
        if self.reduction == "batch_mean":
            n = s[0] if s else 1
            total = op(pred, target, reduction="sum")
            return total * (1.0 / n) if n != 1 else total
        return op(pred, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_PairLoss):
    """½‖y − ŷ‖² summed over each sample's elements and averaged over the batch (default
    ``reduction="batch_mean"``); ``"sum"``: ½ Σ over everything; ``"mean"``: ½ × the mean over
    all elements. PyTorch's MSELoss is the mean over elements without the ½ (twice our
    ``"mean"``)."""

    def forward(self, pred: Any, target: Any) -> Any:
        return self._reduce(F.mse_loss, pred, target)


class L1Loss(_PairLoss):
    """‖y − ŷ‖₁ summed over each sample's elements and averaged over the batch (default
    ``reduction="batch_mean"``); ``"sum"``: Σ over everything; ``"mean"``: the mean over all
    elements (PyTorch's L1Loss)."""

    def forward(self, pred: Any, target: Any) -> Any:
        return self._reduce(F.l1_loss, pred, target)


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of logits (N, K) against integer labels (N,) in 0..K−1, averaged
    over the batch (``reduction="mean"``, PyTorch's default) or summed (``"sum"``)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise InputError(f"CrossEntropyLoss reduction must be 'mean' or 'sum', got "
                             f"{reduction!r}")
        self.reduction = reduction

    def forward(self, logits: Any, labels: Any) -> Any:
        sl, sy = shape_of(logits), shape_of(labels)
        if len(sl) != 2 or sy != sl[:1]:
            raise ShapeError(f"expects logits (N, K) and labels (N,), got logits {sl} and labels "
                             f"{sy}")
        if isinstance(labels, Tensor):
            if np.dtype(labels.dtype).kind not in "iu":
                raise InputError(f"expects integer class labels, got {labels.dtype}")
        else:
            labels = np.asarray(labels)
            if labels.dtype.kind not in "iu":
                raise InputError(f"expects integer class labels, got {labels.dtype}")
            if labels.size and (labels.min() < 0 or labels.max() >= sl[1]):
                bad = labels[(labels < 0) | (labels >= sl[1])][0]
                raise InputError(f"label {int(bad)} is out of range for {sl[1]} classes "
                                 f"(labels must be in 0..{sl[1] - 1})")
        return F.softmax_cross_entropy(logits, labels, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


__all__ = ["CrossEntropyLoss", "L1Loss", "MSELoss"]
