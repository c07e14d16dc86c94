"""Single-label losses (one class or grade per image, softmax over the classes) by name. Every loss takes LOGITS
and one-hot or soft labels [B, K] (MixUp, CutMix, Balanced-MixUp mix labels convexly; label smoothing).

    loss = get_loss("ce", label_smoothing=0.1)
    loss = get_loss("class_balanced_ce", class_counts=counts, beta=0.999)

Losses (``name``: parameters, defaults):

* ``ce``: ``label_smoothing=0.0``. Soft-target cross-entropy ``-sum_c y_c log softmax(z)_c`` (the loss of both
  single-label papers; seed 003's code: ``-(log_softmax(z) * y).sum(-1)``); smoothing as Keras'
  CategoricalCrossentropy: ``y (1 - e) + e / K``.
* ``softmax_focal`` (Lin et al. 2017, the multi-class form): ``gamma=2.0, alpha=None, label_smoothing=0.0``:
  ``-sum_c alpha_c y_c (1 - p_c)^gamma log p_c`` as Keras' CategoricalFocalCrossentropy; ``alpha`` None (1, as the
  focal loss seed 003's code loads, adeelh/pytorch-multi-class-focal-loss with alpha=None), a float, or a list
  of K floats.
* ``class_balanced_ce`` (Cui et al. 2019, softmax form): ``beta=0.999, gamma=0.0, label_smoothing=0.0``:
  ``-sum_c w_c y_c (1 - p_c)^gamma log p_c`` with the effective-number weights ``w_c = (1 - beta) /
  (1 - beta^n_c)`` normalised to sum to K (cxrlt.model.losses.class_balanced_weights); gamma 0: CB softmax CE.
* ``logit_adjusted_ce`` (Menon et al. 2021): ``tau=1.0, label_smoothing=0.0``: cross-entropy of the logits
  plus ``tau log pi_c`` (pi the training class priors). Prediction uses the plain logits: the adjustment makes
  the trained scores balanced, as the paper's loss does.
* ``corn`` (Shi, Cao and Raschka 2023, ordinal): no parameters. The model has K-1 outputs, binary task k
  asking "grade > k" among the images with grade >= k; the loss is the sum of the tasks' binary cross-entropies
  over their subsets divided by the subsets' total size, as coral_pytorch.losses.corn_loss. A soft (mixed) label
  counts the image once per grade it is mixed from, weighted by that grade's share: the reference's loss on a
  batch holding those weighted copies (for one-hot rows: exactly the reference).

Reduction: the mean over images (``sample_weight`` [B]: the weighted mean; CORN: the weighted ratio of sums),
divided by the replicas in sync like Keras' mean reductions (gradients are summed over replicas). Every
term is float32, from log-softmax / softplus, so logits of +-100 give finite values and gradients.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from .losses import _scale_for_replicas, class_balanced_weights

_TINY = 1e-30


def _vector(value) -> list[float] | None:
    return None if value is None else [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


class SingleLabelLoss(keras.losses.Loss):
    """Base: subclasses implement ``terms(y, logits) -> (numerator [B], denominator [B] or None)`` in float32."""

    def __init__(self, *, label_smoothing: float = 0.0, name: str | None = None, reduction: str = "mean"):
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        super().__init__(name=name, reduction="sum_over_batch_size", dtype="float32")
        self.reduction = reduction  # not masked_mean: the engine weighs accumulated micro-batches equally
        self.label_smoothing = float(label_smoothing)

    def smooth(self, y):
        if not self.label_smoothing:
            return y
        k = ops.cast(ops.shape(y)[-1], "float32")
        return y * (1.0 - self.label_smoothing) + self.label_smoothing / k

    def terms(self, y, logits):
        raise NotImplementedError

    def call(self, y_true, y_pred):
        """Per-image losses [B] (unweighted)."""
        num, den = self._terms(y_true, y_pred)
        return num if den is None else num / den

    def _terms(self, y_true, y_pred):
        y = ops.cast(ops.convert_to_tensor(y_true), "float32")
        logits = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        return self.terms(y, logits)

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            num, den = self._terms(y_true, y_pred)
            w = ops.ones_like(num) if sample_weight is None else ops.cast(ops.convert_to_tensor(sample_weight), "float32")
            if len(w.shape) == 2:  # a [B, C] element mask: an image counts with its mean weight
                w = ops.mean(w, axis=-1)
            if self.reduction == "none":
                return num * w if den is None else num * w / den
            total = ops.sum(num * w)
            if self.reduction == "sum":
                return total
            count = ops.sum(w) if den is None else ops.sum(den * w)
            return _scale_for_replicas(ops.divide_no_nan(total, count))

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction, "label_smoothing": self.label_smoothing}


class SoftmaxCrossEntropy(SingleLabelLoss):
    """-sum_c w_c y_c (1 - p_c)^gamma log p_c over softmax(logits + offset); w, gamma, offset optional."""

    def __init__(self, *, gamma: float = 0.0, class_weight=None, logit_offset=None, **kwargs):
        super().__init__(**kwargs)
        if float(gamma) < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.class_weight = _vector(class_weight)
        self.logit_offset = _vector(logit_offset)

    def terms(self, y, logits):
        y = self.smooth(y)
        if self.logit_offset is not None:
            logits = logits + ops.convert_to_tensor(np.asarray(self.logit_offset, np.float32))
        log_p = ops.log_softmax(logits, axis=-1)
        values = -y * log_p
        if self.gamma:
            values = values * ops.power(ops.maximum(1.0 - ops.exp(log_p), _TINY), self.gamma)
        if self.class_weight is not None:
            values = values * ops.convert_to_tensor(np.asarray(self.class_weight, np.float32))
        return ops.sum(values, axis=-1), None

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma": self.gamma, "class_weight": self.class_weight,
                "logit_offset": self.logit_offset}


class CornLoss(SingleLabelLoss):
    """CORN (conditional ordinal regression): logits [B, K-1], labels [B, K]."""

    def __init__(self, **kwargs):
        if kwargs.get("label_smoothing"):
            raise ValueError("corn takes no label_smoothing: its targets are the conditional 'grade > k' tasks")
        super().__init__(**kwargs)

    def terms(self, y, logits):
        k = y.shape[-1]
        if logits.shape[-1] is not None and k is not None and logits.shape[-1] != k - 1:
            raise ValueError(f"corn needs K-1 = {k - 1} logits for {k} grades, got {logits.shape[-1]}")
        at = y[:, :-1]                                    # P(grade = i), i = 0..K-2: task i's target 0
        above = ops.flip(ops.cumsum(ops.flip(y, axis=-1), axis=-1), axis=-1)[:, 1:]  # P(grade > i): target 1
        num = ops.sum(at * ops.softplus(logits) + above * ops.softplus(-logits), axis=-1)
        return num, ops.sum(at + above, axis=-1)          # P(grade >= i) summed: the tasks the image is in


def _softmax_focal(p, class_counts, n_images):
    p = dict(p)
    alpha = p.pop("alpha")
    weight = None if alpha is None else np.atleast_1d(np.asarray(alpha, dtype=np.float64))  # a scalar broadcasts
    if weight is not None and weight.size > 1 and class_counts is not None and weight.size != len(class_counts):
        raise ValueError(f"softmax_focal alpha has {weight.size} values for {len(class_counts)} classes")
    return SoftmaxCrossEntropy(class_weight=weight, **p)


def _class_balanced_ce(p, class_counts, n_images):
    p = dict(p)
    if class_counts is None:
        raise ValueError("class_balanced_ce needs class_counts (images per class in the training fold)")
    return SoftmaxCrossEntropy(class_weight=class_balanced_weights(class_counts, p.pop("beta")), **p)


def log_priors(class_counts) -> np.ndarray:
    """log pi_c of the training class frequencies (a class without images counted as one)."""
    if class_counts is None:
        raise ValueError("logit_adjusted_ce needs class_counts (images per class in the training fold)")
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64).reshape(-1), 1.0)
    return np.log(counts / counts.sum())


def _logit_adjusted_ce(p, class_counts, n_images):
    p = dict(p)
    return SoftmaxCrossEntropy(logit_offset=float(p.pop("tau")) * log_priors(class_counts), **p)


# name -> (parameter defaults, builder(params, class_counts, n_images))
LOSSES: dict[str, tuple[dict[str, Any], Callable]] = {
    "ce": ({"label_smoothing": 0.0}, lambda p, c, n: SoftmaxCrossEntropy(**p)),
    "softmax_focal": ({"gamma": 2.0, "alpha": None, "label_smoothing": 0.0}, _softmax_focal),
    "class_balanced_ce": ({"beta": 0.999, "gamma": 0.0, "label_smoothing": 0.0}, _class_balanced_ce),
    "logit_adjusted_ce": ({"tau": 1.0, "label_smoothing": 0.0}, _logit_adjusted_ce),
    "corn": ({}, lambda p, c, n: CornLoss(**p)),
}
_COMMON = {"name": None, "reduction": "mean"}


def logit_count(name: str, num_classes: int) -> int:
    """Outputs of the model's last layer for loss `name`: K (softmax), K-1 for corn."""
    return num_classes - 1 if name == "corn" else num_classes


def get_loss(name: str, *, class_counts=None, n_images=None, **params) -> keras.losses.Loss:
    """Build the single-label loss `name` with `params` over its defaults (see the module docstring)."""
    if name not in LOSSES:
        raise ValueError(f"unknown single-label loss {name!r}; use one of {', '.join(sorted(LOSSES))}")
    defaults, build = LOSSES[name]
    unknown = sorted(set(params) - set(defaults) - set(_COMMON))
    if unknown:
        raise ValueError(f"loss {name!r} got unknown parameter(s) {unknown}; it takes {sorted({**defaults, **_COMMON})}")
    merged = {**defaults, **params}
    if merged.get("name") is None:
        merged.pop("name", None)
    return build(merged, class_counts, n_images)
