"""What a config means for each task (data.task): the multi-label defaults a single-label task cannot use, set
aside, and the metric and decision rule that follow from the task. Pure functions of the config (no TensorFlow,
no files), so a config with an explicit data.task is resolved when it is loaded, and one with data.task auto the
moment the CSV has been read (cxrlt.data.single_label.resolve_task).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import yaml

from . import schema

log = logging.getLogger("cxrlt.config")
_DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")  # loader.DEFAULTS_FILE (the loader imports this module)


def _dotted(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree

# what data.task auto falls back to without evidence, and the metric each task selects epochs by
DEFAULT_MONITOR = {"multilabel": "map", "multiclass": "mcc", "ordinal": "kappa"}
# train.monitor name -> the key of the scores dict (cxrlt.evaluate metrics / single_label) it reads
MONITOR_KEYS = {"map": "mAP", "mauc": "mAUC", "mf1": "mF1", "accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy",
                "macro_f1": "macro_f1", "mcc": "mcc", "kappa": "kappa", "kendall_tau": "kendall_tau",
                "auc_ovo": "auc_ovo", "auc_ovr": "auc_ovr", "log_loss": "log_loss"}


def is_single_label(task: str) -> bool:
    return task in schema.SINGLE_LABEL_TASKS


def monitor(cfg: dict, task: str | None = None) -> str:
    """train.monitor resolved for the task: auto -> map (multilabel), mcc (multiclass), kappa (ordinal)."""
    task = task or cfg["data"].get("task", "multilabel")
    task = "multilabel" if task == "auto" else task
    name = cfg["train"].get("monitor", "auto")
    return DEFAULT_MONITOR[task] if name == "auto" else name


def ordinal_decision(cfg: dict, task: str | None = None) -> str:
    """How an image's class is read from its probabilities: argmax for multiclass; for ordinal the setting,
    auto being CORN's own rule (the median grade) for the corn loss and the argmax otherwise."""
    task = task or cfg["data"].get("task", "multilabel")
    if task != "ordinal":
        return "argmax"
    name = cfg.get("predict", {}).get("ordinal_decision", "auto")
    if name != "auto":
        return name
    return "median" if cfg["loss"]["name"] in schema.ORDINAL_LOSSES else "argmax"


def apply_task_defaults(cfg: dict, task: str, given: set[str] | None = None) -> list[str]:
    """Set data.task to `task` and, for a single-label task, put aside the multi-label defaults it cannot use
    (in place); returns one line per change, for the log. Settings the user chose are never rewritten: with
    `given` (the keys set by the config file and flags) a key is the user's when it is in `given`; without it
    (data.task auto, resolved after loading) a key is the user's when it differs from its default.

    - loss: the default focal (seed 002's binary focal loss) becomes ce, the cross-entropy both single-label
      papers train with. A multi-label loss the user chose is an error (schema.task_problem).
    - mix.label_mode / mix.balanced_mixup_labels: clip_sum (the union of two multi-hot labels) cannot make a
      softmax target, which must sum to 1: single-label labels mix convexly, by lambda or by area (Mosaic too).
    """
    cfg["data"]["task"] = task
    notes: list[str] = []
    if not is_single_label(task):
        return notes
    base = yaml.safe_load(_DEFAULTS_FILE.read_text())

    def untouched(key: str, *more: str) -> bool:
        if given is not None:
            return not any(k in given for k in (key, *more))
        return all(_dotted(cfg, k) == _dotted(base, k) for k in (key, *more))

    if cfg["loss"]["name"] == base["loss"]["name"] and untouched("loss.name", "loss.params"):
        cfg["loss"] = {"name": "ce", "params": {}}
        notes.append(f"loss.name {base['loss']['name']} (the multi-label default) -> ce: a {task} task trains with "
                     "softmax cross-entropy unless loss.name names another single-label loss")
    mixing = any(cfg["mix"][k] > 0 for k in ("mosaic", "mixup", "cutmix"))
    for key, active in (("label_mode", mixing), ("balanced_mixup_labels", cfg["mix"]["balanced_mixup"] > 0)):
        if cfg["mix"][key] == "clip_sum":
            cfg["mix"][key] = "convex"
            if active:
                notes.append(f"mix.{key} clip_sum -> convex: a softmax target must sum to 1, so mixed single-label "
                             "images take each source's label weighted by its lambda or its visible area "
                             "(Mosaic: the area of its quadrant)")
    for note in notes:
        log.info("%s", note)
    return notes


def resolved(cfg: dict, task: str, given: set[str] | None = None) -> tuple[dict, list[str]]:
    """A copy of `cfg` with `apply_task_defaults` applied, and its notes."""
    out = copy.deepcopy(cfg)
    return out, apply_task_defaults(out, task, given)
