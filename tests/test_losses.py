"""cxrlt.losses against NumPy references written here (float64, straight from the papers' formulas and, where a
method's official code exists, from that code: Alibaba-MIIL/ASL, dongkyunk/CheXFusion, kaidic/LDAM-DRW,
wutong16/DistributionBalancedLoss, hieuphamha19/CXR_LT)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxrlt.model import losses

B, C = 16, 26
N_IMAGES = 5000


# ----------------------------------------------------------------------------- NumPy references

def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def smooth(y, eps):
    return y * (1.0 - eps) + 0.5 * eps


def ref_bce(y, z, eps=0.0, pos_weight=1.0):
    """-(w y log p + (1 - y) log(1 - p)), with log p = -softplus(-z) (LDAM's scale 30 puts logits at +-300)."""
    y = smooth(y, eps)
    return pos_weight * y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z)


def ref_focal(y, z, alpha=0.25, gamma=2.0, apply_class_balancing=True, eps=0.0):
    y, p = smooth(y, eps), sig(z)
    bce = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    p_t = y * p + (1.0 - y) * (1.0 - p)
    out = (1.0 - p_t) ** gamma * bce
    if apply_class_balancing:
        out = (alpha * y + (1.0 - alpha) * (1.0 - y)) * out
    return out


def ref_asl_ridnik(y, z, gamma_neg=4.0, gamma_pos=0.0, clip=0.05):
    """The authors' code per element (AsymmetricLoss.forward, Alibaba-MIIL/ASL src/loss_functions/losses.py), soft
    labels as it treats them: one focusing weight, its exponent gamma_pos * y + gamma_neg * (1 - y)."""
    xs_pos = sig(z)
    xs_neg = 1.0 - xs_pos
    if clip > 0:
        xs_neg = np.minimum(xs_neg + clip, 1.0)
    loss = y * np.log(np.maximum(xs_pos, 1e-8)) + (1 - y) * np.log(np.maximum(xs_neg, 1e-8))
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        gamma = gamma_pos * y + gamma_neg * (1 - y)
        loss = loss * (1.0 - pt) ** gamma
    return -loss


def ref_asl(y, z, gamma_neg=4.0, gamma_pos=0.0, clip=0.05):
    return ref_asl_ridnik(y, z, gamma_neg, gamma_pos, clip)


def ref_asl_chexfusion(y, z, prev, gamma_neg=4.0, gamma_pos=1.0, clip=0.05):
    """CheXFusion's ASLwithClassWeight.forward (dongkyunk/CheXFusion model/loss.py) per element: the CE terms times
    label * exp(1 - p) + (1 - label) * exp(p) (p = n_c / N), times the one-sided focusing weight."""
    weight = y * np.exp(1.0 - prev) + (1 - y) * np.exp(prev)
    xs_pos = sig(z)
    xs_neg = np.minimum(1.0 - xs_pos + clip, 1.0)
    loss = (y * np.log(np.maximum(xs_pos, 1e-8)) + (1 - y) * np.log(np.maximum(xs_neg, 1e-8))) * weight
    pt = xs_pos * y + xs_neg * (1 - y)
    return -loss * (1.0 - pt) ** (gamma_pos * y + gamma_neg * (1 - y))


def ref_ldam_margins(counts, max_m=0.5):
    """Cao et al. 2019, eq. 12 and their code: Delta_j = C / n_j^(1/4), C so that the largest margin is max_m."""
    m = 1.0 / np.sqrt(np.sqrt(np.maximum(counts, 1)))
    return m * (max_m / m.max())


def ref_ldam(y, z, counts, max_m=0.5, s=30.0, eps=0.0, drw=None, negative=None):
    """The authors' LDAMLoss.forward (kaidic/LDAM-DRW losses.py: cross_entropy(s * where(target, x - m, x))) with each
    class a binary problem: the positive logit loses its margin, times s, through BCE; `negative` (per class) is
    added to the negatives' logits; DRW multiplies class j by its effective-number weight (Cao et al., Alg. 1)."""
    shifted = z - y * ref_ldam_margins(counts, max_m)
    if negative is not None:
        shifted = shifted + (1.0 - y) * negative
    out = ref_bce(y, s * shifted, eps)
    return out if drw is None else out * drw


def ref_winner_db(y, z, counts, beta=0.9999, rebalance_alpha=0.5, neg_scale=1.0, neg_margin=0.0, margin_scale=1.0,
                  max_margin=0.2):
    """The CXR-LT 2026 winner's DistributionBalancedLoss (hieuphamha19/CXR_LT train_csra_head.py), per element."""
    cls_counts = np.clip(np.asarray(counts, np.float64), 1.0, None)
    eff = (1.0 - beta) / (1.0 - np.power(beta, cls_counts))
    eff = eff / eff.mean()
    inv = 1.0 / (eff + 1e-6)
    inv = (inv - inv.min()) / (inv.max() - inv.min() + 1e-6)
    margin = max_margin * inv * margin_scale
    logits_adj = z - y * margin
    bce = ref_bce(y, logits_adj) * np.power(eff, rebalance_alpha)[None, :]
    if neg_scale != 1.0 or neg_margin != 0.0:
        neg_loss = ref_bce(y, logits_adj + neg_margin) * (1.0 - y) * neg_scale
        return bce * y + neg_loss
    return bce


def ref_db_paper(y, z, counts, n, alpha=0.1, beta=10.0, mu=0.2, lam=2.0, kappa=0.05):
    """Wu et al. 2020 for 0/1 labels, eqs. 4-5 (re-balanced weight, smoothed) and 8 (negative-tolerant
    regularisation), with nu = their code's init bias, -kappa * log(N / n_i - 1) / lam, added to the logit."""
    n_c = np.clip(np.maximum(counts, 1), 1, n - 1)
    p_c = 1.0 / np.maximum(counts, 1)                        # class-level sampling frequency (x 1/C)
    p_i = (y * p_c).sum(axis=1, keepdims=True)               # instance-level: sum over its positive classes
    r = p_c / p_i
    r_hat = alpha + 1.0 / (1.0 + np.exp(-beta * (r - mu)))
    nu = -np.log(n / n_c - 1.0) * kappa / lam
    zz = z + nu
    pos = np.log1p(np.exp(-zz))
    neg = np.log1p(np.exp(lam * zz)) / lam
    return r_hat * (y * pos + (1.0 - y) * neg)


def ref_db_code(y, z, counts, n, alpha=0.1, beta=10.0, mu=0.2, lam=2.0, kappa=0.05, gamma=0.0, present=None,
                focal=False, balance=2.0):
    """The authors' ResampleLoss (rebalance + logit_reg [+ focal]) per element, soft labels as their code treats them
    (wutong16/DistributionBalancedLoss mllt/models/losses/resample_loss.py); the focal branch: logpt = -BCE(score)
    unweighted, loss = balance_param * (1 - exp(logpt)) ** gamma * weighted BCE. `present` (a 0/1 mask) leaves
    masked labels out of the image's positives."""
    freq_inv = 1.0 / np.maximum(counts, 1)
    rate = (y * (1.0 if present is None else present) * freq_inv).sum(axis=1, keepdims=True)
    weight = 1.0 / (1.0 + np.exp(-beta * (freq_inv / rate - mu))) + alpha
    n_c = np.clip(np.maximum(counts, 1), 1, n - 1)
    zz = (z - np.log(n / n_c - 1.0) * kappa / lam)
    zz = zz * (1 - y) * lam + zz * y
    weight = weight / lam * (1 - y) + weight * y
    bce = -(y * np.log(sig(zz)) + (1.0 - y) * np.log(1.0 - sig(zz)))
    if focal:
        return balance * (1.0 - np.exp(-bce)) ** gamma * (weight * bce)
    return weight * bce


def ref_prior(counts, n):
    return (counts + 1.0) / (n + 2.0)


def ref_cb_weights(counts, beta):
    n = np.maximum(counts, 1)
    w = (1.0 - beta) / (1.0 - beta ** n)
    return w * len(w) / w.sum()


def reduce_ref(values, weight=None):
    """Mean over unmasked elements: sum(l * w) / sum(w), w broadcast to [B, C]."""
    if weight is None:
        return values.mean()
    w = np.broadcast_to(weight if weight.ndim == 2 else weight[:, None], values.shape)
    return (values * w).sum() / w.sum()


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 3.0, (B, C)).astype(np.float32)
    y = rng.uniform(0.0, 1.0, (B, C)).astype(np.float32)
    y[: B // 2] = (y[: B // 2] > 0.7).astype(np.float32)  # half hard labels, half soft (mixed)
    counts = rng.integers(1, 2000, C).astype(np.float64)
    counts[3] = 0  # a class without positives in the fold
    mask = (rng.uniform(size=(B, C)) > 0.3).astype(np.float32)
    per_image = rng.uniform(0.2, 2.0, B).astype(np.float32)
    return dict(z=z, y=y, counts=counts, mask=mask, per_image=per_image)


def cases(counts):
    """(name, params, reference(y, z) -> [B, C])"""
    pw = (np.maximum(N_IMAGES - counts, 1) / np.maximum(counts, 1))
    prior = ref_prior(counts, N_IMAGES)
    alpha_inv = 1.0 - prior
    cb = ref_cb_weights(counts, 0.999)
    cb99 = ref_cb_weights(counts, 0.99)
    alpha_list = np.linspace(0.1, 0.9, C)
    return [
        ("focal", {}, lambda y, z: ref_focal(y, z, 0.25, 2.0, True, 0.01)),
        ("focal", {"gamma": 0.0, "apply_class_balancing": False, "label_smoothing": 0.0}, lambda y, z: ref_bce(y, z)),
        ("focal", {"alpha": 0.6, "gamma": 1.5, "label_smoothing": 0.1}, lambda y, z: ref_focal(y, z, 0.6, 1.5, True, 0.1)),
        ("focal", {"alpha": "inverse_frequency"}, lambda y, z: ref_focal(y, z, alpha_inv, 2.0, True, 0.01)),
        ("focal", {"alpha": alpha_list.tolist()}, lambda y, z: ref_focal(y, z, alpha_list, 2.0, True, 0.01)),
        ("bce", {}, lambda y, z: ref_bce(y, z)),
        ("bce", {"label_smoothing": 0.05}, lambda y, z: ref_bce(y, z, 0.05)),
        ("weighted_bce", {}, lambda y, z: ref_bce(y, z, 0.0, pw)),
        ("weighted_bce", {"power": 0.5, "max_weight": 5.0}, lambda y, z: ref_bce(y, z, 0.0, np.minimum(pw ** 0.5, 5.0))),
        ("class_balanced", {}, lambda y, z: cb * ref_focal(y, z, 0.25, 2.0, False)),
        ("class_balanced", {"base": "bce", "beta": 0.99}, lambda y, z: cb99 * ref_bce(y, z)),
        ("class_balanced", {"gamma": 1.0, "apply_class_balancing": True, "alpha": 0.3},
         lambda y, z: cb * ref_focal(y, z, 0.3, 1.0, True)),
        ("asl", {}, lambda y, z: ref_asl(y, z)),
        ("asl", {"gamma_pos": 1.0, "clip": 0.0}, lambda y, z: ref_asl(y, z, 4.0, 1.0, 0.0)),
        ("asl", {"gamma_neg": 2.0, "clip": 0.1}, lambda y, z: ref_asl(y, z, 2.0, 0.0, 0.1)),
        ("asl", {"gamma_neg": 0.0, "gamma_pos": 0.0, "clip": 0.05}, lambda y, z: ref_asl(y, z, 0.0, 0.0, 0.05)),
        ("asl", {"class_weighting": "chexfusion", "gamma_pos": 1.0},
         lambda y, z: ref_asl_chexfusion(y, z, counts / N_IMAGES)),
        ("asl", {"detach_focusing": True, "gamma_pos": 1.0}, lambda y, z: ref_asl(y, z, 4.0, 1.0)),
        ("ldam", {}, lambda y, z: ref_ldam(y, z, counts)),  # drw_epoch auto: 8 of 10 epochs, not yet on
        ("ldam", {"max_margin": 1.0, "s": 2.0, "label_smoothing": 0.05},
         lambda y, z: ref_ldam(y, z, counts, 1.0, 2.0, 0.05)),
        ("ldam", {"drw_epoch": 3, "scale": 1.0}, lambda y, z: ref_ldam(y, z, counts, s=1.0)),  # before epoch 3: no DRW
        ("ldam", {"negative_margin": True}, lambda y, z: ref_ldam(
            y, z, counts, negative=0.5 / (np.maximum(counts, 1) ** -0.25).max() * np.maximum(N_IMAGES - counts, 1) ** -0.25)),
        ("distribution_balanced", {}, lambda y, z, present=None: ref_db_code(y, z, counts, N_IMAGES, present=present,
                                                                             focal=True, gamma=2.0, balance=2.0)),
        ("distribution_balanced", {"focal": False},
         lambda y, z, present=None: ref_db_code(y, z, counts, N_IMAGES, present=present)),
        ("distribution_balanced", {"neg_scale": 5.0, "init_bias": 0.1, "alpha": 0.2, "gamma": 1.0, "balance_param": 3.0},
         lambda y, z, present=None: ref_db_code(y, z, counts, N_IMAGES, alpha=0.2, lam=5.0, kappa=0.1, gamma=1.0,
                                                present=present, focal=True, balance=3.0)),
        ("cxrlt2026_db", {}, lambda y, z: ref_winner_db(y, z, counts)),
        ("cxrlt2026_db", {"neg_scale": 0.5, "neg_margin": 0.3, "rebalance_alpha": 1.0, "max_margin": 0.4},
         lambda y, z: ref_winner_db(y, z, counts, neg_scale=0.5, neg_margin=0.3, rebalance_alpha=1.0, max_margin=0.4)),
        ("logit_adjusted", {}, lambda y, z: ref_bce(y, z + np.log(prior / (1 - prior)))),
        ("logit_adjusted", {"tau": 0.5, "label_smoothing": 0.02},
         lambda y, z: ref_bce(y, z + 0.5 * np.log(prior / (1 - prior)), 0.02)),
    ]


CASE_IDS = [f"{i}-{c[0]}" for i, c in enumerate(cases(np.ones(C)))]


EPOCHS = 10  # a run's train.epochs: LDAM's drw_epoch auto is epoch 8 (80 %)


def build(name, params, counts):
    return losses.get_loss(name, class_counts=counts, n_images=N_IMAGES, epochs=EPOCHS, **params)


# ----------------------------------------------------------------------------- equality with the references

@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_matches_numpy_reference_with_and_without_masks(data, case):
    name, params, ref = cases(data["counts"])[case]
    loss = build(name, params, data["counts"])
    y, z = data["y"], data["z"]
    elements = ref(y.astype(np.float64), z.astype(np.float64))
    masked = elements
    if name == "distribution_balanced":  # its weight depends on the image's other (unmasked) labels
        masked = ref(y.astype(np.float64), z.astype(np.float64), present=data["mask"].astype(np.float64))
    np.testing.assert_allclose(float(loss(y, z)), reduce_ref(elements), rtol=1e-5)
    np.testing.assert_allclose(float(loss(y, z, sample_weight=data["mask"])), reduce_ref(masked, data["mask"]), rtol=1e-5)
    np.testing.assert_allclose(float(loss(y, z, sample_weight=data["per_image"])),
                               reduce_ref(elements, data["per_image"]), rtol=1e-5)
    unreduced = build(name, {**params, "reduction": "none"}, data["counts"])(y, z, sample_weight=data["mask"])
    np.testing.assert_allclose(unreduced.numpy(), masked * data["mask"], rtol=1e-4, atol=1e-6)


def test_masking_ignores_the_masked_elements_entirely(data):
    """Changing labels/logits where the mask is 0 changes nothing; an all-masked batch gives 0, not NaN."""
    for name in losses.loss_names():
        loss = build(name, {}, data["counts"])
        y2, z2 = data["y"].copy(), data["z"].copy()
        off = data["mask"] == 0
        y2[off], z2[off] = 1.0 - y2[off], -50.0 * z2[off]
        a = float(loss(data["y"], data["z"], sample_weight=data["mask"]))
        b = float(loss(y2, z2, sample_weight=data["mask"]))
        assert a == pytest.approx(b, rel=1e-6), name
        assert float(loss(data["y"], data["z"], sample_weight=np.zeros((B, C), np.float32))) == 0.0, name


def test_sum_over_batch_size_and_sum_reductions(data):
    loss = build("bce", {"reduction": "sum_over_batch_size"}, data["counts"])
    elements = ref_bce(data["y"].astype(np.float64), data["z"].astype(np.float64))
    m = data["mask"]
    np.testing.assert_allclose(float(loss(data["y"], data["z"], sample_weight=m)), (elements * m).sum() / (B * C), rtol=1e-5)
    total = build("bce", {"reduction": "sum"}, data["counts"])(data["y"], data["z"], sample_weight=m)
    np.testing.assert_allclose(float(total), (elements * m).sum(), rtol=1e-5)


def test_asl_equals_the_authors_formula_on_hard_labels(data):
    y = (data["y"] > 0.5).astype(np.float32)
    for params in ({}, {"gamma_pos": 1.0}, {"clip": 0.0, "gamma_neg": 2.0}):
        loss = build("asl", {**params, "reduction": "none"}, data["counts"])
        ref = ref_asl_ridnik(y.astype(np.float64), data["z"].astype(np.float64),
                             params.get("gamma_neg", 4.0), params.get("gamma_pos", 0.0), params.get("clip", 0.05))
        np.testing.assert_allclose(loss(y, data["z"]).numpy(), ref, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- equality with Keras

def test_focal_defaults_equal_keras_binary_focal_crossentropy(data):
    ours = losses.get_loss("focal")
    keras_loss = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.25, gamma=2.0,
                                                      label_smoothing=0.01, from_logits=True)
    y, z = data["y"], data["z"]  # |z| < 15: inside Keras' 1e-7 probability clipping
    np.testing.assert_allclose(float(ours(y, z)), float(keras_loss(y, z)), rtol=1e-5)
    # per-image weights: Keras' sum_over_batch_size = ours with the same reduction
    sw = data["per_image"]
    ours_sobs = losses.get_loss("focal", reduction="sum_over_batch_size")
    np.testing.assert_allclose(float(ours_sobs(y, z, sample_weight=sw)), float(keras_loss(y, z, sample_weight=sw)), rtol=1e-5)


def test_bce_equals_keras_binary_crossentropy(data):
    for eps in (0.0, 0.1):
        ours = losses.get_loss("bce", label_smoothing=eps)
        theirs = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=eps)
        np.testing.assert_allclose(float(ours(data["y"], data["z"])), float(theirs(data["y"], data["z"])), rtol=1e-5)


# ----------------------------------------------------------------------------- numerics

@pytest.mark.parametrize("name", losses.loss_names())
def test_extreme_logits_give_finite_values_and_gradients(data, name):
    loss = build(name, {}, data["counts"])
    rng = np.random.default_rng(1)
    z = tf.constant(rng.choice([-100.0, 100.0, -1e4, 1e4, 0.0], (B, C)).astype(np.float32))
    for y in (data["y"], (data["y"] > 0.5).astype(np.float32)):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = loss(y, z, sample_weight=data["mask"])
        grad = tape.gradient(value, z)
        assert np.isfinite(float(value)), name
        assert np.isfinite(grad.numpy()).all(), name
    # confidently right -> about 0 (label smoothing off); confidently wrong -> large and finite
    y = (data["y"] > 0.5).astype(np.float32)
    right = build(name, {"label_smoothing": 0.0}, data["counts"])(y, 100.0 * (2 * y - 1))
    wrong = build(name, {"label_smoothing": 0.0}, data["counts"])(y, -100.0 * (2 * y - 1))
    assert float(right) < 1e-6 and 1.0 < float(wrong) < 1e5, (name, float(right), float(wrong))


@pytest.mark.parametrize("name", losses.loss_names())
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_logits_close_to_float32(data, name, dtype):
    loss = build(name, {}, data["counts"])
    low = tf.cast(data["z"], dtype)
    expected = float(loss(data["y"], tf.cast(low, tf.float32), sample_weight=data["mask"]))  # same rounded logits
    value = loss(data["y"], low, sample_weight=data["mask"])
    assert value.dtype == tf.float32
    assert float(value) == pytest.approx(expected, rel=1e-5)
    # and close to the float32 logits (bfloat16 keeps 8 bits of mantissa)
    assert float(value) == pytest.approx(float(loss(data["y"], data["z"], sample_weight=data["mask"])), rel=3e-2)


# ----------------------------------------------------------------------------- registry, statistics, config

def test_registry_errors():
    with pytest.raises(ValueError, match="asl, bce, class_balanced, cxrlt2026_db, distribution_balanced, focal, ldam, "
                                         "logit_adjusted, weighted_bce"):
        losses.get_loss("ldma")
    with pytest.raises(ValueError, match="class_counts"):
        losses.get_loss("ldam", drw_epoch=None)
    with pytest.raises(ValueError, match="needs the number of epochs"):
        losses.get_loss("ldam", class_counts=[1, 2])
    with pytest.raises(ValueError, match="scale or its old name s, not both"):
        losses.get_loss("ldam", class_counts=[1, 2], drw_epoch=None, s=1.0, scale=30.0)
    with pytest.raises(ValueError, match="n_images"):
        losses.get_loss("distribution_balanced", class_counts=[1, 2])
    with pytest.raises(ValueError, match="class_weighting"):
        losses.get_loss("asl", class_weighting="inverse", class_counts=[1, 2], n_images=3)
    with pytest.raises(ValueError, match="integer >= 0"):
        losses.get_loss("ldam", drw_epoch=-1, class_counts=[1, 2])
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['gama'\].*gamma"):
        losses.get_loss("focal", gama=2.0)
    with pytest.raises(ValueError, match="class_counts"):
        losses.get_loss("weighted_bce")
    with pytest.raises(ValueError, match="n_images"):
        losses.get_loss("logit_adjusted", class_counts=[1, 2])
    with pytest.raises(ValueError, match="n_images"):
        losses.get_loss("focal", alpha="inverse_frequency", class_counts=[1, 2])
    with pytest.raises(ValueError, match="inverse_frequency"):
        losses.get_loss("focal", alpha="inverse")
    with pytest.raises(ValueError, match="reduction"):
        losses.get_loss("bce", reduction="mean_please")
    with pytest.raises(ValueError, match="base"):
        losses.get_loss("class_balanced", base="asl", class_counts=[1, 2])
    with pytest.raises(ValueError, match="3 values"):
        losses.get_loss("focal", alpha=[0.1, 0.2, 0.3], class_counts=[1, 2])


def test_per_class_statistics():
    counts = np.array([0, 1, 99, 500, 1000])
    a = losses.inverse_frequency_alpha(counts, 1000)
    np.testing.assert_allclose(a / (1 - a), (1000 - counts + 1) / (counts + 1))  # = smoothed n_neg / n_pos
    assert np.all((a > 0) & (a < 1))
    w = losses.class_balanced_weights(counts, 0.999)
    assert w.sum() == pytest.approx(len(counts)) and np.all(np.isfinite(w)) and np.all(np.diff(w[1:]) < 0)
    np.testing.assert_allclose(losses.class_balanced_weights(counts, 0.0), np.ones(5))
    np.testing.assert_allclose(losses.positive_weights([1, 100], 101), [100.0, 0.01])  # n_neg / n_pos
    np.testing.assert_allclose(losses.positive_weights([1, 100], 101, power=0.5, max_weight=5), [5.0, 0.1])


@pytest.mark.parametrize("name", losses.loss_names())
def test_config_round_trip(data, name):
    loss = build(name, {}, data["counts"])
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss) and again.get_config() == loss.get_config()
    np.testing.assert_allclose(float(again(data["y"], data["z"], sample_weight=data["mask"])),
                               float(loss(data["y"], data["z"], sample_weight=data["mask"])), rtol=1e-6)


def test_compile_and_fit_with_an_element_mask():
    """model.compile(loss=...) + fit with a [B, C] sample_weight: the masked labels do not move the model."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (rng.uniform(size=(32, 3)) > 0.5).astype(np.float32)
    mask = np.ones_like(y)
    mask[:, 2] = 0.0  # class 2 is never seen by the loss
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    before = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.get_loss("focal"))
    history = model.fit(x, y, sample_weight=mask, batch_size=8, epochs=1, verbose=0)
    after = model.get_weights()
    assert np.isfinite(history.history["loss"][-1])
    np.testing.assert_array_equal(after[0][:, 2], before[0][:, 2])  # no gradient reached class 2
    assert not np.allclose(after[0][:, :2], before[0][:, :2])


# ----------------------------------------------------------------------------- LDAM-DRW, distribution-balanced

def test_ldam_margins_follow_n_to_the_minus_quarter():
    counts = np.array([1, 16, 81, 10000])
    m = losses.ldam_margins(counts, 0.5)
    np.testing.assert_allclose(m, 0.5 / np.array([1, 2, 3, 10]))  # n^-1/4 = 1, 1/2, 1/3, 1/10; rarest = max_margin
    np.testing.assert_allclose(m, ref_ldam_margins(counts))


def test_drw_switches_on_at_its_epoch_inside_a_traced_step(data):
    """DRW is a variable the loss reads: set_epoch flips it without retracing, and a fresh (resumed) loss set to
    the same epoch gives the same value."""
    counts, y, z = data["counts"], data["y"], data["z"]
    loss = build("ldam", {"drw_epoch": 2, "drw_beta": 0.999, "scale": 1.0}, counts)
    traced = tf.function(lambda a, b: loss(a, b, sample_weight=data["mask"]))
    plain = reduce_ref(ref_ldam(y.astype(np.float64), z.astype(np.float64), counts, s=1.0), data["mask"])
    weighted = reduce_ref(ref_ldam(y.astype(np.float64), z.astype(np.float64), counts, s=1.0,
                                   drw=ref_cb_weights(counts, 0.999)), data["mask"])
    for epoch, expected in ((0, plain), (1, plain), (2, weighted), (5, weighted)):
        assert loss.set_epoch(epoch) == (epoch >= 2)
        np.testing.assert_allclose(float(traced(y, z)), expected, rtol=1e-5)
    assert traced.experimental_get_tracing_count() == 1
    resumed = build("ldam", {"drw_epoch": 2, "drw_beta": 0.999, "scale": 1.0}, counts)
    resumed.set_epoch(3)
    np.testing.assert_allclose(float(resumed(y, z, sample_weight=data["mask"])), weighted, rtol=1e-5)
    assert build("ldam", {"drw_epoch": None}, counts).set_epoch(100) is False  # drw_epoch null: plain LDAM throughout
    auto = build("ldam", {}, counts)  # drw_epoch auto: 80 % of the run's 10 epochs, the authors' 160 of 200
    assert auto.drw_epoch == 8 and auto.set_epoch(7) is False and auto.set_epoch(8) is True
    assert losses.resolve_drw_epoch("auto", 200) == 160 and losses.resolve_drw_epoch("auto", 1) == 0


def test_the_trainer_flips_drw_through_the_loss_epoch_callback():
    from cxrlt.train import callbacks, engine

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    loss = losses.get_loss("ldam", class_counts=[5, 50, 500], drw_epoch=1)
    trainer = engine.Trainer(tf.distribute.get_strategy(), model, keras.optimizers.SGD(0.01), loss)
    rng = np.random.default_rng(0)
    ds = tf.data.Dataset.from_tensor_slices((rng.normal(size=(16, 4)).astype(np.float32),
                                             (rng.uniform(size=(16, 3)) > 0.5).astype(np.float32))).batch(4).repeat()
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(loss.switch.numpy()))

    trainer.fit(ds, epochs=3, steps_per_epoch=2, callbacks=[callbacks.LossEpoch(loss), Spy()], verbose=0)
    assert seen == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_distribution_balanced_equals_the_paper_on_hard_labels(data):
    y = (data["y"] > 0.5).astype(np.float32)
    y[:, 0] = 1.0  # every image has a positive (CXR-LT: "No Finding" is a class)
    loss = build("distribution_balanced", {"reduction": "none", "focal": False}, data["counts"])
    ref = ref_db_paper(y.astype(np.float64), data["z"].astype(np.float64), data["counts"], N_IMAGES)
    np.testing.assert_allclose(loss(y, data["z"]).numpy(), ref, rtol=1e-4, atol=1e-6)
    # the re-balanced weight is r = (1/n_i) / sum over the image's positives of 1/n_j, then smoothed
    r = losses.get_loss("distribution_balanced", class_counts=[1, 4], n_images=10).rebalance_weight(
        np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]], np.float32))
    raw = np.array([[1 / 1.25, 0.25 / 1.25], [4.0, 1.0], [np.inf, np.inf]])
    np.testing.assert_allclose(r.numpy(), 0.1 + 1 / (1 + np.exp(-10 * (raw - 0.2))), rtol=1e-6)
