"""Ensembles of real runs: weights fitted on OOF, shared-fold refusal, configs, --check, TTA and OOF coverage.

The real-run tests use the session `demo_run` and one derived run: the same fold models predicting
with the horizontal flip only ("demo_hflip"), a genuinely different predictor sharing the demo folds.
"""

import json
import zipfile
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cxrlt.data import classes as cls
from cxrlt.ensemble import combine, ensembler as ensemble
from cxrlt.evaluate import metrics
from cxrlt.runtime import runs

from .test_submission import _broken

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- configs and --check

@pytest.mark.parametrize("name, rows", [("08_ensemble_5_6", ("05", "06")), ("09_ensemble_5_7", ("05", "07")),
                                        ("10_ensemble_5_6_7", ("05", "06", "07"))])
def test_seed_002_ensemble_configs_name_the_runs_the_row_configs_train(name, rows):
    settings_ = ensemble.load_settings(REPO / "configs" / f"{name}.yaml")
    ensemble.validate_settings(settings_)
    trained = {p.stem for p in (REPO / "configs").glob("0[5-7]_*.yaml")}  # train names a run after its config
    assert [Path(r).name[:2] for r in settings_["runs"]] == list(rows)
    assert {Path(r).name for r in settings_["runs"]} <= trained
    assert settings_["method"] == "mean" and settings_["weights"] is None and not settings_["fit_weights"]


def test_ensemble_config_errors_are_clear(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"model": {"backbone": "convnext-tiny"}}))
    with pytest.raises(ValueError, match="exactly one mapping, `ensemble:`"):
        ensemble.load_settings(path)
    path.write_text(yaml.safe_dump({"ensemble": {"metod": "rank"}}))
    with pytest.raises(ValueError, match="did you mean 'method'"):
        ensemble.load_settings(path)


@pytest.mark.parametrize("kind, named", [("missing id", "missing"), ("duplicate", "duplicate"), ("nan", "'Edema'"),
                                         ("out of range", "'Hernia'"), ("column order", "out of order")])
def test_check_mode_rejects_each_broken_submission_by_name(kind, named, tmp_path, capsys):
    frame, _ = _broken(kind)
    frame.to_csv(tmp_path / "sub.csv", index=False)
    pd.DataFrame({"dicom_id": [f"id{i}" for i in range(5)], "path": [f"{i}.png" for i in range(5)]}).to_csv(
        tmp_path / "test.csv", index=False)
    with pytest.raises(SystemExit) as exc:
        ensemble.main(["--check", str(tmp_path / "sub.csv"), "--labels", str(tmp_path / "test.csv")])
    assert exc.value.code == 2 and named in capsys.readouterr().err


# ----------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def hflip_run(demo_run, tmp_path_factory):
    """(demo run, its OOF passes per view, a run dir predicting with hflip only, sharing the demo folds)."""
    import tensorflow as tf

    from cxrlt.model import models
    from cxrlt.data import pipeline

    root, _, _ = demo_run
    run = runs.Run(root / "runs" / "demo")
    cfg = run.config()
    table, _ = runs.oof_with_labels(run)
    fold_of = pd.read_csv(run.folds_csv, dtype={"id": str}).set_index("id").loc[table.ids, "fold"].to_numpy()
    passes = {v: np.zeros((len(table), len(table.classes)), np.float32) for v in ("identity", "hflip")}
    for k in run.finished_folds():
        model = models.load(run.model_path(k), num_classes=len(table.classes))
        rows = np.flatnonzero(fold_of == k)
        done = 0
        for images in pipeline.eval_dataset(table.paths[rows], cfg, batch_size=64):  # two separate eager passes
            n = int(images.shape[0])
            passes["identity"][rows[done:done + n]] = model(images, training=False).numpy()
            passes["hflip"][rows[done:done + n]] = model(tf.reverse(images, axis=[2]), training=False).numpy()
            done += n
    other = tmp_path_factory.mktemp("variants") / "demo_hflip"
    shutil.copytree(run.root, other, ignore=shutil.ignore_patterns("predictions", "thresholds.json", "metrics.json"))
    variant = runs.Run(other)
    cfg["predict"]["tta"] = ["hflip"]
    variant.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    runs.write_predictions(variant.oof_csv, table.ids, passes["hflip"], table.classes, extra={"fold": fold_of})
    for k in run.finished_folds():
        runs.write_predictions(variant.fold_dir(k) / "oof.csv", table.ids[fold_of == k], passes["hflip"][fold_of == k],
                               table.classes)
    return run, passes, variant


def test_oof_predictions_cover_every_training_image_exactly_once(demo_run):
    root, _, _ = demo_run
    run = runs.Run(root / "runs" / "demo")
    oof = pd.read_csv(run.oof_csv, dtype={"id": str})
    folds = pd.read_csv(run.folds_csv, dtype={"id": str})
    train_ids = pd.read_csv(root / "data" / "train.csv", dtype={"dicom_id": str}).dicom_id
    assert not oof.id.duplicated().any() and set(oof.id) == set(train_ids) and len(oof) == len(train_ids)
    assert (oof.set_index("id").fold == folds.set_index("id").loc[oof.id, "fold"]).all()
    for k in run.finished_folds():  # each image's row is its own fold's validation prediction
        fold_rows = pd.read_csv(run.fold_dir(k) / "oof.csv", dtype={"id": str}).set_index("id")
        assert set(fold_rows.index) == set(oof.id[oof.fold == k])
        mine = oof.set_index("id").loc[fold_rows.index, list(run.classes())]
        assert np.allclose(mine.to_numpy(), fold_rows[list(run.classes())].to_numpy())


def test_tta_equals_the_mean_of_the_identity_and_flip_passes(hflip_run):
    run, passes, _ = hflip_run
    table, oof = runs.oof_with_labels(run)  # written by train with predict.tta [identity, hflip]
    assert not np.allclose(passes["identity"], passes["hflip"], atol=1e-4)  # the flip changes the scores
    assert np.allclose(oof, (passes["identity"] + passes["hflip"]) / 2, atol=2e-5)


def test_weights_fitted_on_real_oof_and_refused_without_shared_folds(hflip_run, tmp_path, capsys):
    run, passes, variant = hflip_run
    table, preds = ensemble.load_oof([run, variant])
    assert np.allclose(preds[1], passes["hflip"], atol=1e-5)
    weights, info = combine.fit_weights(preds, table.labels, "mean", rounds=8)
    assert info["fitted_mAP"] >= max(info["single_mAP"]) - 1e-12
    assert info["fitted_mAP"] == pytest.approx(combine.mean_ap(table.labels, combine.combine(preds, weights)))
    # The CLI: fit, rank-combine, pool per study, map OOF-tuned thresholds to 0.5; a valid submission comes out.
    out = tmp_path / "ens.csv"
    assert ensemble.main(["--runs", str(run.root), str(variant.root), "--fit-weights", "--method", "rank",
                          "--study-aggregation", "mean", "--thresholds", "oof", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted weights" in printed and "mF1 at 0.5" in printed and "at OOF-tuned thresholds" in printed
    sub = pd.read_csv(out, dtype={"dicom_id": str})
    test = pd.read_csv(Path(run.config()["data"]["test_labels"]), dtype={"dicom_id": str})
    assert list(sub.columns) == ["dicom_id", *cls.CXRLT2023] and set(sub.dicom_id) == set(test.dicom_id)
    pooled = sub.merge(test[["dicom_id", "study_id"]], on="dicom_id").groupby("study_id")[list(cls.CXRLT2023)].nunique()
    assert (pooled == 1).all().all()  # study aggregation: one score per study
    saved = json.loads(out.with_suffix(".metrics.json").read_text())
    assert saved["mF1_tuned"] == pytest.approx(metrics.evaluate(
        test[list(cls.CXRLT2023)].to_numpy(), sub[list(cls.CXRLT2023)].to_numpy(), list(cls.CXRLT2023))["mF1"], abs=2e-3)
    # Another split: fitting is refused with the reason, and nothing is written.
    folds = pd.read_csv(variant.folds_csv)
    folds.loc[:4, "fold"] = 1 - folds.loc[:4, "fold"]
    folds.to_csv(variant.folds_csv, index=False)
    try:
        with pytest.raises(SystemExit) as exc:
            ensemble.main(["--runs", str(run.root), str(variant.root), "--fit-weights", "--out", str(tmp_path / "x.csv")])
        assert exc.value.code == 2
        assert "same folds.csv" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    finally:
        folds.loc[:4, "fold"] = 1 - folds.loc[:4, "fold"]
        folds.to_csv(variant.folds_csv, index=False)


def test_an_ensemble_config_file_drives_the_cli(demo_run, tmp_path, capsys):
    root, _, _ = demo_run
    config = tmp_path / "e.yaml"
    config.write_text(yaml.safe_dump({"ensemble": {"runs": [str(root / "runs" / "demo")], "method": "logit",
                                                   "out": str(tmp_path / "e.csv")}}))
    assert ensemble.main(["--config", str(config), "--no-zip"]) == 0
    assert "method logit" in capsys.readouterr().out
    single = pd.read_csv(root / "submissions" / "demo.csv", dtype={"dicom_id": str}).set_index("dicom_id")
    logit = pd.read_csv(tmp_path / "e.csv", dtype={"dicom_id": str}).set_index("dicom_id").loc[single.index]
    assert np.allclose(logit.to_numpy(), single.to_numpy(), atol=2e-6)  # one run: logit averaging is the identity


def test_normal_gating_and_view_groups_from_the_cli(demo_run, tmp_path, capsys):
    root, _, _ = demo_run
    run = str(root / "runs" / "demo")
    assert ensemble.main(["--runs", run, "--normal-gating", "0.5", "--out", str(tmp_path / "g.csv"), "--no-zip"]) == 0
    assert "normal gating 0.5" in capsys.readouterr().out
    single = pd.read_csv(root / "submissions" / "demo.csv", dtype={"dicom_id": str}).set_index("dicom_id")
    gated = pd.read_csv(tmp_path / "g.csv", dtype={"dicom_id": str}).set_index("dicom_id").loc[single.index]
    expected = single.to_numpy() * (1 - 0.5 * single[["No Finding"]].to_numpy())
    expected[:, list(single.columns).index("No Finding")] = single["No Finding"].to_numpy()
    np.testing.assert_allclose(gated.to_numpy(), expected, atol=2e-6)
    assert ensemble.main(["--runs", run, "--study-aggregation", "view_groups", "--out", str(tmp_path / "v.csv"),
                          "--no-zip"]) == 0
    assert "study aggregation view_groups" in capsys.readouterr().out
    for bad in (["--normal-gating", "2"], ["--normal-gating", "-0.1"]):
        with pytest.raises(SystemExit):
            ensemble.main(["--runs", run, *bad, "--out", str(tmp_path / "x.csv")])
        assert "ensemble.normal_gating must be a number in [0, 1]" in capsys.readouterr().err
    # the 2026 winner's power form: x (1 - p_normal) ** 0.5
    assert ensemble.main(["--runs", run, "--normal-gating-power", "0.5", "--out", str(tmp_path / "p.csv"),
                          "--no-zip"]) == 0
    assert "normal gating power 0.5" in capsys.readouterr().out
    powered = pd.read_csv(tmp_path / "p.csv", dtype={"dicom_id": str}).set_index("dicom_id").loc[single.index]
    expected = single.to_numpy() * np.sqrt(1 - single[["No Finding"]].to_numpy())
    expected[:, list(single.columns).index("No Finding")] = single["No Finding"].to_numpy()
    np.testing.assert_allclose(powered.to_numpy(), expected, atol=2e-6)
    with pytest.raises(SystemExit):
        ensemble.main(["--runs", run, "--normal-gating", "0.5", "--normal-gating-power", "0.5", "--out",
                       str(tmp_path / "x.csv")])
    assert "two forms of one step" in capsys.readouterr().err


def test_prediction_names_a_broken_image_in_the_list_before_any_model_runs(demo_run, tmp_path, capsys):
    from cxrlt.predict import inference as predict

    root, _, _ = demo_run
    frame = pd.read_csv(root / "data" / "test.csv").head(4)
    images = tmp_path / "images"
    for rel in frame["path"]:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "data" / rel, images / rel)
    broken = images / frame["path"].iloc[2]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a truncated download
    frame.to_csv(tmp_path / "list.csv", index=False)
    cache = root / "runs" / "demo" / "predictions"
    before = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    with pytest.raises(SystemExit) as stop:
        predict.main(["--run", str(root / "runs" / "demo"), "--labels", str(tmp_path / "list.csv"),
                      "--image-root", str(images), "--out", str(tmp_path / "p.csv")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "1 of 4 prediction images cannot be used" in err and frame["path"].iloc[2] in err
    assert "every listed image" in err or "submission needs" in err
    assert not (tmp_path / "p.csv").exists()
    assert (sorted(p.name for p in cache.iterdir()) if cache.exists() else []) == before


def _kill_after_fold0_is_cached(module: str, argv: list, run: Path) -> None:
    """Run `python -m module argv` and SIGKILL it as soon as fold 0's prediction cache of `run` lands."""
    import os
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", module, *argv], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not list(run.glob("predictions/*/fold0.csv")):
        assert process.poll() is None, f"{module} ended before fold 0 was cached:\n{process.stderr.read()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    process.kill()
    process.communicate()


def _copy_without_predictions(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("predictions"))
    return to


def test_prediction_killed_after_a_fold_resumes_from_its_cache_to_the_same_scores(demo_run, tmp_path):
    from cxrlt.predict import inference as predict

    root, _, _ = demo_run
    run = _copy_without_predictions(root / "runs" / "demo", tmp_path / "demo")
    image_list = root / "data" / "train.csv"  # 800+ images: fold 1 is still running when fold 0's cache lands
    argv = ["--run", str(run), "--labels", str(image_list), "--out", str(tmp_path / "p.csv")]
    _kill_after_fold0_is_cached("cxrlt.predict", argv, run)
    fold0 = next(run.glob("predictions/*/fold0.csv"))
    assert not (tmp_path / "p.csv").exists() and not fold0.with_name("fold1.csv").exists()
    assert not [p for p in fold0.parent.iterdir() if p.name.startswith(".")]  # no half-written cache file
    stamp = fold0.stat().st_mtime_ns
    assert predict.main(argv) == 0
    assert fold0.stat().st_mtime_ns == stamp  # fold 0 came from the cache
    reference = tmp_path / "reference.csv"
    assert predict.main(["--run", str(root / "runs" / "demo"), "--labels", str(image_list), "--out", str(reference)]) == 0
    assert (tmp_path / "p.csv").read_bytes() == reference.read_bytes()


def test_ensemble_killed_mid_prediction_reruns_to_byte_identical_files(demo_run, tmp_path):
    root, _, _ = demo_run
    reference = tmp_path / "reference" / "demo.csv"
    assert ensemble.main(["--runs", str(root / "runs" / "demo"), "--out", str(reference)]) == 0
    run = _copy_without_predictions(root / "runs" / "demo", tmp_path / "demo")
    out = tmp_path / "sub" / "demo.csv"
    argv = ["--runs", str(run), "--out", str(out)]
    _kill_after_fold0_is_cached("cxrlt.ensemble", argv, run)
    assert not out.exists() and not out.with_suffix(".zip").exists()
    assert ensemble.main(argv) == 0
    for suffix in (".csv", ".metrics.json"):
        assert out.with_suffix(suffix).read_bytes() == reference.with_suffix(suffix).read_bytes(), suffix
    # the zip: every entry byte-identical, but code/ensemble_command.txt, which records each command's own paths
    with zipfile.ZipFile(out.with_suffix(".zip")) as rerun, zipfile.ZipFile(reference.with_suffix(".zip")) as first:
        assert rerun.namelist() == first.namelist()
        for name in rerun.namelist():
            if name != "code/ensemble_command.txt":
                assert rerun.read(name) == first.read(name), name
        assert f"--runs {run} --out {out}" in rerun.read("code/ensemble_command.txt").decode()


def test_a_partial_run_is_said_in_the_wrote_line_and_its_zip_needs_allow_partial(demo_run, tmp_path, capsys):
    """ensemble and predict used to write a submission from 1 of 2 folds with only an INFO line."""
    from cxrlt.predict import inference as predict

    root, _, _ = demo_run
    run = shutil.copytree(root / "runs" / "demo", tmp_path / "demo")  # fold caches kept: fold 0 is not re-predicted
    (run / "fold1" / "done.json").unlink()
    out = tmp_path / "sub" / "p.csv"
    with pytest.raises(SystemExit) as stop:
        ensemble.main(["--run", str(run), "--out", str(out)])
    assert stop.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert f"{run}: 1 of 2 folds" in err and "--allow-partial" in err
    assert ensemble.main(["--run", str(run), "--out", str(out), "--allow-partial"]) == 0
    assert f"PARTIAL: {run}: 1 of 2 folds" in capsys.readouterr().out and out.with_suffix(".zip").exists()
    assert predict.main(["--run", str(run), "--out", str(tmp_path / "p.csv")]) == 0
    assert "from 1 of 2 folds -- PARTIAL" in capsys.readouterr().out


def test_ensemble_out_may_be_a_folder(demo_run, tmp_path, capsys):
    """`--out submissions/` (a folder) ended in an IsADirectoryError traceback."""
    root, _, _ = demo_run
    folder = tmp_path / "submissions"
    folder.mkdir()
    assert ensemble.main(["--run", str(root / "runs" / "demo"), "--out", str(folder), "--no-zip"]) == 0
    assert (folder / "demo.csv").is_file()
    assert f"wrote {folder / 'demo.csv'}" in capsys.readouterr().out
