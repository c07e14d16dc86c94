"""cxrlt.ablate: grids -> one config per variant, one fold assignment for all, the mean/std/median table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrlt.tools import ablate
from cxrlt import config

from .conftest import REPO

STATS = ("mean", "std", "median")


def _grid(tmp_path, variants, base=None, name="grid"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": base or {}, "variants": variants}))
    return path


def _forwarded(train_argv):
    """A demo run's train flags without its --out/--name (the runner sets those)."""
    out, skip = [], False
    for arg in train_argv:
        if skip:
            skip = False
        elif arg in ("--out", "--name"):
            skip = True
        else:
            out.append(arg)
    return out


@pytest.mark.parametrize("grid", sorted((REPO / "configs" / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_grids_resolve_to_distinct_valid_configs(tmp_path, grid):
    loaded = ablate.load_grid(grid)
    resolved = {}
    for name in loaded["variants"]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(ablate.variant_config(loaded, name, None)))
        resolved[name] = ablate.resolve(ablate.train_argv(path, tmp_path, name, ["--demo"]))
    settings = [config.diff(resolved[next(iter(resolved))], cfg, ignore=("name",)) for cfg in resolved.values()]
    assert len({tuple(s) for s in settings}) == len(resolved)  # no two variants train the same thing
    if grid.stem == "seed003":
        assert resolved["sqrt"]["sampling"]["sampler"] == "sqrt" and resolved["class"]["sampling"]["sampler"] == "class"
        assert [resolved[f"bal_mixup_{a}"]["mix"]["balanced_mixup"] for a in ("0.1", "0.2", "0.3")] == [0.1, 0.2, 0.3]
        # another loss's params start from its own defaults, not from focal's (config.merge)
        assert resolved["cb_loss"]["loss"] == {"name": "class_balanced", "params": {"beta": 0.999}}
        assert all(cfg["mix"]["mosaic"] == 0 and cfg["loss"]["name"] in ("bce", "focal", "class_balanced")
                   for cfg in resolved.values())


def test_grid_errors_name_the_problem(tmp_path):
    with pytest.raises(ablate.GridError, match="share the data"):
        ablate.load_grid(_grid(tmp_path, {"a": {}, "b": {"data.labels": "other.csv"}}))
    with pytest.raises(ablate.GridError, match="share the data"):
        ablate.load_grid(_grid(tmp_path, {"a": {"train": {"folds": 3}}}))
    with pytest.raises(ablate.GridError, match="plain file name"):
        ablate.load_grid(_grid(tmp_path, {"a/b": {}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: {a: {}}\nvariantz: {}\n")
    with pytest.raises(ablate.GridError, match="unknown top-level"):
        ablate.load_grid(bad)
    grid = _grid(tmp_path, {"a": {}, "b": {"mix.mosaic": 0.5}})
    with pytest.raises(SystemExit) as stop:  # the command line may not override what the variants vary
        ablate.main(["--grid", str(grid), "--demo", "--out", str(tmp_path), "--set", "mix.mosaic=0"])
    assert stop.value.code == 2


def test_summary_is_mean_population_std_and_median_over_folds():
    rows = [{"fold": k, "mAP": v, "mAUC": 0.6, "mF1": 0.1, "tail_mAP": None, "mMCC": 0.0, "mBACC": 0.5,
             "chance": {"mAP": 0.1, "mAUC": 0.5, "mF1": 0.0, "tail_mAP": 0.02, "mMCC": 0.0, "mBACC": 0.5}}
            for k, v in enumerate([0.2, 0.3, 0.7])]
    summary = ablate.summary_rows({"a": rows, "b": rows[:2]})
    a = summary.set_index("variant").loc["a"]
    assert a["mAP_mean"] == pytest.approx(0.4) and a["mAP_median"] == pytest.approx(0.3)
    assert a["mAP_std"] == pytest.approx(np.std([0.2, 0.3, 0.7]))  # ddof 0
    assert np.isnan(a["tail_mAP_mean"]) and summary.set_index("variant").loc["b", "n_folds"] == 2
    assert summary.variant.tolist() == ["a", "b", ablate.CHANCE]


def test_ablation_trains_a_two_variant_grid_on_shared_folds_and_resumes(demo_run, tmp_path, caplog):
    """`base` is the session's trained demo run (same settings: the runner finds it finished and skips it);
    `sqrt` trains for real (fold 0 only, to keep the suite fast) on the grid's fold assignment."""
    root, train_argv, _ = demo_run
    demo = root / "runs" / "demo"
    out = tmp_path / "abl"
    shutil.copytree(demo, out / "two" / "runs" / "base")
    grid = _grid(tmp_path, {"base": {}, "sqrt": {"sampling.sampler": "sqrt"}}, name="two")
    argv = ["--grid", str(grid), "--out", str(out), "--folds-csv", str(demo / "folds.csv"),
            *_forwarded(train_argv), "--fold", "0"]
    caplog.set_level("INFO", logger="cxrlt.ablate")
    assert ablate.main(argv) == 0
    assert "variant 1/2 base: finished, skipped" in caplog.text and "variant 2/2 sqrt: training" in caplog.text
    folds = (out / "two" / "folds.csv").read_bytes()
    assert folds == (out / "two" / "runs" / "sqrt" / "folds.csv").read_bytes()
    assert yaml.safe_load((out / "two" / "runs" / "sqrt" / "config.yaml").read_text())["sampling"]["sampler"] == "sqrt"

    table = pd.read_csv(out / "two" / "table.csv")
    assert table.variant.tolist() == ["base", "sqrt", ablate.CHANCE]
    assert table.n_folds.tolist() == [2, 1, 2]
    assert list(table.columns) == ["variant", "n_folds"] + [f"{m}_{s}" for m in ablate.METRICS for s in STATS]
    assert table[[f"{m}_mean" for m in ablate.METRICS]].notna().all().all()
    per_fold = pd.read_csv(out / "two" / "per_fold.csv")
    base = per_fold[per_fold.variant == "base"]
    saved = [json.loads((demo / f"fold{k}" / "metrics.json").read_text())["mAP"] for k in (0, 1)]
    # recomputed from oof.csv (6 significant digits, which can merge near-ties) = what training scored
    np.testing.assert_allclose(base.mAP, saved, atol=1e-3)
    assert table.loc[0, "mAP_mean"] == pytest.approx(base.mAP.mean(), rel=1e-5)
    md = (out / "two" / "table.md").read_text()
    assert "| `base` | 2 |" in md and "| `sqrt` | 1 |" in md and "tail mAP" in md and "kappa" in md

    model = out / "two" / "runs" / "sqrt" / "fold0" / "model.keras"
    stamp = model.stat().st_mtime_ns
    caplog.clear()
    assert ablate.main(argv) == 0  # rerun: nothing left to train
    assert "sqrt: finished, skipped" in caplog.text and model.stat().st_mtime_ns == stamp

    other = pd.read_csv(demo / "folds.csv")
    other["fold"] = 1 - other["fold"]
    (out / "three" / "runs" / "sqrt").mkdir(parents=True)
    other.to_csv(out / "three" / "runs" / "sqrt" / "folds.csv", index=False)
    grid3 = _grid(tmp_path, {"sqrt": {"sampling.sampler": "sqrt"}}, name="three")
    with pytest.raises(SystemExit):  # a variant on other folds is refused before it trains
        ablate.main(["--grid", str(grid3), "--out", str(out), *_forwarded(train_argv)])
    assert not (out / "three" / "runs" / "sqrt" / "config.yaml").exists()


def test_beyond_seed002_grid_builds_every_variants_loss_and_head(tmp_path):
    from cxrlt.config import schema
    from cxrlt.model import losses

    loaded = ablate.load_grid(REPO / "configs" / "ablations" / "beyond_seed002.yaml")
    seen = set()
    for name in loaded["variants"]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(ablate.variant_config(loaded, name, None)))
        cfg = ablate.resolve(ablate.train_argv(path, tmp_path, name, ["--demo", "--epochs", "6"]))
        loss = losses.get_loss(cfg["loss"]["name"], class_counts=[3, 30, 300], n_images=600,
                               epochs=cfg["train"]["epochs"], **cfg["loss"]["params"])
        assert cfg["model"]["head"] in schema.HEADS
        seen.add((cfg["loss"]["name"], cfg["model"]["head"], cfg["optim"]["warmup_epochs"],
                  getattr(loss, "drw_epoch", None), getattr(loss, "prevalence", None) is not None))
    assert ("focal", "gap", 0, None, False) in seen and ("focal", "csra", 0, None, False) in seen
    assert ("focal", "ml_decoder", 0, None, False) in seen and ("focal", "gap", 1, None, False) in seen
    assert ("ldam", "gap", 0, 4, False) in seen and ("ldam", "gap", 0, None, False) in seen
    assert ("asl", "gap", 0, None, True) in seen and ("distribution_balanced", "gap", 0, None, False) in seen
    assert ("cxrlt2026_db", "gap", 0, None, False) in seen


def test_demo_edition_reaches_every_variant():
    """configs/ablations/intensity_16bit.yaml runs on the 2026-layout demo: the flag must reach each child."""
    import argparse

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    parser.add_argument("--folds-csv")
    args = parser.parse_args(["--demo-edition", "2026", "--size", "64"])
    argv = ablate.forwarded_argv(args)
    assert argv[argv.index("--demo-edition") + 1] == "2026"
    assert ablate.resolve(argv)["data"]["demo_edition"] == "cxrlt2026-task1"
