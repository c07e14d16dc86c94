"""Combination rules on NumPy arrays: mean, rank and logit averaging, and weights fitted on OOF."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cxrlt.ensemble import combine
from cxrlt.runtime import runs


def _preds(seed, n=60, c=4, k=3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.5, c)).astype(float)
    y[0], y[1] = 1, 0  # every class has positives and negatives
    preds = [np.clip(0.3 * y + rng.random((n, c)) * rng.uniform(0.3, 1.0), 0, 1) for _ in range(k)]
    return y, preds


def test_mean_is_the_weighted_probability_average():
    _, (a, b, _) = _preds(0)
    assert np.allclose(combine.combine([a, b]), (a + b) / 2)
    assert np.allclose(combine.combine([a, b], [3, 1]), 0.75 * a + 0.25 * b)
    assert np.allclose(combine.combine([a, b], [1, 0]), a)
    for bad in ([1], [1, -1], [0, 0], [1, np.nan]):
        with pytest.raises(runs.RunError, match="non-negative"):
            combine.combine([a, b], bad)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_rank_averaging_properties(seed):
    y, (a, b, c) = _preds(seed)
    out = combine.combine([a, b, c], method="rank")
    assert out.shape == a.shape and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # One run: its own ranking and values.
    assert np.allclose(combine.combine([a], method="rank"), a)
    # Only ranks count: a monotone transform of one run leaves the combined ranking (hence AP, AUC) unchanged.
    warped = combine.combine([a ** 3, b, np.sqrt(c)], method="rank")
    for j in range(a.shape[1]):
        assert np.array_equal(np.argsort(warped[:, j], kind="stable"), np.argsort(out[:, j], kind="stable"))
    # The values are the probability mean's, reassigned in rank order (tied ranks share their mean).
    mean = combine.combine([a, b, c])
    assert np.allclose(out.sum(0), mean.sum(0)) and (out.min(0) >= mean.min(0) - 1e-12).all()
    assert (out.max(0) <= mean.max(0) + 1e-12).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_logit_averaging_properties(seed):
    _, (a, b, _) = _preds(seed)
    out = combine.combine([a, b], [2, 1], method="logit")
    assert np.allclose(combine.combine([a, a], method="logit"), np.clip(a, combine.EPS, 1 - combine.EPS))
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    clip = lambda p: np.clip(p, combine.EPS, 1 - combine.EPS)  # noqa: E731
    assert np.allclose(logit(clip(out)), (2 * logit(clip(a)) + logit(clip(b))) / 3, atol=1e-6)
    # Symmetric: averaging the complements gives the complement.
    assert np.allclose(combine.combine([1 - a, 1 - b], [2, 1], method="logit"), 1 - out, atol=1e-9)
    # Always between the runs' values, element-wise.
    lo, hi = np.minimum(clip(a), clip(b)), np.maximum(clip(a), clip(b))
    assert (out >= lo - 1e-12).all() and (out <= hi + 1e-12).all()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(combine.METHODS))
def test_fitted_weights_never_score_below_the_best_single_run_on_their_data(seed, method):
    y, preds = _preds(seed)
    weights, info = combine.fit_weights(preds, y, method, rounds=6)
    fitted = combine.mean_ap(y, combine.combine(preds, weights, method))
    assert fitted == pytest.approx(info["fitted_mAP"])
    assert fitted >= max(combine.mean_ap(y, p) for p in preds) - 1e-12
    assert weights.sum() == pytest.approx(1) and (weights >= 0).all()


def test_normal_gating_scales_abnormal_scores_by_the_normal_score():
    from cxrlt import config

    probs = np.array([[0.8, 0.5, 0.2], [0.1, 0.9, 0.6]], np.float32)
    gated = combine.normal_gating(probs, ["Atelectasis", "No Finding", "Nodule"], 0.5)
    expected = probs * (1 - 0.5 * probs[:, [1]])
    expected[:, 1] = probs[:, 1]  # the normal class itself is kept
    np.testing.assert_allclose(gated, expected, rtol=1e-6)
    assert gated.dtype == probs.dtype
    np.testing.assert_allclose(combine.normal_gating(probs, ["a", "normal", "b"], 1.0)[:, 0], [0.8 * 0.5, 0.1 * 0.1], rtol=1e-6)
    assert combine.normal_gating(probs, ["a", "b", "c"], 0.0) is probs  # off: untouched, no class needed
    with pytest.raises(config.ConfigError, match="needs a normal class \\('No Finding' or 'Normal'\\)"):
        combine.normal_gating(probs, ["Atelectasis", "Effusion", "Nodule"], 0.5)
    with pytest.raises(config.ConfigError, match="in \\[0, 1\\]"):
        combine.normal_gating(probs, ["a", "No Finding", "b"], 1.5)


def winner_normal_gating(probs, alpha, eps=1e-6):
    """hieuphamha19/CXR_LT Task1_Long_tailed/inference.py postprocess_normal_gating ("Normal" is their column 0)."""
    p = probs.copy()
    p0 = p[:, 0:1]
    abnormal = np.clip(1.0 - p0, 0.0, 1.0)
    p[:, 1:] = p[:, 1:] * (abnormal ** float(alpha))
    return np.clip(p, eps, 1.0 - eps)


def test_normal_gating_power_is_the_2026_winners_code():
    """--normal-gating-power P: p * (1 - p_normal) ** P, as the winner's inference.py (default --normal_alpha 0.5);
    the normal class kept, whatever its column."""
    from cxrlt import config

    rng = np.random.default_rng(0)
    probs = rng.uniform(0.01, 0.99, (50, 4))
    for power in (0.5, 1.0, 2.0):
        theirs = winner_normal_gating(probs, power)
        ours = combine.normal_gating(probs[:, [1, 0, 2, 3]], ["a", "Normal", "b", "c"], 0.0, power)
        np.testing.assert_allclose(ours[:, [1, 0, 2, 3]], theirs, rtol=1e-12)
    # P = 1 is the linear form with weight 1; P = 0.5 gates less than P = 1 (sqrt(1 - p) >= 1 - p)
    np.testing.assert_allclose(combine.normal_gating(probs, ["Normal", "a", "b", "c"], 0.0, 1.0),
                               combine.normal_gating(probs, ["Normal", "a", "b", "c"], 1.0), rtol=1e-12)
    with pytest.raises(config.ConfigError, match="not both"):
        combine.normal_gating(probs, ["Normal", "a", "b", "c"], 0.5, 0.5)
    with pytest.raises(config.ConfigError, match="--normal-gating-power needs a normal class"):
        combine.normal_gating(probs, ["x", "a", "b", "c"], 0.0, 0.5)


def test_rank_average_breaks_ties_of_the_mean_by_the_rank_average():
    """Two runs, three images: the mean has a tie (0.2, 0.2) between images of different mean rank;
    before the fix both got 0.2 and AP fell from 0.50 (the rank average's) to 0.33."""
    from cxrlt.evaluate import metrics

    a = np.array([[0.1], [0.2], [0.3]])
    b = np.array([[0.3], [0.4], [0.1]])
    y = np.array([0.0, 0.0, 1.0])
    out = combine.combine([a, b], method="rank")[:, 0]
    assert np.isclose(metrics.average_precision(y, out), 0.5)
    assert out[0] < out[2] < out[1]  # mean ranks 0.5, 1.5, 1.0 (of 2)
    # the mean ensemble's values 0.2, 0.2, 0.3; the tie spread downwards (away from 0.5) into the gap below it
    assert np.allclose(sorted(out), [0.15, 0.2, 0.3])


def test_tie_breaking_keeps_order_range_and_the_half_decisions():
    level = np.array([0.0, 0.0, 0.2, 0.2, 0.2, 0.5, 0.5, 0.7, 1.0, 1.0])
    out = combine._break_ties(level)
    assert (np.diff(out) > 0).all() and out.min() >= 0 and out.max() <= 1
    assert ((out >= 0.5) == (level >= 0.5)).all()
