"""Every setting's allowed values and range, in one place, and the checks across settings.

The modules that use a setting import its allowed names from here (the backbone table, the losses, the
samplers, the seed 000 strategies, TTA views, study aggregation, ...), so a name is written once. Nothing
here imports TensorFlow: `cxrlt.config.load` validates a config in milliseconds, before any work starts.
Types come from defaults.yaml (a value keeps the type of its default, loader.py); this file adds what a
type cannot say.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from ..utils.errors import UserError

# --------------------------------------------------------------------------------------------- names
# model.backbone -> keras.applications constructor (cxrlt.model.models builds them)
BACKBONES = {
    "efficientnetv2-b0": "EfficientNetV2B0",
    "efficientnetv2-b1": "EfficientNetV2B1",
    "efficientnetv2-b2": "EfficientNetV2B2",
    "efficientnetv2-b3": "EfficientNetV2B3",
    "efficientnetv2-s": "EfficientNetV2S",
    "efficientnetv2-m": "EfficientNetV2M",
    "efficientnetv2-l": "EfficientNetV2L",
    "convnext-tiny": "ConvNeXtTiny",
    "convnext-small": "ConvNeXtSmall",
    "convnext-base": "ConvNeXtBase",
    "convnext-large": "ConvNeXtLarge",
    # seed 003's two capacities: MobileNetV2, and ResNet50V2 as the nearest Keras ships to its BiT ResNeXt-50
    # (BiT's models are pre-activation ResNet-v2s; Keras has no ResNeXt). Neither has built-in preprocessing:
    # cxrlt.model.models scales their input to -1..1 (MINUS_ONE_TO_ONE)
    "mobilenetv2": "MobileNetV2",
    "resnet50v2": "ResNet50V2",
}
MINUS_ONE_TO_ONE = ("mobilenetv2", "resnet50v2")  # backbones that expect -1..1 ("tf" mode of keras.applications)
# model.backbone -> family module in cxrlt.model.backbones: cxrlt's own Keras 3 ports of timm models, pretrained
# weights from a timm checkpoint (python -m cxrlt weights --from-timm); the sizes are the family module's VARIANTS
OWN_BACKBONES = {
    **{f"convnextv2-{size}": "convnextv2" for size in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")},
    **{f"maxvit-{size}-tf-{px}": "maxvit" for size in ("tiny", "small", "base") for px in (224, 384, 512)},
}
# loss.name (cxrlt.model.losses.LOSSES holds each one's defaults and builder; a test keeps the two in step)
LOSSES = ("asl", "bce", "class_balanced", "cxrlt2026_db", "distribution_balanced", "focal", "ldam", "logit_adjusted",
          "weighted_bce")
# loss.name for single-label tasks (softmax over the classes; cxrlt.model.losses_single.LOSSES, kept in step by a test);
# corn (ordinal regression over K-1 conditional binary tasks) is for ordinal tasks only
SINGLE_LABEL_LOSSES = ("ce", "softmax_focal", "class_balanced_ce", "logit_adjusted_ce", "corn")
ORDINAL_LOSSES = ("corn",)
TASKS = ("multilabel", "multiclass", "ordinal")  # data.task (also "auto": detected from the CSV)
SINGLE_LABEL_TASKS = ("multiclass", "ordinal")
# train.monitor: the validation metric that selects a fold's best epoch (val_<name> in history.csv)
MULTILABEL_MONITORS = ("map", "mauc", "mf1")
SINGLE_LABEL_MONITORS = ("map", "mauc", "accuracy", "balanced_accuracy", "macro_f1", "mcc", "kappa", "kendall_tau",
                         "auc_ovo", "auc_ovr", "log_loss")  # log_loss: validation cross-entropy, selected at its minimum
LOWER_IS_BETTER = ("log_loss",)
ORDINAL_ONLY_MONITORS = ("kappa", "kendall_tau")
ORDINAL_DECISIONS = ("auto", "argmax", "median", "expected")
# augment.strategy of seed 000 -> (minority pipeline, majority pipeline, oversample minority images?)
STRATEGIES = {
    "baseline": ("weak", "weak", False),
    "weak-weak": ("weak", "weak", True),
    "strong-weak": ("strong_no_ssr", "weak", True),
    "strong-strong": ("strong_no_ssr", "strong", True),
    "weak-strong": ("weak", "strong", True),
}
SAMPLERS = ("instance", "class", "sqrt", "q", "ros", "rus", "repeat_factor")
LABEL_MODES = ("clip_sum", "convex")
MOSAIC_VARIANTS = ("both", "crop", "resize")
UNCERTAIN_POLICIES = ("error", "zero", "one", "ignore")
AUGMENT_DEVICES = ("auto", "host", "accelerator")  # where augmentation and mixing run (augment.device)
TTA_VIEWS = ("identity", "hflip")  # no vertical flips or rotations: anatomically impossible radiographs
STUDY_AGGREGATIONS = ("none", "mean", "max", "view_mean", "view_groups")
ENSEMBLE_METHODS = ("mean", "rank", "logit")
STRATEGY_NAMES = ("auto", "one", "mirrored", "multiworker")  # distribute.strategy
MIXED_PRECISION_DTYPES = ("auto", "float16", "bfloat16")  # distribute.mixed_precision_dtype
OPTIMIZERS = ("adam", "adamw", "sgd")
HEADS = ("gap", "csra", "ml_decoder")  # model.head (cxrlt.model.models / heads)
PREPARED_READERS = ("auto", "files", "tfrecord")
# input.intensity: how a 16-bit PNG's values become 0..1 (8-bit images are never touched); data/pipeline.py
INTENSITIES = ("full_range", "minmax", "percentile")
# input.dicom_window: which VOI a DICOM's values get (data/dicom.py): the file's stored VOI LUT / window (else the
# percentile stretch), the stored bits' full range, the image's min..max, or its 0.5..99.5 % values
DICOM_WINDOWS = ("stored", "full_range", "minmax", "percentile")
# The names the data stage defines (data/editions.py EDITIONS, data/classes.py SCHEMAS): the schema needs
# the names, not the readers, so they are written here and tests/test_editions.py keeps the two in step.
EDITIONS = ("cxrlt2023", "cxrlt2024-task1", "cxrlt2024-task2", "cxrlt2026-task1")
EDITION_NAMES = ("auto", *EDITIONS, "generic")  # data.edition
CLASS_SCHEMAS = ("cxrlt2023", "nih14")          # data.classes by name, beside an edition's
# --demo-edition YEAR -> the edition whose layout the demo is written in (data.demo_edition)
DEMO_EDITIONS = {"2023": "cxrlt2023", "2024": "cxrlt2024-task1", "2026": "cxrlt2026-task1"}

CHOICES: dict[str, tuple] = {
    "data.uncertain": UNCERTAIN_POLICIES,
    "data.check_images": ("header", "deep", "off"),
    "data.prepared_reader": PREPARED_READERS,
    "data.task": ("auto", *TASKS),
    "data.demo_task": TASKS,
    "input.resize": ("stretch", "letterbox"),
    "input.antialias": ("auto", "always"),
    "input.intensity": INTENSITIES,
    "input.dicom_window": DICOM_WINDOWS,
    "input.pixel_range": ("0_255", "0_1"),
    "augment.strategy": ("none", *STRATEGIES),
    "augment.device": AUGMENT_DEVICES,
    "sampling.sampler": SAMPLERS,
    "mix.label_mode": LABEL_MODES,
    "mix.mosaic_variant": MOSAIC_VARIANTS,
    "mix.balanced_mixup_labels": LABEL_MODES,
    "model.backbone": tuple(sorted({**BACKBONES, **OWN_BACKBONES})),
    "model.head": HEADS,
    "model.csra_variant": ("official", "cxrlt2026_winner"),
    "model.classifier": ("auto", "dense", "cosine"),
    "model.head_norm": ("none", "batchnorm"),
    "loss.name": LOSSES + SINGLE_LABEL_LOSSES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": ("constant", "cosine", "cyclic"),
    "optim.lr_scaling": ("none", "linear", "sqrt"),
    "train.checkpoint": ("best", "last"),
    "train.monitor": ("auto", *dict.fromkeys(MULTILABEL_MONITORS + SINGLE_LABEL_MONITORS)),
    "predict.ordinal_decision": ORDINAL_DECISIONS,
    "predict.study_aggregation": STUDY_AGGREGATIONS,
    "ensemble.method": ENSEMBLE_METHODS,
    "fuse.checkpoint": ("best", "last"),
    "distribute.strategy": STRATEGY_NAMES,
    "distribute.mixed_precision_dtype": MIXED_PRECISION_DTYPES,
}


# -------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (open ends where said). `cap` marks an upper bound that is a sanity limit (the
    decoder, memory, an int64 counter) rather than part of the setting's meaning; `null` explains what an
    empty value means for settings that may be null."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    cap: bool = False
    null: str | None = None

    def holds(self, v: float) -> bool:
        return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)

    def say(self) -> str:
        low = f"> {_num(self.lo)}" if self.lo_open else f">= {_num(self.lo)}"
        if self.cap:
            text = f"{low} (at most {_num(self.hi)})"
        else:
            text = f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        return f"null ({self.null}) or {text}" if self.null else text


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


UNIT = Range(0, 1)
SHARE = Range(0, 1, lo_open=True, hi_open=True)
ALPHA = Range(0, 100, lo_open=True, cap=True)
Q = Range(-10, 10)  # sampler exponents: 1 instance-like, 0.5 square root, 0 class-balanced
MAX_SIZE = 4096     # px: a 4096^2 float RGB batch of 8 is 1.6 GB before any activation
MAX_BATCH = 65536
MAX_COUNT = 10**9
# Images above this many pixels are never decoded: the pre-flight check calls them bad (check.Limits.max_pixels)
# and the pipeline's decoder refuses them from the header (pipeline.pixel_guard), ~1.3 GiB per image in flight.
MAX_IMAGE_PIXELS = 2 ** 28

RANGES: dict[str, Range] = {
    "seed": Range(0, 2**31 - 1, cap=True),
    "data.demo_patients": Range(20, 100_000, cap=True),
    "data.demo_image_size": Range(32, MAX_SIZE, cap=True),
    "input.size": Range(32, MAX_SIZE, cap=True),
    "input.shuffle_buffer": Range(1, 10**7, cap=True),
    "input.data_service_streams": Range(1, 1024, cap=True),
    "input.data_service_timeout_s": Range(0, 10**7, cap=True),
    "augment.tail_quantile": UNIT,
    "augment.minority_share": SHARE,
    "augment.scale": Range(0, 1, hi_open=True),
    "augment.rotate_deg": Range(0, 180),
    "augment.brightness": UNIT,
    "augment.contrast": Range(0, 1, hi_open=True),
    "sampling.q": Q,
    "sampling.tail_quantile": UNIT,
    "sampling.ros_share": SHARE,
    "sampling.ros_epoch_size": Range(0, MAX_COUNT, cap=True),
    "sampling.rus_keep": Range(0, 1, lo_open=True),
    "sampling.repeat_threshold": Range(0, 1, lo_open=True),
    "sampling.repeat_max": Range(1, 10_000, cap=True),
    "mix.mosaic": UNIT,
    "mix.mixup": UNIT,
    "mix.cutmix": UNIT,
    "mix.cutout": UNIT,
    "mix.mixup_alpha": ALPHA,
    "mix.cutmix_alpha": ALPHA,
    "mix.cutout_size": Range(0, 1, lo_open=True),
    "mix.balanced_mixup": Range(0, 100, cap=True),
    "mix.balanced_mixup_q": Q,
    "model.dropout": Range(0, 1, hi_open=True),
    "model.csra_lambda": Range(0, 100, cap=True),
    "model.drop_path": Range(0, 1, hi_open=True),
    "model.csra_heads": Range(1, 64, cap=True),
    "optim.lr": Range(0, 10, lo_open=True, cap=True),
    "optim.beta_1": Range(0, 1, hi_open=True),
    "optim.beta_2": Range(0, 1, hi_open=True),
    "optim.weight_decay": Range(0, 10, cap=True),
    "optim.reference_batch": Range(1, MAX_BATCH, cap=True),
    "optim.warmup_epochs": Range(0, 100_000, cap=True),
    "optim.cycle_epochs": Range(1, 100_000, cap=True),
    "optim.momentum": Range(0, 1, hi_open=True),
    "optim.min_lr_ratio": UNIT,
    "optim.backbone_lr_mult": Range(0, 1000, cap=True),
    "optim.head_weight_decay": Range(0, 10, cap=True, null="optim.weight_decay"),
    "optim.clip_norm": Range(0, 1e9, cap=True),
    "optim.head_warmup_lr": Range(0, 10, lo_open=True, cap=True, null="optim.lr"),
    "train.epochs": Range(1, 100_000, cap=True),
    "train.batch_size": Range(1, MAX_BATCH, cap=True),
    "train.folds": Range(2, 100, cap=True),
    "train.ema": Range(0, 1, hi_open=True),
    "train.ema_warmup_gamma": Range(0, 1e12, lo_open=True, cap=True),
    "train.ema_warmup_power": Range(0, 100, lo_open=True, cap=True),
    "train.freeze_backbone_epochs": Range(0, 100_000, cap=True),
    "train.steps_per_epoch": Range(1, MAX_COUNT, cap=True, null="one pass"),
    "train.accumulate": Range(1, 1024, cap=True),
    "train.steps_per_execution": Range(1, 10_000, cap=True, null="1 without a GPU, 16 with one"),
    "train.step_timeout_s": Range(0, 10**7, cap=True),
    "distribute.heartbeat_timeout_s": Range(1, 10**6, cap=True),
    "distribute.cpu_replicas": Range(1, 1024, cap=True, null="the CPU as one device"),
    "predict.batch_size": Range(1, MAX_BATCH, cap=True),
    "ensemble.fit_rounds": Range(1, 100_000, cap=True),
    "ensemble.normal_gating": UNIT,
    "ensemble.normal_gating_power": Range(0, 100, cap=True),
    "fuse.max_images": Range(1, 64, cap=True),
    "fuse.dim": Range(1, 8192, cap=True),
    "fuse.layers": Range(1, 64, cap=True),
    "fuse.heads": Range(1, 256, cap=True),
    "fuse.ffn_dim": Range(1, 65536, cap=True),
    "fuse.dropout": Range(0, 1, hi_open=True),
    "fuse.feature_pool": Range(1, 256, cap=True),
    "fuse.epochs": Range(1, 100_000, cap=True),
    "fuse.batch_size": Range(1, MAX_BATCH, cap=True),
    "fuse.lr": Range(0, 10, lo_open=True, cap=True),
}


class ConfigError(UserError):
    """A setting that cannot work; the message names the setting, the allowed values and where it was set."""


def choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}"
                          + (f"; did you mean {close[0]!r}?" if close else ""))


def check_range(key: str, value: Any) -> None:
    rule = RANGES[key]
    if value is None and rule.null:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number {rule.say()}, got {value!r}")
    if not math.isfinite(value) or not rule.holds(value):
        raise ConfigError(f"{key} must be {rule.say()}, got {value!r}")


def get(cfg: dict, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg: dict) -> None:
    """Every choice and range, then the combinations no single setting can rule out."""
    t = cfg["train"]
    size = cfg["input"]["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 32:
        raise ConfigError(f"input.size must be an integer >= 32, got {size!r}")
    for key, rule in RANGES.items():
        check_range(key, get(cfg, key))
    replicas = cfg["distribute"]["cpu_replicas"]
    if replicas is not None and (isinstance(replicas, bool) or not float(replicas).is_integer()):
        raise ConfigError(f"distribute.cpu_replicas must be a whole number of logical CPU devices, got {replicas!r}")
    frozen = t["freeze_backbone_epochs"]
    if frozen and frozen >= t["epochs"]:
        raise ConfigError(f"train.freeze_backbone_epochs ({frozen}) must be below train.epochs ({t['epochs']}): "
                          "the head warm-up comes before training the whole model")
    if cfg["optim"]["warmup_epochs"] and cfg["optim"]["warmup_epochs"] >= t["epochs"] - frozen:
        raise ConfigError(f"optim.warmup_epochs ({cfg['optim']['warmup_epochs']}) must be below train.epochs "
                          f"({t['epochs']})" + (f" minus train.freeze_backbone_epochs ({frozen})" if frozen else "")
                          + ": the warm-up comes before the schedule")
    _check_head(cfg)
    if cfg["optim"]["schedule"] == "cyclic" and cfg["optim"]["warmup_epochs"]:
        raise ConfigError("optim.schedule cyclic has no warm-up: set optim.warmup_epochs 0 (every cycle starts at lr)")
    choice("loss.name", cfg["loss"]["name"], LOSSES + SINGLE_LABEL_LOSSES)
    _check_loss_params(cfg["loss"])
    e = cfg["ensemble"]
    if e["normal_gating"] and e["normal_gating_power"]:
        raise ConfigError("ensemble.normal_gating (linear: x (1 - w p_normal)) and ensemble.normal_gating_power "
                          "(x (1 - p_normal) ** P) are two forms of one step: set one of them")
    fold = t["fold"]
    if fold != "all" and (not isinstance(fold, int) or not 0 <= fold < t["folds"]):
        raise ConfigError(f"train.fold must be 'all' or an index in 0..{t['folds'] - 1}, got {fold!r}")
    for key, allowed in CHOICES.items():
        choice(key, get(cfg, key), allowed)
    tta = cfg["predict"]["tta"]
    if not isinstance(tta, list) or not tta or set(tta) - set(TTA_VIEWS):
        raise ConfigError(f"predict.tta must be a non-empty subset of [{', '.join(TTA_VIEWS)}], got {tta}")
    _check_mix(cfg["mix"])
    validate_fuse(cfg)
    a, sampler = cfg["augment"], cfg["sampling"]["sampler"]
    if a["strategy"] in STRATEGIES and STRATEGIES[a["strategy"]][2]:
        problem = oversampling_conflict(sampler, a["strategy"])
        if problem:
            raise ConfigError(problem)
    _check_data(cfg)
    _check_data_service(cfg)
    if cfg["data"]["task"] != "auto":
        problem = task_problem(cfg, cfg["data"]["task"])
        if problem:
            raise ConfigError(problem)
    weights = cfg["model"]["weights"]
    if weights not in ("none", "imagenet") and not Path(str(weights)).expanduser().exists():
        raise ConfigError(f"model.weights must be none, imagenet or an existing weights file (or a folder from "
                          f"python -m cxrlt weights), got {weights!r} (no such file)")
    if cfg["model"]["drop_path"] and cfg["model"]["backbone"] not in OWN_BACKBONES:
        raise ConfigError(f"model.drop_path ({cfg['model']['drop_path']}) is built into cxrlt's own backbones "
                          f"(convnextv2-*, maxvit-*), not into keras.applications' {cfg['model']['backbone']}: "
                          "set model.drop_path 0 or pick one of those backbones")
    if cfg["model"]["backbone"] in OWN_BACKBONES and cfg["model"]["weights"] == "imagenet" and not cfg["model"]["init"]:
        raise ConfigError(f"model.weights imagenet downloads Keras' own weights, which {cfg['model']['backbone']} has "
                          "none of: convert a timm checkpoint (python -m cxrlt weights --from-timm FILE.safetensors "
                          f"--backbone {cfg['model']['backbone']} --out DIR) and pass --weights DIR, or --weights none")
    if OWN_BACKBONES.get(cfg["model"]["backbone"]) == "maxvit" and size % 32:
        raise ConfigError(f"input.size {size} does not fit {cfg['model']['backbone']}: MaxViT's attention windows are "
                          f"input.size / 32, so the size must be a multiple of 32 (e.g. {max(32, size // 32 * 32)})")
    init = cfg["model"]["init"]
    if init is not None and not Path(str(init)).expanduser().exists():
        raise ConfigError(f"model.init must be a cxrlt run directory or a .keras model file, got {init!r} (no such path)")
    name = None if cfg.get("name") is None else str(cfg["name"])
    if name is not None and (not name.strip() or "/" in name or "\\" in name or name in (".", "..")):
        raise ConfigError(f"name {name!r} must be a plain folder name (the run goes to {cfg['out']}/<name>)")


# Kevinz-code/CSRA MHA.temp_settings: the head counts the authors give temperatures for
CSRA_AUTHOR_HEADS = (1, 2, 4, 6, 8)


def _check_head(cfg: dict) -> None:
    """The model.* head settings together, and LDAM's scale against the classifier it scales."""
    m, loss = cfg["model"], cfg["loss"]
    temps = m["csra_temperatures"]
    if temps is not None:
        if (not isinstance(temps, list) or len(temps) != m["csra_heads"]
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in temps)):
            raise ConfigError(f"model.csra_temperatures must be null or one number > 0 per head (model.csra_heads "
                              f"{m['csra_heads']}; 99 = max pooling), got {temps!r}")
    elif m["csra_heads"] not in CSRA_AUTHOR_HEADS:
        raise ConfigError(f"model.csra_heads {m['csra_heads']}: the authors' code has temperatures for "
                          f"{', '.join(map(str, CSRA_AUTHOR_HEADS))} heads; give model.csra_temperatures (one per head)")
    if m["csra_variant"] == "cxrlt2026_winner" and (m["csra_heads"] != 1 or temps not in (None, [1], [1.0])):
        raise ConfigError("model.csra_variant cxrlt2026_winner has one softmax head: leave model.csra_heads 1 and "
                          "model.csra_temperatures null")
    if m["classifier"] == "cosine" and m["head"] != "gap":
        raise ConfigError(f"model.classifier cosine is the gap head's classifier; model.head {m['head']} has its own "
                          "(use model.classifier auto or dense)")
    if loss["name"] == "ldam":
        params = loss["params"] or {}
        if "scale" in params and "s" in params:
            raise ConfigError("loss.params: give ldam's scale or its old name s, not both")
        scale = params.get("scale", params.get("s", 30.0))
        cosine = m["classifier"] == "cosine" or (m["classifier"] == "auto" and m["head"] == "gap")
        if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 1 and not cosine:
            raise ConfigError(f"loss ldam multiplies the logits by loss.params.scale ({scale:g}, the authors' 30 is "
                              f"for cosine logits), but model.head {m['head']} with model.classifier "
                              f"{m['classifier']} gives raw logits: set loss.params.scale 1, or use the gap head "
                              "with model.classifier auto/cosine")


# Each loss's parameters (loss.params), besides the common `reduction` and `name`: the config is checked
# before any data are read; model/losses.py LOSSES holds the defaults (tests/test_config.py keeps the two in step).
LOSS_PARAMS = {
    "focal": ("alpha", "gamma", "apply_class_balancing", "label_smoothing"),
    "bce": ("label_smoothing",),
    "weighted_bce": ("power", "max_weight", "label_smoothing"),
    "class_balanced": ("beta", "base", "gamma", "alpha", "apply_class_balancing", "label_smoothing"),
    "asl": ("gamma_neg", "gamma_pos", "clip", "label_smoothing", "class_weighting", "detach_focusing"),
    "ldam": ("max_margin", "scale", "s", "drw_epoch", "drw_beta", "negative_margin", "label_smoothing"),
    "distribution_balanced": ("alpha", "beta", "mu", "neg_scale", "init_bias", "focal", "gamma", "balance_param",
                              "label_smoothing"),
    "cxrlt2026_db": ("beta", "rebalance_alpha", "neg_scale", "neg_margin", "margin_scale", "max_margin",
                     "label_smoothing"),
    "logit_adjusted": ("tau", "label_smoothing"),
}
# the single-label losses' parameters (cxrlt.model.losses_single.LOSSES; kept in step by a test)
SINGLE_LABEL_LOSS_PARAMS = {
    "ce": ("label_smoothing",),
    "softmax_focal": ("gamma", "alpha", "label_smoothing"),
    "class_balanced_ce": ("beta", "gamma", "label_smoothing"),
    "logit_adjusted_ce": ("tau", "label_smoothing"),
    "corn": (),
}
LOSS_COMMON_PARAMS = ("reduction", "name")


def _check_loss_params(loss: dict) -> None:
    """An unknown loss parameter (`--set loss.params.scale=30` for a loss that has none) used to pass the config
    check and end in a traceback when the first fold built its loss, after the data were read and screened."""
    params = loss.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"loss.params must be a mapping of the loss's arguments, got {params!r}")
    known = LOSS_PARAMS.get(loss["name"], SINGLE_LABEL_LOSS_PARAMS.get(loss["name"]))
    if known is None:
        return  # an unknown loss name is choice()'s error
    for key in params:
        if key not in known and key not in LOSS_COMMON_PARAMS:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"loss {loss['name']} has no parameter loss.params.{key}"
                              + (f"; did you mean loss.params.{close[0]}?" if close else "")
                              + f" It takes: {', '.join(known)}")


def validate_fuse(cfg: dict) -> None:
    """The fuse: section alone (python -m cxrlt.fuse checks only these on a trained run's config)."""
    for key in RANGES:
        if key.startswith("fuse."):
            check_range(key, get(cfg, key))
    choice("fuse.checkpoint", cfg["fuse"]["checkpoint"], CHOICES["fuse.checkpoint"])
    f = cfg["fuse"]
    if f["dim"] % f["heads"]:
        raise ConfigError(f"fuse.dim ({f['dim']}) must be a multiple of fuse.heads ({f['heads']})")


def _check_mix(mix: dict) -> None:
    if sum(mix[k] for k in ("mosaic", "mixup", "cutmix")) > 1 + 1e-9:
        raise ConfigError("mix probabilities must be in [0, 1] and mosaic + mixup + cutmix <= 1 (one mix op per batch)")
    center = mix["mosaic_center"]
    if (not isinstance(center, (list, tuple)) or len(center) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in center)
            or not 0.0 <= float(center[0]) <= float(center[1]) <= 1.0):
        raise ConfigError(f"mix.mosaic_center must satisfy 0 <= low <= high <= 1, got {center}")


def _check_data(cfg: dict) -> None:
    d = cfg["data"]
    choice("data.edition", d["edition"], EDITION_NAMES)
    choice("data.demo_edition", d["demo_edition"], tuple(DEMO_EDITIONS.values()))
    if isinstance(d["classes"], str) and d["classes"] not in ("auto", "edition"):
        choice("data.classes", d["classes"], list(dict.fromkeys(["auto", "edition", *sorted(CLASS_SCHEMAS), *EDITIONS])))
    if isinstance(d["classes"], list) and (not d["classes"] or len(set(map(str, d["classes"]))) != len(d["classes"])):
        raise ConfigError(f"data.classes must list each class once, got {d['classes']}")


def _check_data_service(cfg: dict) -> None:
    """input.data_service: a grpc address, and only pipelines made of TensorFlow ops (a tf.data service worker
    runs the serialized graph; Python generators and numpy_function stay behind in the trainer's process)."""
    address = cfg["input"]["data_service"]
    if address is None:
        return
    import re

    if not isinstance(address, str) or not re.fullmatch(r"grpc://[^\s:/]+:\d{1,5}", address):
        raise ConfigError(f"input.data_service must be null or grpc://HOST:PORT of a tf.data service dispatcher "
                          f"(python -m cxrlt.data_service --dispatcher), got {address!r}")
    sampler, strategy = cfg["sampling"]["sampler"], cfg["augment"]["strategy"]
    if sampler in ("ros", "rus") or strategy != "none":
        what = f"sampling.sampler {sampler}" if sampler in ("ros", "rus") else f"augment.strategy {strategy}"
        raise ConfigError(f"input.data_service cannot run {what}: it uses Python code (a numpy epoch generator or "
                          "albumentations) that tf.data service workers cannot run; train without input.data_service "
                          "or use a TensorFlow-only sampler/augmentation (instance/class/sqrt/q, augment.strategy none)")


def task_problem(cfg: dict, task: str) -> str | None:
    """What in `cfg` cannot run for `task` (a message naming the setting), or None. Checked when the config is
    loaded with an explicit data.task, and again once data.task auto is resolved from the CSV
    (cxrlt.data.single_label.resolve_task_settings, which first moves untouched multi-label defaults aside)."""
    loss, monitor = cfg["loss"]["name"], cfg["train"]["monitor"]
    single = task in SINGLE_LABEL_TASKS
    if single and loss not in SINGLE_LABEL_LOSSES:
        return (f"loss.name {loss} is a multi-label (sigmoid) loss; a {task} task trains with a softmax loss: "
                f"{', '.join(n for n in SINGLE_LABEL_LOSSES if task == 'ordinal' or n not in ORDINAL_LOSSES)}")
    if not single and loss in SINGLE_LABEL_LOSSES:
        return (f"loss.name {loss} is a single-label loss; a multilabel task trains with {', '.join(LOSSES)} "
                "(or set data.task multiclass / ordinal)")
    if task == "multiclass" and loss in ORDINAL_LOSSES:
        return f"loss.name {loss} is an ordinal loss: set data.task ordinal (grades in order), or use ce"
    if monitor != "auto":
        allowed = SINGLE_LABEL_MONITORS if single else MULTILABEL_MONITORS
        if monitor not in allowed or (task == "multiclass" and monitor in ORDINAL_ONLY_MONITORS):
            ok = [m for m in allowed if task != "multiclass" or m not in ORDINAL_ONLY_MONITORS]
            return f"train.monitor {monitor} is not a {task} metric; use auto or one of {', '.join(ok)}"
    if single and cfg["data"]["uncertain"] == "ignore":
        return ("data.uncertain ignore masks single labels out of a multi-label loss; a single-label task needs one "
                "known class per image (uncertain error, or drop those rows)")
    majority = cfg["augment"]["majority_classes"]
    if majority is not None and (not isinstance(majority, list) or not majority
                                 or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in majority)):
        return f"augment.majority_classes must be null or a non-empty list of class names, got {majority!r}"
    if majority is not None and not single:
        return ("augment.majority_classes routes single-label classes; a multilabel task picks its minority images "
                "by augment.tail_quantile")
    return None


def oversampling_conflict(sampler: str, strategy: str) -> str | None:
    """Why `sampling.sampler` cannot run beside an augment.strategy that oversamples, or None."""
    if sampler == "instance":
        return None
    return (f"sampling.sampler {sampler!r} and augment.strategy {strategy!r} (which oversamples minority images) "
            "both choose the training images; use one of them (sampling.sampler: instance, or augment.strategy: "
            "baseline)")
