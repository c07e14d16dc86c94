"""One TensorFlow SavedModel that scores radiographs the way `cxrlt ensemble` does, where cxrlt is not installed.

    python -m cxrlt export --runs runs/A [runs/B ...] --out model_dir [--method mean|rank|logit]
                           [--weights 2 1 | --fit-weights] [--thresholds none|oof|FILE] [--normal-gating W]
                           [--config configs/08_ensemble_5_6.yaml]

A run is K fold models, TTA views and cxrlt's decode / resize / intensity code; an ensemble adds its method and
weights. The export builds all of it into one graph (tf.saved_model.save of a tf.Module; TensorFlow Serving,
`tf.saved_model.load` and any TF 2 runtime read it):

    serving_default(images: string [B])         encoded PNG (8/16-bit) or JPEG bytes, any size
    predict_grey(images: float32 [B, H, W, 1])   decoded grey images in 0..1 (e.g. DICOM decoded beforehand)
        -> probabilities  float32 [B, C]          the ensemble's probability per class, columns in `classes`
           decisions      int32 [B, C]            only with --thresholds: 1 where probability >= the class threshold
    metadata()  -> classes [C], edition, info (JSON: classes, edition, method, weights, thresholds, every run's exact
                   config, folds, TTA and model hashes, cxrlt / TensorFlow / Keras / Python versions)

assets/cxrlt_export.json holds the same JSON, assets/classes.txt the class names one a line.

Per run: each image is decoded and resized with the run's input settings (pipeline.decode_bytes: DCT-scaled
JPEG decoding, input.resize, input.antialias, input.intensity for 16-bit PNGs), every fold model scores every
TTA view, the views and then the folds are averaged with equal weight (predict.inference); the runs are
combined by the ensemble's method and weights (combine.py) and normal-gated (--normal-gating). Equal to
`python -m cxrlt.ensemble` on the same runs and images (tests/test_export.py: within 1e-5, the CSVs' rounding).

Not included: DICOM decoding (pydicom runs in Python: decode with cxrlt.data.dicom.read, or any DICOM reader
giving the same window and MONOCHROME1 inversion, and call predict_grey); study aggregation (it needs every
image of a study: pool the per-image probabilities yourself); the CodaLab threshold map (submissions only).

Rank averaging: `ensemble --method rank` ranks the images of a test list against each other, so one image's
score would depend on the rest of its request. The export ranks each image against each run's reference
distribution, its out-of-fold predictions (combine.reference_rank_average): every image is scored on its own,
the same in any batch. Its values therefore differ from `ensemble --method rank` on a list (the ordering
within a list agrees where the list resembles the OOF images); thresholds (--thresholds oof) are tuned on
the OOF predictions put through the same rule.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import __version__, config
from ..evaluate import thresholds as thr
from ..runtime import runs
from ..utils import atomic, cli
from ..utils.hashing import file_sha256
from .combine import EPS, METHODS, normal_index, rank_reference, reference_rank_average, weights_of

log = logging.getLogger("cxrlt.export")

INFO_FILE = "cxrlt_export.json"
CLASSES_FILE = "classes.txt"


class ExportError(runs.RunError):
    """Runs that cannot be exported as asked; the message says what to change."""


# ------------------------------------------------------------------------------------ the ensemble's rule in NumPy

def combine_numpy(preds, weights, method: str, references=None) -> np.ndarray:
    """What the export computes from the runs' probabilities, in NumPy (float64): mean and logit as
    `combine.combine`, rank per image against the references (`reference_rank_average`)."""
    from .combine import combine

    if method == "rank":
        return reference_rank_average(preds, references, weights)
    return np.asarray(combine(preds, weights, method), np.float64)


# ------------------------------------------------------------------------------------ the graph

def _interp(x, xp, fp, counts):
    """Per class j, np.interp(x[:, j], xp[j, :counts[j]], fp[j, :counts[j]]) in TensorFlow: x [B, C]; xp, fp
    [C, M] padded rows (combine.rank_reference); clamped at the ends as np.interp is."""
    import tensorflow as tf

    counts = tf.cast(counts, tf.int32)
    xt = tf.transpose(x)                                      # [C, B]
    last = tf.gather(xp, counts - 1, batch_dims=1)[:, None]    # [C, 1]
    xc = tf.minimum(tf.maximum(xt, xp[:, :1]), last)
    i = tf.searchsorted(xp, xc, side="right") - 1
    i = tf.clip_by_value(i, 0, tf.maximum(counts - 2, 0)[:, None])
    x0, x1 = tf.gather(xp, i, batch_dims=1), tf.gather(xp, i + 1, batch_dims=1)
    f0, f1 = tf.gather(fp, i, batch_dims=1), tf.gather(fp, i + 1, batch_dims=1)
    return tf.transpose(f0 + tf.math.divide_no_nan(xc - x0, x1 - x0) * (f1 - f0))


def combine_graph(probs, weights, method: str, references=None, gating: float = 0.0, normal: int | None = None,
                  gating_power: float = 0.0):
    """[runs] of [B, C] probabilities -> [B, C] float64: the runs combined by `method` (float64, as combine.py),
    then normal-gated (linear `gating` or `gating_power`, as combine.normal_gating). `references`: per run
    (values, ranks, counts) tensors, for rank."""
    import tensorflow as tf

    probs = [tf.cast(p, tf.float64) for p in probs]
    w = [tf.constant(float(x), tf.float64) for x in weights]
    if method == "mean":
        out = tf.add_n([wi * p for wi, p in zip(w, probs)])
    elif method == "logit":
        logits = []
        for p in probs:
            p = tf.clip_by_value(p, EPS, 1 - EPS)
            logits.append(tf.math.log(p) - tf.math.log1p(-p))
        out = tf.sigmoid(tf.add_n([wi * z for wi, z in zip(w, logits)]))
    elif method == "rank":
        q = tf.add_n([wi * _interp(p, v, r, c) for wi, p, (v, r, c) in zip(w, probs, references)])
        out = tf.add_n([wi * _interp(q, r, v, c) for wi, (v, r, c) in zip(w, references)])
    else:
        raise config.ConfigError(f"ensemble method must be one of {list(METHODS)}, got {method!r}")
    if gating or gating_power:
        p_normal = out[:, normal:normal + 1]
        gate = (tf.pow(tf.clip_by_value(1.0 - p_normal, 0.0, 1.0), gating_power) if gating_power
                else 1.0 - gating * p_normal)
        gated = out * gate
        keep = tf.equal(tf.range(tf.shape(out)[1]), normal)[None, :]
        out = tf.where(keep, out, gated)
    return out


def _input_key(cfg: dict) -> tuple:
    i = cfg["input"]
    return (int(i["size"]), i["resize"], i.get("antialias", "auto"), i.get("intensity", "full_range"))


def _view_mean(models, images, tta):
    """The fold-mean of each fold model's TTA-view mean (predict.step.Predictor, predict.inference), with the views
    stacked into one batch so that each fold model appears once in the graph."""
    import tensorflow as tf

    from ..predict.step import TTA

    n = tf.shape(images)[0]
    views = tf.concat([TTA[name](images) for name in tta], axis=0)
    folds = []
    for model in models:
        probs = tf.cast(model(views, training=False), tf.float32)
        folds.append(tf.add_n([probs[v * n:(v + 1) * n] for v in range(len(tta))]) / len(tta))
    return tf.add_n(folds) / len(folds)


def _checked_bytes(images):
    """The request's bytes, refused with one clear InvalidArgumentError when one is neither PNG nor JPEG
    (what TensorFlow's decoders read here; DICOM must be decoded before, see the module docstring)."""
    import tensorflow as tf

    from ..data import pipeline

    def kind_ok(data):
        png = tf.equal(tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 8), b"\0" * 8]), 0, 8),
                       b"\x89PNG\r\n\x1a\n")
        return tf.logical_or(tf.io.is_jpeg(data), png)

    ok = tf.map_fn(kind_ok, images, fn_output_signature=tf.bool)
    dicom = tf.map_fn(pipeline.is_dicom, images, fn_output_signature=tf.bool)
    bad = tf.cast(tf.where(tf.logical_not(ok))[:, 0], tf.int32)
    checks = [
        tf.debugging.Assert(tf.logical_not(tf.reduce_any(dicom)), [
            "cxrlt export: DICOM bytes in images (index", tf.where(dicom)[:, 0], "): the export does not decode DICOM. "
            "Decode them first (cxrlt.data.dicom.read, or pydicom with the run's window and MONOCHROME1 inverted) "
            "and call the predict_grey signature"], summarize=8),
        tf.debugging.Assert(tf.reduce_all(ok), [
            "cxrlt export: images at index", bad, "are neither PNG nor JPEG (8- or 16-bit PNG, baseline or "
            "progressive JPEG expected)"], summarize=8),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


class Plan:
    """Everything the export builds in, resolved from the runs and the settings (no TensorFlow)."""

    def __init__(self, run_list: list[runs.Run], method: str, weights, threshold_values, threshold_source,
                 gating: float, references, gating_power: float = 0.0):
        self.runs = run_list
        self.method = method
        self.weights = np.asarray(weights, np.float64)
        self.thresholds = threshold_values
        self.threshold_source = threshold_source
        self.gating = float(gating)
        self.gating_power = float(gating_power)
        self.references = references
        self.classes = list(run_list[0].classes())
        self.normal = (normal_index(self.classes, "--normal-gating-power" if self.gating_power else "--normal-gating")
                       if self.gating or self.gating_power else None)

    def info(self) -> dict:
        """The asset / metadata JSON: what the export does and exactly what it was made from."""
        import keras
        import tensorflow as tf

        id_column, order = self.runs[0].submission_layout()
        described = []
        for run, w in zip(self.runs, self.weights):
            cfg = run.config()
            described.append({
                "name": run.root.name, "path": str(run.root), "weight": float(w), "config": cfg,
                "folds": run.finished_folds(), "tta": list(cfg["predict"]["tta"]),
                "models": [{"fold": k, "sha256": file_sha256(run.model_path(k))} for k in run.finished_folds()]})
        return {
            "format": "cxrlt export 1",
            "classes": self.classes, "edition": self.runs[0].edition(),
            "submission": {"id_column": id_column, "classes": list(order)},
            "method": self.method, "weights": self.weights.tolist(), "normal_gating": self.gating,
            "normal_gating_power": self.gating_power,
            "rank_reference": "each run's out-of-fold predictions" if self.method == "rank" else None,
            "thresholds": None if self.thresholds is None else dict(zip(self.classes, map(float, self.thresholds))),
            "thresholds_source": self.threshold_source,
            "runs": described,
            "signatures": {
                "serving_default": "images: string [B] (encoded PNG 8/16-bit or JPEG) -> probabilities float32 [B, C]"
                                   + (", decisions int32 [B, C]" if self.thresholds is not None else ""),
                "predict_grey": "images: float32 [B, H, W, 1] grey in 0..1 -> the same outputs",
                "metadata": "() -> classes string [C], edition string, info string (this JSON)"},
            "not_included": ["DICOM decoding (decode before; call predict_grey)", "study aggregation",
                             "the CodaLab threshold map of submissions"],
            "versions": {"cxrlt": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                         "python": platform.python_version()},
        }


def build_module(plan: Plan):
    """(tf.Module to save: the fold models' variables; its signatures: the two scoring functions and metadata; info).

    Only the variables are tracked, as Keras' own ExportArchive does: tracking the Keras models themselves makes
    tf.saved_model.save trace every layer's call for serialisation (minutes for two small EfficientNets)."""
    import tensorflow as tf

    from ..data import pipeline
    from ..model import models

    module = tf.Module()
    module.model_variables = []
    per_run = []  # (input key, [model], tta)
    for run in plan.runs:
        cfg = run.config()
        loaded = [models.load(run.model_path(k), num_classes=len(plan.classes)) for k in run.finished_folds()]
        for model in loaded:
            module.model_variables.extend(model.variables)
        per_run.append((_input_key(cfg), loaded, tuple(cfg["predict"]["tta"])))
    references = None
    if plan.method == "rank":
        references = [(tf.constant(v, tf.float64), tf.constant(r, tf.float64), tf.constant(c, tf.int32))
                      for v, r, c in plan.references]
    info = plan.info()
    text = json.dumps(info, indent=2, default=str)

    keys = sorted({key for key, _, _ in per_run})

    @tf.function(input_signature=[tuple(tf.TensorSpec([None, k[0], k[0], 1], tf.float32) for k in keys)],
                 autograph=False)
    def score(greys):
        """Grey batches 0..255 [B, S, S, 1], one per input key -> the outputs dict (traced once, called by both
        signatures: the fold models appear once in the SavedModel)."""
        grey_by_key = dict(zip(keys, greys))
        probs = [_view_mean(loaded, pipeline.to_rgb(grey_by_key[key]), tta) for key, loaded, tta in per_run]
        out = combine_graph(probs, plan.weights, plan.method, references, plan.gating, plan.normal, plan.gating_power)
        result = {"probabilities": tf.cast(out, tf.float32)}
        if plan.thresholds is not None:
            t = tf.constant(np.asarray(plan.thresholds, np.float64)[None, :])
            result["decisions"] = tf.cast(out >= t, tf.int32)
        return result

    def from_bytes(images):
        images = _checked_bytes(images)
        grey = {}
        for size, resize, antialias, intensity in keys:
            grey[(size, resize, antialias, intensity)] = tf.map_fn(
                lambda data: pipeline.decode_bytes(data, size, resize, antialias, 1, intensity=intensity),
                images, fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
        return score(tuple(grey[k] for k in keys))

    def from_grey(images):
        check = tf.debugging.assert_equal(tf.shape(images)[-1], 1, message="predict_grey takes grey images "
                                          "[batch, height, width, 1] in 0..1")
        with tf.control_dependencies([check]):
            images = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0)
        grey = {}
        for size, resize, antialias, intensity in keys:
            grey[(size, resize, antialias, intensity)] = tf.map_fn(
                lambda image: tf.clip_by_value(pipeline.resize_grey(image, size, resize, antialias) * 255.0, 0.0, 255.0),
                images, fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
        return score(tuple(grey[k] for k in keys))

    classes = tf.constant(plan.classes)
    edition = tf.constant(str(info["edition"]))
    serve_bytes = tf.function(from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="images")],
                              autograph=False)
    serve_grey = tf.function(from_grey, input_signature=[
        tf.TensorSpec([None, None, None, 1], tf.float32, name="images")], autograph=False)
    metadata = tf.function(lambda: {"classes": classes, "edition": edition, "info": tf.constant(text)},
                           input_signature=[], autograph=False)
    # Saved as signatures only (not as attributes too: every saved attribute function is traced again on save)
    signatures = {"serving_default": serve_bytes.get_concrete_function(),
                  "predict_grey": serve_grey.get_concrete_function(), "metadata": metadata.get_concrete_function()}
    return module, signatures, info


def save(plan: Plan, out: Path) -> dict:
    """Write the SavedModel into `out` (replaced only when complete: written beside it, then renamed)."""
    import tensorflow as tf

    module, signatures, info = build_module(plan)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        assets = staging / "extra"
        assets.mkdir()
        atomic.write_json(assets / INFO_FILE, info)
        atomic.write_text(assets / CLASSES_FILE, "".join(f"{c}\n" for c in plan.classes))
        module.info_asset = tf.saved_model.Asset(str(assets / INFO_FILE))
        module.classes_asset = tf.saved_model.Asset(str(assets / CLASSES_FILE))
        model_dir = staging / "model"
        # serving needs no gradients: tracing the custom ones of the backbone's layers costs minutes
        tf.saved_model.save(module, str(model_dir), signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        if out.exists():
            if not (out / "saved_model.pb").exists():
                raise ExportError(f"{out} exists and is not an export; choose another --out")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "model")
            os.replace(model_dir, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(model_dir, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


# ------------------------------------------------------------------------------------ settings -> plan

def make_plan(run_list: list[runs.Run], s: dict) -> Plan:
    """Weights (given, equal, or fitted on OOF as `ensemble --fit-weights`), thresholds and rank references."""
    from . import ensembler

    ensembler.check_same_classes(run_list)
    for run in run_list:
        if run.is_fused:
            raise ExportError(f"{run.root} is a fused run (python -m cxrlt.fuse): its fold models score studies, "
                              "not images; export its source run instead")
        if not run.finished_folds():
            raise ExportError(f"{run.root}: no finished fold to export; train first")
    classes = list(run_list[0].classes())
    if s["normal_gating"] or s["normal_gating_power"]:
        normal_index(classes, "--normal-gating-power" if s["normal_gating_power"] else "--normal-gating")
    weights = s["weights"]
    if s["fit_weights"]:
        weights = ensembler.out_of_fold(run_list, s, "none", {})["weights"]
    weights = weights_of(len(run_list), weights)
    references = None
    if s["method"] == "rank":
        references = []
        for run in run_list:
            if not run.oof_csv.exists():
                raise ExportError(f"{run.root}: no oof.csv; --method rank ranks each image against the run's "
                                  "out-of-fold predictions, written when all its folds are done")
            references.append(rank_reference(runs.read_predictions(run.oof_csv, classes)[1]))
    t, source = None, None
    if s["thresholds"] == "oof":
        table, preds = ensembler.load_oof(run_list)
        oof = combine_numpy(preds, weights, s["method"], references)
        if s["normal_gating"] or s["normal_gating_power"]:
            from .combine import normal_gating

            oof = normal_gating(oof, classes, s["normal_gating"], s["normal_gating_power"])
        t = np.asarray(thr.tune(table.labels, oof, classes)["thresholds"])
        source = "tuned on the runs' OOF predictions through the export's own rule (optimistic there)"
    elif s["thresholds"] not in (None, "none"):
        t, source = thr.load(Path(s["thresholds"]), classes), str(s["thresholds"])
    return Plan(run_list, s["method"], weights, t, source, s["normal_gating"], references, s["normal_gating_power"])


def _parser() -> argparse.ArgumentParser:
    parser = cli.parser("python -m cxrlt export", __doc__)
    parser.add_argument("--run", "--runs", dest="runs", nargs="+", action="extend",
                        help="run directories, repeatable (runs/X runs/Y, or --run runs/X --run runs/Y)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the SavedModel into")
    parser.add_argument("--config", type=Path, help="ensemble config (configs/08_ensemble_5_6.yaml ...); flags override")
    parser.add_argument("--method", choices=METHODS, help="mean (default) | rank (against each run's OOF) | logit")
    parser.add_argument("--weights", "--run-weights", dest="weights", nargs="+", type=float,
                        help="one weight per run, in --run order (default: equal)")
    parser.add_argument("--fit-weights", action="store_true", default=None, help="fit run weights on OOF mAP")
    parser.add_argument("--thresholds", help="none (default) | oof | thresholds.json: adds the 0/1 decisions output")
    parser.add_argument("--normal-gating", type=float, metavar="WEIGHT", help="as cxrlt ensemble --normal-gating")
    parser.add_argument("--normal-gating-power", type=float, metavar="P", help="as cxrlt ensemble --normal-gating-power")
    cli.add_common(parser)
    return parser


def settings_from(args) -> dict:
    from . import ensembler

    s = ensembler.load_settings(args.config)
    for key in ("method", "weights", "fit_weights", "thresholds", "normal_gating", "normal_gating_power"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.weights is not None and args.fit_weights is None:
        s["fit_weights"] = False
    if args.runs:
        s["runs"] = [str(p) for p in args.runs]
    s["out"] = None
    ensembler.validate_settings(s)
    if not s["runs"]:
        raise ExportError("name the runs to export: --runs runs/X [runs/Y ...] (or --run, repeatable)")
    if s["study_aggregation"] not in (None, "none"):
        log.warning("ensemble.study_aggregation %s is not built into the export (it scores images one by one): "
                    "pool its per-image probabilities per study yourself", s["study_aggregation"])
    return s


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    cli.setup(args)
    with cli.errors():
        s = settings_from(args)
        run_list = [runs.Run(Path(p)) for p in s["runs"]]
        for run in run_list:
            run.config()  # a folder that is not a run fails here, clearly
            if run.task() != "multilabel":
                raise runs.RunError(f"{run.root} is a {run.task()} run; export builds multi-label (sigmoid) ensembles. "
                                    "Its fold models (fold<k>/model.keras) already output the class probabilities")
        plan = make_plan(run_list, s)
        info = save(plan, args.out)
        folds = sum(len(r["folds"]) for r in info["runs"])
        print(f"wrote {args.out}: {len(run_list)} run(s), {folds} fold model(s), {len(plan.classes)} classes, method "
              f"{plan.method}, weights {[round(float(w), 3) for w in plan.weights]}"
              + (f", normal gating {plan.gating:g}" if plan.gating else "")
              + (f", normal gating power {plan.gating_power:g}" if plan.gating_power else "")
              + (f", decisions at thresholds ({plan.threshold_source})" if plan.thresholds is not None else "")
              + f". Serve it: tensorflow/serving with --model_base_path=/models/cxrlt and {args.out} as "
              "/models/cxrlt/1; in Python: tf.saved_model.load(...).signatures['serving_default'](images=...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
