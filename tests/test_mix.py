"""Batch mixers: label rules, geometry, reproducibility, the per-batch policy (tiny images).

Source image i is filled with the value 10 * (i + 1), so the pixel values of a mixed image tell
which sources it used; the ops also report the partner indices they used (return_info=True), so
the expected labels can be recomputed from them.
"""

import numpy as np
import pytest
import tensorflow as tf

from cxrlt.data import mix

B, S, C = 8, 32, 6
SEED = tf.constant([3, 7], tf.int64)


def _constant_batch():
    values = 10.0 * (np.arange(B) + 1)
    images = np.broadcast_to(values[:, None, None, None], (B, S, S, 3)).astype(np.float32).copy()
    return tf.constant(images)


def _multi_hot(seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(B, C)) < 0.3).astype(np.float32)
    labels[np.arange(B), np.arange(B) % C] = 1.0  # no empty rows, so a union always shows
    return tf.constant(labels)


def _sources_in(image: np.ndarray) -> set[int]:
    return {int(round(v / 10)) - 1 for v in np.unique(np.round(image[..., 0], 3))}


ALL_OPS = {
    "mosaic_crop": mix.mosaic_crop,
    "mosaic_resize": mix.mosaic_resize,
    "mosaic_resize_grid": lambda x, y, s, **kw: mix.mosaic_resize(x, y, s, random_split=False, **kw),
    "mixup": mix.mixup,
    "cutmix": mix.cutmix,
}


@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_clip_sum_labels_are_the_union_of_the_sources_used(name):
    images, labels = _constant_batch(), _multi_hot()
    out, y, info = ALL_OPS[name](images, labels, SEED, label_mode="clip_sum", return_info=True)
    assert out.shape == images.shape and out.dtype == tf.float32 and y.shape == labels.shape
    src, weights, y, lab = info["sources"].numpy(), info["weights"].numpy(), y.numpy(), labels.numpy()
    assert src.shape[1] == B and (src[0] == np.arange(B)).all()
    for i in range(B):
        used = [int(s) for s, wt in zip(src[:, i], weights[:, i]) if wt > 0]
        np.testing.assert_array_equal(y[i], lab[used].max(axis=0))
        if name != "mixup":  # pasted pixels: the image shows exactly the sources with a share > 0
            assert _sources_in(out[i].numpy()) == set(used)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_mosaic_sources_are_four_distinct_images_each_used_once_per_quadrant():
    _, _, info = mix.mosaic_crop(_constant_batch(), _multi_hot(), SEED, return_info=True)
    src = info["sources"].numpy()
    assert all(len(set(src[:, i])) == 4 for i in range(B))
    assert all(sorted(row) == list(range(B)) for row in src)


def test_mixup_pixels_are_the_reported_blend():
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 255, (B, S, S, 3)).astype(np.float32))
    out, _, info = mix.mixup(images, _multi_hot(), SEED, alpha=0.4, return_info=True)
    j, lam = info["sources"].numpy()[1], info["weights"].numpy()[0]
    assert (j != np.arange(B)).all()
    expected = lam[:, None, None, None] * images.numpy() + (1 - lam[:, None, None, None]) * images.numpy()[j]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-3)
    assert len(set(np.round(lam, 6))) == B  # one lambda per sample


@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_convex_labels_of_one_hot_sources_sum_to_one(name):
    images, labels = _constant_batch(), tf.eye(B)
    _, y, info = ALL_OPS[name](images, labels, SEED, label_mode="convex", return_info=True)
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(info["weights"].numpy().sum(axis=0), 1.0, atol=1e-5)
    assert y.numpy().min() >= 0 and y.numpy().max() <= 1


def test_cutmix_convex_weights_are_the_pasted_area():
    images = _constant_batch()
    out, y, info = mix.cutmix(images, tf.eye(B), SEED, alpha=1.0, label_mode="convex", return_info=True)
    j = info["sources"].numpy()[1]
    for i in range(B):
        pasted = np.mean(np.isclose(out[i, ..., 0].numpy(), 10.0 * (j[i] + 1)))
        assert y[i, j[i]].numpy() == pytest.approx(pasted, abs=1e-6)
        assert y[i, i].numpy() == pytest.approx(1 - pasted, abs=1e-6)


def test_combine_labels_rules():
    a, b = tf.constant([[1.0, 0.0, 1.0]]), tf.constant([[1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(mix.combine_labels([a, b], [tf.constant([0.7]), tf.constant([0.3])], "clip_sum"),
                                  [[1, 1, 1]])
    np.testing.assert_allclose(mix.combine_labels([a, b], [tf.constant([0.7]), tf.constant([0.3])], "convex"),
                               [[1.0, 0.3, 0.7]], atol=1e-6)
    # a source with share 0 is not in the image: not in the union
    np.testing.assert_array_equal(mix.combine_labels([a, b], [tf.constant([1.0]), tf.constant([0.0])], "clip_sum"),
                                  [[1, 0, 1]])
    with pytest.raises(ValueError, match="label_mode"):
        mix.combine_labels([a, b], [1.0, 0.0], "mean")


def test_cutout_zeroes_a_box_and_keeps_labels():
    images, labels = _constant_batch(), _multi_hot()
    out, y = mix.cutout(images, labels, SEED, size_frac=0.5)
    np.testing.assert_array_equal(y.numpy(), labels.numpy())
    zeros = (out.numpy() == 0).all(axis=-1).mean(axis=(1, 2))
    assert (zeros > 0.05).all() and (zeros <= 0.25 + 1e-6).all()
    kept = out.numpy() != 0
    np.testing.assert_array_equal(out.numpy()[kept], images.numpy()[kept])
    two, _ = mix.cutout(images, labels, SEED, size_frac=0.25, n_holes=2, fill=7.0)
    assert ((two.numpy() == 7.0).all(axis=-1).mean(axis=(1, 2)) <= 2 * 0.0625 + 1e-6).all()


def test_mosaic_crop_has_no_gap_and_its_split_point_stays_in_bounds():
    rng = np.random.default_rng(2)
    images = tf.constant(rng.uniform(1, 255, (B, S, S, 3)).astype(np.float32))  # every pixel >= 1
    centers = []
    for k in range(6):
        out, _, info = mix.mosaic_crop(images, _multi_hot(), tf.constant([k, 1], tf.int64), return_info=True)
        assert out.numpy().min() > 0
        centers.append(info["center"].numpy())
    centers = np.concatenate(centers)
    assert centers.min() >= 0.25 * S and centers.max() <= 0.75 * S
    assert len(np.unique(centers[:, 0])) > 4  # drawn per sample
    narrow = mix.mosaic_crop(images, _multi_hot(), SEED, center_range=(0.5, 0.5), return_info=True)[2]
    assert (narrow["center"].numpy() == S // 2).all()


def test_mosaic_crop_quadrants_are_crops_of_their_sources():
    rng = np.random.default_rng(3)
    images = rng.uniform(1, 255, (B, S, S, 3)).astype(np.float32)
    out, _, info = mix.mosaic_crop(tf.constant(images), _multi_hot(), SEED, return_info=True)
    out, src, (cy, cx), off = out.numpy(), info["sources"].numpy(), info["center"].numpy().T, info["offsets"].numpy()
    for i in range(B):
        h, w = [cy[i], cy[i], S - cy[i], S - cy[i]], [cx[i], S - cx[i], cx[i], S - cx[i]]
        y0, x0 = [0, 0, cy[i], cy[i]], [0, cx[i], 0, cx[i]]
        for k in range(4):
            oy, ox = off[k, i]
            np.testing.assert_array_equal(out[i, y0[k]:y0[k] + h[k], x0[k]:x0[k] + w[k]],
                                          images[src[k, i], oy:oy + h[k], ox:ox + w[k]])


@pytest.mark.parametrize("random_split, center_range", [(False, (0.25, 0.75)), (True, (0.25, 0.75)),
                                                        (True, (0.02, 0.98))])  # tiles down to 1 px: dense weights
def test_mosaic_resize_holds_each_whole_source_downscaled(random_split, center_range):
    """Each quadrant is its source resized by TensorFlow's own antialiased resize (ScaleAndTranslate), which
    the batched form reproduces without calling it."""
    rng = np.random.default_rng(4)
    images = tf.constant(rng.uniform(0, 255, (B, S, S, 3)).astype(np.float32))
    out, _, info = mix.mosaic_resize(images, _multi_hot(), SEED, random_split=random_split, center_range=center_range,
                                     return_info=True)
    src, centers = info["sources"].numpy(), info["center"].numpy()
    for i in range(B):
        cy, cx = centers[i]
        if not random_split:
            assert (cy, cx) == (S // 2, S // 2)
        corners = [(0, 0, cy, cx), (0, cx, cy, S - cx), (cy, 0, S - cy, cx), (cy, cx, S - cy, S - cx)]
        for k, (y0, x0, h, w) in enumerate(corners):
            expected = tf.image.resize(images[src[k, i]], (h, w), antialias=True).numpy()
            np.testing.assert_allclose(out[i, y0:y0 + h, x0:x0 + w].numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("name", sorted(ALL_OPS) + ["cutout"])
def test_same_seed_same_batch_other_seed_other_batch(name):
    op = mix.cutout if name == "cutout" else ALL_OPS[name]
    rng = np.random.default_rng(5)
    images = tf.constant(rng.uniform(1, 255, (B, S, S, 3)).astype(np.float32))
    a = op(images, _multi_hot(), SEED)[0].numpy()
    np.testing.assert_array_equal(a, op(images, _multi_hot(), tf.constant([3, 7], tf.int64))[0].numpy())
    assert not np.array_equal(a, op(images, _multi_hot(), tf.constant([3, 8], tf.int64))[0].numpy())


def test_balanced_mixup_lambda_follows_beta_alpha_1_and_mixes_as_the_code():
    alpha = 0.2
    lams = mix._beta([20000], alpha, 1.0, tf.constant([0, 1], tf.int64)).numpy()
    assert lams.mean() == pytest.approx(alpha / (alpha + 1), abs=0.01)
    assert np.isfinite(lams).all() and lams.min() >= 0 and lams.max() <= 1
    one = [float(mix.balanced_mixup(tf.zeros([1, 4, 4, 1]), tf.zeros([1, 2]), tf.ones([1, 4, 4, 1]),
                                    tf.ones([1, 2]), tf.constant([i, 2], tf.int64), 0.3, return_info=True)[2]["lam"])
           for i in range(300)]
    assert np.mean(one) == pytest.approx(0.3 / 1.3, abs=0.04)
    rng = np.random.default_rng(6)
    xi, xc = (tf.constant(rng.uniform(0, 255, (B, S, S, 3)).astype(np.float32)) for _ in range(2))
    out, y, info = mix.balanced_mixup(xi, tf.eye(B), xc, tf.reverse(tf.eye(B), [0]), SEED, alpha, return_info=True)
    lam = float(info["lam"])
    np.testing.assert_allclose(out.numpy(), (1 - lam) * xi.numpy() + lam * xc.numpy(), atol=1e-3)
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-5)
    _, y_union = mix.balanced_mixup(xi, tf.eye(B), xc, tf.reverse(tf.eye(B), [0]), SEED, alpha, label_mode="clip_sum")
    np.testing.assert_array_equal(y_union.numpy(), np.maximum(np.eye(B), np.eye(B)[::-1]))


def _mixed(mixer, images, labels, n=12, batch=B):
    per_image = tf.data.Dataset.from_tensor_slices((images, labels)).repeat(n)
    ds = per_image.batch(batch, drop_remainder=True).enumerate().map(lambda i, b: mixer(i, *b))
    return ds, [(x.numpy(), y.numpy()) for x, y in ds]


def test_batch_mixer_in_tf_data_is_reproducible_and_keeps_shapes():
    images, labels = _constant_batch(), _multi_hot()
    cfg = {"mosaic": 0.4, "mixup": 0.3, "cutmix": 0.3, "mosaic_variant": {"crop": 1, "resize": 1},
           "cutout": 0.5, "seed": 5}
    ds, first = _mixed(mix.BatchMixer(cfg), images, labels)
    assert ds.element_spec[0].shape == (B, S, S, 3) and ds.element_spec[1].shape == (B, C)
    _, second = _mixed(mix.BatchMixer(cfg), images, labels)
    for (xa, ya), (xb, yb) in zip(first, second):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert ya.min() >= 0 and ya.max() <= 1 and xa.min() >= 0 and xa.max() <= 255
    _, other = _mixed(mix.BatchMixer(cfg, seed=6), images, labels)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    # p sums to 1: every batch is mixed (a mixed batch differs from the input batch)
    assert not any(np.array_equal(x, images.numpy()) for x, _ in first)


def test_batch_mixer_with_no_probability_is_a_no_op():
    images, labels = _constant_batch(), _multi_hot()
    mixer = mix.BatchMixer({"mosaic": 0.0, "mixup": 0.0, "cutmix": 0.0, "cutout": 0.0})
    assert not mixer.active
    _, batches = _mixed(mixer, images, labels, n=2)
    assert all(np.array_equal(x, images.numpy()) and np.array_equal(y, labels.numpy()) for x, y in batches)


def test_exclusive_policy_picks_ops_by_probability():
    mixer = mix.BatchMixer({"mosaic": 0.5, "mixup": 0.2, "cutmix": 0.1, "mosaic_variant": "crop"})
    picks = np.array([int(mixer.choose(mix.step_seed(0, i))) for i in range(1500)])
    shares = np.bincount(picks, minlength=4) / len(picks)  # none, mosaic_crop, mixup, cutmix
    np.testing.assert_allclose(shares, [0.2, 0.5, 0.2, 0.1], atol=0.04)


def test_non_exclusive_policy_stacks_ops_and_keeps_the_union():
    images, labels = _constant_batch(), tf.eye(B)
    mixer = mix.BatchMixer(mosaic=1.0, cutmix=1.0, exclusive=False, mosaic_variant="crop", seed=2)
    x, y = mixer(tf.constant(0, tf.int64), images, labels)
    assert x.shape == images.shape
    for i in range(B):  # Mosaic then CutMix: up to 8 sources, labels = the sources visible or pasted over
        assert _sources_in(x[i].numpy()) <= set(np.flatnonzero(y[i].numpy()))
    assert (y.numpy().sum(axis=1) >= 4).all()


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="'mosiac'"):
        mix.BatchMixer({"mosiac": 0.5})
    with pytest.raises(ValueError, match="<= 1"):
        mix.BatchMixer(mosaic=0.7, mixup=0.5)
    mix.BatchMixer(mosaic=0.7, mixup=0.5, exclusive=False)  # independent: fine
    with pytest.raises(ValueError, match="label_mode"):
        mix.BatchMixer(label_mode="mean")
    with pytest.raises(ValueError, match="mosaic variant"):
        mix.BatchMixer(mosaic=0.5, mosaic_variant={"tile": 1.0})
    assert mix.BatchMixer.from_config({"mosaic": 0.5}, seed=9).seed == 9


@pytest.mark.parametrize("exclusive", [True, False])
def test_some_rows_read_through_a_source_are_those_rows_of_the_whole_batch(exclusive):
    """How each replica mixes the global batch in the train step: the outputs of its own rows, the images read
    through a function (the step augments them on demand), are those rows of the whole batch's result; for
    stacked ops too (exclusive=False: Mosaic, then MixUp and CutMix over its outputs)."""
    rng = np.random.default_rng(7)
    images = tf.constant(rng.uniform(0, 255, (B, S, S, 1)).astype(np.float32))
    labels = _multi_hot()
    mixer = mix.BatchMixer({"mosaic": 0.5, "mixup": 0.3, "cutmix": 0.2, "cutout": 0.5, "mosaic_variant": "both",
                            "exclusive": exclusive}, seed=4)
    reads = []
    source = mix.Source(lambda i: reads.append(i) or tf.gather(images, i), B, images.shape[1:])
    rows = [6, 1, 3]
    for step in range(8):
        seed = mix.step_seed(4, step)
        full_x, full_y = mixer.apply(images, labels, seed)
        x, y = mixer.apply(None, labels, seed, rows=tf.constant(rows), source=source)
        assert x.shape == (3, S, S, 1) and y.shape == (3, C)
        np.testing.assert_allclose(x.numpy(), full_x.numpy()[rows], atol=1e-3)
        np.testing.assert_array_equal(y.numpy(), full_y.numpy()[rows])
    if exclusive:  # one op per batch: it reads only the sources of the rows asked for (Mosaic: 4 per row)
        assert reads and max(int(tf.size(i)) for i in reads) <= 4 * len(rows)
