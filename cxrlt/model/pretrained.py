"""Fetch a backbone's ImageNet weights on a machine with internet, for GPU nodes without it.

    python -m cxrlt weights --backbone efficientnetv2-s --out weights/     # on a machine with internet
    python -m cxrlt train --weights weights/efficientnetv2-s.weights.h5 ... # offline (or --weights weights/)

writes DIR/<backbone>.weights.h5 (Keras' own ImageNet weights of the include_top=False backbone, with its
built-in preprocessing, as `keras.applications` downloads them) and DIR/<backbone>.json (the backbone name,
the Keras application, the input shape, the number of tensors). `--weights` then checks the JSON's backbone
against model.backbone before loading (a file for another backbone is refused naming both), and the load
itself refuses shapes that do not fit (cxrlt.model.models). Without internet the command stops at once with
what to do (Keras' download cache, ~/.keras/models, is used when it already holds the file).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from ..config.schema import BACKBONES
from ..utils import atomic, cli
from ..utils.errors import UserError


class WeightsError(UserError, RuntimeError):
    """Pretrained weights that cannot be had; the message names the fix (cxrlt.model.models re-exports it)."""

SUFFIX = ".weights.h5"
DOWNLOAD_TIMEOUT_S = 30  # per socket operation: a machine without a route fails now, not after minutes


def weights_path(directory: Path, backbone: str) -> Path:
    return Path(directory) / f"{backbone}{SUFFIX}"


def info_path(weights_file: Path) -> Path:
    """DIR/<backbone>.weights.h5 -> DIR/<backbone>.json"""
    name = weights_file.name
    return weights_file.with_name((name[: -len(SUFFIX)] if name.endswith(SUFFIX) else weights_file.stem) + ".json")


def save_backbone_weights(model, backbone: str, directory: Path) -> Path:
    """Write `model`'s (an include_top=False `backbone`) weights and their JSON into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = weights_path(directory, backbone)
    with atomic.atomic_path(path, suffix=".tmp" + SUFFIX) as tmp:
        model.save_weights(tmp)
    atomic.write_json(info_path(path), {
        "backbone": backbone, "keras_application": BACKBONES[backbone], "include_top": False,
        "include_preprocessing": True, "input_shape": list(model.input_shape[1:]), "tensors": len(model.weights),
        "weights": "imagenet"})
    return path


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
                           f"{backbone}: pass --backbone {named}, or fetch {backbone}'s weights with "
                           f"python -m cxrlt weights --backbone {backbone} --out {path.parent}")


def resolve(weights: str | Path, backbone: str) -> Path:
    """--weights DIR -> DIR/<backbone>.weights.h5; a file stays as it is; then check_info."""
    path = Path(weights).expanduser()
    if path.is_dir():
        found = weights_path(path, backbone)
        if not found.is_file():
            there = sorted(p.name for p in path.glob("*" + SUFFIX))
            raise WeightsError(f"{path} has no {found.name} (it holds: {', '.join(there) or 'no weights files'}); "
                               f"fetch it with python -m cxrlt weights --backbone {backbone} --out {path}")
        path = found
    check_info(path, backbone)
    return path


def fetch(backbone: str, directory: Path) -> Path:
    import keras

    if backbone not in BACKBONES:
        raise WeightsError(f"unknown backbone {backbone!r}; offered: {', '.join(sorted(BACKBONES))}")
    constructor = getattr(keras.applications, BACKBONES[backbone])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        model = constructor(include_top=False, weights="imagenet")
    except Exception as err:  # URL/socket/HTTP errors differ by platform; all mean "no download"
        raise WeightsError(
            f"could not download the ImageNet weights of {backbone} ({type(err).__name__}: {str(err)[:200]}). This "
            "command needs internet: run it on a machine that has it, copy the output folder to the offline nodes, "
            f"and train there with --weights {Path(directory) / (backbone + SUFFIX)}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return save_backbone_weights(model, backbone, directory)


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt weights", __doc__)
    parser.add_argument("--backbone", required=True, help=f"one of: {', '.join(sorted(BACKBONES))}")
    parser.add_argument("--out", required=True, help="folder for <backbone>.weights.h5 and <backbone>.json")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        path = fetch(args.backbone, Path(args.out))
        print(f"wrote {path} and {info_path(path).name}; offline: --weights {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
