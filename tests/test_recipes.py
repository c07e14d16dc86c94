"""The CXR-LT recipes in configs/ (README "Recipes of the CXR-LT teams") each train 2 steps at toy size on the demo:
their own head, loss, sampler and optimizer settings and their backbone's family, only the size, batch, epochs and
folds made tiny, the backbone the smallest of its family (ConvNeXt V2 atto for base/tiny, ConvNeXt tiny for small:
the same code at a fraction of the tracing time; test_backbones checks every full size against timm's parameter
counts), and the head warm-up, where a recipe has one, cut to the first of the two epochs. The 2026 winner's stage 2
starts from stage 1's model (--init), as the recipe says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import REPO

CONFIGS = REPO / "configs"
TOY = ["--weights", "none", "--size", "64", "--batch-size", "2", "--folds", "2", "--fold", "0",
       "--set", "predict.batch_size=16", "--set", "train.verbose=0",
       "--set", "data.demo_patients=20", "--set", "data.demo_image_size=64", "--set", "distribute.mixed_precision=false",
       "--set", "optim.warmup_epochs=0"]
# the smallest model of each recipe backbone's family (a recipe whose backbone is not in this map fails: add it)
TOY_BACKBONE = {"convnextv2-base": "convnextv2-atto", "convnextv2-tiny": "convnextv2-atto",
                "maxvit-tiny-tf-512": "maxvit-tiny-tf-224", "convnext-small": "convnext-tiny"}
# the demo in each recipe's edition (the 2026 demo has PadChest's 16-bit PNGs and a removal list)
EDITION = {"cxrlt2026_winner_mimic": "2023", "cxrlt2026_winner_padchest": "2026", "cxrlt2024_maxvit512": "2024",
           "cxrlt2024_convnextv2_384": "2024", "cxrlt2023_chexfusion": "2023"}


def _train(name: str, root: Path, *extra: str) -> Path:
    from cxrlt.train import kfold

    recipe = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    frozen = (recipe.get("train") or {}).get("freeze_backbone_epochs", 0)
    argv = ["--config", str(CONFIGS / f"{name}.yaml"), "--demo-edition", EDITION[name], "--out", str(root / "runs"),
            "--name", name, "--set", f"data.demo_dir={root / 'demo'}", *TOY, *extra,
            "--backbone", TOY_BACKBONE[recipe["model"]["backbone"]]]
    if frozen:  # the head warm-up keeps its place: one step in epoch 1, one in epoch 2
        argv += ["--epochs", "2", "--set", "train.steps_per_epoch=1", "--set", "train.freeze_backbone_epochs=1"]
    else:  # one epoch of 2 steps: one checkpoint and one validation of these large models, not two
        argv += ["--epochs", "1", "--set", "train.steps_per_epoch=2"]
    assert kfold.main(argv) == 0
    run = root / "runs" / name
    done = json.loads((run / "fold0" / "done.json").read_text())
    assert np.isfinite(done["val_mAP"]), done
    return run


@pytest.fixture(scope="module")
def recipes_root(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


def test_the_2026_winner_recipe_stage_1_then_stage_2_from_its_model(recipes_root, caplog):
    from cxrlt.model import models

    mimic = _train("cxrlt2026_winner_mimic", recipes_root)
    with caplog.at_level(logging.INFO, logger="cxrlt"):
        padchest = _train("cxrlt2026_winner_padchest", recipes_root, "--init", str(mimic / "fold0" / "model.keras"))
    assert "backbone loaded" in caplog.text  # --init carried stage 1's backbone over
    cfg = yaml.safe_load((padchest / "config.yaml").read_text())
    assert cfg["loss"]["name"] == "cxrlt2026_db" and cfg["sampling"]["sampler"] == "repeat_factor"
    assert cfg["ensemble"]["normal_gating_power"] == 0.5 and cfg["optim"]["clip_norm"] == 1.0
    model = models.load(padchest / "fold0" / "model.keras")
    head = model.get_layer("logits")
    assert type(head).__name__ == "CSRA" and head.variant == "cxrlt2026_winner"
    assert model.get_layer("head_batchnorm") is not None


@pytest.mark.parametrize("name", ["cxrlt2024_maxvit512", "cxrlt2024_convnextv2_384", "cxrlt2023_chexfusion"])
def test_a_recipe_trains_two_steps_on_the_demo(recipes_root, name):
    from cxrlt.model import models

    run = _train(name, recipes_root)
    model = models.load(run / "fold0" / "model.keras")
    recipe = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert type(model.get_layer("logits")).__name__ == {"gap": "Dense", "ml_decoder": "MLDecoder"}[recipe["model"]["head"]]


def test_every_recipe_in_configs_is_tested_and_loads_as_written():
    """A recipe added to configs/ gets a row in EDITION (and so a run above); each loads unchanged (its own sizes)."""
    from cxrlt import config

    recipes = sorted(p.stem for p in CONFIGS.glob("cxrlt20*_*.yaml"))
    assert recipes == sorted(EDITION)
    for name in recipes:
        cfg = config.load(CONFIGS / f"{name}.yaml")
        assert cfg["input"]["size"] >= 384 and cfg["mix"]["mosaic"] == 0.0
