"""MaxViT (Tu et al., ECCV 2022), the TensorFlow-ported `_tf` variants, in Keras 3, laid out as timm's
`maxvit_*_tf_*` so that timm's checkpoints load tensor for tensor (cxrlt.model.backbones.timm_weights).

    stem     Conv 3x3 / 2 -> BatchNorm -> GELU(tanh) -> Conv 3x3                      (stem.conv1, norm1, conv2)
    stage i  depth_i MaxViT blocks, the first with stride 2; each block:
      MBConv   [shortcut: AvgPool 2 -> 1x1 conv if the width changes]
               BN -> 1x1 expand (4x) -> BN+GELU -> DW 3x3 (stride) -> BN+GELU -> SE (SiLU, 1/4 of the output
               width) -> 1x1 project -> drop path -> + shortcut                       (blocks.j.conv.*)
      block attention  LN -> attention within non-overlapping P x P windows -> drop path -> +;
                       LN -> MLP 4x (GELU tanh) -> drop path -> +                      (blocks.j.attn_block.*)
      grid attention   the same over a P x P grid spread across the whole map          (blocks.j.attn_grid.*)
    head     (pool ->) LayerNorm -> Linear + tanh ("pre-logits")                       (head.norm, head.pre_logits.fc)

The partition size P is image_size / 32 (7 at 224 px, 12 at 384, 16 at 512), so the input side must be a
multiple of 32. Attention has 32-d heads, its q/k/v interleaved per head as TensorFlow's MaxViT
(timm `head_first=False`), and a learned relative-position bias per head, a (2P-1) x (2P-1) table
(timm RelPosBiasTf). A checkpoint trained at another size gets its tables resized as timm resizes them
(cxrlt.model.backbones.timm_weights.resize_rel_pos_bias_table). Epsilons as timm's `_tf_cfg`: BatchNorm 1e-3,
LayerNorm 1e-5. BatchNorm momentum 0.9 (PyTorch's 0.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from . import common


@dataclass(frozen=True)
class Variant:
    embed_dim: tuple[int, ...]
    depths: tuple[int, ...]
    stem_width: int
    head_hidden_size: int
    timm_name: str = ""
    image_size: int = 224      # the checkpoint's training size
    mean: tuple = common.HALF
    std: tuple = common.HALF
    dim_head: int = 32
    expand_ratio: float = 4.0
    se_ratio: float = 0.25
    partition_ratio: int = 32


def _variants() -> dict[str, Variant]:
    sizes = {"tiny": ((64, 128, 256, 512), (2, 2, 5, 2), 64, 512),
             "small": ((96, 192, 384, 768), (2, 2, 5, 2), 64, 768),
             "base": ((96, 192, 384, 768), (2, 6, 14, 2), 64, 768)}
    out = {}
    for size, (dims, depths, stem, hidden) in sizes.items():
        for px in (224, 384, 512):
            # timm pretrained_cfg: the 224 px in1k checkpoints use ImageNet's mean/std, 384 and 512 px 0.5/0.5
            norm = (common.IMAGENET_MEAN, common.IMAGENET_STD) if px == 224 else (common.HALF, common.HALF)
            out[f"maxvit-{size}-tf-{px}"] = Variant(dims, depths, stem, hidden, f"maxvit_{size}_tf_{px}", px, *norm)
    return out


VARIANTS = _variants()
LICENSE = "apache-2.0"  # timm pretrained_cfg of the maxvit_*_tf checkpoints (Google's MaxViT release)
BN_EPS, LN_EPS, BN_MOMENTUM = 1e-3, 1e-5, 0.9


def partition_size(image_size: int, v: Variant) -> int:
    if image_size % v.partition_ratio:
        raise ValueError(f"MaxViT needs an input side that is a multiple of {v.partition_ratio} (its attention "
                         f"windows are image_size / {v.partition_ratio}), got {image_size}; use e.g. "
                         f"{max(v.partition_ratio, image_size // v.partition_ratio * v.partition_ratio)}")
    return image_size // v.partition_ratio


def relative_position_index(size: int) -> np.ndarray:
    """[P*P, P*P] index into a flattened (2P-1) x (2P-1) table: query (i, j), key (x, y) ->
    (x - i + P - 1) * (2P - 1) + (y - j + P - 1); what timm's reindex_2d_einsum_lookup computes with one-hots."""
    i, j = np.divmod(np.arange(size * size), size)
    dy = i[None, :] - i[:, None] + size - 1
    dx = j[None, :] - j[:, None] + size - 1
    return (dy * (2 * size - 1) + dx).astype("int32")


@keras.saving.register_keras_serializable(package="cxrlt")
class PartitionAttention(keras.layers.Layer):
    """Multi-head self-attention inside P x P partitions of a [B, H, W, C] map, with a relative-position bias.
    `partition`: "block" (contiguous windows) or "grid" (a P x P grid of positions H/P apart), timm's
    window_partition / grid_partition and their reverses. Holds timm's attn.qkv, attn.proj and
    attn.rel_pos.relative_position_bias_table. The softmax runs in float32."""

    def __init__(self, dim: int, partition: str, size: int, dim_head: int = 32, **kwargs):
        super().__init__(**kwargs)
        if partition not in ("block", "grid"):
            raise ValueError(f"partition must be block or grid, got {partition!r}")
        self.dim, self.partition, self.size, self.dim_head = int(dim), partition, int(size), int(dim_head)
        if self.dim % self.dim_head:
            raise ValueError(f"attention width {dim} is not a multiple of the head width {dim_head}")
        self.num_heads = self.dim // self.dim_head
        self.qkv = keras.layers.Dense(3 * self.dim, name="qkv", dtype=self.dtype_policy)
        self.proj = keras.layers.Dense(self.dim, name="proj", dtype=self.dtype_policy)
        self._index = relative_position_index(self.size)

    def build(self, input_shape):
        self.qkv.build((None, self.size * self.size, self.dim))
        self.proj.build((None, self.size * self.size, self.dim))
        span = 2 * self.size - 1
        self.relative_position_bias_table = self.add_weight(
            shape=(self.num_heads, span, span), initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="relative_position_bias_table")

    def _split(self, x, h, w):
        p, c = self.size, self.dim
        if self.partition == "block":
            x = ops.reshape(x, (-1, h // p, p, w // p, p, c))
            x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        else:
            x = ops.reshape(x, (-1, p, h // p, p, w // p, c))
            x = ops.transpose(x, (0, 2, 4, 1, 3, 5))
        return ops.reshape(x, (-1, p * p, c))

    def _merge(self, x, h, w):
        p, c = self.size, self.dim
        x = ops.reshape(x, (-1, h // p, w // p, p, p, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5) if self.partition == "block" else (0, 3, 1, 4, 2, 5))
        return ops.reshape(x, (-1, h, w, c))

    def bias(self):
        """[heads, P*P, P*P] relative-position bias of the current table."""
        table = ops.reshape(self.relative_position_bias_table, (self.num_heads, -1))
        return ops.take(table, ops.convert_to_tensor(self._index), axis=1)

    def call(self, x):
        h, w = int(x.shape[1]), int(x.shape[2])
        n, heads, d = self.size * self.size, self.num_heads, self.dim_head
        t = self._split(x, h, w)
        qkv = ops.reshape(self.qkv(t), (-1, n, 3, heads, d))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # [3, B', heads, N, d]: TF MaxViT's interleaved q/k/v
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = ops.matmul(q * (d ** -0.5), ops.transpose(k, (0, 1, 3, 2)))
        logits = ops.cast(logits, "float32") + ops.cast(self.bias(), "float32")[None]
        attn = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        out = ops.reshape(ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3)), (-1, n, self.dim))
        return self._merge(self.proj(out), h, w)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "partition": self.partition, "size": self.size,
                "dim_head": self.dim_head}


def _bn(x, name, act: bool):
    x = keras.layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=name)(x)
    return common.GELUTanh(name=name + "_act")(x) if act else x


def _mbconv(x, in_chs: int, out_chs: int, stride: int, v: Variant, rate: float, p: str):
    mid = common.make_divisible(out_chs * v.expand_ratio)
    if stride == 2:
        shortcut = keras.layers.AveragePooling2D(2, 2, name=p + "shortcut_pool")(x)
        if in_chs != out_chs:
            shortcut = keras.layers.Conv2D(out_chs, 1, name=p + "shortcut_expand")(shortcut)
    else:
        shortcut = x
    x = _bn(x, p + "pre_norm", act=False)
    x = keras.layers.Conv2D(mid, 1, use_bias=False, name=p + "conv1_1x1")(x)
    x = _bn(x, p + "norm1", act=True)
    x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=p + "conv2_kxk")(x)
    x = _bn(x, p + "norm2", act=True)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name=p + "se_pool")(x)
    se = keras.layers.Conv2D(int(v.se_ratio * out_chs), 1, activation="silu", name=p + "se_fc1")(se)
    se = keras.layers.Conv2D(mid, 1, activation="sigmoid", name=p + "se_fc2")(se)
    x = keras.layers.Multiply(name=p + "se_gate")([x, se])
    x = keras.layers.Conv2D(out_chs, 1, name=p + "conv3_1x1")(x)
    x = common.drop_path(x, rate, p + "drop_path")
    return keras.layers.Add(name=p + "add")([shortcut, x])


def _partition_block(x, dim: int, partition: str, size: int, v: Variant, rate: float, p: str):
    y = keras.layers.LayerNormalization(epsilon=LN_EPS, name=p + "norm1")(x)
    y = PartitionAttention(dim, partition, size, v.dim_head, name=p + "attn")(y)
    x = keras.layers.Add(name=p + "add1")([x, common.drop_path(y, rate, p + "drop_path1")])
    y = keras.layers.LayerNormalization(epsilon=LN_EPS, name=p + "norm2")(x)
    y = keras.layers.Dense(int(dim * v.expand_ratio), name=p + "mlp_fc1")(y)
    y = common.GELUTanh(name=p + "mlp_act")(y)
    y = keras.layers.Dense(dim, name=p + "mlp_fc2")(y)
    return keras.layers.Add(name=p + "add2")([x, common.drop_path(y, rate, p + "drop_path2")])


def stages(x, v: Variant, drop_path: float = 0.0) -> list:
    """Normalised image [B, S, S, 3] (S a multiple of 32) -> the output of each of the 4 stages."""
    size = partition_size(int(x.shape[1]), v)
    if int(x.shape[2]) != int(x.shape[1]):
        raise ValueError(f"MaxViT is built for square inputs, got {tuple(x.shape[1:3])}")
    x = keras.layers.Conv2D(v.stem_width, 3, strides=2, padding="same", name="stem_conv1")(x)
    x = _bn(x, "stem_norm1", act=True)
    x = keras.layers.Conv2D(v.stem_width, 3, padding="same", name="stem_conv2")(x)
    in_chs, outs = v.stem_width, []
    for i, (depth, dim, rates) in enumerate(zip(v.depths, v.embed_dim, common.drop_path_rates(drop_path, v.depths))):
        for j in range(depth):
            p = f"stages_{i}_blocks_{j}_"
            x = _mbconv(x, in_chs, dim, 2 if j == 0 else 1, v, rates[j], p + "conv_")
            x = _partition_block(x, dim, "block", size, v, rates[j], p + "attn_block_")
            x = _partition_block(x, dim, "grid", size, v, rates[j], p + "attn_grid_")
            in_chs = dim
        outs.append(x)
    return outs


def head_pre(x, v: Variant):
    """timm's NormMlpClassifierHead before its classifier: LayerNorm -> Linear(head_hidden_size) -> tanh, on a
    pooled vector or, as timm does with global_pool='', on every position of the feature map."""
    x = keras.layers.LayerNormalization(epsilon=LN_EPS, name="head_norm")(x)
    return keras.layers.Dense(v.head_hidden_size, activation="tanh", name="head_pre_logits_fc")(x)


# ------------------------------------------------------------------------------------ timm key -> Keras
_BLOCK = r"stages\.\d+\.blocks\.\d+"


def keras_weight(key: str) -> tuple[str, str] | None:
    """A timm state-dict key -> (Keras weight path, tensor kind for common.to_keras); None for keys with no
    Keras counterpart (BatchNorm's num_batches_tracked). Raises KeyError for a key this architecture lacks."""
    if key.endswith(".num_batches_tracked"):
        return None
    module, _, param = key.rpartition(".")
    name = common.module_name(module)
    conv = rf"stem\.conv[12]|{_BLOCK}\.conv\.(shortcut\.expand|conv1_1x1|conv3_1x1|se\.fc[12])"
    if re.fullmatch(conv, module):
        return f"{name}/{common.LINEAR_VARS[param]}", "conv"
    if re.fullmatch(rf"{_BLOCK}\.conv\.conv2_kxk", module):
        return f"{name}/{common.LINEAR_VARS[param]}", "depthwise"
    if re.fullmatch(rf"stem\.norm1|{_BLOCK}\.conv\.(pre_norm|norm1|norm2)|{_BLOCK}\.attn_(block|grid)\.norm[12]|"
                    r"head\.norm", module):
        return f"{name}/{common.NORM_VARS[param]}", "same"
    if re.fullmatch(rf"{_BLOCK}\.attn_(block|grid)\.mlp\.fc[12]|head\.pre_logits\.fc|head\.fc", module):
        return f"{name}/{common.LINEAR_VARS[param]}", "dense"
    m = re.fullmatch(rf"({_BLOCK}\.attn_(?:block|grid)\.attn)\.(qkv|proj)", module)
    if m:
        return f"{common.module_name(m.group(1))}/{m.group(2)}/{common.LINEAR_VARS[param]}", "dense"
    m = re.fullmatch(rf"({_BLOCK}\.attn_(?:block|grid)\.attn)\.rel_pos", module)
    if m and param == "relative_position_bias_table":
        return f"{common.module_name(m.group(1))}/relative_position_bias_table", "same"
    raise KeyError(key)
