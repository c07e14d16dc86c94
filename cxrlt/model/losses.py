"""Multi-label losses by name. Every loss takes LOGITS and (possibly soft) labels.

    loss = get_loss("focal")                                             # seed 002's BFCE
    loss = get_loss("weighted_bce", class_counts=counts, n_images=n)      # per-class w_pos = n_neg / n_pos
    model.compile(optimizer, loss=loss)

Contract (every loss here):

* ``y_pred`` are logits ``[B, C]`` (any float dtype: bfloat16/float16 logits are cast to float32
  inside, and every term is computed in float32 with log-sigmoid/softplus, so logits of +-100 give
  finite values and gradients); ``y_true`` are float labels in [0, 1], soft labels allowed
  (MixUp/CutMix/Mosaic mixing, label smoothing).
* ``sample_weight`` may be ``[B, C]`` (an element mask: 1 = use, 0 = ignore, e.g. uncertain labels)
  or ``[B]`` (per-image weights, broadcast over the classes).
* Reduction ``"masked_mean"`` (the default): ``sum(l * w) / sum(w)`` with ``w`` broadcast to
  ``[B, C]``, i.e. the mean over the unmasked elements for a 0/1 mask (0 when everything is masked).
  Without ``sample_weight`` it is the mean over all ``B * C`` elements, which is exactly what Keras'
  own losses give (mean over classes, then over the batch). ``"sum_over_batch_size"`` divides by
  ``B * C`` whatever the weights (Keras' convention: masked elements still count in the
  denominator), ``"sum"`` sums, ``"none"`` returns the weighted element losses ``[B, C]``.
  Like Keras' mean reductions, the result is divided by the number of replicas under a
  ``tf.distribute`` strategy (each replica normalises by its own unmasked count).

Keras' built-in losses reduce over the class axis *before* the sample weight is applied, so a
``[B, C]`` mask cannot be passed to them; this is why even ``focal`` and ``bce`` are implemented here
(they equal ``keras.losses.BinaryFocalCrossentropy`` / ``BinaryCrossentropy(from_logits=True)`` up to
Keras' 1e-7 probability clipping, which only matters for |logit| > ~15).

Losses (``name``: parameters, defaults):

* ``focal`` (seed 002): ``alpha=0.25, gamma=2.0, apply_class_balancing=True, label_smoothing=0.01``.
  ``alpha="inverse_frequency"`` (decision G06 option c) gives a per-class alpha, see
  :func:`inverse_frequency_alpha`; ``alpha`` may also be an explicit list of C floats.
* ``bce``: ``label_smoothing=0.0``.
* ``weighted_bce`` (seed 001, cost-sensitive BCE): ``power=1.0, max_weight=None, label_smoothing=0.0``;
  see :func:`positive_weights`.
* ``class_balanced`` (Cui et al. 2019, seed 003 baseline, G24): ``beta=0.999, base="focal"`` and the
  base loss's parameters (focal base: ``gamma=2.0, alpha=0.25, apply_class_balancing=False,
  label_smoothing=0.0``; bce base: ``label_smoothing=0.0``); see :func:`class_balanced_weights`.
* ``asl`` (Ridnik et al. 2021; BEYOND THE SEEDS, G27): ``gamma_neg=4.0, gamma_pos=0.0, clip=0.05,
  label_smoothing=0.0, class_weighting="none", detach_focusing=False``; soft labels as the authors' code:
  one focusing weight with the exponent ``gamma_pos * y + gamma_neg * (1 - y)``.
* ``logit_adjusted`` (Menon et al. 2021; BEYOND THE SEEDS, G27): ``tau=1.0, label_smoothing=0.0``.
* ``asl`` also takes ``class_weighting="none" | "chexfusion"`` (CheXFusion, CXR-LT 2023 winner: the element
  loss times ``y exp(1 - p_c) + (1 - y) exp(p_c)``, ``p_c = n_c / N`` the class prevalence).
* ``ldam`` (Cao et al. 2019; BEYOND THE SEEDS): ``max_margin=0.5, scale=30.0, drw_epoch="auto", drw_beta=0.9999,
  negative_margin=False, label_smoothing=0.0``; margins ``~ n_c^-1/4`` on the positive logits, the result
  times ``scale`` (``s``, the old name, is accepted), DRW (effective-number class weights) from epoch
  ``drw_epoch`` on ("auto" = 80 % of ``epochs``, as the authors' 160 of 200; null = never); the official model
  scores cosines (cxrlt.model.heads.CosineDense, model.classifier auto); see :class:`LDAMLoss`.
* ``distribution_balanced`` (Wu et al. 2020; BEYOND THE SEEDS): ``alpha=0.1, beta=10.0, mu=0.2,
  neg_scale=2.0, init_bias=0.05, focal=True, gamma=2.0, balance_param=2.0, label_smoothing=0.0`` (the
  authors' COCO/VOC configs); ``focal=False`` is their non-focal form; see :class:`DistributionBalancedLoss`.
* ``cxrlt2026_db`` (the CXR-LT 2026 task-1 winner's "DistributionBalancedLoss", hieuphamha19/CXR_LT, which is
  not Wu et al.'s): ``beta=0.9999, rebalance_alpha=0.5, neg_scale=1.0, neg_margin=0.0, margin_scale=1.0,
  max_margin=0.2``; see :class:`WinnerDBLoss`.

Losses with a part that starts at an epoch (``ldam``'s DRW) have ``set_epoch(epoch)``; the trainer calls it
before every epoch (``cxrlt.train.callbacks.LossEpoch``), a resumed fold included.

Every loss also takes ``reduction`` and ``name``. Losses that need the training-fold statistics
(``weighted_bce``, ``class_balanced``, ``logit_adjusted``, ``focal`` with inverse-frequency alpha)
take ``class_counts`` (positives per class, length C) and, where a prior is involved, ``n_images``;
the derived per-class vectors are stored in ``get_config()`` as plain lists, so a compiled model's
config round-trips without the counts.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import ops

REDUCTIONS = ("masked_mean", "sum_over_batch_size", "sum", "none")
_TINY = 1e-30  # floor for the base of the focusing powers: keeps d/dx x**gamma finite for gamma < 1


# ----------------------------------------------------------------------------- per-class statistics

def _counts(class_counts, what: str) -> np.ndarray:
    if class_counts is None:
        raise ValueError(f"{what} needs class_counts (positives per class in the training fold)")
    counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{what}: class_counts must be finite and >= 0, got {counts.tolist()}")
    return counts


def _n_images(n_images, counts: np.ndarray, what: str) -> float:
    if n_images is None:
        raise ValueError(f"{what} needs n_images (the number of training images) besides class_counts")
    n = float(n_images)
    if n <= 0 or n < counts.max():
        raise ValueError(f"{what}: n_images={n_images} must be positive and >= every class count "
                         f"(max {int(counts.max())})")
    return n


def prior(class_counts, n_images) -> np.ndarray:
    """Per-class prevalence with add-one (Laplace) smoothing: (n_c + 1) / (N + 2), in (0, 1) for every class."""
    counts = _counts(class_counts, "prior")
    n = _n_images(n_images, counts, "prior")
    return (counts + 1.0) / (n + 2.0)


def inverse_frequency_alpha(class_counts, n_images) -> np.ndarray:
    """Per-class focal alpha for ``alpha="inverse_frequency"`` (G06 option c).

    ``alpha_c = 1 - prior_c`` (the smoothed prevalence of :func:`prior`). With Keras' class
    balancing (positives weighted by alpha, negatives by 1 - alpha) the positive:negative weight
    ratio is ``(1 - prior_c) / prior_c = n_neg_c / n_pos_c``, the inverse class frequency, so the
    positives and negatives of every class carry the same total weight ("equal attention to both
    classes"). Alpha stays in (0, 1) as Keras' semantics require; rare classes get alpha close to 1.
    """
    return 1.0 - prior(class_counts, n_images)


def positive_weights(class_counts, n_images, *, power: float = 1.0, max_weight: float | None = None) -> np.ndarray:
    """``w_pos_c = (n_neg_c / n_pos_c) ** power``, clipped at ``max_weight`` (negatives weigh 1).

    ``power=1`` is seed 001's cost-sensitive rule (99:1 -> 99), ``power=0.5`` the square-root variant.
    Counts are floored at 1, so a class without positives (or without negatives) gets a finite weight.
    """
    counts = _counts(class_counts, "weighted_bce")
    n = _n_images(n_images, counts, "weighted_bce")
    w = (np.maximum(n - counts, 1.0) / np.maximum(counts, 1.0)) ** float(power)
    if max_weight is not None:
        w = np.minimum(w, float(max_weight))
    return w


def class_balanced_weights(class_counts, beta: float = 0.999) -> np.ndarray:
    """Cui et al.'s effective-number weights ``(1 - beta) / (1 - beta ** n_c)``, normalised to sum to C.

    A class without positives is treated as having one (``n_c`` floored at 1), so its weight is the
    largest one instead of infinite. ``beta = 0`` gives all-ones weights.
    """
    if not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"class_balanced: beta must be in [0, 1), got {beta}")
    counts = np.maximum(_counts(class_counts, "class_balanced"), 1.0)
    w = (1.0 - beta) / (1.0 - np.power(beta, counts)) if beta > 0 else np.ones_like(counts)
    return w * (len(counts) / w.sum())


# ----------------------------------------------------------------------------- base class

def _scale_for_replicas(loss):
    """Divide by the replicas in sync, as Keras' own mean reductions do (gradients are summed over replicas)."""
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * (1.0 / replicas)


def _vector(value) -> list[float] | None:
    return None if value is None else [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def _smooth(y, label_smoothing: float):
    return y * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else y


class MultiLabelLoss(keras.losses.Loss):
    """Base: subclasses implement ``elementwise(y_true, logits) -> [B, C]`` in float32."""

    def __init__(self, *, reduction: str = "masked_mean", name: str | None = None, label_smoothing: float = 0.0,
                 class_weight=None):
        if reduction is None:
            reduction = "none"
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        super().__init__(name=name, reduction="sum_over_batch_size", dtype="float32")
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.class_weight = _vector(class_weight)

    def elementwise(self, y_true, logits):
        raise NotImplementedError

    def call(self, y_true, y_pred):
        """Per-element losses ``[B, C]`` (class weights applied, sample weights not)."""
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        logits = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        values = self.elementwise(y_true, logits)
        if self.class_weight is not None:
            values = values * ops.convert_to_tensor(np.asarray(self.class_weight, np.float32))
        return values

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            values = self.call(y_true, y_pred) if sample_weight is None else self.call_weighted(
                y_true, y_pred, sample_weight)
            if sample_weight is None:
                weights = ops.ones_like(values)
            else:
                weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
                if len(weights.shape) == 1:
                    weights = ops.expand_dims(weights, -1)
                weights = ops.broadcast_to(weights, ops.shape(values))
            values = values * weights
            if self.reduction == "none":
                return values
            total = ops.sum(values)
            if self.reduction == "sum":
                return total
            if self.reduction == "masked_mean":
                loss = ops.divide_no_nan(total, ops.sum(weights))
            else:  # sum_over_batch_size
                loss = total / ops.cast(ops.size(values), "float32")
            return _scale_for_replicas(loss)

    def call_weighted(self, y_true, y_pred, sample_weight):
        """``call`` for losses whose elements depend on other labels of the image: they may need the mask."""
        return self.call(y_true, y_pred)

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction, "label_smoothing": self.label_smoothing,
                "class_weight": self.class_weight}


def _bce(y, logits, pos_weight=None):
    """-(w_pos * y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z))), stable for any z."""
    log_p = -ops.softplus(-logits)
    log_not_p = -ops.softplus(logits)
    pos = y * log_p if pos_weight is None else pos_weight * y * log_p
    return -(pos + (1.0 - y) * log_not_p)


@keras.saving.register_keras_serializable(package="cxrlt")
class BinaryCrossentropy(MultiLabelLoss):
    """BCE on logits, optionally with per-class positive weights (``weighted_bce``) and class weights.

    ``pos_weight`` (length C) multiplies the positive term only (negatives weigh 1):
    ``-(w_c * y * log p + (1 - y) * log(1 - p))``; label smoothing is Keras': ``y(1-e) + e/2``.
    """

    def __init__(self, *, pos_weight=None, **kwargs):
        super().__init__(**kwargs)
        self.pos_weight = _vector(pos_weight)

    def elementwise(self, y_true, logits):
        y = _smooth(y_true, self.label_smoothing)
        w = None if self.pos_weight is None else ops.convert_to_tensor(np.asarray(self.pos_weight, np.float32))
        return _bce(y, logits, w)

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable(package="cxrlt")
class BinaryFocalCrossentropy(MultiLabelLoss):
    """Keras' binary focal cross-entropy on logits, with a [B, C] sample_weight mask and per-class alpha.

    As ``keras.losses.binary_focal_crossentropy``: labels are smoothed first, then
    ``p_t = y p + (1 - y)(1 - p)``, loss ``(1 - p_t)^gamma * BCE(y, p)``, times
    ``alpha y + (1 - alpha)(1 - y)`` (with the smoothed y) when ``apply_class_balancing``.
    ``alpha`` is a float or a length-C list (per-class alpha, e.g. :func:`inverse_frequency_alpha`).
    """

    def __init__(self, *, alpha=0.25, gamma: float = 2.0, apply_class_balancing: bool = True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(alpha, str):
            raise ValueError(f"alpha={alpha!r}: resolve it with get_loss (which has the class counts)")
        alpha_arr = np.asarray(alpha, dtype=np.float64)
        if np.any(alpha_arr < 0) or np.any(alpha_arr > 1):
            raise ValueError(f"focal: alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha_arr) if alpha_arr.ndim == 0 else _vector(alpha_arr)
        if float(gamma) < 0:
            raise ValueError(f"focal: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.apply_class_balancing = bool(apply_class_balancing)

    def elementwise(self, y_true, logits):
        y = _smooth(y_true, self.label_smoothing)
        bce = _bce(y, logits)
        p, not_p = ops.sigmoid(logits), ops.sigmoid(-logits)
        one_minus_pt = y * not_p + (1.0 - y) * p
        values = ops.power(ops.maximum(one_minus_pt, _TINY), self.gamma) * bce
        if self.apply_class_balancing:
            alpha = self.alpha if isinstance(self.alpha, float) else ops.convert_to_tensor(np.asarray(self.alpha, np.float32))
            values = (y * alpha + (1.0 - y) * (1.0 - alpha)) * values
        return values

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma,
                "apply_class_balancing": self.apply_class_balancing}


@keras.saving.register_keras_serializable(package="cxrlt")
class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss (Ridnik et al., ICCV 2021). BEYOND THE SEEDS (G27): no seed names it.

    As the authors' ``AsymmetricLoss.forward`` (Alibaba-MIIL/ASL ``src/loss_functions/losses.py``), per element:
    ``p_m = max(p - clip, 0)`` (the probability margin: easy negatives with p < clip are discarded),
    ``1 - p_t = y (1 - p) + (1 - y) p_m`` and
    ``L = -[y log p + (1 - y) log(1 - p_m)] * (1 - p_t) ** (gamma_pos y + gamma_neg (1 - y))``,
    which for soft labels (MixUp/CutMix, label smoothing) mixes the EXPONENT, one focusing weight for both
    terms. Differences from their code: the mean over elements instead of the sum (a constant factor), exact
    log-sigmoid instead of ``log(clamp(p, 1e-8))``. Their ``AsymmetricLoss`` detaches the focusing weight from
    the gradient (``disable_torch_grad_focal_loss=True``); CheXFusion's ASL and their own
    ``AsymmetricLossOptimized`` do not, and neither does cxrlt unless ``detach_focusing=True``.
    """

    def __init__(self, *, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, prevalence=None,
                 detach_focusing: bool = False, **kwargs):
        super().__init__(**kwargs)
        if float(gamma_neg) < 0 or float(gamma_pos) < 0:
            raise ValueError(f"asl: gammas must be >= 0, got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}")
        if not 0.0 <= float(clip) < 1.0:
            raise ValueError(f"asl: clip must be in [0, 1), got {clip}")
        self.gamma_neg, self.gamma_pos, self.clip = float(gamma_neg), float(gamma_pos), float(clip)
        self.detach_focusing = bool(detach_focusing)
        # CheXFusion's class weighting (class_weighting: chexfusion): y exp(1 - p) + (1 - y) exp(p)
        self.prevalence = _vector(prevalence)

    def elementwise(self, y_true, logits):
        y = _smooth(y_true, self.label_smoothing)
        p = ops.sigmoid(logits)
        log_p = -ops.softplus(-logits)
        if self.clip > 0:
            p_m = ops.maximum(p - self.clip, 0.0)
            log_not_pm = ops.log(ops.minimum(ops.sigmoid(-logits) + self.clip, 1.0))  # 1 - p_m >= clip: finite
        else:
            p_m, log_not_pm = p, -ops.softplus(logits)
        values = -(y * log_p + (1.0 - y) * log_not_pm)
        if self.prevalence is not None:
            prev = ops.convert_to_tensor(np.asarray(self.prevalence, np.float32))
            values = values * (y * ops.exp(1.0 - prev) + (1.0 - y) * ops.exp(prev))
        if self.gamma_neg or self.gamma_pos:
            one_minus_pt = y * (1.0 - p) + (1.0 - y) * p_m
            weight = ops.power(ops.maximum(one_minus_pt, _TINY), self.gamma_pos * y + self.gamma_neg * (1.0 - y))
            values = values * (ops.stop_gradient(weight) if self.detach_focusing else weight)
        return values

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma_neg": self.gamma_neg, "gamma_pos": self.gamma_pos, "clip": self.clip,
                "prevalence": self.prevalence, "detach_focusing": self.detach_focusing}


@keras.saving.register_keras_serializable(package="cxrlt")
class LogitAdjustedBCE(MultiLabelLoss):
    """Logit-adjusted (balanced) BCE (Menon et al., ICLR 2021). BEYOND THE SEEDS (G27).

    Training adds ``tau * log(prior_c / (1 - prior_c))`` to the logits before BCE, so the raw model
    logit estimates the class-balanced log-odds: rare classes get pushed up at inference (which uses
    the raw logits, unchanged). Per-class AP/AUC are unaffected by a per-class shift, but thresholded
    metrics (mF1 at 0.5) change and probabilities are no longer calibrated to the prevalence.
    ``log_prior_odds`` (length C) is the smoothed prior's log-odds (:func:`prior`).
    """

    def __init__(self, *, log_prior_odds, tau: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.log_prior_odds = _vector(log_prior_odds)
        self.tau = float(tau)

    def elementwise(self, y_true, logits):
        y = _smooth(y_true, self.label_smoothing)
        shift = ops.convert_to_tensor(np.asarray(self.log_prior_odds, np.float32) * np.float32(self.tau))
        return _bce(y, logits + shift)

    def get_config(self) -> dict:
        return {**super().get_config(), "log_prior_odds": self.log_prior_odds, "tau": self.tau}


def ldam_margins(class_counts, max_margin: float = 0.5) -> np.ndarray:
    """LDAM margins (Cao et al., NeurIPS 2019): ``Delta_j = C / n_j ** (1/4)`` with C such that the
    largest margin (the rarest class) is ``max_margin``; counts are floored at 1."""
    if not float(max_margin) >= 0:
        raise ValueError(f"ldam: max_margin must be >= 0, got {max_margin}")
    counts = np.maximum(_counts(class_counts, "ldam"), 1.0)
    m = counts ** -0.25
    return m * (float(max_margin) / m.max())


def ldam_negative_margins(class_counts, n_images, max_margin: float = 0.5) -> np.ndarray:
    """The margins of the negative side of each binary problem: ``C / (N - n_j) ** (1/4)`` with the positives'
    constant C (:func:`ldam_margins`), counts floored at 1. cxrlt's construction (``negative_margin: true``):
    LDAM's rule applied to both classes of the one-vs-rest problem, so frequent classes, whose negatives are
    few, get the larger negative margins; the authors' softmax loss has no negatives to give one to."""
    counts = np.maximum(_counts(class_counts, "ldam"), 1.0)
    n = _n_images(n_images, counts, "ldam negative_margin")
    c = float(max_margin) / (counts ** -0.25).max()
    return c * np.maximum(n - counts, 1.0) ** -0.25


LDAM_DEFAULT_SCALE = 30.0  # Cao et al.'s s (kaidic/LDAM-DRW cifar_train.py: LDAMLoss(..., s=30))
DRW_SHARE = 0.8            # DRW from 80 % of the epochs on (their 160 of 200)


def ldam_scale(params: dict) -> float:
    """LDAM's logit scale of a loss.params mapping: ``scale``, or its old name ``s``, else 30 (the authors')."""
    if "scale" in params and "s" in params:
        raise ValueError("ldam: give loss.params.scale or its old name s, not both")
    value = params.get("scale", params.get("s", LDAM_DEFAULT_SCALE))
    if value is None or isinstance(value, bool) or not float(value) > 0:
        raise ValueError(f"ldam: scale must be > 0, got {value!r}")
    return float(value)


def resolve_drw_epoch(drw_epoch, epochs) -> int | None:
    """``"auto"``: floor(0.8 x epochs) (the authors' 160 of 200), else the value as given (null = never)."""
    if drw_epoch != "auto":
        return drw_epoch
    if epochs is None:
        raise ValueError("ldam: drw_epoch 'auto' (80 % of the epochs) needs the number of epochs; give drw_epoch")
    return int(DRW_SHARE * int(epochs))


class EpochAwareLoss(MultiLabelLoss):
    """A loss with a part switched on at a given epoch (``set_epoch``, called by the trainer's callback).

    The switch is a non-trainable variable read inside the loss, so a traced train step sees the new
    value without retracing; it holds no state of its own beyond the epoch, so a resumed fold that calls
    ``set_epoch(start_epoch)`` is exactly where an uninterrupted one is.
    """

    def __init__(self, *, switch_epoch: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if switch_epoch is not None and (isinstance(switch_epoch, bool) or int(switch_epoch) != switch_epoch
                                         or switch_epoch < 0):
            raise ValueError(f"{type(self).__name__}: the switch epoch must be null or an integer >= 0, got {switch_epoch}")
        self.switch_epoch = None if switch_epoch is None else int(switch_epoch)
        # made here, eagerly (inside the strategy scope when the trainer builds the loss), never inside a traced step
        self.switch = None if self.switch_epoch is None else keras.Variable(
            0.0, trainable=False, dtype="float32", name="loss_epoch_switch")

    def set_epoch(self, epoch: int) -> bool:
        """Before epoch ``epoch`` (0-based) trains: on from ``switch_epoch`` on. Returns whether it is on."""
        if self.switch is None:
            return False
        on = int(epoch) >= self.switch_epoch
        self.switch.assign(1.0 if on else 0.0)
        return on


@keras.saving.register_keras_serializable(package="cxrlt")
class LDAMLoss(EpochAwareLoss):
    """LDAM with deferred re-weighting (Cao et al., NeurIPS 2019), multi-label binary form. BEYOND THE SEEDS.

    As the authors' ``LDAMLoss`` (kaidic/LDAM-DRW ``losses.py``: ``cross_entropy(s * where(target, x - m, x))``)
    with each class a binary problem: the label-distribution-aware margin ``Delta_j`` (:func:`ldam_margins`,
    proportional to ``n_j^-1/4``) is subtracted from the logit of a positive label, the result is multiplied by
    ``scale`` (s = 30) and scored with BCE: ``BCE(y_smoothed, s * (z - y * Delta))`` (soft labels move the
    margin linearly). Their model's logits are cosines (``NormedLinear``), which model.classifier auto gives
    with LDAM (cxrlt.model.heads.CosineDense); on raw logits use scale 1. ``negative_margin=True`` also adds
    the negatives' margin (:func:`ldam_negative_margins`): ``s * (z - y Delta + (1 - y) Delta_neg)``.

    DRW: from epoch ``drw_epoch`` (0-based; null = never) every element of class j is multiplied by the
    effective-number weight ``(1 - beta) / (1 - beta^n_j)``, normalised to sum to C (Cao et al.: beta 0.9999,
    the switch at 80% of training, 160 of 200 epochs).
    """

    def __init__(self, *, margins, drw_weights, scale: float = LDAM_DEFAULT_SCALE, drw_epoch: int | None = None,
                 negative_margins=None, s: float | None = None, **kwargs):
        super().__init__(switch_epoch=drw_epoch, **kwargs)
        scale = scale if s is None else s  # s: the name of saved configs before scale
        if not float(scale) > 0:
            raise ValueError(f"ldam: scale must be > 0, got {scale}")
        self.margins, self.drw_weights, self.scale = _vector(margins), _vector(drw_weights), float(scale)
        self.negative_margins = _vector(negative_margins)
        self.drw_epoch = self.switch_epoch

    @property
    def s(self) -> float:
        return self.scale

    def elementwise(self, y_true, logits):
        y = _smooth(y_true, self.label_smoothing)
        margin = ops.convert_to_tensor(np.asarray(self.margins, np.float32))
        shifted = logits - y_true * margin
        if self.negative_margins is not None:
            shifted = shifted + (1.0 - y_true) * ops.convert_to_tensor(np.asarray(self.negative_margins, np.float32))
        values = _bce(y, self.scale * shifted)
        if self.drw_epoch is None:
            return values
        w = ops.convert_to_tensor(np.asarray(self.drw_weights, np.float32))
        on = ops.convert_to_tensor(self.switch)
        return values * (1.0 + on * (w - 1.0))

    def get_config(self) -> dict:
        return {**super().get_config(), "margins": self.margins, "drw_weights": self.drw_weights,
                "scale": self.scale, "drw_epoch": self.drw_epoch, "negative_margins": self.negative_margins}


def db_bias(class_counts, n_images, init_bias: float = 0.05, neg_scale: float = 2.0) -> np.ndarray:
    """Distribution-balanced loss's class-specific logit bias (Wu et al. 2020, their code's ``init_bias``):
    ``-kappa * log(N / n_j - 1) / lambda`` = ``kappa / lambda * log(n_j / (N - n_j))``, added to the logits.
    Counts are clipped to [1, N - 1] (a class without positives, or without negatives, stays finite)."""
    counts = _counts(class_counts, "distribution_balanced")
    n = _n_images(n_images, counts, "distribution_balanced")
    c = np.clip(counts, 1.0, max(n - 1.0, 1.0))
    return -np.log(n / c - 1.0 + 1e-12) * float(init_bias) / float(neg_scale)


@keras.saving.register_keras_serializable(package="cxrlt")
class DistributionBalancedLoss(MultiLabelLoss):
    """Distribution-balanced loss (Wu et al., ECCV 2020). BEYOND THE SEEDS.

    Re-balanced weighting: for image k and class i, ``r_ki = (1 / n_i) / sum_{j positive in k} (1 / n_j)``
    (the class-level over the instance-level sampling frequency; soft labels weight the sum), smoothed
    ``r^_ki = alpha + sigmoid(beta (r_ki - mu))`` (paper: alpha 0.1, beta 10, mu 0.2); an image without
    positives gets ``alpha + 1``. It weights positives and negatives alike.

    Negative-tolerant regularisation: logits get the class-specific bias ``nu_i`` (:func:`db_bias`), then
    ``L = r^ [ y log(1 + e^-(z + nu)) + (1 - y) / lambda log(1 + e^(lambda (z + nu))) ]``
    (lambda = ``neg_scale``). Labels masked out by a [B, C] sample_weight are not among the image's positives.
    For soft labels this is the authors' code's form: the logit is scaled by
    ``lambda (1 - y) + y`` and the weight by ``(1 - y) / lambda + y``, then weighted BCE.

    ``focal=True`` (the authors' configs, wutong16/DistributionBalancedLoss ``configs/*/LT_resnet50_pfc_DB.py``:
    ``focal=dict(focal=True, balance_param=2.0, gamma=2)``) is their ``ResampleLoss`` focal branch:
    ``balance_param * (1 - p_t)^gamma * L`` with ``p_t = exp(-BCE)`` of the regularised logit, unweighted.
    ``focal=False`` is their plain form (no balance_param). cxrlt before the option had gamma 0 and no
    balance_param, so its gamma-2 value was half of theirs: the factor 2 is ``balance_param``.
    """

    def __init__(self, *, freq_inv, bias, alpha: float = 0.1, beta: float = 10.0, mu: float = 0.2,
                 neg_scale: float = 2.0, focal: bool = False, gamma: float = 0.0, balance_param: float = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        if not float(neg_scale) > 0 or float(gamma) < 0 or float(alpha) < 0 or float(balance_param) < 0:
            raise ValueError(f"distribution_balanced: neg_scale must be > 0, gamma, alpha and balance_param >= 0, got "
                             f"neg_scale={neg_scale}, gamma={gamma}, alpha={alpha}, balance_param={balance_param}")
        self.freq_inv, self.bias = _vector(freq_inv), _vector(bias)
        self.alpha, self.beta, self.mu = float(alpha), float(beta), float(mu)
        self.neg_scale, self.gamma = float(neg_scale), float(gamma)
        self.focal, self.balance_param = bool(focal), float(balance_param)

    def call_weighted(self, y_true, y_pred, sample_weight):
        """A [B, C] mask also hides masked labels from the image's positive set (the instance-level frequency)."""
        w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
        if len(w.shape) != 2:
            return self.call(y_true, y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        logits = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        values = self.elementwise(y_true, logits, present=ops.cast(w > 0, "float32"))
        if self.class_weight is not None:
            values = values * ops.convert_to_tensor(np.asarray(self.class_weight, np.float32))
        return values

    def rebalance_weight(self, y_true, present=None):
        inv = ops.convert_to_tensor(np.asarray(self.freq_inv, np.float32))
        known = y_true if present is None else y_true * present
        rate = ops.sum(known * inv, axis=-1, keepdims=True)
        safe = ops.where(rate > 0, rate, 1.0)
        r = inv / safe
        smoothed = self.alpha + ops.sigmoid(self.beta * (r - self.mu))
        return ops.where(rate > 0, smoothed, self.alpha + 1.0)

    def elementwise(self, y_true, logits, present=None):
        y = _smooth(y_true, self.label_smoothing)
        weight = self.rebalance_weight(y_true, present)
        z = logits + ops.convert_to_tensor(np.asarray(self.bias, np.float32))
        lam = self.neg_scale
        z = z * (lam * (1.0 - y) + y)
        weight = weight * ((1.0 - y) / lam + y)
        values = _bce(y, z)
        if self.focal:
            p_t = ops.exp(-values)  # as their code: exp(-BCE) of the regularised logit, without the weight
            values = self.balance_param * ops.power(ops.maximum(1.0 - p_t, _TINY), self.gamma) * values
        return weight * values

    def get_config(self) -> dict:
        return {**super().get_config(), "freq_inv": self.freq_inv, "bias": self.bias, "alpha": self.alpha,
                "beta": self.beta, "mu": self.mu, "neg_scale": self.neg_scale, "focal": self.focal,
                "gamma": self.gamma, "balance_param": self.balance_param}


def winner_db_vectors(class_counts, beta: float = 0.9999, max_margin: float = 0.2, margin_scale: float = 1.0):
    """(effective-number weights normalised to mean 1, per-class margins) of the CXR-LT 2026 winner's loss, as
    their ``DistributionBalancedLoss.__init__``: counts clipped at 1, ``w = (1 - b) / (1 - b^n) / mean``,
    margins ``max_margin * margin_scale * minmax(1 / (w + 1e-6))`` (the frequent classes get the largest)."""
    counts = np.maximum(_counts(class_counts, "cxrlt2026_db"), 1.0)
    w = (1.0 - beta) / (1.0 - np.power(beta, counts))
    w = w / w.mean()
    inv = 1.0 / (w + 1e-6)
    inv = (inv - inv.min()) / (inv.max() - inv.min() + 1e-6)
    return w, float(max_margin) * inv * float(margin_scale)


@keras.saving.register_keras_serializable(package="cxrlt")
class WinnerDBLoss(MultiLabelLoss):
    """The loss the CXR-LT 2026 task-1 winner's stage-2 code calls DistributionBalancedLoss (hieuphamha19/CXR_LT,
    ``Task1_Long_tailed/train_csra_head.py``); it is not Wu et al.'s (see ``distribution_balanced``).

    With ``w_c`` and ``m_c`` from :func:`winner_db_vectors`: ``z' = z - y m`` (a margin on the positives),
    ``L = BCE(y, z') * w ** rebalance_alpha``; when ``neg_scale != 1`` or ``neg_margin != 0`` the loss is
    ``y * L + neg_scale * (1 - y) * BCE(y, z' + neg_margin)`` instead (their "negative-tolerant" branch, whose
    negatives are not re-weighted). Their defaults: beta 0.9999, rebalance_alpha 0.5, neg_scale 1, neg_margin 0,
    margin_scale 1, max_margin 0.2; the mean over elements, as theirs.
    """

    def __init__(self, *, class_weights, margins, rebalance_alpha: float = 0.5, neg_scale: float = 1.0,
                 neg_margin: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.class_weights, self.margins = _vector(class_weights), _vector(margins)
        self.rebalance_alpha, self.neg_scale, self.neg_margin = float(rebalance_alpha), float(neg_scale), float(neg_margin)

    def elementwise(self, y_true, logits):
        y = _smooth(y_true, self.label_smoothing)
        shifted = logits - y * ops.convert_to_tensor(np.asarray(self.margins, np.float32))
        w = ops.convert_to_tensor(np.power(np.asarray(self.class_weights, np.float64), self.rebalance_alpha)
                                  .astype(np.float32))
        weighted = _bce(y, shifted) * w
        if self.neg_scale == 1.0 and self.neg_margin == 0.0:
            return weighted
        negatives = _bce(y, shifted + self.neg_margin) * (1.0 - y) * self.neg_scale
        return weighted * y + negatives

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights, "margins": self.margins,
                "rebalance_alpha": self.rebalance_alpha, "neg_scale": self.neg_scale, "neg_margin": self.neg_margin}


# ----------------------------------------------------------------------------- registry

_COMMON = {"reduction": "masked_mean", "name": None}


def _check_length(vector, class_counts, what):
    if class_counts is not None and vector is not None and len(vector) != len(np.asarray(class_counts).reshape(-1)):
        raise ValueError(f"{what}: has {len(vector)} values but class_counts has {len(class_counts)} classes")


def _focal(p, class_counts, n_images):
    alpha = p["alpha"]
    if isinstance(alpha, str):
        if alpha != "inverse_frequency":
            raise ValueError(f"focal: alpha must be a float, a list of per-class floats or 'inverse_frequency', "
                             f"got {alpha!r}")
        alpha = inverse_frequency_alpha(class_counts, n_images)
    elif np.ndim(alpha) == 1:
        _check_length(alpha, class_counts, "focal alpha")
    return BinaryFocalCrossentropy(**{**p, "alpha": alpha})


def _weighted_bce(p, class_counts, n_images):
    p = dict(p)
    weights = positive_weights(class_counts, n_images, power=p.pop("power"), max_weight=p.pop("max_weight"))
    return BinaryCrossentropy(pos_weight=weights, **p)


def _class_balanced(p, class_counts, n_images):
    p = dict(p)
    weights = class_balanced_weights(class_counts, p.pop("beta"))
    base = p.pop("base")
    if base == "bce":
        extra = {k: v for k, v in p.items() if k in ("gamma", "alpha", "apply_class_balancing") and v is not None}
        if extra:
            raise ValueError(f"class_balanced with base='bce' takes no focal parameters, got {sorted(extra)}")
        keep = {k: v for k, v in p.items() if k not in ("gamma", "alpha", "apply_class_balancing")}
        return BinaryCrossentropy(class_weight=weights, **keep)
    if base == "focal":
        focal = {"gamma": 2.0, "alpha": 0.25, "apply_class_balancing": False}
        focal.update({k: v for k, v in p.items() if v is not None})
        return BinaryFocalCrossentropy(class_weight=weights, **focal)
    raise ValueError(f"class_balanced: base must be 'bce' or 'focal', got {base!r}")


def prevalence(class_counts, n_images) -> np.ndarray:
    """Raw per-class prevalence n_c / N (CheXFusion's p in its exp(1 - p) / exp(p) class weights)."""
    counts = _counts(class_counts, "asl class_weighting")
    return counts / _n_images(n_images, counts, "asl class_weighting")


def _asl(p, class_counts, n_images):
    p = dict(p)
    weighting = p.pop("class_weighting")
    if weighting not in ("none", "chexfusion", None):
        raise ValueError(f"asl: class_weighting must be 'none' or 'chexfusion', got {weighting!r}")
    prev = prevalence(class_counts, n_images) if weighting == "chexfusion" else None
    return AsymmetricLoss(prevalence=prev, **p)


def _ldam(p, class_counts, n_images, epochs=None):
    p = dict(p)
    scale = ldam_scale(p)
    p.pop("s", None)
    p["scale"] = scale
    max_margin = p.pop("max_margin")
    margins = ldam_margins(class_counts, max_margin)
    negative = ldam_negative_margins(class_counts, n_images, max_margin) if p.pop("negative_margin") else None
    beta = p.pop("drw_beta")
    p["drw_epoch"] = resolve_drw_epoch(p["drw_epoch"], epochs)
    return LDAMLoss(margins=margins, drw_weights=class_balanced_weights(class_counts, beta), negative_margins=negative,
                    **p)


def _distribution_balanced(p, class_counts, n_images):
    p = dict(p)
    counts = np.maximum(_counts(class_counts, "distribution_balanced"), 1.0)
    bias = db_bias(class_counts, n_images, p.pop("init_bias"), p["neg_scale"])
    return DistributionBalancedLoss(freq_inv=1.0 / counts, bias=bias, **p)


def _winner_db(p, class_counts, n_images):
    p = dict(p)
    weights, margins = winner_db_vectors(class_counts, p.pop("beta"), p.pop("max_margin"), p.pop("margin_scale"))
    return WinnerDBLoss(class_weights=weights, margins=margins, **p)


# name -> (parameter defaults, builder(params, class_counts, n_images))
LOSSES: dict[str, tuple[dict[str, Any], Callable]] = {
    "focal": ({"alpha": 0.25, "gamma": 2.0, "apply_class_balancing": True, "label_smoothing": 0.01}, _focal),
    "bce": ({"label_smoothing": 0.0}, lambda p, c, n: BinaryCrossentropy(**p)),
    "weighted_bce": ({"power": 1.0, "max_weight": None, "label_smoothing": 0.0}, _weighted_bce),
    "class_balanced": (
        # focal parameters left at None take the focal base's defaults (gamma 2, alpha 0.25, no alpha balancing)
        {"beta": 0.999, "base": "focal", "gamma": None, "alpha": None, "apply_class_balancing": None,
         "label_smoothing": 0.0},
        _class_balanced,
    ),
    "asl": ({"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "label_smoothing": 0.0, "class_weighting": "none",
             "detach_focusing": False}, _asl),
    # drw_epoch "auto": 80 % of the epochs (get_loss's `epochs`); scale 30 with the cosine classifier (the authors')
    "ldam": ({"max_margin": 0.5, "scale": LDAM_DEFAULT_SCALE, "drw_epoch": "auto", "drw_beta": 0.9999,
              "negative_margin": False, "label_smoothing": 0.0}, _ldam),
    "distribution_balanced": (  # the authors' COCO and VOC configs (focal, gamma 2, balance_param 2)
        {"alpha": 0.1, "beta": 10.0, "mu": 0.2, "neg_scale": 2.0, "init_bias": 0.05, "focal": True, "gamma": 2.0,
         "balance_param": 2.0, "label_smoothing": 0.0},
        _distribution_balanced,
    ),
    "cxrlt2026_db": (  # the CXR-LT 2026 winner's train_csra_head.py constants (DB_*)
        {"beta": 0.9999, "rebalance_alpha": 0.5, "neg_scale": 1.0, "neg_margin": 0.0, "margin_scale": 1.0,
         "max_margin": 0.2, "label_smoothing": 0.0},
        _winner_db,
    ),
    "logit_adjusted": (
        {"tau": 1.0, "label_smoothing": 0.0},
        lambda p, c, n: LogitAdjustedBCE(log_prior_odds=np.log(prior(c, n) / (1.0 - prior(c, n))), **p),
    ),
}


def loss_names() -> list[str]:
    return sorted(LOSSES)


def get_loss(name: str, *, class_counts=None, n_images=None, epochs=None, **params) -> keras.losses.Loss:
    """Build the loss ``name`` with ``params`` over its defaults (see the module docstring).

    ``class_counts`` (positives per class in the training fold) and ``n_images`` (training images)
    are used by the losses that need them and ignored by the others; ``epochs`` (the run's train.epochs)
    resolves LDAM's ``drw_epoch: auto``.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(loss_names())}")
    defaults, build = LOSSES[name]
    allowed = {**defaults, **_COMMON, **({"s": None} if name == "ldam" else {})}  # ldam's s: scale's old name
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss {name!r} got unknown parameter(s) {unknown}; it takes {sorted(allowed)}")
    merged = {**defaults, **params}
    if name == "ldam" and "s" in params:
        if "scale" in params:
            raise ValueError("ldam: give loss.params.scale or its old name s, not both")
        merged.pop("scale")
    if params.get("name") is None:
        merged.pop("name", None)
    return build(merged, class_counts, n_images, epochs) if name == "ldam" else build(merged, class_counts, n_images)
