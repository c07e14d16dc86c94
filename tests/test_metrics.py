import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrlt.evaluate import metrics


def _random(seed, n=80, c=6, ties=True):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.05, 0.6, c)).astype(float)
    p = rng.random((n, c))
    return y, (np.round(p, 1) if ties else p)


@pytest.mark.parametrize("seed", range(10))
def test_per_class_metrics_equal_scikit_learn_including_ties(seed):
    y, p = _random(seed, ties=seed % 2 == 0)
    result = metrics.evaluate(y, p, [f"c{j}" for j in range(y.shape[1])])
    for j, row in enumerate(result["per_class"]):
        if 0 < y[:, j].sum() < len(y):
            assert row["ap"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-12)
            assert row["auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
            assert row["f1"] == pytest.approx(f1_score(y[:, j], p[:, j] >= 0.5, zero_division=0), abs=1e-12)
    scored = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    assert result["mAP"] == pytest.approx(average_precision_score(y[:, scored], p[:, scored], average="macro"))
    assert result["mAUC"] == pytest.approx(roc_auc_score(y[:, scored], p[:, scored], average="macro"))


def test_classes_without_positives_are_reported_not_averaged():
    y, p = _random(1)
    y[:, 2] = 0
    y[:, 4] = 1
    names = [f"c{j}" for j in range(6)]
    result = metrics.evaluate(y, p, names)
    assert result["undefined"] == [{"class": "c2", "reason": "no positives"}, {"class": "c4", "reason": "no negatives"}]
    assert result["per_class"][2]["ap"] is None and result["n_scored"] == 4
    kept = [0, 1, 3, 5]
    assert result["mAP"] == pytest.approx(np.mean([average_precision_score(y[:, j], p[:, j]) for j in kept]))
    json.dumps(result)  # JSON-serialisable, no NaN
    assert "c2 (no positives)" in metrics.format_report(result)


def test_group_means_and_prevalence_baseline():
    y, p = _random(2)
    names = [f"c{j}" for j in range(6)]
    groups = dict(zip(names, ["head", "head", "medium", "medium", "tail", "tail"]))
    result = metrics.evaluate(y, p, names, groups=groups)
    aps = [r["ap"] for r in result["per_class"]]
    assert result["groups"]["tail"]["mAP"] == pytest.approx(np.mean(aps[4:]))
    constant = metrics.evaluate(y, np.full_like(p, 0.3), names)
    assert constant["mAP"] == pytest.approx(result["prevalence_baseline_mAP"])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_metrics_are_invariant_to_image_order_and_bounded(seed):
    y, p = _random(seed, n=30, c=3)
    names = ["a", "b", "c"]
    perm = np.random.default_rng(seed).permutation(len(y))
    a, b = metrics.evaluate(y, p, names), metrics.evaluate(y[perm], p[perm], names)
    for key in ("mAP", "mAUC", "mF1"):
        assert a[key] == pytest.approx(b[key]) if a[key] is not None else b[key] is None
        assert a[key] is None or 0.0 <= a[key] <= 1.0


def test_tuned_thresholds_never_lower_f1_on_their_data():
    for seed in range(5):
        y, p = _random(seed, n=200)
        t = metrics.tune_thresholds(y, p)
        names = [f"c{j}" for j in range(6)]
        assert metrics.evaluate(y, p, names, thresholds=t)["mF1"] >= metrics.evaluate(y, p, names)["mF1"] - 1e-12


def test_fold_summary_uses_population_std_and_median():
    folds = [{"mAP": v, "mAUC": 0.8, "mF1": 0.1} for v in (0.2, 0.3, 0.7)]
    s = metrics.summarize_folds(folds)
    assert s["mAP"]["std"] == pytest.approx(np.std([0.2, 0.3, 0.7], ddof=0))
    assert s["mAP"]["median"] == 0.3 and s["mAP"]["mean"] == pytest.approx(0.4)


@pytest.mark.parametrize("y, p, match", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "same"),
    (np.full((3, 2), 0.5), np.zeros((3, 2)), "0 or 1"),
    (np.zeros((3, 2)), np.array([[0, np.nan]] * 3), "NaN"),
])
def test_bad_inputs_are_refused(y, p, match):
    with pytest.raises(ValueError, match=match):
        metrics.evaluate(y, p, ["a", "b"][: y.shape[1]])
