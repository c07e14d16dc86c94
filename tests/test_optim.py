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


# ----------------------------------------------------------------------------- per-part rates, decay, clipping

def _two_part_model():
    """A 'backbone' (kernel + bias + a LayerNormalization) and a head layer named "logits" (HEAD_LAYERS)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, name="body")(inputs)
    x = keras.layers.LayerNormalization(name="body_norm")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def torch_adamw_reference(params, grads_per_step, groups, betas=(0.9, 0.999), eps=1e-12):
    """torch.optim.AdamW's documented update per parameter group (lr, weight_decay), in NumPy float64:
    p -= lr * wd * p; m, v moments; p -= lr * m_hat / (sqrt(v_hat) + eps). `groups[i]` = (lr, wd) of params[i].
    (eps tiny here and in the optimizer: Keras adds it to sqrt(v) before the bias correction, torch after.)"""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            lr, wd = groups[i]
            p -= lr * wd * p
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


@pytest.mark.parametrize("decay_norms_and_biases", [True, False])
def test_backbone_and_head_rates_and_decays_equal_torch_adamw_parameter_groups(decay_norms_and_biases):
    """The 2026 winner's AdamW groups (backbone lr x 0.1, wd 0.01; head lr, wd 0.05) and timm's skipping of biases
    and norm weights, against torch's AdamW update written out; a Keras AdamW would decay everything at one rate."""
    from cxrlt.model import models

    model = _two_part_model()
    cfg = config.load(overrides={"optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.01, "head_weight_decay": 0.05,
                                           "backbone_lr_mult": 0.1, "decay_norms_and_biases": decay_norms_and_biases}})
    head = models.head_variables(model)
    assert {v.path for v in head} == {"logits/kernel", "logits/bias"}
    opt = optim.make_optimizer(cfg, 10, head_variables=head)
    opt.epsilon = 1e-12
    variables = model.trainable_variables
    opt.build(variables)
    rng = np.random.default_rng(0)
    steps = [[rng.normal(size=v.shape) for v in variables] for _ in range(3)]
    start = [v.numpy() for v in variables]
    for grads in steps:
        opt.apply_gradients(zip([g.astype(np.float32) for g in grads], variables))
    groups = []
    for v in variables:
        in_head = any(v is h for h in head)
        lr, wd = (1e-2, 0.05) if in_head else (1e-3, 0.01)
        groups.append((lr, wd if decay_norms_and_biases or len(v.shape) > 1 else 0.0))
    expected = torch_adamw_reference(start, steps, groups)
    for v, want in zip(variables, expected):
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=v.path)
    # the rates differ by 10x: the backbone kernel moved about a tenth of the head kernel's first step
    assert int(opt.iterations.numpy()) == 3


def test_clip_norm_clips_the_global_norm_of_the_whole_update():
    model = _two_part_model()
    cfg = config.load(overrides={"optim": {"name": "sgd", "lr": 1.0, "clip_norm": 0.5}})
    opt = optim.make_optimizer(cfg, 10)
    variables = model.trainable_variables
    opt.build(variables)
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=v.shape).astype(np.float32) for v in variables]
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    before = [v.numpy() for v in variables]
    opt.apply_gradients(zip(grads, variables))  # SGD, momentum 0.9, first step: w -= lr * clipped g
    for v, b, g in zip(variables, before, grads):
        np.testing.assert_allclose(v.numpy(), b - g * (0.5 / norm), rtol=1e-5, atol=1e-7)
    with pytest.raises(config.ConfigError, match="optim.clip_norm must be"):
        config.load(overrides={"optim": {"clip_norm": -1.0}})
