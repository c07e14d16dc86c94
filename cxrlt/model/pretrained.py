"""Fetch a backbone's ImageNet weights on a machine with internet, for GPU nodes without it; or convert a
timm checkpoint for cxrlt's own backbones (ConvNeXt V2, MaxViT), offline, with NumPy.

    python -m cxrlt weights --backbone efficientnetv2-s --out weights/     # on a machine with internet
    python -m cxrlt train --weights weights/efficientnetv2-s.weights.h5 ... # offline (or --weights weights/)
    python -m cxrlt weights --from-timm model.safetensors --backbone convnextv2-base --out weights/
    python -m cxrlt train --backbone convnextv2-base --weights weights/ ...

--from-timm writes DIR/<backbone>.safetensors + DIR/<backbone>.json (cxrlt.model.backbones.timm_weights).

writes DIR/<backbone>.weights.h5 (Keras' own ImageNet weights of the include_top=False backbone, with its
built-in preprocessing, as `keras.applications` downloads them) and DIR/<backbone>.json (the backbone name,
the Keras application, the input shape, the number of tensors). `--weights` then checks the JSON's backbone
against model.backbone before loading (a file for another backbone is refused naming both), and the load
itself refuses shapes that do not fit (cxrlt.model.models). Without internet the command stops at once with
what to do (Keras' download cache, ~/.keras/models, is used when it already holds the file).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from ..config.schema import BACKBONES, OWN_BACKBONES
from ..utils import atomic, cli
from .weights_files import (OWN_SUFFIX, SUFFIX, WeightsError, check_info, how_to_get, info_path,  # noqa: F401
                            resolve, weights_path)  # (re-exported: cxrlt.model.pretrained.WeightsError etc.)


DOWNLOAD_TIMEOUT_S = 30  # per socket operation: a machine without a route fails now, not after minutes


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


def fetch(backbone: str, directory: Path) -> Path:
    import keras

    if backbone in OWN_BACKBONES:
        raise WeightsError(f"{backbone} is one of cxrlt's own backbones: Keras has no ImageNet download for it; "
                           f"{how_to_get(backbone, directory)} (docs/backbones.md says where to get the file)")
    if backbone not in BACKBONES:
        raise WeightsError(f"unknown backbone {backbone!r}; offered: {', '.join(sorted({**BACKBONES, **OWN_BACKBONES}))}")
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
    parser.add_argument("--backbone", required=True, help=f"one of: {', '.join(sorted({**BACKBONES, **OWN_BACKBONES}))}")
    parser.add_argument("--out", required=True, help="folder for <backbone>.weights.h5 (or .safetensors) and "
                                                     "<backbone>.json")
    parser.add_argument("--from-timm", metavar="FILE.safetensors",
                        help="convert this timm checkpoint (offline, NumPy only) for one of cxrlt's own backbones: "
                             f"{', '.join(sorted(OWN_BACKBONES))}")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        if args.from_timm:
            from .backbones import timm_weights

            path = timm_weights.convert(Path(args.from_timm), args.backbone, Path(args.out))
            info = timm_weights.read_info(path)
            print(f"wrote {path} ({info['tensors']} tensors of timm {info['timm_model']}, trained at "
                  f"{info['image_size']} px; licence {info['license']}) and {info_path(path).name}; "
                  f"train with --backbone {args.backbone} --weights {Path(args.out)}")
        else:
            path = fetch(args.backbone, Path(args.out))
            print(f"wrote {path} and {info_path(path).name}; offline: --weights {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
