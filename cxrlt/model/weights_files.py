"""Where a backbone's pretrained weights live and what names them: DIR/<backbone>.weights.h5 (Keras' own
ImageNet weights, `python -m cxrlt weights`) or DIR/<backbone>.safetensors (a timm checkpoint converted for
cxrlt's own backbones, `--from-timm`), each with DIR/<backbone>.json naming the backbone; `--weights DIR`
resolves to the file and refuses another backbone's (cxrlt.model.pretrained fetches, .backbones.timm_weights
converts)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config.schema import OWN_BACKBONES
from ..utils.errors import UserError


class WeightsError(UserError, RuntimeError):
    """Pretrained weights that cannot be had; the message names the fix (cxrlt.model.models re-exports it)."""


SUFFIX = ".weights.h5"
OWN_SUFFIX = ".safetensors"  # cxrlt's own backbones: a converted timm checkpoint (cxrlt.model.backbones.timm_weights)


def weights_path(directory: Path, backbone: str) -> Path:
    return Path(directory) / f"{backbone}{OWN_SUFFIX if backbone in OWN_BACKBONES else SUFFIX}"


def info_path(weights_file: Path) -> Path:
    """DIR/<backbone>.weights.h5 (or .safetensors) -> DIR/<backbone>.json"""
    name = weights_file.name
    return weights_file.with_name((name[: -len(SUFFIX)] if name.endswith(SUFFIX) else weights_file.stem) + ".json")


def how_to_get(backbone: str, directory) -> str:
    if backbone in OWN_BACKBONES:
        return (f"convert a timm checkpoint with python -m cxrlt weights --from-timm model.safetensors "
                f"--backbone {backbone} --out {directory}")
    return f"fetch it with python -m cxrlt weights --backbone {backbone} --out {directory}"


def check_info(path: Path, backbone: str) -> None:
    """Refuse a weights file whose JSON names another backbone (before anything is built)."""
    info = info_path(path)
    if not info.is_file():
        return  # a plain Keras weights file: the load itself checks the shapes
    try:
        named = json.loads(info.read_text())["backbone"]
    except (ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{info} (beside {path.name}) is not a cxrlt weights description: {err}") from None
    if named != backbone:
        raise WeightsError(f"{path} holds weights for the {named} backbone (says {info.name}), but model.backbone is "
                           f"{backbone}: pass --backbone {named}, or {how_to_get(backbone, path.parent)}")


def resolve(weights: str | Path, backbone: str) -> Path:
    """--weights DIR -> DIR/<backbone>.weights.h5; a file stays as it is; then check_info."""
    path = Path(weights).expanduser()
    if path.is_dir():
        found = weights_path(path, backbone)
        if not found.is_file():
            there = sorted(p.name for p in (*path.glob("*" + SUFFIX), *path.glob("*" + OWN_SUFFIX)))
            raise WeightsError(f"{path} has no {found.name} (it holds: {', '.join(there) or 'no weights files'}); "
                               f"{how_to_get(backbone, path)}")
        path = found
    check_info(path, backbone)
    return path
