"""Batch mixers: label rules, geometry, reproducibility (tiny images, constant-valued sources).

Each source image i is filled with the value 10 * (i + 1) and labelled with class i only, so the
pixel values of a mixed image tell exactly which sources it used.
"""

import numpy as np
import pytest
import tensorflow as tf

from cxrlt import mix

B, S = 8, 32


def _batch():
    values = 10.0 * (np.arange(B) + 1)
    images = np.broadcast_to(values[:, None, None, None], (B, S, S, 3)).astype(np.float32).copy()
    return tf.constant(images), tf.constant(np.eye(B, dtype=np.float32))


def _sources(image: np.ndarray) -> set[int]:
    return {int(round(v / 10)) - 1 for v in np.unique(np.round(image[..., 0], 3))}


SEED = tf.constant([3, 7], tf.int64)


@pytest.mark.parametrize("op", [mix.mosaic_crop, mix.mosaic_resize])
def test_mosaic_clip_sum_is_the_union_of_the_sources_and_covers_the_image(op):
    images, labels = _batch()
    out, y = op(images, labels, SEED)
    assert out.shape == (B, S, S, 3) and y.shape == (B, B)
    for i in range(B):
        used = _sources(out[i].numpy())
        assert min(used) >= 0  # no blank (value 0) gap anywhere
        assert 1 <= len(used) <= 4 and i in used  # source 0 of output i is image i
        np.testing.assert_array_equal(y[i].numpy(), np.isin(np.arange(B), list(used)).astype(np.float32))


def test_mosaic_split_point_stays_in_bounds_and_varies():
    points = [int(mix._split_point(S, 0.25, 0.75, tf.constant([k, 1], tf.int64))) for k in range(200)]
    assert min(points) >= 0.25 * S and max(points) <= 0.75 * S
    assert len(set(points)) > 8


def test_mosaic_resize_holds_each_whole_source_downscaled():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (B, S, S, 3)).astype(np.float32))
    labels = tf.constant(np.eye(B, dtype=np.float32))
    out, _ = mix.mosaic_resize(images, labels, SEED, random_split=False)
    expected = tf.image.resize(images[:1], (S // 2, S // 2), antialias=True)[0]
    np.testing.assert_allclose(out[0, : S // 2, : S // 2].numpy(), expected.numpy(), atol=1e-3)


@pytest.mark.parametrize("op", [mix.mixup, mix.cutmix])
def test_mixup_and_cutmix_clip_sum_is_or_and_convex_sums_to_one(op):
    images, labels = _batch()
    out, y = op(images, labels, SEED, label_mode="clip_sum")
    y = y.numpy()
    assert set(np.unique(y)) <= {0.0, 1.0} and (y[np.arange(B), np.arange(B)] == 1).all()
    assert (y.sum(axis=1) <= 2).all()
    _, yc = op(images, labels, SEED, label_mode="convex")
    np.testing.assert_allclose(yc.numpy().sum(axis=1), 1.0, atol=1e-5)
    # same partners and weights in both modes: convex support is within the union
    assert ((yc.numpy() > 1e-6) <= (y > 0)).all()


def test_cutmix_convex_weights_are_the_visible_areas():
    images, labels = _batch()
    out, y = mix.cutmix(images, labels, SEED, label_mode="convex")
    for i in range(B):
        image = out[i, ..., 0].numpy()
        own = np.mean(np.isclose(image, 10.0 * (i + 1)))
        assert y[i, i].numpy() == pytest.approx(own, abs=1e-5) or len(_sources(out[i].numpy())) == 1


def test_cutout_erases_a_box_and_keeps_labels():
    images, labels = _batch()
    out, y = mix.cutout(images, labels, SEED, size_fraction=0.5)
    np.testing.assert_array_equal(y.numpy(), labels.numpy())
    zeros = (out.numpy()[..., 0] == 0).mean(axis=(1, 2))
    assert (zeros > 0.05).all() and (zeros <= 0.26).all()


def _apply(ds, mixer):
    return ds.map(lambda step, batch: mixer(step, *batch))


def test_policy_is_reproducible_exclusive_and_runs_in_tf_data():
    images, labels = _batch()
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat(12).enumerate()
    mixer = mix.BatchMixer(mosaic=0.4, mixup=0.3, cutmix=0.3, seed=5)
    first = [(x.numpy(), y.numpy()) for x, y in _apply(ds, mixer)]
    second = [(x.numpy(), y.numpy()) for x, y in _apply(ds, mixer)]
    for (xa, ya), (xb, yb) in zip(first, second):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert ya.min() >= 0 and ya.max() <= 1
    other = [x.numpy() for x, _ in _apply(ds, mix.BatchMixer(mosaic=0.4, mixup=0.3, cutmix=0.3, seed=6))]
    assert any(not np.array_equal(a[0], b) for a, b in zip(first, other))
    assert not any(np.array_equal(x, images.numpy()) for x, _ in first)  # p sums to 1: every batch mixed
    untouched = [x.numpy() for x, _ in _apply(ds, mix.BatchMixer(seed=1))]
    assert all(np.array_equal(x, images.numpy()) for x in untouched)


def test_balanced_mixup_weights_follow_beta_alpha_1():
    alpha = 0.2
    lams = [float(mix._beta([], alpha, 1.0, tf.constant([i, 0], tf.int64))) for i in range(3000)]
    assert np.mean(lams) == pytest.approx(alpha / (alpha + 1), abs=0.02)
    images, labels = _batch()
    out, y = mix.balanced_mixup(images, labels, tf.reverse(images, [0]), tf.reverse(labels, [0]), SEED, alpha)
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-5)


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="<= 1"):
        mix.BatchMixer(mosaic=0.7, mixup=0.5)
    with pytest.raises(ValueError, match="label_mode"):
        mix.BatchMixer(label_mode="mean")
