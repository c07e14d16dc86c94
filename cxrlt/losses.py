"""Losses by name. Every loss takes logits (the training model ends in logits) and soft labels."""

from __future__ import annotations

import keras


def get_loss(name: str, *, class_counts=None, n_images=None, **params) -> keras.losses.Loss:
    if name == "focal":
        defaults = dict(apply_class_balancing=True, alpha=0.25, gamma=2.0, label_smoothing=0.01)
        return keras.losses.BinaryFocalCrossentropy(from_logits=True, **{**defaults, **params})
    if name == "bce":
        return keras.losses.BinaryCrossentropy(from_logits=True, **params)
    raise ValueError(f"unknown loss {name!r}; use one of focal, bce")
