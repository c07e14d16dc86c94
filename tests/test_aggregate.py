"""Study-level aggregation: pooled scores are shared by a study's images, and computed as stated."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from cxrlt.predict import aggregate
from cxrlt.runtime import runs


def _case(seed, n=40, c=4):
    rng = np.random.default_rng(seed)
    studies = rng.integers(0, max(1, n // 3), n).astype(str)
    views = rng.choice(["PA", "AP", "LATERAL", "LL", ""], n)
    return rng.random((n, c)).astype(np.float32), studies, views


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["mean", "max", "view_mean", "view_groups"]))
def test_every_image_of_a_study_gets_the_same_scores(seed, method):
    probs, studies, views = _case(seed)
    pooled = aggregate.aggregate(probs, studies, method, views=views)
    assert pooled.shape == probs.shape and pooled.dtype == probs.dtype
    for s in np.unique(studies):
        rows = pooled[studies == s]
        assert np.array_equal(rows, np.repeat(rows[:1], len(rows), axis=0))
        inside = probs[studies == s]
        assert (rows[0] >= inside.min(0) - 1e-6).all() and (rows[0] <= inside.max(0) + 1e-6).all()


def test_methods_compute_what_they_say():
    probs = np.array([[0.2, 0.9], [0.6, 0.1], [0.5, 0.5]], np.float32)
    studies, views = ["s1", "s1", "s2"], ["PA", "LATERAL", "AP"]
    assert np.allclose(aggregate.aggregate(probs, studies, "mean")[0], [0.4, 0.5])
    assert np.allclose(aggregate.aggregate(probs, studies, "max")[1], [0.6, 0.9])
    weighted = aggregate.aggregate(probs, studies, "view_mean", views=views)  # PA 1.0, LATERAL 0.5
    assert np.allclose(weighted[0], [(0.2 + 0.5 * 0.6) / 1.5, (0.9 + 0.5 * 0.1) / 1.5])
    for method in aggregate.METHODS:  # a study of one image keeps its scores
        assert np.allclose(aggregate.aggregate(probs, studies, method, views=views)[2], probs[2])
    assert np.array_equal(aggregate.aggregate(probs, studies, "none"), probs)


def _ref_view_groups(probs, studies, views):
    """The CXR-LT 2024 5th-place team's post-processing (yamagishi0824/cxrlt24-multiview-pp,
    code/postprocess.py), re-derived in pandas: is_frontal = ViewPosition contains AP or PA
    (case-insensitive, NaN -> False); mean per (study, is_frontal), then the mean over a study's groups."""
    frame = pd.DataFrame(np.asarray(probs, np.float64))
    classes = list(frame.columns)
    frame["study_id"] = list(studies)
    frame["is_frontal"] = pd.Series(list(views), dtype=object).str.contains("AP|PA", case=False, na=False)
    grouped = frame.groupby(["study_id", "is_frontal"])[classes].mean().reset_index()
    grouped = grouped.groupby(["study_id"])[classes].mean()
    return grouped.loc[frame["study_id"]].to_numpy()


def test_view_groups_is_the_mean_of_the_frontal_mean_and_the_lateral_mean():
    probs = np.array([[0.2], [0.4], [0.9], [0.5], [0.7], [0.1], [0.3]], np.float32)
    studies = ["a", "a", "a", "b", "b", "c", "c"]
    views = ["PA", "AP", "LATERAL", "AP", "PA", "LL", "lateral"]
    pooled = aggregate.aggregate(probs, studies, "view_groups", views=views)
    assert np.allclose(pooled[:3], ((0.2 + 0.4) / 2 + 0.9) / 2)   # two frontal, one lateral: not the plain mean 0.5
    assert np.allclose(pooled[3:5], 0.6) and np.allclose(pooled[5:], 0.2)   # one group only: its mean
    for seed in range(20):
        p, s, v = _case(seed)
        np.testing.assert_allclose(aggregate.aggregate(p, s, "view_groups", views=v), _ref_view_groups(p, s, v),
                                   rtol=1e-6)
    assert np.allclose(aggregate.aggregate(probs, studies, "view_groups"), aggregate.aggregate(probs, studies, "mean"))


def test_view_groups_puts_a_blank_view_with_the_laterals_as_the_5th_place_team():
    """About 4 % of the 2024 images have no ViewPosition; the team's get_frontal counts them (and LAO,
    SWIMMERS, ...) in the non-frontal group, AP AXIAL and PA LLD as frontal. A study of PA 0.2,
    LATERAL 0.6 and a blank 1.0: (0.2 + (0.6 + 1.0) / 2) / 2 = 0.5 (counted frontal it was 0.6)."""
    probs = np.array([[0.2], [0.6], [1.0], [0.1], [0.5], [0.9], [0.3]], np.float32)
    studies = ["s", "s", "s", "t", "t", "t", "t"]
    views = ["PA", "LATERAL", "", "AP AXIAL", "PA LLD", "LAO", None]
    pooled = aggregate.aggregate(probs, studies, "view_groups", views=views)
    assert np.allclose(pooled[:3], 0.5)
    assert np.allclose(pooled[3:], ((0.1 + 0.5) / 2 + (0.9 + 0.3) / 2) / 2)
    np.testing.assert_allclose(pooled, _ref_view_groups(probs, studies, views), rtol=1e-6)


def test_view_weights_are_configurable_and_zero_weights_fall_back_to_the_mean():
    probs = np.array([[0.2], [0.6]], np.float32)
    only_frontal = aggregate.aggregate(probs, ["s", "s"], "view_mean", views=["pa", "lateral"],
                                       view_weights={"PA": 1, "LATERAL": 0, "default": 1})
    assert np.allclose(only_frontal, 0.2)
    all_zero = aggregate.aggregate(probs, ["s", "s"], "view_mean", views=["LATERAL", "LL"],
                                   view_weights={"LATERAL": 0, "LL": 0, "default": 1})
    assert np.allclose(all_zero, 0.4)
    assert aggregate.parse_view_weights(["PA=1", "LATERAL=0.25"]) == {"PA": 1.0, "LATERAL": 0.25}
    for bad in (["PA"], ["PA=x"], ["LATERAL=-1"]):
        with pytest.raises(aggregate.AggregationError):
            aggregate.parse_view_weights(bad)
    with pytest.raises(aggregate.AggregationError, match="one of"):
        aggregate.aggregate(probs, ["s", "s"], "median")


def test_measured_on_a_real_runs_oof_predictions(demo_run, tmp_path, capsys):
    """The CLI scores every method on the demo run's OOF (the demo has frontal + lateral studies)."""
    root, _, _ = demo_run
    run = runs.Run(root / "runs" / "demo")
    assert aggregate.main(["--run", str(run.root), "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "a.json").read_text())
    assert set(result["methods"]) == set(aggregate.METHODS) and "view_mean" in out
    assert result["study_sizes"].get("2", 0) > 0  # there is something to pool
    assert result["methods"]["none"]["mAP"] == pytest.approx(json.loads(run.metrics_json.read_text())["oof"]["mAP"])
    table, probs = runs.oof_with_labels(run)
    pooled = aggregate.aggregate(probs, table.studies, "mean")
    frame = pd.DataFrame(pooled).assign(study=table.studies)
    assert (frame.groupby("study").nunique() == 1).all().all()


def test_predict_option_pools_a_runs_test_predictions(demo_run, capsys):
    """predict --study-aggregation max: every image of a study gets the study's maximum (cached fold predictions)."""
    from cxrlt.predict import inference as predict

    root, _, _ = demo_run
    run = runs.Run(root / "runs" / "demo")
    assert predict.main(["--run", str(run.root), "--study-aggregation", "max"]) == 0
    assert "at per-class thresholds" in capsys.readouterr().out
    pooled = pd.read_csv(run.root / "predictions" / "test.study_max.csv", dtype={"id": str})
    test = pd.read_csv(root / "data" / "test.csv", dtype={"dicom_id": str, "study_id": str})
    merged = pooled.merge(test[["dicom_id", "study_id"]], left_on="id", right_on="dicom_id")
    assert len(merged) == len(test)
    assert (merged.groupby("study_id")[list(run.classes())].nunique() == 1).all().all()
    assert merged.study_id.duplicated().any()  # some study really has two images
