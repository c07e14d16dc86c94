"""Per-image augmentation: seed 002's basic set (TF), seed 000's albumentations pipelines and
strategies, minority flags and oversampling (tiny images)."""

import numpy as np
import pytest
import tensorflow as tf

from cxrlt.data import augment, pipeline
from cxrlt import config

from .conftest import write_png

FULL = {"hflip": True, "scale": 0.2, "rotate_deg": 15, "brightness": 0.2, "contrast": 0.2}


def _seed(i, base=0):
    return tf.constant([base, i], tf.int64)


def _asymmetric(size=32):
    image = np.full((size, size, 3), 20.0, np.float32)
    image[:, : size // 4] = 200.0  # bright left band
    return tf.constant(image)


def _left_bright(x: np.ndarray) -> bool:
    return x[:, :8, 0].mean() > x[:, -8:, 0].mean()


def test_basic_augment_keeps_shape_and_range_and_is_seeded():
    fn = augment.make_basic_augment(FULL)
    image = _asymmetric()
    outs = [fn(image, _seed(i)).numpy() for i in range(8)]
    for out in outs:
        assert out.shape == (32, 32, 3) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(outs[0], fn(image, _seed(0)).numpy())
    np.testing.assert_array_equal(outs[0], augment.basic_augment(image, _seed(0), FULL).numpy())
    assert len({o.tobytes() for o in outs}) == 8


def test_basic_augment_in_tf_data_keeps_static_shape_and_is_reproducible():
    fn = augment.make_basic_augment({**FULL, "fill_mode": "constant"})
    ds = tf.data.Dataset.from_tensors(_asymmetric()).repeat(6).enumerate()
    ds = ds.map(lambda i, x: fn(x, tf.stack([tf.constant(4, tf.int64), i])), num_parallel_calls=2)
    assert ds.element_spec.shape == (32, 32, 3)
    first, second = [x.numpy() for x in ds], [x.numpy() for x in ds]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_hflip_off_never_flips_and_on_flips_about_half():
    image = _asymmetric()
    no_flip = augment.make_basic_augment({"hflip": False, "rotate_deg": 10, "scale": 0.1})
    flip = augment.make_basic_augment({"hflip": True})
    assert all(_left_bright(no_flip(image, _seed(i)).numpy()) for i in range(30))
    flipped = sum(not _left_bright(flip(image, _seed(i)).numpy()) for i in range(200))
    assert 70 < flipped < 130


def test_no_op_settings_leave_the_image_alone_and_saturation_is_ignored():
    image = _asymmetric()
    off = augment.make_basic_augment({"hflip": False, "saturation": 0.3, "strategy": "none", "tail_quantile": 0.5,
                                      "minority_share": 0.5})
    np.testing.assert_array_equal(off(image, _seed(3)).numpy(), image.numpy())


def test_rotation_keeps_the_centre_and_zoom_scales_about_it():
    size = 33
    image = np.zeros((size, size, 3), np.float32)
    image[16, 16] = 255.0  # centre pixel
    fn = augment.make_basic_augment({"hflip": False, "rotate_deg": 30, "fill_mode": "constant"})
    for i in range(5):
        out = fn(tf.constant(image), _seed(i)).numpy()
        assert np.unravel_index(out[..., 0].argmax(), out.shape[:2]) == (16, 16)


def test_bad_basic_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="'rotation'"):
        augment.make_basic_augment({"rotation": 10})
    with pytest.raises(ValueError, match="fill_mode"):
        augment.make_basic_augment({"fill_mode": "mirror"})
    with pytest.raises(ValueError, match="hflip"):
        augment.make_basic_augment({"hflip": "yes"})


def test_minority_is_any_tail_class_and_no_finding_is_majority():
    classes = ["No Finding", "Common", "Rare", "Rarer"]
    counts = np.array([5, 100, 4, 3])  # No Finding is rare here but never tail; median 4.5
    labels = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(augment.minority_mask(labels, counts, 0.5, classes),
                                  [False, False, True, True, False])
    # without names, No Finding (5) is above the median and majority anyway; quantile 0: no tail
    np.testing.assert_array_equal(augment.minority_mask(labels, counts, 0.5), [False, False, True, True, False])
    # quantile 0: the rarest class (3), not an empty tail
    np.testing.assert_array_equal(augment.minority_mask(labels, counts, 0.0), [False, False, False, True, False])
    with pytest.raises(ValueError, match="class_counts"):
        augment.minority_mask(labels, counts[:3])


def test_tail_is_at_or_below_the_quantile_so_ties_at_the_median_are_tail():
    """G10 and defaults.yaml say "at or below": classes tied at the quantile are all tail, and
    quantile 0 gives every class tied for the rarest count (a strict "<" gave empty tails)."""
    counts = np.array([10, 10, 10, 10, 50, 3, 3])  # median 10, minimum 3 (tied twice)
    labels = np.eye(7, dtype=np.float32)  # image j carries class j only
    np.testing.assert_array_equal(augment.minority_mask(labels, counts, 0.5),
                                  [True, True, True, True, False, True, True])
    np.testing.assert_array_equal(augment.minority_mask(labels, counts, 0.0),
                                  [False, False, False, False, False, True, True])
    assert augment.minority_mask(labels, counts, 1.0).all()


MARKS = {"weak": 50, "strong": 200, "strong_no_ssr": 120}


class _Marker:
    """A pipeline whose output tells which kind ran (and whether it was reseeded per image)."""

    def __init__(self, kind):
        self.kind, self.rng = kind, None

    def set_random_state(self, rng, py):
        self.rng = rng

    def __call__(self, image):
        return {"image": np.full_like(image, MARKS[self.kind] + int(self.rng.integers(0, 3)))}


def test_strategy_names_follow_the_inventory_majority_minority():
    assert augment.STRATEGIES["strong-weak"][:2] == ("strong_no_ssr", "weak")
    assert augment.STRATEGIES["weak-strong"][:2] == ("weak", "strong")
    assert augment.STRATEGIES["strong-strong"][:2] == ("strong_no_ssr", "strong")
    assert not augment.STRATEGIES["baseline"][2] and all(v[2] for k, v in augment.STRATEGIES.items() if k != "baseline")


@pytest.mark.parametrize("strategy", sorted(augment.STRATEGIES))
def test_strategies_route_majority_and_minority_to_their_pipelines(strategy, monkeypatch):
    monkeypatch.setattr(augment, "make_albu_pipeline", lambda kind, seed=0, rotate_limit=10: _Marker(kind))
    fn = augment.make_strategy_augment(strategy, seed=1)
    majority, minority, _ = augment.STRATEGIES[strategy]
    images = tf.stack([_asymmetric()] * 4)
    flags = tf.constant([False, True, True, False])
    ds = tf.data.Dataset.from_tensor_slices((images, flags)).enumerate()
    ds = ds.map(lambda i, xm: fn(xm[0], xm[1], tf.stack([tf.constant(0, tf.int64), i])), num_parallel_calls=2)
    assert ds.element_spec.shape == (32, 32, 3)
    outs = [x.numpy() for x in ds]
    for out, is_minority in zip(outs, flags.numpy()):
        kind = minority if is_minority else majority
        assert MARKS[kind] <= out.min() and out.max() <= MARKS[kind] + 2 and (out == out[0, 0, 0]).all()
    # without a per-image seed (as cxrlt.pipeline calls it) the routing is the same
    assert fn(_asymmetric(), tf.constant(True)).numpy().min() >= MARKS[minority]


def test_real_pipelines_run_on_grey_uint8_and_are_seeded_per_image():
    image = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    for kind in augment.PIPELINE_KINDS:
        out = augment.make_albu_pipeline(kind, seed=3)(image=image)["image"]
        assert out.shape == (48, 48) and out.dtype == np.uint8
    fn = augment.make_strategy_augment("weak-strong", seed=0)
    x = tf.constant(np.repeat(image[..., None], 3, -1).astype(np.float32))
    a = fn(x, tf.constant(True), _seed(1)).numpy()
    assert a.shape == (48, 48, 3) and a.min() >= 0 and a.max() <= 255
    assert (a[..., 0] == a[..., 2]).all()
    np.testing.assert_array_equal(a, fn(x, tf.constant(True), _seed(1)).numpy())
    assert not np.array_equal(a, fn(x, tf.constant(True), _seed(2)).numpy())
    with pytest.raises(ValueError, match="strategy"):
        augment.make_strategy_augment("weak_strong")


def test_oversample_indices_reach_the_share_and_keep_every_image():
    """Seed 000's strategies oversample with the one ROS of cxrlt.data.sampling (no copy of it here)."""
    from cxrlt.data import sampling

    minority = np.zeros(1000, bool)
    minority[:50] = True  # 5 %
    labels = minority[:, None].astype(np.float32)
    ros = lambda share, seed: sampling.random_oversample_indices(labels, minority, share, seed)  # noqa: E731
    for share in (0.2, 0.5):
        idx = ros(share, 1)
        assert minority[idx].mean() == pytest.approx(share, abs=0.005)
        counts = np.bincount(idx, minlength=1000)
        assert (counts[~minority] == 1).all() and (counts[minority] >= 1).all()
    np.testing.assert_array_equal(ros(0.5, 1), ros(0.5, 1))
    assert not np.array_equal(ros(0.5, 1), ros(0.5, 2))
    plain = ros(0.01, 0)  # already above the target: one plain pass
    assert sorted(plain) == list(range(1000))
    with pytest.raises(ValueError, match="minority and majority"):
        sampling.random_oversample_indices(np.zeros((10, 1)), np.zeros(10, bool), 0.5, 0)


def test_pipeline_oversampling_reaches_the_requested_minority_share(tmp_path):
    n = 40
    paths = np.array([str(write_png(tmp_path / f"{i}.png", np.full((8, 8), i, np.uint8))) for i in range(n)])
    minority = np.arange(n) < 4  # 10 % minority
    labels = minority[:, None].astype(np.float32)
    cfg = config.load(overrides={"input": {"size": 32, "cache": True}})
    ds = pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=50, minority=minority, minority_share=0.5,
                                strategy_fn=augment.make_strategy_augment("weak-strong"))
    drawn = np.concatenate([y.numpy()[:, 0] for _, y in ds.take(20)])
    assert drawn.mean() == pytest.approx(0.5, abs=0.05)


def _strategy_images(paths, labels, minority, seed, strategy_fn, batches=3):
    cfg = config.load(overrides={"input": {"size": 32, "cache": True}})
    ds = pipeline.train_dataset(paths, labels, cfg, seed=seed, batch_size=8, minority=minority,
                                strategy_fn=strategy_fn)
    return np.concatenate([x.numpy() for x, _ in ds.take(batches)])


def test_strategy_augmentation_is_reproducible_under_the_parallel_map(tmp_path):
    """pipeline._augmented gives the strategy its element seed: the same seed repeats the same images
    (a second dataset, a second pass with the same augment function, a fresh one), whatever order the
    parallel map's threads call it in; another seed gives other images. Before, the albumentations
    call drew from one stream in call order, so a second pass (or another thread order) differed."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 24), dtype=np.uint8)
    n = 6  # identical pixels, so the shuffle order cannot hide or fake a difference: only the augmentation can
    paths = np.array([str(write_png(tmp_path / f"{i}.png", image)) for i in range(n)])
    labels = (np.arange(n) % 2)[:, None].astype(np.float32)
    minority = labels[:, 0] > 0
    fn = augment.make_strategy_augment("strong-strong", seed=0)
    first = _strategy_images(paths, labels, minority, 5, fn)
    np.testing.assert_array_equal(first, _strategy_images(paths, labels, minority, 5, fn))
    np.testing.assert_array_equal(first, _strategy_images(paths, labels, minority, 5,
                                                          augment.make_strategy_augment("strong-strong", seed=0)))
    other = _strategy_images(paths, labels, minority, 6, fn)
    assert not np.array_equal(first, other)
    assert len({x.tobytes() for x in first}) > len(first) // 2  # per-image draws, not one draw repeated


def _white_square_ratios(kind, draws=150, size=160, side=40):
    image = np.zeros((size, size), np.uint8)
    lo = (size - side) // 2
    image[lo:lo + side, lo:lo + side] = 255
    pipe = augment.make_albu_pipeline(kind, seed=7, rotate_limit=0.0)
    ratios, widths = [], []
    for _ in range(draws):
        out = pipe(image=image)["image"] > 127
        rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        ratios.append(w / h)
        widths.append(w)
    return np.array(ratios), np.array(widths)


def test_seed000_affine_scales_both_axes_by_one_factor():
    """The authors' ShiftScaleRotate scales x and y by one factor; albumentations' Affine draws them
    separately unless keep_ratio=True (a centred square came out up to 3:1). A square stays a square
    while its size varies over the 0.5..1.5 range."""
    ratios, widths = _white_square_ratios("weak")
    assert ((ratios > 0.9) & (ratios < 1.1)).all(), (ratios.min(), ratios.max())
    assert widths.min() < 0.7 * 40 and widths.max() > 1.3 * 40  # scaling does happen
