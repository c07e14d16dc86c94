"""What cxrlt's own backbones share: the input normalisation, drop path, tanh-GELU, drop-path rates,
and how a timm (PyTorch) tensor becomes a Keras weight.

Every layer here is either a built-in Keras layer or registered under ``cxrlt>`` and listed in
``OWN_LAYERS`` (cxrlt.model.models.check_model_file accepts exactly these names besides Keras' own).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # timm's MaxViT 384/512 px (and in21k) checkpoints: x / 255 * 2 - 1


@keras.saving.register_keras_serializable(package="cxrlt")
class GELUTanh(keras.layers.Layer):
    """GELU with the tanh approximation (timm's ``gelu_tanh``, TensorFlow MaxViT's activation): the string
    activation "gelu" is the exact (erf) form, and an Activation of a function would put code in the model file."""

    def call(self, x):
        return keras.activations.gelu(x, approximate=True)

    def compute_output_shape(self, input_shape):
        return input_shape


def normalise(x, mean, std, name: str = "input_normalization"):
    """0..255 pixels -> (x / 255 - mean) / std, as the checkpoint's timm pretrained_cfg says."""
    return keras.layers.Normalization(mean=[255.0 * m for m in mean], variance=[(255.0 * s) ** 2 for s in std],
                                      name=name)(x)


def drop_path(x, rate: float, name: str):
    """Stochastic depth (timm DropPath, scale_by_keep): a whole residual branch of a sample is dropped with
    probability `rate` in training and the kept ones scaled by 1 / (1 - rate). Keras' Dropout with one noise
    value per sample is exactly that; rate 0 adds no layer (timm's nn.Identity)."""
    if rate <= 0:
        return x
    return keras.layers.Dropout(rate, noise_shape=(None,) + (1,) * (len(x.shape) - 1), name=name)(x)


def drop_path_rates(rate: float, depths) -> list[list[float]]:
    """timm's calculate_drop_path_rates(rate, depths, stagewise=True): linear from 0 at the first block to
    `rate` at the last, split by stage."""
    rates = np.linspace(0.0, rate, int(sum(depths)), dtype=np.float32).tolist() if sum(depths) else []
    out, start = [], 0
    for d in depths:
        out.append([float(r) for r in rates[start:start + d]])
        start += d
    return out


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm.layers.make_divisible (channel counts of MBConv expansions)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


# ---------------------------------------------------------------------------------------- timm -> Keras
# How a PyTorch tensor is laid out in Keras: convolution kernels OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,C,1),
# Linear (out, in) and 1x1 convolutions used as Dense (out, in, 1, 1) -> (in, out); anything else as it is.
KINDS = ("conv", "depthwise", "dense", "same")


def to_keras(array: np.ndarray, kind: str) -> np.ndarray:
    """A timm tensor in the layout of its Keras weight; biases and other vectors stay as they are."""
    if kind not in KINDS:
        raise ValueError(f"unknown tensor kind {kind!r}")
    if array.ndim == 1 or kind == "same":
        return np.asarray(array)
    if kind == "conv":
        return np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))
    if kind == "depthwise":
        return np.ascontiguousarray(np.transpose(array, (2, 3, 0, 1)))
    return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)  # dense


# timm parameter name -> Keras variable name, by the kind of Keras layer that holds it
NORM_VARS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
LINEAR_VARS = {"weight": "kernel", "bias": "bias"}


def module_name(path: str) -> str:
    """timm module path -> Keras layer name: 'stages.1.blocks.0.mlp.fc1' -> 'stages_1_blocks_0_mlp_fc1'."""
    return path.replace(".", "_")


OWN_LAYERS_CLASSES = (GELUTanh,)
