"""Per-class thresholds: tuning never lowers F1 on its data; the map to 0.5 keeps AP/AUC and moves F1 exactly."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cxrlt.evaluate import metrics
from cxrlt.runtime import runs
from cxrlt.evaluate import thresholds as thr


def _random(seed, n=150, c=5):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.03, 0.5, c)).astype(float)
    p = np.clip(rng.beta(0.7, 4.0, (n, c)) + 0.2 * y * rng.random((n, c)), 0, 1)  # mostly below 0.5, like focal CE
    return y, p


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_tuning_never_lowers_f1_versus_half_on_the_data_it_was_tuned_on(seed):
    y, p = _random(seed)
    info = thr.tune(y, p, [f"c{j}" for j in range(y.shape[1])])
    assert info["mF1_tuned"] >= info["mF1_at_0.5"] - 1e-12
    for row in info["per_class"]:
        assert row["f1_tuned"] is None or row["f1_tuned"] >= row["f1_at_0.5"] - 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_the_map_to_half_keeps_ap_and_auc_and_f1_at_half_equals_f1_at_t(seed):
    y, p = _random(seed)
    names = [f"c{j}" for j in range(y.shape[1])]
    t = np.asarray(thr.tune(y, p, names)["thresholds"])
    mapped = thr.to_half(p, t)
    assert mapped.min() >= 0 and mapped.max() <= 1
    before, after = metrics.evaluate(y, p, names, thresholds=t), metrics.evaluate(y, mapped, names)
    assert after["mAP"] == pytest.approx(before["mAP"], abs=1e-12)
    assert after["mAUC"] == pytest.approx(before["mAUC"], abs=1e-12)
    assert [r["f1"] for r in after["per_class"]] == pytest.approx([r["f1"] for r in before["per_class"]], abs=1e-12)
    assert np.allclose(thr.to_half(t[None, :], t), 0.5)  # t itself lands exactly on 0.5


def test_a_run_writes_its_thresholds_and_reports_mf1_both_ways(demo_run, capsys):
    root, _, _ = demo_run
    run = runs.Run(root / "runs" / "demo")
    info = json.loads(run.thresholds_json.read_text())
    table, oof = runs.oof_with_labels(run)
    t = thr.load(run.thresholds_json, table.classes)
    assert info["classes"] == list(run.classes()) and len(t) == len(table.classes)
    assert info["mF1_tuned"] >= info["mF1_at_0.5"]
    assert info["mF1_tuned"] == pytest.approx(metrics.evaluate(table.labels, oof, list(table.classes), thresholds=t)["mF1"])
    summary = json.loads(run.metrics_json.read_text())
    assert summary["oof_tuned_thresholds"]["mF1"] == pytest.approx(info["mF1_tuned"])
    line = thr.mf1_line(table.labels, oof, table.classes, t)
    assert "at 0.5" in line and "per-class thresholds" in line


def test_bad_threshold_files_are_named(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"classes": ["a", "b"], "thresholds": [0.3, 1.0]}))
    with pytest.raises(thr.ThresholdsError, match="strictly between 0 and 1.*b"):
        thr.load(path, ["a", "b"])
    with pytest.raises(thr.ThresholdsError, match="no threshold for \\['c'\\]"):
        thr.load(path, ["a", "c"])
    path.write_text("{not json")
    with pytest.raises(thr.ThresholdsError, match="not a cxrlt thresholds.json"):
        thr.load(path, ["a"])
    with pytest.raises(thr.ThresholdsError, match="does not exist"):
        thr.load(tmp_path / "missing.json", ["a"])
