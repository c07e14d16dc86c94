"""optim.warmup_epochs: linear warm-up before the cosine (or constant) schedule, checked value by value."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from cxrlt import config
from cxrlt.model import optim

LR, STEPS, EPOCHS, WARMUP = 1e-3, 5, 6, 2


def expected(step: int, name: str) -> float:
    w, total = STEPS * WARMUP, STEPS * EPOCHS
    if step <= w:
        return LR * step / w
    if name == "constant":
        return LR
    return LR * 0.5 * (1 + math.cos(math.pi * min(step - w, total - w) / (total - w)))


@pytest.mark.parametrize("name", ["cosine", "constant"])
def test_warmup_rises_linearly_then_follows_the_schedule(name):
    lr = optim.schedule(LR, name, STEPS, EPOCHS, WARMUP)
    values = [float(keras.ops.convert_to_numpy(lr(step))) for step in range(STEPS * EPOCHS + 3)]
    np.testing.assert_allclose(values, [expected(s, name) for s in range(STEPS * EPOCHS + 3)], rtol=1e-5, atol=1e-12)
    assert values[0] == 0.0 and values[STEPS * WARMUP] == pytest.approx(LR)
    if name == "cosine":
        assert values[STEPS * EPOCHS] == pytest.approx(0.0, abs=1e-12)


def test_without_warmup_the_schedules_are_unchanged():
    assert optim.schedule(LR, "constant", STEPS, EPOCHS, 0) == LR
    cosine = optim.schedule(LR, "cosine", STEPS, EPOCHS, 0)
    assert isinstance(cosine, keras.optimizers.schedules.CosineDecay)
    assert cosine.get_config()["decay_steps"] == STEPS * EPOCHS and cosine.get_config()["warmup_steps"] == 0
    assert cosine.initial_learning_rate == LR


def test_make_optimizer_uses_the_config_and_refuses_a_warmup_as_long_as_training():
    cfg = config.load(overrides={"optim": {"schedule": "cosine", "warmup_epochs": 1}, "train": {"epochs": 3}})
    opt = optim.make_optimizer(cfg, 4)
    rate = opt.learning_rate  # the schedule's value at the optimizer's step 0
    assert float(keras.ops.convert_to_numpy(rate)) == 0.0
    assert float(keras.ops.convert_to_numpy(opt._learning_rate(4))) == pytest.approx(cfg["optim"]["lr"])
    with pytest.raises(config.ConfigError, match="optim.warmup_epochs \\(3\\) must be below train.epochs \\(3\\)"):
        config.load(overrides={"optim": {"warmup_epochs": 3}, "train": {"epochs": 3}})
    assert config.load()["optim"]["warmup_epochs"] == 0  # seed 002: no warm-up
