"""timm checkpoints -> cxrlt's own backbones, with NumPy and safetensors only (no PyTorch, no timm).

    python -m cxrlt weights --from-timm model.safetensors --backbone convnextv2-base --out weights/

reads the timm checkpoint (the `model.safetensors` timm publishes on the Hugging Face hub), maps every
tensor to the one Keras weight it belongs to (each family module's `keras_weight`: the layer names are
timm's module paths, the layouts converted by common.to_keras), checks each shape against the Keras
backbone built at the checkpoint's size, and writes

    DIR/<backbone>.safetensors   the backbone's weights in Keras layout, keyed by Keras weight path
    DIR/<backbone>.json          backbone, source file + sha256, checkpoint size, input mean/std, licence

which `--weights DIR` loads offline (cxrlt.model.models via `load`). Only timm's ImageNet classifier
(head.fc) is dropped; any other tensor without a place, or a Keras weight without a tensor, is an error.
MaxViT's relative-position tables are resized at load time when the training size differs from the
checkpoint's, by a NumPy port of timm's `resize_rel_pos_bias_table` (the one timm applies when it loads
a checkpoint into a model of another size).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...config.schema import OWN_BACKBONES
from ...utils import atomic
from ...utils.hashing import file_sha256
from ..weights_files import WeightsError, info_path
from . import common, family, variant

SUFFIX = ".safetensors"
FORMAT = "cxrlt-keras-from-timm-1"
CLASSIFIER = ("head.fc.weight", "head.fc.bias")  # timm's ImageNet classifier: not part of a cxrlt backbone


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({type(err).__name__}: {str(err)[:200]}); "
                           "download timm's model.safetensors again (docs/backbones.md)") from None


def map_checkpoint(state: dict[str, np.ndarray], backbone: str, expected: dict[str, tuple], *,
                   source: str = "checkpoint", drop=CLASSIFIER) -> dict[str, np.ndarray]:
    """timm state dict -> {Keras weight path: array in Keras layout} for a model whose weights have the
    `expected` shapes ({path: shape}). Every timm key must land on exactly one expected weight with its
    shape, and every expected weight must be filled, except relative-position tables, whose shape may
    differ (resized when loaded). `drop`: keys left out on purpose."""
    fam = family(backbone)
    out, unknown, taken = {}, [], {}
    for key in sorted(state):
        if key in drop:
            continue
        try:
            target = fam.keras_weight(key)
        except KeyError:
            unknown.append(key)
            continue
        if target is None:
            continue
        path, kind = target
        if path in taken:
            raise WeightsError(f"{source}: {key} and {taken[path]} both map to the Keras weight {path}")
        if path not in expected:
            unknown.append(key)
            continue
        taken[path] = key
        array = common.to_keras(np.asarray(state[key], dtype=np.float32), kind)
        if tuple(array.shape) != tuple(expected[path]) and not path.endswith("relative_position_bias_table"):
            raise WeightsError(f"{source} does not fit {backbone}: {key} has shape {tuple(state[key].shape)} (Keras "
                               f"{tuple(array.shape)}) but {backbone}'s {path} is {tuple(expected[path])}; is it a "
                               f"checkpoint of another model size (this one is timm {variant(backbone).timm_name})?")
        out[path] = array
    missing = sorted(set(expected) - set(out))
    if unknown or missing:
        raise WeightsError(f"{source} does not fit {backbone}: "
                           + (f"{len(unknown)} tensors with no place in it (e.g. {', '.join(unknown[:3])})" if unknown else "")
                           + ("; " if unknown and missing else "")
                           + (f"{len(missing)} of its weights not in the file (e.g. {', '.join(missing[:3])})" if missing else "")
                           + f". Is it a timm {variant(backbone).timm_name} checkpoint?")
    return out


def expected_shapes(backbone: str, image_size: int) -> dict[str, tuple]:
    """{Keras weight path: shape} of the backbone at `image_size`, from lazy variables (nothing allocated)."""
    import keras

    from . import build, shapes_only

    with shapes_only():
        model = build(backbone, keras.Input((image_size, image_size, 3)), pooled=True)
        return {w.path: tuple(int(d) for d in w.shape) for w in model.weights}


def checkpoint_size(state: dict[str, np.ndarray], backbone: str) -> int:
    """The image size the checkpoint was trained at: MaxViT's from its relative-position tables
    ((2P - 1) wide, P = size / 32); ConvNeXt V2 has no size-bound tensor (its variant's default)."""
    v = variant(backbone)
    if OWN_BACKBONES[backbone] != "maxvit":
        return v.image_size
    spans = {int(a.shape[-1]) for k, a in state.items() if k.endswith("relative_position_bias_table")}
    if len(spans) != 1:
        return v.image_size  # no table, or tables of several sizes: map_checkpoint says what is wrong
    return (spans.pop() + 1) // 2 * v.partition_ratio


def convert(source: Path, backbone: str, directory: Path, *, mean=None, std=None) -> Path:
    """Write DIR/<backbone>.safetensors + .json from the timm checkpoint `source` (see the module docstring)."""
    from safetensors.numpy import save_file

    if backbone not in OWN_BACKBONES:
        raise WeightsError(f"--from-timm converts for cxrlt's own backbones ({', '.join(sorted(OWN_BACKBONES))}); "
                           f"{backbone!r} is not one of them")
    source = Path(source)
    if not source.is_file():
        raise WeightsError(f"timm checkpoint {source} does not exist")
    state = read_safetensors(source)
    v = variant(backbone)
    size = checkpoint_size(state, backbone)
    if size != v.image_size:
        raise WeightsError(f"{source} was trained at {size} px (its relative-position tables say so), but "
                           f"{backbone} names the {v.image_size} px checkpoint: convert it as "
                           f"{backbone.rsplit('-', 1)[0]}-{size}")
    weights = map_checkpoint(state, backbone, expected_shapes(backbone, size), source=str(source))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{backbone}{SUFFIX}"
    with atomic.atomic_path(path, suffix=".tmp" + SUFFIX) as tmp:
        save_file(weights, str(tmp), metadata={"format": FORMAT, "backbone": backbone})
    atomic.write_json(info_path(path), {
        "backbone": backbone, "format": FORMAT, "timm_model": v.timm_name, "source": source.name,
        "source_sha256": file_sha256(source), "image_size": size, "mean": list(mean or v.mean), "std": list(std or v.std),
        "license": family(backbone).LICENSE, "tensors": len(weights), "dropped": [k for k in CLASSIFIER if k in state]})
    return path


def read_info(weights_file: Path) -> dict:
    info = info_path(weights_file)
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{info} (beside {Path(weights_file).name}) is missing or unreadable ({err}); convert "
                           "the checkpoint again with python -m cxrlt weights --from-timm") from None


def load(model, path: Path, backbone: str) -> None:
    """Fill `model` (built by cxrlt.model.backbones.build) from a converted DIR/<backbone>.safetensors:
    every weight by its path, relative-position tables resized to the model's partition size."""
    info = read_info(path)
    if info.get("backbone") != backbone or info.get("format") != FORMAT:
        raise WeightsError(f"{path} holds {info.get('backbone')!r} weights in format {info.get('format')!r}, not "
                           f"{backbone} in {FORMAT}: convert the timm checkpoint for {backbone}")
    stored = read_safetensors(path)
    targets = {w.path: w for w in model.weights}
    missing, extra = sorted(set(targets) - set(stored)), sorted(set(stored) - set(targets))
    if missing or extra:
        raise WeightsError(f"{path} does not fit the {backbone} backbone ({len(missing)} weights missing, e.g. "
                           f"{missing[:2]}; {len(extra)} unknown, e.g. {extra[:2]}); convert the checkpoint again")
    for name, w in targets.items():
        value = stored[name]
        if tuple(value.shape) != tuple(w.shape):
            if not name.endswith("relative_position_bias_table"):
                raise WeightsError(f"{path}: {name} is {tuple(value.shape)} but the model's is {tuple(w.shape)}")
            value = resize_rel_pos_bias_table(value, (int(w.shape[1]) + 1) // 2)
        w.assign(value.astype(w.dtype))


def resize_rel_pos_bias_table(table: np.ndarray, new_window: int) -> np.ndarray:
    """timm.layers.resize_rel_pos_bias_table for TF-MaxViT tables [heads, 2P-1, 2P-1] (square windows), in
    NumPy: the source offsets are spread geometrically over the new range (the BEiT scheme) and each head's
    table is interpolated linearly on that uneven grid (timm's RegularGridInterpolator, float32 as timm)."""
    heads, src_h, src_w = table.shape
    dst = 2 * new_window - 1
    if (src_h, src_w) == (dst, dst):
        return table
    y = np.asarray(_source_offsets(src_h, dst), dtype=np.float32)
    x = np.asarray(_source_offsets(src_w, dst), dtype=np.float32)
    t = dst // 2.0
    d = np.arange(-t, t + 0.1, 1.0, dtype=np.float32)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    return np.stack([_interpolate(y, x, table[h].astype(np.float32), dy, dx) for h in range(heads)])


def _source_offsets(src: int, dst: int) -> list[float]:
    """timm's _calc: offsets 0, +-1, +-(1 + q), ... with q found by bisection so the progression spans dst."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = (1.0 - q ** (src // 2)) / (1.0 - q)
        if gp > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return [-d for d in reversed(dis)] + [0] + dis


def _interpolate(y, x, z, qy, qx):
    """Linear interpolation of z (on the grid y x x) at (qy, qx): timm.layers.RegularGridInterpolator."""
    idx, dists, overall = [], [], []
    for p, q in ((y, qy), (x, qx)):
        right = np.searchsorted(p, q, side="left")  # torch.bucketize(q, p)
        right[right >= p.shape[0]] = p.shape[0] - 1
        left = np.clip(right - 1, 0, p.shape[0] - 1)
        dl, dr = (q - p[left]).astype(np.float32), (p[right] - q).astype(np.float32)
        dl[dl < 0] = 0.0
        dr[dr < 0] = 0.0
        both = (dl == 0) & (dr == 0)
        dl[both] = dr[both] = 1.0
        idx.append((left, right))
        dists.append((dl, dr))
        overall.append(dl + dr)
    num = np.zeros(qy.shape, dtype=np.float32)
    for a in (0, 1):
        for b in (0, 1):
            num += z[idx[0][a], idx[1][b]] * dists[0][1 - a] * dists[1][1 - b]
    return num / (overall[0] * overall[1])

