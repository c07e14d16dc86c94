"""Start a model from another trained model (`--init`, e.g. train on CXR-LT 2024, fine-tune on CXR-LT 2026).

The backbone (every layer but the head) is copied whole and must match exactly (same backbone, same input
preprocessing): a partial backbone would silently train from a mixture. The head ("logits" layer) is copied
per class, matched by name: a class of the new run that the source model also predicts gets its column of
the head's class-wise weights, a new class keeps its fresh initialisation, and the head's class-independent
weights (ML-Decoder's decoder layers) are copied when their shapes agree. Names match exactly, else after
normalising case and punctuation ("Pleural_Effusion" = "pleural effusion"). Only the weights move: the new
run's optimizer, schedule and epoch count start fresh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import keras
import numpy as np

from ..utils.errors import UserError

HEAD = "logits"
HEAD_NORM = "head_batchnorm"  # model.head_norm's BatchNormalization: part of the head, copied when both models have it
# The class axis of each class-wise head weight, by (head layer class, weight path below the head layer).
CLASS_AXIS = {("Dense", "kernel"): 1, ("Dense", "bias"): 0, ("CosineDense", "kernel"): 1,
              ("CSRA", "kernel"): 1, ("CSRA", "bias"): 0, ("CSRA", "attention_kernel"): 1,
              **{("CSRA", f"kernel_{i}"): 1 for i in range(1, 8)},
              ("MLDecoder", "queries"): 0, ("MLDecoder", "group_kernel"): 0, ("MLDecoder", "group_bias"): 0}


class InitError(UserError):
    """A source model that cannot initialise this run; the message says why and what to pass instead."""


@dataclass
class InitReport:
    source: str
    backbone_tensors: int = 0
    copied: list[str] = field(default_factory=list)      # this run's classes whose head weights came from the source
    fresh: list[str] = field(default_factory=list)       # this run's classes that start fresh
    unused: list[str] = field(default_factory=list)      # the source's classes this run does not have
    head_note: str = ""                                   # why the head was not loaded, if it was not

    def lines(self) -> list[str]:
        out = [f"init from {self.source}: backbone loaded ({self.backbone_tensors} tensors)"]
        if self.head_note:
            out.append(f"init: head NOT loaded ({self.head_note}); all {len(self.fresh)} classes start fresh")
        else:
            out.append(f"init: head loaded for {len(self.copied)} class(es): {', '.join(self.copied) or '-'}")
            out.append(f"init: fresh head for {len(self.fresh)} new class(es): {', '.join(self.fresh) or '-'}")
        if self.unused:
            out.append(f"init: source classes not in this run (dropped): {', '.join(self.unused)}")
        return out


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", str(name).lower()).strip()


def _match(source_classes, target_classes) -> dict[int, int]:
    """target index -> source index, exact names first, then normalised ones."""
    exact = {c: i for i, c in enumerate(source_classes)}
    loose: dict[str, int] = {}
    for i, c in enumerate(source_classes):
        loose.setdefault(_key(c), i)
    pairs = {}
    for t, c in enumerate(target_classes):
        s = exact.get(c, loose.get(_key(c)))
        if s is not None and s not in pairs.values():
            pairs[t] = s
    return pairs


def _body(model: keras.Model) -> list:
    return [(layer, w) for layer in model.layers if layer.name not in (HEAD, HEAD_NORM) for w in layer.weights]


def _copy_head_norm(source: keras.Model, target: keras.Model) -> None:
    """model.head_norm's statistics and affine weights go along when both models have the layer (same width)."""
    names_s, names_t = {layer.name for layer in source.layers}, {layer.name for layer in target.layers}
    if HEAD_NORM not in names_s or HEAD_NORM not in names_t:
        return
    pairs = list(zip(source.get_layer(HEAD_NORM).weights, target.get_layer(HEAD_NORM).weights))
    if all(tuple(a.shape) == tuple(b.shape) for a, b in pairs):
        for a, b in pairs:
            b.assign(np.asarray(a.numpy()))


def transfer(source: keras.Model, target: keras.Model, target_classes, source_classes=None, *,
             source_name: str = "the source model") -> InitReport:
    """Copy `source`'s backbone and its head's matching classes into `target` (in place; call it inside the
    strategy's scope). `source_classes` None: the source's class names are unknown, the head is not loaded."""
    report = InitReport(source=source_name)
    src, dst = _body(source), _body(target)
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for (_, a), (_, b) in zip(src, dst)):
        first = next((i for i, ((_, a), (_, b)) in enumerate(zip(src, dst)) if tuple(a.shape) != tuple(b.shape)),
                     min(len(src), len(dst)))
        where = (f"first difference: {src[first][1].path} {tuple(src[first][1].shape)} vs {dst[first][1].path} "
                 f"{tuple(dst[first][1].shape)}" if first < min(len(src), len(dst))
                 else f"{len(src)} vs {len(dst)} tensors")
        raise InitError(f"{source_name} has another backbone than this run ({source.name} vs {target.name}; {where}). "
                        "--init needs the same model.backbone and input.pixel_range as the source run")
    for (_, a), (_, b) in zip(src, dst):
        b.assign(np.asarray(a.numpy()))
    report.backbone_tensors = len(dst)
    _copy_head_norm(source, target)

    target_classes = list(target_classes)
    head_s, head_t = source.get_layer(HEAD), target.get_layer(HEAD)
    kind_s, kind_t = type(head_s).__name__, type(head_t).__name__
    n_source = int(source.outputs[0].shape[-1])
    if source_classes is not None and len(source_classes) != n_source:
        raise InitError(f"{source_name} predicts {n_source} classes but its class list names {len(source_classes)}")
    if source_classes is None:
        report.head_note = "the source's class names are unknown: no classes.json beside the model or in its run"
    elif kind_s != kind_t:
        report.head_note = f"the source's head is {kind_s}, this run's is {kind_t} (model.head differs)"
    elif [w.path.split("/")[-1] for w in head_s.weights] != [w.path.split("/")[-1] for w in head_t.weights]:
        report.head_note = f"the source's {kind_s} head has other weights than this run's (a model.csra_* setting differs)"
    if report.head_note:
        report.fresh = target_classes
        return report
    pairs = _match(list(source_classes), target_classes)
    for ws, wt in zip(head_s.weights, head_t.weights):
        name = wt.path.split("/", 1)[1] if "/" in wt.path else wt.path
        axis = CLASS_AXIS.get((kind_t, name))
        value_s, value_t = np.asarray(ws.numpy()), np.array(wt.numpy())
        if axis is None:  # class-independent (ML-Decoder's decoder layers)
            if value_s.shape != value_t.shape:
                raise InitError(f"{source_name}: head weight {name} is {value_s.shape}, this run's {value_t.shape} "
                                "(another head size)")
            wt.assign(value_s)
            continue
        for t, s in pairs.items():
            index_t, index_s = [slice(None)] * value_t.ndim, [slice(None)] * value_s.ndim
            index_t[axis], index_s[axis] = t, s
            value_t[tuple(index_t)] = value_s[tuple(index_s)]
        wt.assign(value_t)
    report.copied = [target_classes[t] for t in sorted(pairs)]
    report.fresh = [c for t, c in enumerate(target_classes) if t not in pairs]
    report.unused = [c for s, c in enumerate(source_classes) if s not in set(pairs.values())]
    return report
