"""Ablation runner: train every variant of a grid on the same folds and tabulate them like seed 003's Table 3.

    python -m cxrlt.ablate --grid configs/ablations/seed003.yaml --labels train.csv --image-root IMAGES \\
           --backbone efficientnetv2-b0 --weights none --size 64 --folds 3 --epochs 6

A grid (configs/ablations/*.yaml) is a base (an optional config file plus shared settings) and named
variants, each a few settings over the base (nested or dotted keys):

    config: null                     # optional base config file; --config overrides it
    base: {loss.name: bce, mix.mosaic: 0.0}
    variants:
      instance: {}
      sqrt: {sampling.sampler: sqrt}
    notes: text printed under the table

Every variant is written out as an ordinary config (<out>/<grid>/configs/<variant>.yaml) and trained
by `cxrlt.train` (`--config` that file, then the data/scale flags given here, e.g. `--labels`,
`--size`, `--set k=v`), into <out>/<grid>/runs/<variant>, in a child process per variant
(`--in-process`: `train.main` in this one). All variants use ONE fold assignment
(<out>/<grid>/folds.csv, made once, or `--folds-csv`), placed in each run before it trains and checked
after. A rerun skips finished variants and resumes an interrupted one (train's own resume).

The tables (<out>/<grid>/table.md, table.csv, per_fold.csv) give, per variant, the mean, population std
(ddof 0, seed 000) and median (seed 003) over the validation folds of mAP, mAUC, mF1 at 0.5, tail mAP
(head/medium/tail as `cxrlt.classes.class_groups`), and per-class binary MCC and balanced accuracy at
0.5, macro-averaged (G14), all recomputed from each fold's out-of-fold predictions.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..utils import atomic, cli
from .. import config
from ..evaluate import metrics
from ..runtime import runs

log = logging.getLogger("cxrlt.ablate")

METRICS = {  # column -> (title, how it is read from metrics.evaluate)
    "mAP": ("mAP", lambda r: r["mAP"]),
    "mAUC": ("mAUC", lambda r: r["mAUC"]),
    "mF1": ("mF1 @0.5", lambda r: r["mF1"]),
    "tail_mAP": ("tail mAP", lambda r: ((r.get("groups") or {}).get("tail") or {}).get("mAP")),
    "mMCC": ("MCC @0.5", lambda r: r["mMCC"]),
    "mBACC": ("B-ACC @0.5", lambda r: r["mBACC"]),
}
# single-label runs (data.task multiclass / ordinal): seed 003's own columns (Table 1: quad-kappa, MCC, Kendall tau;
# Table 3: MCC, B-ACC, macro-F1), from cxrlt.evaluate.single_label
SINGLE_LABEL_METRICS = {
    "kappa": ("quad-kappa", lambda r: r["kappa"]),
    "mcc": ("MCC", lambda r: r["mcc"]),
    "kendall_tau": ("Kendall tau", lambda r: r["kendall_tau"]),
    "balanced_accuracy": ("B-ACC", lambda r: r["balanced_accuracy"]),
    "macro_f1": ("macro-F1", lambda r: r["macro_f1"]),
    "accuracy": ("accuracy", lambda r: r["accuracy"]),
    "auc_ovo": ("AUC ovo", lambda r: r["auc_ovo"]),
}
CHANCE = "(constant score)"


def metric_table(task: str) -> dict:
    """The table's columns for a task: the multi-label ones, or seed 003's single-label ones (kappa and tau for
    ordinal grades only)."""
    if task == "multilabel":
        return METRICS
    return {k: v for k, v in SINGLE_LABEL_METRICS.items() if task == "ordinal" or k not in ("kappa", "kendall_tau")}
# What variants may not change: the images and the folds they are compared on.
SHARED_KEYS = ("data.", "train.folds", "name", "out")
GRID_KEYS = {"config", "base", "variants", "notes", "description"}


class GridError(config.ConfigError):
    pass


# --- grid -> one config per variant ------------------------------------------------------------------

def nested(settings: dict | None, where: str) -> dict:
    """{'a.b': 1, 'c': {'d': 2}} -> {'a': {'b': 1}, 'c': {'d': 2}} (dotted and nested keys mixed)."""
    out: dict = {}
    for key, value in (settings or {}).items():
        if not isinstance(key, str):
            raise GridError(f"{where}: setting names must be text, got {key!r}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise GridError(f"{where}: {key!r} sets inside {part!r}, which is also given a value")
        if isinstance(value, dict) and parts[-1] != "params":  # a loss's params stay one value
            value = nested(value, where)
        node[parts[-1]] = value
    return out


def overlay(base: dict, top: dict) -> dict:
    """Deep-merge `top` over `base`. A layer that names another loss without its params drops the
    params of the layers below (they belong to the old loss), as config.load does."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if key == "loss" and isinstance(value, dict) and "name" in value and "params" not in value:
            out.setdefault("loss", {}).pop("params", None)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not key == "params":
            out[key] = overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_grid(path: str | Path) -> dict:
    """Read and check a grid file; variants keep their file order (the table's row order)."""
    path = Path(path)
    grid = config.read_mapping(path, what="grid file", where_to_look="configs/ablations/",
                               expected="a mapping with 'variants' (and optional config, base, notes)", error=GridError)
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise GridError(f"{path}: unknown top-level key(s) {unknown}; a grid has {sorted(GRID_KEYS)}")
    variants = grid.get("variants")
    if not isinstance(variants, dict) or len(variants) < 1:
        raise GridError(f"{path}: 'variants' must map variant names to settings, e.g. {{baseline: {{}}}}")
    for name, settings in variants.items():
        if not isinstance(name, str) or not name or any(c in name for c in "/\\ ") or name.startswith("."):
            raise GridError(f"{path}: variant name {name!r} must be a plain file name (no spaces or slashes)")
        if settings is not None and not isinstance(settings, dict):
            raise GridError(f"{path}: variant {name!r} must be a mapping of settings, got {settings!r}")
    base = nested(grid.get("base"), f"{path}: base")
    variants = {name: nested(settings, f"{path}: variant {name}") for name, settings in variants.items()}
    for name, settings in variants.items():
        fixed = [k for k in config.flatten(settings) if k.startswith(SHARED_KEYS)]
        if fixed:
            raise GridError(f"{path}: variant {name!r} changes {fixed}; variants must share the data and the folds "
                            "(put data settings on the command line or in the base)")
    return {"path": path, "name": path.stem, "config": grid.get("config"), "base": base, "variants": variants,
            "notes": str(grid.get("notes") or "").strip(), "description": str(grid.get("description") or "").strip()}


def variant_config(grid: dict, name: str, base_config: str | None) -> dict:
    """The raw settings of one variant: base config file <- grid base <- variant."""
    tree: dict = {}
    source = base_config or grid["config"]
    if source:
        path = Path(source)
        if not path.is_absolute() and not path.exists():
            path = grid["path"].parent / source  # relative to the grid file
        if not path.is_file():
            raise GridError(f"{grid['path']}: base config {source} does not exist")
        tree = config.read_mapping(path, error=GridError)
        tree.pop("name", None)
    tree = overlay(overlay(tree, grid["base"]), grid["variants"][name])
    tree["name"] = name
    return tree


# --- the command line of train --------------------------------------------------------------------------

def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The data/scale flags of this command, as train.main takes them (--out/--name/--config are ours)."""
    argv: list[str] = []
    for flag, key in config.FLAGS.items():
        value = getattr(args, key, None)
        if value is not None and key not in ("out", "name"):
            argv += [flag, str(value)]
    for item in args.set:
        argv += ["--set", item]
    if args.demo:
        argv.append("--demo")
    if getattr(args, "demo_edition", None):
        argv += ["--demo-edition", args.demo_edition]
    if args.mixed_precision:
        argv.append("--mixed-precision")
    return argv


def cli_keys(args: argparse.Namespace) -> set[str]:
    keys = {key for key in config.FLAGS.values() if getattr(args, key, None) is not None}
    keys |= {item.split("=", 1)[0].strip() for item in args.set if "=" in item}
    return keys


def train_argv(config_file: Path, root: Path, name: str, forwarded: list[str]) -> list[str]:
    return ["--config", str(config_file), "--out", str(root / "runs"), "--name", name, *forwarded]


def resolve(argv: list[str]) -> dict:
    """The config train.main will resolve from `argv` (validated; nothing trained)."""
    parser = cli.Parser()
    config.add_arguments(parser)
    return config.from_args(parser.parse_args(argv))


# --- one fold assignment for every variant --------------------------------------------------------------

def shared_folds(root: Path, cfg: dict, folds_csv: Path | None):
    """(label table, fold per image, grid folds.csv): made once from the first variant's data and seed,
    or taken from --folds-csv; every variant is trained on exactly this assignment."""
    from ..data import folds as folds_mod
    from ..train import kfold as train

    table = train.resolve_data(copy.deepcopy(cfg))
    target = root / "folds.csv"
    if folds_csv is not None:
        if not folds_csv.is_file():
            raise GridError(f"--folds-csv {folds_csv} does not exist")
        fold_of = folds_mod.load_or_make_folds(folds_csv, table, cfg["train"]["folds"], cfg["seed"])
        if target.exists() and not same_folds(target, table, fold_of):
            raise GridError(f"{target} (from an earlier run of this grid) differs from --folds-csv {folds_csv}; "
                            "use another --name")
        atomic.write_csv(target, pd.read_csv(folds_csv, dtype={"id": str}))
    fold_of = folds_mod.load_or_make_folds(target, table, cfg["train"]["folds"], cfg["seed"])
    return table, fold_of, target


def same_folds(path: Path, table, fold_of: np.ndarray) -> bool:
    saved = pd.read_csv(path, dtype={"id": str})
    if len(saved) != len(table) or set(saved["id"]) != set(table.ids):
        return False
    return bool((saved.set_index("id").loc[table.ids, "fold"].to_numpy() == fold_of).all())


def place_folds(run: runs.Run, grid_folds: Path, table, fold_of: np.ndarray) -> None:
    if run.folds_csv.exists():
        if not same_folds(run.folds_csv, table, fold_of):
            raise GridError(f"{run.folds_csv} differs from the grid's {grid_folds}; the variants would not be "
                            f"compared on the same folds. Delete {run.root} to retrain it on the grid's folds")
        return
    atomic.write_csv(run.folds_csv, pd.read_csv(grid_folds, dtype={"id": str}))


# --- training -----------------------------------------------------------------------------------------

def finished(run: runs.Run, cfg: dict) -> bool:
    """All folds asked for are done, with this config (a changed config is an error, not a skip)."""
    from ..train import kfold as train

    if not run.config_path.exists():
        return False
    # The data was checked to be the same for every variant (and the folds file pins the images); the run
    # folder, not its recorded name/out, identifies the variant, so a run copied into the grid counts.
    ignore = (*train.RESUMABLE_CHANGES, "data.", "name", "out")
    saved_task = run.config()["data"].get("task", "multilabel")
    if cfg["data"]["task"] == "auto" and saved_task not in ("auto", "multilabel"):
        from ..config import tasks  # the run saved its config with data.task auto settled (single_label.resolve_task)

        cfg, _ = tasks.resolved(cfg, saved_task)
    changed = config.diff(run.config(), cfg, ignore=ignore)
    wanted = range(cfg["train"]["folds"]) if cfg["train"]["fold"] == "all" else [cfg["train"]["fold"]]
    done = all(run.is_done(k) for k in wanted)
    if changed and run.finished_folds():
        raise GridError(f"{run.root} was trained with other settings ({'; '.join(changed[:3])}). Delete it, or "
                        "use another --name for the changed grid")
    return done


def train_variant(argv: list[str], name: str, in_process: bool = False) -> None:
    """`cxrlt.train` with `argv`, by default in a child process: Keras/TF keep part of every model
    and traced function alive, so one process training variant after variant grows without bound
    (measured: about 1 GB more RSS per 3-fold variant of EfficientNetV2-B0 at 64 px, past 4.9 GB after
    three). The child prints to the same terminal/log."""
    if in_process:
        from ..train import kfold as train

        code = train.main(argv)
        import keras

        keras.backend.clear_session()
        gc.collect()
    else:
        package_root = str(Path(__file__).resolve().parents[1])  # the child imports this same cxrlt
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        sys.stdout.flush()
        sys.stderr.flush()
        code = subprocess.run([sys.executable, "-m", "cxrlt.train", *argv], env=env, check=False).returncode
    if code != 0:
        raise GridError(f"training variant {name!r} failed (exit status {code}; its messages are above). "
                        "Fix it and rerun: finished variants and folds are kept")


# --- scores and tables ----------------------------------------------------------------------------------

def fold_scores(run: runs.Run, table, fold_of: np.ndarray) -> list[dict]:
    """Per finished fold: the table's metrics recomputed from the fold's out-of-fold predictions."""
    from ..config import tasks
    from ..evaluate import single_label

    classes, groups = list(run.classes()), run.groups()
    task, columns = table.task, metric_table(table.task)
    decision = tasks.ordinal_decision(run.config(), task)
    position = {image_id: i for i, image_id in enumerate(table.ids)}
    rows = []
    for k in run.finished_folds():
        ids, probs = runs.read_predictions(run.fold_dir(k) / "oof.csv", classes)
        index = np.array([position[i] for i in ids])
        if set(index) != set(np.flatnonzero(fold_of == k)):
            raise GridError(f"{run.fold_dir(k) / 'oof.csv'} does not hold exactly the images of fold {k}")
        # chance: the same score for every class (multi-label: every score 0; single-label: uniform probabilities)
        constant = np.zeros_like(probs) if task == "multilabel" else np.full_like(probs, 1.0 / probs.shape[1])
        result = single_label.score(task, table.labels[index], probs, classes, groups=groups, decision=decision)
        chance = single_label.score(task, table.labels[index], constant, classes, groups=groups, decision=decision)
        rows.append({"fold": k, **{key: get(result) for key, (_, get) in columns.items()},
                     "chance": {key: get(chance) for key, (_, get) in columns.items()}})
    return rows


def summary_rows(scores: dict[str, list[dict]], columns: dict | None = None) -> pd.DataFrame:
    """One row per variant (+ the constant-score reference): n_folds and mean/std/median of each metric."""
    columns = columns or METRICS  # the table's columns (metric_table)
    out = []
    for name, rows in scores.items():
        stats = metrics.summarize_folds(rows, keys=tuple(columns)) if rows else {}
        row = {"variant": name, "n_folds": len(rows)}
        for key in columns:
            for stat in ("mean", "std", "median"):
                row[f"{key}_{stat}"] = (stats.get(key) or {}).get(stat, np.nan)
        out.append(row)
    chance = [r["chance"] for rows in scores.values() for r in rows]
    if chance:
        folds = {r["fold"]: r["chance"] for rows in scores.values() for r in rows}  # the same for every variant
        stats = metrics.summarize_folds(list(folds.values()), keys=tuple(columns))
        row = {"variant": CHANCE, "n_folds": len(folds)}
        for key in columns:
            for stat in ("mean", "std", "median"):
                row[f"{key}_{stat}"] = (stats.get(key) or {}).get(stat, np.nan)
        out.append(row)
    return pd.DataFrame(out)


def _cell(row, key: str, best: bool) -> str:
    mean, std, median = (row[f"{key}_{s}"] for s in ("mean", "std", "median"))
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean:.3f} ± {std:.3f} ({median:.3f})"
    return f"**{text}**" if best else text


def markdown(grid: dict, summary: pd.DataFrame, settings: dict[str, dict], context: str, task: str = "multilabel") -> str:
    columns = metric_table(task)
    lines = [f"### Ablation `{grid['name']}`", ""]
    if grid["description"]:
        lines += [grid["description"], ""]
    if context:
        lines += [context, ""]
    header = ["variant", "folds"] + [title for title, _ in columns.values()]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    real = summary[summary.variant != CHANCE]
    best = {key: real[f"{key}_mean"].max() for key in columns}
    for _, row in summary.iterrows():
        is_variant = row.variant != CHANCE
        cells = [f"`{row.variant}`" if is_variant else row.variant, str(int(row.n_folds))]
        cells += [_cell(row, key, is_variant and len(real) > 1 and row[f"{key}_mean"] == best[key]) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if task != "multilabel":
        lines += ["", "Cells: mean ± population std (ddof 0) (median) over the validation folds (the Balanced-MixUp paper reports "
                  "the median); bold = best mean. Single-label scores of the predicted class (" + task + "): MCC is the "
                  "multi-class R_K, B-ACC the mean recall, macro-F1 the mean F1 over the classes, quad-kappa and "
                  f"Kendall tau (ordinal grades) between the true and predicted grades. `{CHANCE}`: uniform "
                  "probabilities (every image the first class).", ""]
    else:
        lines += ["", "Cells: mean ± population std (ddof 0) (median) over the validation folds; bold = best mean. "
              "mF1, MCC and B-ACC binarise at p >= 0.5 per class; MCC and B-ACC are per-class binary scores, "
              "macro-averaged (G14). Quadratic kappa and Kendall tau are not reported: they need one ordinal "
              "label per image, and these labels are multi-label and unordered. Tail = the tail group of "
              "`cxrlt.classes.class_groups` (CXR-LT: the winning solution's 8 tail classes; other data: the "
              f"rarest third of the classes). `{CHANCE}`: every score 0 (AP = prevalence, AUC 0.5, nothing "
              "predicted positive).", ""]
    lines.append("Variants (settings over the grid's base): " + "; ".join(
        f"`{name}` = {_settings_text(s)}" for name, s in settings.items()) + ".")
    if grid["notes"]:
        lines += ["", grid["notes"]]
    return "\n".join(lines) + "\n"


def _settings_text(settings: dict) -> str:
    flat = []

    def walk(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and not key == "params":
                walk(value, f"{prefix}{key}.")
            else:
                flat.append(f"{prefix}{key}: {value}")

    walk(settings)
    return ", ".join(flat) if flat else "base"


def write_tables(root: Path, grid: dict, scores: dict[str, list[dict]], context: str,
                 task: str = "multilabel") -> pd.DataFrame:
    summary = summary_rows(scores, metric_table(task))
    per_fold = pd.DataFrame([{"variant": name, **{k: v for k, v in r.items() if k != "chance"}}
                             for name, rows in scores.items() for r in rows])
    atomic.write_csv(root / "table.csv", summary, float_format="%.6g")
    atomic.write_csv(root / "per_fold.csv", per_fold, float_format="%.6g")
    atomic.write_text(root / "table.md", markdown(grid, summary, grid["variants"], context, task))
    return summary


# --- command line ---------------------------------------------------------------------------------------

def run_grid(args: argparse.Namespace) -> Path:
    grid = load_grid(args.grid)
    root = Path(args.out or "runs/ablations") / (args.name or grid["name"])
    wanted = list(grid["variants"]) if not args.variants else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in wanted if v not in grid["variants"]]
    if unknown:
        raise GridError(f"--variants {unknown} not in {grid['path']} (it has {list(grid['variants'])})")
    forwarded = forwarded_argv(args)
    clash = {k for k in cli_keys(args) if any(k == v or k.startswith(v + ".") or v.startswith(k + ".")
                                              for s in grid["variants"].values() for v in config.flatten(s))}
    if clash:
        raise GridError(f"the command line sets {sorted(clash)}, which the grid's variants vary; it would make them "
                        "the same. Change the grid instead")
    argvs, cfgs = {}, {}
    for name in grid["variants"]:  # write and validate every variant before training any
        path = root / "configs" / f"{name}.yaml"
        atomic.write_text(path, yaml.safe_dump(variant_config(grid, name, args.config), sort_keys=False))
        argvs[name] = train_argv(path, root, name, forwarded)
        cfgs[name] = resolve(argvs[name])
    first = cfgs[wanted[0]]
    for name, cfg in cfgs.items():
        differs = [c for c in config.diff(first, cfg) if c.startswith(("data.", "train.folds"))]
        if differs:
            raise GridError(f"variant {name!r} has other data or folds than {wanted[0]!r}: {differs[:3]}")
    table, fold_of, grid_folds = shared_folds(root, first, Path(args.folds_csv) if args.folds_csv else None)
    log.info("ablation %s: %d variants, %d images, %d folds, results in %s", grid["name"], len(wanted), len(table),
             first["train"]["folds"], root)
    for i, name in enumerate(wanted, start=1):
        run = runs.Run(root / "runs" / name)
        if finished(run, cfgs[name]):
            log.info("variant %d/%d %s: finished, skipped", i, len(wanted), name)
            continue
        place_folds(run, grid_folds, table, fold_of)
        started = time.time()
        log.info("variant %d/%d %s: training", i, len(wanted), name)
        train_variant(argvs[name], name, in_process=args.in_process)
        if not same_folds(run.folds_csv, table, fold_of):
            raise GridError(f"{run.folds_csv} no longer matches {grid_folds} after training {name!r}")
        log.info("variant %d/%d %s: done in %.0f s", i, len(wanted), name, time.time() - started)
    scores = {name: fold_scores(runs.Run(root / "runs" / name), table, fold_of)
              for name in grid["variants"] if runs.Run(root / "runs" / name).config_path.exists()}
    c = first
    context = (f"Data: {Path(c['data']['labels']).name if c['data']['labels'] else 'demo'} ({len(table)} images, "
               f"{len(table.classes)} classes), {c['train']['folds']} patient-grouped folds (one assignment for all "
               f"variants); {c['model']['backbone']} (weights {c['model']['weights']}) at {c['input']['size']} px, "
               f"{c['train']['epochs']} epochs, batch {c['train']['batch_size']}"
               + (f", {c['train']['steps_per_epoch']} steps/epoch" if c["train"]["steps_per_epoch"] else "")
               + f", seed {c['seed']}.")
    summary = write_tables(root, grid, scores, context, table.task)
    print((root / "table.md").read_text())
    log.info("wrote %s, %s, %s (%d variants)", root / "table.md", root / "table.csv", root / "per_fold.csv",
             len(summary) - 1)
    return root


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.ablate", __doc__)
    parser.add_argument("--grid", required=True, help="grid file, e.g. configs/ablations/seed003.yaml")
    parser.add_argument("--variants", help="comma-separated subset to train now (the table lists every trained one)")
    parser.add_argument("--folds-csv", help="a folds.csv (id, patient, fold) to use instead of making one")
    parser.add_argument("--in-process", action="store_true",
                        help="train the variants in this process (faster start, but memory grows with every variant)")
    config.add_arguments(parser)  # the data/scale flags of train; --out is the ablations folder, --name the grid's
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        run_grid(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
