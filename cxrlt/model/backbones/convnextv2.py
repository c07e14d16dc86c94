"""ConvNeXt V2 (Woo et al., CVPR 2023) in Keras 3, laid out as timm's `convnextv2_*` so that timm's
checkpoints load tensor for tensor (cxrlt.model.backbones.timm_weights).

    stem      Conv 4x4 / 4 -> LayerNorm                                      (timm: stem.0, stem.1)
    stage i   [i > 0: LayerNorm -> Conv 2x2 / 2]  then depth_i blocks         (stages.i.downsample.0/.1)
    block     DWConv 7x7 -> LayerNorm -> Linear 4C -> GELU -> GRN -> Linear C -> drop path -> + input
    head      (pool ->) LayerNorm                                            (head.norm; head.fc is ImageNet's)

GRN (global response normalisation) is V2's one new layer: each channel's L2 norm over the positions,
divided by the mean of those norms over the channels, rescales the channel (``x + beta + gamma * x * n``).
Its sum of squares over a 128 x 128 map overflows float16, so it always computes in float32.

timm's atto..nano sizes run the MLP as 1x1 convolutions (`conv_mlp=True`) and the others as Linear
layers: the same arithmetic, so one Keras block serves both (the converter reshapes the 1x1 kernels).
No layer scale in V2 (`ls_init_value=None`). LayerNorm epsilon 1e-6 everywhere (timm's default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
from keras import ops

from . import common


@dataclass(frozen=True)
class Variant:
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    timm_name: str = ""
    conv_mlp: bool = False   # timm's layout of the MLP weights (1x1 conv) for atto..nano; Keras is the same
    kernel_size: int = 7
    mlp_ratio: float = 4.0
    mean: tuple = common.IMAGENET_MEAN
    std: tuple = common.IMAGENET_STD
    image_size: int = 224    # the checkpoints' training size (timm pretrained_cfg input_size)


# timm.models.convnext: convnextv2_atto .. convnextv2_huge (every size timm publishes weights for; V2-small has none)
VARIANTS = {
    "convnextv2-atto": Variant((2, 2, 6, 2), (40, 80, 160, 320), "convnextv2_atto", conv_mlp=True),
    "convnextv2-femto": Variant((2, 2, 6, 2), (48, 96, 192, 384), "convnextv2_femto", conv_mlp=True),
    "convnextv2-pico": Variant((2, 2, 6, 2), (64, 128, 256, 512), "convnextv2_pico", conv_mlp=True),
    "convnextv2-nano": Variant((2, 2, 8, 2), (80, 160, 320, 640), "convnextv2_nano", conv_mlp=True),
    "convnextv2-tiny": Variant((3, 3, 9, 3), (96, 192, 384, 768), "convnextv2_tiny"),
    "convnextv2-base": Variant((3, 3, 27, 3), (128, 256, 512, 1024), "convnextv2_base"),
    "convnextv2-large": Variant((3, 3, 27, 3), (192, 384, 768, 1536), "convnextv2_large"),
    "convnextv2-huge": Variant((3, 3, 27, 3), (352, 704, 1408, 2816), "convnextv2_huge"),
}
LICENSE = "cc-by-nc-4.0"  # timm pretrained_cfg of every convnextv2 checkpoint (the FCMAE weights from Meta)
LN_EPS = 1e-6


@keras.saving.register_keras_serializable(package="cxrlt")
class GlobalResponseNorm(keras.layers.Layer):
    """ConvNeXt V2's GRN on [B, H, W, C] (timm.layers.GlobalResponseNorm, channels last), in float32 whatever
    the dtype policy: the input is cast up and the result cast back to the layer's compute dtype."""

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(shape=(channels,), initializer="zeros", name="gamma", dtype="float32")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta", dtype="float32")

    def call(self, x):
        x32 = ops.cast(x, "float32")
        g = ops.sqrt(ops.sum(ops.square(x32), axis=(1, 2), keepdims=True))
        n = g / (ops.mean(g, axis=-1, keepdims=True) + self.epsilon)
        out = x32 + ops.cast(self.beta, "float32") + ops.cast(self.gamma, "float32") * (x32 * n)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


def _block(x, dim: int, v: Variant, rate: float, p: str):
    shortcut = x
    x = keras.layers.DepthwiseConv2D(v.kernel_size, padding="same", name=p + "conv_dw")(x)
    x = keras.layers.LayerNormalization(epsilon=LN_EPS, name=p + "norm")(x)
    x = keras.layers.Dense(int(v.mlp_ratio * dim), name=p + "mlp_fc1")(x)
    x = keras.layers.Activation("gelu", name=p + "mlp_act")(x)  # exact (erf) GELU, as torch.nn.GELU
    x = GlobalResponseNorm(name=p + "mlp_grn")(x)
    x = keras.layers.Dense(dim, name=p + "mlp_fc2")(x)
    x = common.drop_path(x, rate, p + "drop_path")
    return keras.layers.Add(name=p + "add")([shortcut, x])


def stages(x, v: Variant, drop_path: float = 0.0) -> list:
    """Normalised image [B, H, W, 3] -> the output of each of the 4 stages (the last is the feature map)."""
    x = keras.layers.Conv2D(v.dims[0], 4, strides=4, name="stem_0")(x)
    x = keras.layers.LayerNormalization(epsilon=LN_EPS, name="stem_1")(x)
    outs = []
    for i, (depth, dim, rates) in enumerate(zip(v.depths, v.dims, common.drop_path_rates(drop_path, v.depths))):
        if i > 0:
            x = keras.layers.LayerNormalization(epsilon=LN_EPS, name=f"stages_{i}_downsample_0")(x)
            x = keras.layers.Conv2D(dim, 2, strides=2, name=f"stages_{i}_downsample_1")(x)
        for j in range(depth):
            x = _block(x, dim, v, rates[j], f"stages_{i}_blocks_{j}_")
        outs.append(x)
    return outs


def head_pre(x, v: Variant):
    """timm's NormMlpClassifierHead before its classifier: LayerNorm (head.norm) on a pooled vector or,
    as timm does with global_pool='', on every position of the feature map."""
    return keras.layers.LayerNormalization(epsilon=LN_EPS, name="head_norm")(x)


# ------------------------------------------------------------------------------------ timm key -> Keras
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


def keras_weight(key: str) -> tuple[str, str] | None:
    """A timm state-dict key -> (Keras weight path, tensor kind for common.to_keras); None for keys with no
    Keras counterpart. Raises KeyError for a key this architecture does not have."""
    if _IGNORED.search(key):
        return None
    module, _, param = key.rpartition(".")
    name = common.module_name(module)
    if re.fullmatch(r"stem\.0|stages\.\d+\.downsample\.1", module):
        return f"{name}/{common.LINEAR_VARS[param]}", "conv"
    if re.fullmatch(r"stem\.1|stages\.\d+\.downsample\.0|stages\.\d+\.blocks\.\d+\.norm|head\.norm", module):
        return f"{name}/{common.NORM_VARS[param]}", "same"
    if re.fullmatch(r"stages\.\d+\.blocks\.\d+\.conv_dw", module):
        return f"{name}/{common.LINEAR_VARS[param]}", "depthwise"
    if re.fullmatch(r"stages\.\d+\.blocks\.\d+\.mlp\.fc[12]|head\.fc", module):
        return f"{name}/{common.LINEAR_VARS[param]}", "dense"
    if re.fullmatch(r"stages\.\d+\.blocks\.\d+\.mlp\.grn", module):
        return f"{name}/{ {'weight': 'gamma', 'bias': 'beta'}[param]}", "same"
    raise KeyError(key)
