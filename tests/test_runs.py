"""python -m cxrlt.runs lists runs with their scores, including unfinished and broken ones."""

import json
import shutil

import pytest

from cxrlt.runtime import runs


def test_lists_a_finished_run_with_its_oof_and_per_fold_scores(demo_run, capsys):
    root, _, _ = demo_run
    assert runs.main([str(root / "runs")]) == 0
    table = capsys.readouterr().out
    assert "demo" in table and "efficientnetv2-b0" in table and "2/2" in table
    assert runs.main([str(root / "runs"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    saved = json.loads((root / "runs" / "demo" / "metrics.json").read_text())
    assert row["oof"]["mAP"] == pytest.approx(saved["oof"]["mAP"]) and f"{saved['oof']['mAP']:.4f}" in table
    assert row["per_fold"]["mAP"]["mean"] == pytest.approx(saved["folds"]["mAP"]["mean"])
    assert row["oof"]["mF1_tuned"] >= row["oof"]["mF1"]
    assert (row["folds_done"], row["folds"], row["size"]) == (2, 2, 32)


def test_unfinished_and_broken_runs_are_listed_not_fatal(demo_run, tmp_path, capsys):
    root, _, _ = demo_run
    half = tmp_path / "half"
    shutil.copytree(root / "runs" / "demo", half, ignore=shutil.ignore_patterns("predictions", "*.keras"))
    for name in ("oof.csv", "metrics.json", "thresholds.json"):
        (half / name).unlink()
    (half / "fold1" / "done.json").unlink()
    (half / "fold0" / "model.keras").write_bytes(b"")  # is_done needs the file, not its contents
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("train: [")
    assert runs.main([str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["half"]["folds_done"] == 1 and rows["half"]["oof"] is None
    assert rows["half"]["per_fold"]["mAP"]["values"] == [json.loads((half / "fold0" / "metrics.json").read_text())["mAP"]]
    assert "unreadable run" in rows["broken"]["error"]
    assert runs.main([str(tmp_path)]) == 0 and "unreadable run" in capsys.readouterr().out
    assert runs.main([str(tmp_path / "nowhere")]) == 2
