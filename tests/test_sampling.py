"""cxrlt.sampling: class-first multi-label sampling (G11), instance epochs, ROS/RUS (G28), Balanced-MixUp pairs."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from cxrlt.data import sampling

from .conftest import SHARED_DATA, need


def take(ds: tf.data.Dataset, n: int):
    return next(iter(ds.batch(n)))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


@pytest.fixture(scope="module")
def small_labels():
    """600 images, 8 classes with a long tail, co-occurring labels, one class without positives."""
    rng = np.random.default_rng(0)
    prevalence = np.array([0.5, 0.3, 0.15, 0.08, 0.04, 0.02, 0.005, 0.0])
    labels = (rng.uniform(size=(600, 8)) < prevalence).astype(np.float32)
    return labels


@pytest.fixture(scope="module")
def cxrlt_labels():
    """Random multi-hot labels at CXR-LT 2023 scale whose per-class counts equal the real training counts."""
    counts = pd.read_csv(need(SHARED_DATA / "cxrlt2023_train_counts.csv"))["train_images"].to_numpy()
    assert len(counts) == 26
    n = 264_849
    rng = np.random.default_rng(1)
    labels = np.zeros((n, 26), np.uint8)
    for j, k in enumerate(counts):
        labels[rng.choice(n, size=k, replace=False), j] = 1
    np.testing.assert_array_equal(labels.sum(axis=0), counts)
    return labels


def test_class_probabilities():
    counts = [400, 100, 25, 0]
    np.testing.assert_allclose(sampling.class_probabilities(counts, 1.0), [400 / 525, 100 / 525, 25 / 525, 0])
    np.testing.assert_allclose(sampling.class_probabilities(counts, 0.5), [20 / 35, 10 / 35, 5 / 35, 0])
    np.testing.assert_allclose(sampling.class_probabilities(counts, 0.0), [1 / 3, 1 / 3, 1 / 3, 0])
    with pytest.raises(ValueError, match="no class"):
        sampling.class_probabilities([0, 0], 0.5)
    with pytest.raises(ValueError):
        sampling.class_probabilities([1, -1], 0.5)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_picked_classes_follow_p_and_every_image_is_positive_for_its_class(small_labels, q):
    draws = 20_000
    index, cls = (t.numpy() for t in take(sampling.class_sampled_indices(small_labels, q, seed=3, with_class=True), draws))
    assert index.dtype == np.int64 and cls.dtype == np.int64
    assert (small_labels[index, cls] == 1).all()
    p = sampling.class_probabilities(small_labels.sum(axis=0), q)
    freq = np.bincount(cls, minlength=8) / draws
    sigma = np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(freq - p) <= 5 * sigma + 1e-12), (freq, p)
    assert freq[7] == 0  # no positives -> never picked


def test_images_are_uniform_within_the_picked_class(small_labels):
    index, cls = (t.numpy() for t in take(sampling.class_sampled_indices(small_labels, 0.0, seed=5, with_class=True), 20_000))
    rare = 6
    members = np.flatnonzero(small_labels[:, rare])
    hits = np.bincount(np.searchsorted(members, index[cls == rare]), minlength=len(members))
    assert len(members) >= 2 and hits.min() > 0
    expected = hits.sum() / len(members)
    assert np.all(np.abs(hits - expected) < 5 * np.sqrt(expected)), hits


def test_streams_are_reproducible(small_labels):
    a = take(sampling.class_sampled_indices(small_labels, 0.5, seed=11), 3000).numpy()
    b = take(sampling.class_sampled_indices(small_labels, 0.5, seed=11), 3000).numpy()
    c = take(sampling.class_sampled_indices(small_labels, 0.5, seed=12), 3000).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    i1 = take(sampling.instance_sampled_indices(50, seed=4), 200).numpy()
    np.testing.assert_array_equal(i1, take(sampling.instance_sampled_indices(50, seed=4), 200).numpy())


def test_cxrlt_scale_draws_fast_with_bounded_memory(cxrlt_labels):
    before = rss_mb()
    start = time.perf_counter()
    ds = sampling.class_sampled_indices(cxrlt_labels, 0.0, seed=0, with_class=True)
    index, cls = (t.numpy() for t in take(ds, 10_000))
    seconds = time.perf_counter() - start
    grown = rss_mb() - before
    assert seconds < 5.0, f"10k draws took {seconds:.1f} s"
    assert grown < 300, f"RSS grew by {grown:.0f} MB"  # CSR positives are ~2.5 MB; copies would be GBs
    assert (cxrlt_labels[index, cls] == 1).all()
    assert index.min() >= 0 and index.max() < len(cxrlt_labels)
    freq = np.bincount(cls, minlength=26) / 10_000
    assert np.all(np.abs(freq - 1 / 26) < 5 * np.sqrt((1 / 26) * (25 / 26) / 10_000))
    # the rarest class (Pneumoperitoneum, 543 images) is drawn about 1/26 of the time, not 0.2 %
    assert freq[np.argmin(cxrlt_labels.sum(axis=0))] > 0.025


def test_instance_sampling_gives_shuffled_epochs():
    n = 97
    stream = take(sampling.instance_sampled_indices(n, seed=1), 3 * n).numpy()
    epochs = stream.reshape(3, n)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[0], np.arange(n))
    fixed = take(sampling.instance_sampled_indices(n, seed=1, reshuffle_each_iteration=False), 2 * n).numpy().reshape(2, n)
    np.testing.assert_array_equal(fixed[0], fixed[1])


def test_random_oversampling_reaches_the_target_share(small_labels):
    minority = small_labels[:, 4:].any(axis=1)
    n_min, n_maj = minority.sum(), (~minority).sum()
    assert n_min / len(minority) < 0.2
    epoch = sampling.random_oversample_indices(small_labels, minority, 0.5, seed=0)
    share = minority[epoch].mean()
    assert share == pytest.approx(0.5, abs=1.5 / len(epoch))
    assert set(epoch.tolist()) == set(range(len(small_labels)))  # pure ROS: every image at least once
    assert (np.bincount(epoch, minlength=len(small_labels))[~minority] == 1).all()
    # seed 000's code (G28): len(train) draws with replacement
    drawn = sampling.random_oversample_indices(small_labels, minority, 0.4, seed=0, epoch_size=len(small_labels))
    assert len(drawn) == len(small_labels) and minority[drawn].mean() == pytest.approx(0.4, abs=1 / len(drawn))
    # a per-class mask gives the same image flags ("any tail class")
    by_class = sampling.random_oversample_indices(small_labels, np.arange(8) >= 4, 0.5, seed=0)
    np.testing.assert_array_equal(by_class, epoch)
    again = sampling.random_oversample_indices(small_labels, minority, 0.5, seed=0)
    np.testing.assert_array_equal(again, epoch)
    with pytest.raises(ValueError, match="target_share"):
        sampling.random_oversample_indices(small_labels, minority, 1.0, seed=0)


def test_random_undersampling_keeps_a_fraction_of_the_majority(small_labels):
    majority = ~small_labels[:, 2:].any(axis=1)
    epoch = sampling.random_undersample_indices(small_labels, majority, 0.25, seed=0)
    assert len(set(epoch.tolist())) == len(epoch)
    assert np.isin(np.flatnonzero(~majority), epoch).all()
    assert majority[epoch].sum() == round(0.25 * majority.sum())
    by_class = sampling.random_undersample_indices(small_labels, np.arange(8) < 2, 0.25, seed=0)
    np.testing.assert_array_equal(by_class, epoch)


def test_make_index_dataset_dispatch(small_labels):
    def first(cfg, **kw):
        return take(sampling.make_index_dataset(small_labels, cfg, seed=7, **kw), 500).numpy()

    np.testing.assert_array_equal(first({"name": "instance"}), take(sampling.instance_sampled_indices(600, 7), 500).numpy())
    np.testing.assert_array_equal(first({"name": "class"}), take(sampling.class_sampled_indices(small_labels, 0.0, 7), 500).numpy())
    np.testing.assert_array_equal(first({"name": "sqrt"}), take(sampling.class_sampled_indices(small_labels, 0.5, 7), 500).numpy())
    np.testing.assert_array_equal(first({"name": "q", "q": 0.25}),
                                  take(sampling.class_sampled_indices(small_labels, 0.25, 7), 500).numpy())
    minority = small_labels[:, 4:].any(axis=1)
    ros = take(sampling.make_index_dataset(small_labels, {"name": "ros", "target_share": 0.5}, 7,
                                           minority_mask=minority), 3000).numpy()
    assert minority[ros].mean() == pytest.approx(0.5, abs=0.03)
    rus = first({"name": "rus", "keep_fraction": 0.5}, majority_mask=~minority)
    assert np.isin(rus, np.arange(600)).all()
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling.make_index_dataset(small_labels, {"name": "sqrtt"}, 0)
    with pytest.raises(ValueError, match="unknown key"):
        sampling.make_index_dataset(small_labels, {"name": "class", "q": 0.3}, 0)
    with pytest.raises(ValueError, match="needs a 'q'"):
        sampling.make_index_dataset(small_labels, {"name": "q"}, 0)
    with pytest.raises(ValueError, match="minority_mask"):
        sampling.make_index_dataset(small_labels, {"name": "ros"}, 0)


def test_balanced_pairs_zip_an_instance_and_a_class_stream(small_labels):
    pairs = sampling.balanced_pair_indices(small_labels, q_class=0.0, seed=2)
    inst, bal = (t.numpy() for t in take(pairs, 1200))
    np.testing.assert_array_equal(np.sort(inst[:600]), np.arange(600))  # first epoch of the instance stream
    assert (small_labels[bal].sum(axis=1) > 0).all()
    # class-balanced stream over-represents the tail relative to instance sampling
    tail = small_labels[:, 6] == 1
    assert tail[bal].mean() > 5 * tail[inst].mean()
    inst2, bal2 = (t.numpy() for t in take(sampling.balanced_pair_indices(small_labels, 0.0, seed=2), 1200))
    np.testing.assert_array_equal(inst, inst2)
    np.testing.assert_array_equal(bal, bal2)


def winner_sample_repeat(labels_np, cls_counts, threshold=0.01, max_repeat=10):
    """hieuphamha19/CXR_LT RepeatFactorDistributedSampler.__init__ + _build_epoch_indices' int(np.round(r)):
    class_freq = counts / counts.sum() (their load_and_split_data, counts floored at 1)."""
    class_freq = np.asarray(cls_counts, np.float32) / np.sum(cls_counts)
    rf = np.maximum(1.0, np.sqrt(threshold / np.clip(class_freq, 1e-12, None)))
    sample_rf = []
    for i in range(labels_np.shape[0]):
        pos = np.where(labels_np[i] > 0.5)[0]
        sample_rf.append(1.0 if len(pos) == 0 else np.max(rf[pos]))
    sample_rf = np.clip(sample_rf, 1.0, float(max_repeat))
    return np.array([int(np.round(r)) for r in sample_rf])


def test_repeat_factor_epochs_hold_each_image_as_often_as_the_2026_winners_sampler():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 6)) < np.array([0.5, 0.2, 0.05, 0.01, 0.003, 0.0])).astype(np.float32)
    counts = [max(1, int(c)) for c in labels.sum(axis=0)]
    for threshold, cap in ((0.05, 10), (0.3, 3)):
        theirs = winner_sample_repeat(labels, counts, threshold, cap)
        np.testing.assert_array_equal(sampling.repeat_factors(labels, threshold, cap), theirs)
        section = {"sampler": "repeat_factor", "repeat_threshold": threshold, "repeat_max": float(cap)}
        n = sampling.epoch_images(labels, section)
        assert n == theirs.sum() > len(labels)  # rare-class images are repeated
        stream = sampling.make_index_dataset(labels, sampling.spec_from_config(section), seed=3)
        first = np.array(list(stream.take(2 * n).as_numpy_iterator()))
        for epoch in (first[:n], first[n:]):
            np.testing.assert_array_equal(np.bincount(epoch, minlength=len(labels)), theirs)
        assert not np.array_equal(first[:n], first[n:])  # reshuffled every epoch
        again = np.array(list(sampling.make_index_dataset(labels, sampling.spec_from_config(section), 3)
                              .take(n).as_numpy_iterator()))
        np.testing.assert_array_equal(again, first[:n])  # a function of the seed: resumable
    assert sampling.epoch_images(labels, {"sampler": "instance"}) == len(labels)
    assert "repeat_max" in sampling.config_problem({"sampler": "repeat_factor", "repeat_max": 0.5})
