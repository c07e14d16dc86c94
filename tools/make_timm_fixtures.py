"""Make the timm parity fixtures of tests/test_backbones.py (timm is the oracle; not part of cxrlt's runtime).

Run in a throwaway virtual environment (torch and timm are large, never CI dependencies):

    python3 -m venv /tmp/timmvenv && /tmp/timmvenv/bin/pip install torch timm safetensors numpy
    /tmp/timmvenv/bin/python tools/make_timm_fixtures.py --out tests/fixtures/timm

For each small model below (timm's own ConvNeXt / MaxxVit classes and block code, only with fewer
channels and blocks, pretrained=False) it randomises every parameter and buffer (GRN's gamma/beta start
at zero, LayerNorm at one, BatchNorm statistics at 0/1, biases at zero: an untouched model would hide a
mix-up of any of them), then writes

    NAME.safetensors          the state dict, as timm saves a checkpoint (the converter's input)
    NAME.outputs.safetensors  a seeded input (NCHW) and timm's per-stage outputs and logits in eval mode;
                              for MaxViT also at a second input size, from the checkpoint loaded into a timm
                              model of that size (timm's checkpoint_filter_fn resizes the tables), and
                              those resized tables
    NAME.json                 how the model was built, sizes, seed, the timm / torch versions

and timm_reference.json: for every size cxrlt registers, timm's parameter count without the classifier
(num_classes=0) and its pretrained_cfg (input size, mean, std, licence); plus rel_pos_resize.safetensors:
random TF-MaxViT tables resized by timm.layers.resize_rel_pos_bias_table (7->16, 16->7, 16->12 windows).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resize_rel_pos_bias_table
from timm.models.convnext import ConvNeXt
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _tf_cfg, checkpoint_filter_fn

SEED = 20260501

# Small configs through the same code paths as the real sizes: ConvNeXt V2 with Linear MLPs (tiny and up) and
# with 1x1-conv MLPs (atto..nano); stage 0 without a downsample and two blocks in a stage. MaxViT `_tf`: a stem
# narrower than stage 0 (the first block's shortcut expands), a stage of equal width (its shortcut only pools),
# one- and two-head attention (32-d heads), the TF-style interleaved q/k/v and relative-position tables.
CONVNEXTV2 = {
    "convnextv2_mini_linear": dict(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), use_grn=True, ls_init_value=None,
                                    conv_mlp=False),
    "convnextv2_mini_convmlp": dict(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), use_grn=True, ls_init_value=None,
                                     conv_mlp=True),
}
MAXVIT = {  # dim_head 8 instead of 32 keeps the fixture small with 2 and 4 heads (a number, not a code path)
    "maxvit_tf_mini": dict(embed_dim=(16, 16, 32, 32), depths=(1, 2, 1, 1), block_type=("M",) * 4, stem_width=8,
                            stem_bias=True, head_hidden_size=24),
}
MAXVIT_DIM_HEAD = 8
CONVNEXT_SIZE = 64
MAXVIT_SIZES = (128, 160)  # partition 4 (the "checkpoint"), then 5: tables resized 7x7 -> 9x9

REGISTERED = [f"convnextv2_{s}" for s in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")] + \
             [f"maxvit_{s}_tf_{px}" for s in ("tiny", "small", "base") for px in (224, 384, 512)]


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every floating parameter and saved buffer gets values no initialiser would give. Buffers timm does not
    save (RelPosBiasTf's one-hot lookups, recomputed by the model) are structure, not weights: left alone."""
    saved = set(model.state_dict())
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.is_floating_point() or name not in saved:
                continue  # num_batches_tracked; non-persistent buffers
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.5)
            elif leaf == "running_mean":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif leaf == "relative_position_bias_table":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif leaf == "weight" and ".grn." not in name:  # norm scales
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:  # biases, GRN gamma and beta
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def stage_outputs(model, x) -> list[torch.Tensor]:
    outs, y = [], model.stem(x)
    for stage in model.stages:
        y = stage(y)
        outs.append(y)
    return outs


def save_case(out: Path, name: str, model, build: dict, sizes, extra_models=()) -> None:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{name}.safetensors"))
    gen = torch.Generator().manual_seed(SEED + 1)
    tensors = {}
    for size, m in zip(sizes, (model, *extra_models)):
        x = torch.randn((1, 3, size, size), generator=gen)
        with torch.no_grad():
            stages = stage_outputs(m, x)
            logits = m(x)
        tensors[f"input_{size}"] = x
        tensors.update({f"stage{i}_{size}": s for i, s in enumerate(stages)})
        tensors[f"logits_{size}"] = logits
        for k, v in m.state_dict().items():  # the tables timm resized for a model of another size
            if m is not model and k.endswith("relative_position_bias_table"):
                tensors[f"table_{size}:{k}"] = v
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.outputs.safetensors"))
    meta = {"build": build, "sizes": list(sizes), "seed": SEED, "num_classes": model.num_classes,
            "timm": timm.__version__, "torch": torch.__version__, "tensors": len(state),
            "params": sum(p.numel() for p in model.parameters())}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name}: {meta['params']} parameters, sizes {sizes}, "
          f"{(out / f'{name}.safetensors').stat().st_size + (out / f'{name}.outputs.safetensors').stat().st_size} bytes")


def reference(out: Path) -> None:
    """timm's parameter counts (classifier removed) and pretrained cfgs of every size cxrlt registers."""
    ref = {}
    for name in REGISTERED:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        tags = {}
        for full in timm.list_pretrained(f"{name}.*"):
            cfg = timm.models.get_pretrained_cfg(full).to_dict()
            tags[full.split(".", 1)[1]] = {"input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]),
                                           "std": list(cfg["std"]), "license": cfg.get("license"),
                                           "num_classes": cfg.get("num_classes")}
        ref[name] = {"params": sum(p.numel() for p in model.parameters()), "default_tag": next(iter(tags)),
                     "tags": tags}
        print(name, ref[name])
    rates = {}  # the stochastic-depth rate of every block of timm's model with drop_path_rate=0.2
    for cxrlt_name, name in (("convnextv2-base", "convnextv2_base"), ("maxvit-tiny-tf-224", "maxvit_tiny_tf_224")):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=0.2)
        rates[cxrlt_name] = [[float(getattr(getattr(b, "conv", b).drop_path, "drop_prob", 0.0)) for b in stage.blocks]
                             for stage in model.stages]
    (out / "timm_reference.json").write_text(json.dumps({"timm": timm.__version__, "models": ref,
                                                         "drop_path_rates": rates}, indent=1) + "\n")


def resize_cases(out: Path) -> None:
    gen = torch.Generator().manual_seed(SEED + 2)
    tensors = {}
    for src, dst in ((7, 16), (16, 7), (16, 12)):
        table = torch.randn((2, 2 * src - 1, 2 * src - 1), generator=gen)
        tensors[f"src_{src}_{dst}"] = table
        tensors[f"dst_{src}_{dst}"] = resize_rel_pos_bias_table(table, (dst, dst), (2, 2 * dst - 1, 2 * dst - 1))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "rel_pos_resize.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/timm"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    for name, kwargs in CONVNEXTV2.items():
        gen = torch.Generator().manual_seed(SEED)
        model = ConvNeXt(num_classes=10, **kwargs).eval()
        randomise(model, gen)
        save_case(args.out, name, model, {"class": "timm.models.convnext.ConvNeXt", "num_classes": 10, **kwargs},
                  (CONVNEXT_SIZE,))
    for name, kwargs in MAXVIT.items():
        gen = torch.Generator().manual_seed(SEED)
        tf_cfg = _tf_cfg()
        tf_cfg["transformer_cfg"] = dataclasses.replace(tf_cfg["transformer_cfg"], dim_head=MAXVIT_DIM_HEAD)
        cfg = MaxxVitCfg(**kwargs, **tf_cfg)
        model = MaxxVit(cfg, img_size=MAXVIT_SIZES[0], num_classes=10).eval()
        randomise(model, gen)
        other = MaxxVit(cfg, img_size=MAXVIT_SIZES[1], num_classes=10).eval()
        other.load_state_dict(checkpoint_filter_fn(model.state_dict(), other))  # what timm does for a new size
        save_case(args.out, name, model, {"class": "timm.models.maxxvit.MaxxVit", "cfg": "MaxxVitCfg(**kwargs, "
                  "**_tf_cfg()), transformer dim_head replaced", "dim_head": MAXVIT_DIM_HEAD, "num_classes": 10, **{k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in kwargs.items()}},
                  MAXVIT_SIZES, extra_models=(other,))
    resize_cases(args.out)
    reference(args.out)


if __name__ == "__main__":
    main()
