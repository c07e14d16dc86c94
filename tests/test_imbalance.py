"""The imbalance toolkit wired into training: `sampling:` samplers and Balanced-MixUp in the tf.data pipeline
(driven by the config, as train.py builds it), and the per-class MCC / balanced accuracy of the tables."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef

from cxrlt import config
from cxrlt.evaluate import metrics
from cxrlt.data import mix, pipeline, sampling

from .conftest import write_png

COUNTS = [48, 16, 8, 4]  # one-hot long tail: the image's class is the class it was drawn for
VALUES = [10.0, 70.0, 130.0, 190.0]  # every image of class j is a constant VALUES[j]


@pytest.fixture(scope="module")
def one_hot_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imbalance")
    paths, labels = [], []
    for j, n in enumerate(COUNTS):
        for i in range(n):
            paths.append(str(write_png(root / f"c{j}_{i}.png", np.full((8, 8), VALUES[j], np.uint8))))
            labels.append(np.eye(len(COUNTS), dtype=np.float32)[j])
    return np.array(paths), np.array(labels)


def _cfg(cache=True, **sections):
    overrides = {"input": {"size": 32, "cache": cache}, "mix": {"mosaic": 0.0}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return config.load(overrides=overrides)


def _draw(data, cfg, batches, batch=50, seed=1, **kw):
    paths, labels = data
    ds = pipeline.train_dataset(paths, labels, cfg, seed=seed, batch_size=batch, **kw)
    out = [(x.numpy(), y.numpy()) for x, y in ds.take(batches)]
    return np.concatenate([x for x, _ in out]), np.concatenate([y for _, y in out])


@pytest.mark.parametrize("sampler, q", [("class", 0.0), ("sqrt", 0.5), ("q", 0.25), ("instance", 1.0)])
def test_configured_sampler_draws_classes_with_p_j(one_hot_images, sampler, q):
    cfg = _cfg(sampling={"sampler": sampler, "q": q})
    x, y = _draw(one_hot_images, cfg, batches=80)  # 4,000 draws
    drawn = y.argmax(axis=1)
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), np.array(VALUES)[drawn], atol=0.5)  # gathered row = its label
    p = sampling.class_probabilities(COUNTS, q)
    np.testing.assert_allclose(np.bincount(drawn, minlength=4) / len(drawn), p, atol=0.025)
    again = _draw(one_hot_images, cfg, batches=4)[1]
    np.testing.assert_array_equal(again, y[:200])  # seeded
    assert not np.array_equal(_draw(one_hot_images, cfg, batches=4, seed=2)[1], again)


def test_sampler_streams_from_files_without_cache_and_ros_rus_shares(one_hot_images):
    _, y = _draw(one_hot_images, _cfg(cache=False, sampling={"sampler": "class"}), batches=16)
    np.testing.assert_allclose(np.bincount(y.argmax(1), minlength=4) / len(y), 0.25, atol=0.05)
    # tail_quantile 0.5 of [48, 16, 8, 4]: classes 2 and 3 are tail, 12 minority images of 76
    _, y = _draw(one_hot_images, _cfg(sampling={"sampler": "ros", "ros_share": 0.5}), batches=40)
    assert y[:, 2:].sum() / len(y) == pytest.approx(0.5, abs=0.04)
    _, y = _draw(one_hot_images, _cfg(sampling={"sampler": "rus", "rus_keep": 0.5}), batches=40)
    assert y[:, 2:].sum() / len(y) == pytest.approx(12 / (12 + 32), abs=0.04)


def test_config_rejects_bad_sampling_and_balanced_mixup_settings():
    with pytest.raises(config.ConfigError, match="sampling.sampler"):
        _cfg(sampling={"sampler": "square"})
    with pytest.raises(config.ConfigError, match="ros_share"):
        _cfg(sampling={"sampler": "ros", "ros_share": 1.5})
    with pytest.raises(config.ConfigError, match="both choose the training images"):
        _cfg(sampling={"sampler": "class"}, augment={"strategy": "weak-strong"})
    with pytest.raises(config.ConfigError, match="balanced_mixup"):
        _cfg(mix={"balanced_mixup": -0.1})
    with pytest.raises(config.ConfigError, match="balanced_mixup_labels"):
        _cfg(mix={"balanced_mixup": 0.2, "balanced_mixup_labels": "mean"})


@pytest.mark.parametrize("label_mode", ["convex", "clip_sum"])
def test_balanced_mixup_in_the_pipeline_mixes_images_and_labels_as_configured(one_hot_images, label_mode):
    alpha, batch, steps = 0.3, 16, 30
    cfg = _cfg(mix={"balanced_mixup": alpha, "balanced_mixup_labels": label_mode})
    x, y = _draw(one_hot_images, cfg, batches=steps, batch=batch, seed=5)
    lam = np.repeat([float(mix.BalancedMixer(alpha, seed=5).lam(i)) for i in range(steps)], batch)
    pixel = x.mean(axis=(1, 2, 3))
    values = np.array(VALUES)
    if label_mode == "convex":  # y = (1 - lam) y_I + lam y_C, so the image is the label-weighted class value
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(pixel, y @ values, atol=0.5)
        two = (y > 0).sum(axis=1) == 2
        assert two.sum() > 50
        np.testing.assert_allclose(np.sort(y[two], axis=1)[:, -2], np.minimum(lam, 1 - lam)[two], atol=1e-5)
        # x_I comes from shuffled epochs (tail share 12/76), x_C from class-balanced draws (tail share 1/2)
        expected = np.mean((1 - lam) * sum(COUNTS[2:]) / sum(COUNTS) + lam * 0.5)
        assert y[:, 2:].sum() / len(y) == pytest.approx(expected, abs=0.05)
    else:  # union of the two labels; the image is still (1 - lam) x_I + lam x_C
        assert set(np.unique(y)) <= {0.0, 1.0} and ((y.sum(axis=1) == 1) | (y.sum(axis=1) == 2)).all()
        two = y.sum(axis=1) == 2
        pairs = np.array([values[np.flatnonzero(row)] for row in y[two]])
        candidates = np.stack([(1 - lam[two]) * pairs[:, 0] + lam[two] * pairs[:, 1],
                               (1 - lam[two]) * pairs[:, 1] + lam[two] * pairs[:, 0]])
        assert (np.abs(candidates - pixel[two]).min(axis=0) < 0.5).all()
        single = ~two
        np.testing.assert_allclose(pixel[single], y[single] @ values, atol=0.5)


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.3])
def test_balanced_mixup_lambda_has_mean_alpha_over_alpha_plus_one(alpha):
    mixer = mix.BalancedMixer.from_config({"balanced_mixup": alpha}, seed=11)
    lams = tf.data.Dataset.range(20_000).map(mixer.lam).batch(20_000).get_single_element().numpy()
    assert lams.min() >= 0 and lams.max() <= 1
    assert lams.mean() == pytest.approx(alpha / (alpha + 1), abs=0.01)
    assert mix.BalancedMixer.from_config({"balanced_mixup": 0.0}) is None


def test_balanced_mixup_stacks_with_the_batch_mixer(one_hot_images):
    cfg = _cfg(mix={"balanced_mixup": 0.2, "mixup": 1.0, "label_mode": "clip_sum"})
    mixer = mix.BatchMixer.from_config(cfg["mix"], seed=3)  # accepts (and ignores) the Balanced-MixUp keys
    x, y = _draw(one_hot_images, cfg, batches=3, batch=8, mixer=mixer)
    assert x.shape == (24, 32, 32, 3) and y.shape == (24, 4)
    assert y.min() >= 0 and y.max() <= 1 and (y.sum(axis=1) > 1).any()


def test_per_class_mcc_and_balanced_accuracy_equal_scikit_learn():
    rng = np.random.default_rng(4)
    y = (rng.random((120, 5)) < [0.5, 0.2, 0.1, 0.05, 0.3]).astype(float)
    p = np.clip(y * 0.3 + rng.random((120, 5)) * 0.7, 0, 1)
    p[:, 4] = 0.1  # nothing predicted positive: MCC 0 (sklearn's convention), balanced accuracy 0.5
    result = metrics.evaluate(y, p, [f"c{j}" for j in range(5)])
    for j, row in enumerate(result["per_class"]):
        assert row["mcc"] == pytest.approx(matthews_corrcoef(y[:, j], p[:, j] >= 0.5), abs=1e-12)
        assert row["bacc"] == pytest.approx(balanced_accuracy_score(y[:, j], p[:, j] >= 0.5), abs=1e-12)
    assert result["per_class"][4]["mcc"] == 0.0 and result["per_class"][4]["bacc"] == 0.5
    assert result["mMCC"] == pytest.approx(np.mean([r["mcc"] for r in result["per_class"]]))
    assert result["mBACC"] == pytest.approx(np.mean([r["bacc"] for r in result["per_class"]]))
    assert metrics.mcc_at([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]) == 1.0
    assert metrics.mcc_at([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8]) == -1.0


def test_class_sampler_and_balanced_mixup_carry_the_uncertainty_mask(one_hot_images):
    """The mask rides as extra label columns: samplers must weigh classes by the class columns only,
    and a blended label is ignored where either source had it uncertain."""
    paths, labels = one_hot_images
    mask = np.ones_like(labels)
    mask[labels[:, 3] == 1, 0] = 0.0  # class-3 images: class 0 uncertain
    cfg = _cfg(sampling={"sampler": "class"}, mix={"balanced_mixup": 0.2})
    ds = pipeline.train_dataset(paths, labels, cfg, seed=3, batch_size=40, mask=mask)
    x, y, m = (np.concatenate(t) for t in zip(*[(a.numpy(), b.numpy(), c.numpy()) for a, b, c in ds.take(20)]))
    assert y.shape == m.shape == (800, 4) and x.shape == (800, 32, 32, 3)
    shows_class3 = y[:, 3] > 0
    assert 0.25 < shows_class3.mean() < 0.75  # class sampling (not the 5% of instance sampling), blended
    np.testing.assert_array_equal(m[:, 0], np.where(shows_class3, 0.0, 1.0))
    assert (m[:, 1:] == 1).all()
