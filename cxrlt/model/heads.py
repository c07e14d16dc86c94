"""Classification heads on a backbone's last feature map, beyond seed 002's GAP -> dropout -> dense.

* ``csra``: class-specific residual attention (Zhu & Wu, ICCV 2021), the CXR-LT 2026 leader's head. A 1x1
  projection gives every position a score per class, ``s[b, h, w, c]``; the logit is the spatial mean plus
  ``lam`` times the spatial max (the paper's T -> infinity attention): ``mean_hw s + lam * max_hw s`` (+ a bias).
  The authors' code also divides each class's score by its weight norm and has no bias; here the head is
  the plain formula of the paper, so ``lam = 0`` is exactly the GAP head.
* ``ml_decoder``: ML-Decoder (Ridnik et al., WACV 2023), CheXFusion's head (CXR-LT 2023 winner): the feature
  map's positions, projected to ``dim`` (768) with a ReLU, are the keys/values of one transformer decoder
  layer whose queries are one learnable vector per class (no self-attention, as the authors' decoder layer:
  query + dropout(query) -> LayerNorm; cross-attention, 8 heads -> residual + LayerNorm; FFN 2048 with ReLU
  -> residual + LayerNorm; dropout 0.1), then the group fully-connected output: class c's logit is its own
  query output times its own weight vector, plus a bias.

Both are Keras layers registered as ``cxrlt>CSRA`` / ``cxrlt>MLDecoder``; `cxrlt.model.models.check_model_file`
accepts exactly these two names besides Keras' own classes, and their configs hold numbers only. Each runs
in float32 (the logits of every head do, under mixed precision too).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cxrlt")
class CSRA(keras.layers.Layer):
    """[B, H, W, D] feature map -> [B, C] logits: mean over positions + lam * max over positions of a 1x1 score."""

    def __init__(self, num_classes: int, lam: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.lam = int(num_classes), float(lam)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernel = self.add_weight(shape=(channels, self.num_classes), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.num_classes,), initializer="zeros", name="bias")

    def scores(self, x):
        """Per-position class scores [B, H, W, C] (no bias)."""
        return ops.einsum("bhwd,dc->bhwc", x, self.kernel)

    def call(self, x):
        s = self.scores(x)
        return ops.mean(s, axis=(1, 2)) + self.lam * ops.max(s, axis=(1, 2)) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "lam": self.lam}


@keras.saving.register_keras_serializable(package="cxrlt")
class MLDecoder(keras.layers.Layer):
    """[B, H, W, D] feature map -> [B, C] logits: one query per class, one cross-attention decoder layer,
    group fully-connected output (see the module docstring)."""

    def __init__(self, num_classes: int, dim: int = 768, ffn_dim: int = 2048, num_heads: int = 8,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.dim, self.ffn_dim = int(num_classes), int(dim), int(ffn_dim)
        self.num_heads, self.dropout = int(num_heads), float(dropout)
        if self.dim % self.num_heads:
            raise ValueError(f"ml_decoder: dim {self.dim} must be a multiple of num_heads {self.num_heads}")
        policy = self.dtype_policy
        self.embed = keras.layers.Dense(self.dim, activation="relu", name="embed", dtype=policy)
        self.attention = keras.layers.MultiHeadAttention(self.num_heads, self.dim // self.num_heads,
                                                         dropout=self.dropout, name="cross_attention", dtype=policy)
        self.norm1, self.norm2, self.norm3 = (keras.layers.LayerNormalization(epsilon=1e-5, name=f"norm{i}", dtype=policy)
                                              for i in (1, 2, 3))
        self.ffn1 = keras.layers.Dense(self.ffn_dim, activation="relu", name="ffn1", dtype=policy)
        self.ffn2 = keras.layers.Dense(self.dim, name="ffn2", dtype=policy)
        self.drop = keras.layers.Dropout(self.dropout, name="drop", dtype=policy)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        c, d = self.num_classes, self.dim
        self.queries = self.add_weight(shape=(c, d), initializer=keras.initializers.RandomNormal(stddev=1.0),
                                       name="queries")
        self.embed.build((None, None, channels))
        self.attention.build((None, c, d), (None, None, d))
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.build((None, c, d))
        self.ffn1.build((None, c, d))
        self.ffn2.build((None, c, self.ffn_dim))
        self.group_kernel = self.add_weight(shape=(c, d), initializer="glorot_normal", name="group_kernel")
        self.group_bias = self.add_weight(shape=(c,), initializer="zeros", name="group_bias")

    def call(self, x, training=None, key_mask=None):
        """`x`: a feature map [B, H, W, D] or a token sequence [B, T, D]. `key_mask` ([B, T], true = attend), used by
        cxrlt.model.fusion: tokens of a study's empty image slots are never attended to."""
        batch = ops.shape(x)[0]
        memory = self.embed(ops.reshape(x, (batch, -1, x.shape[-1])))
        query = ops.broadcast_to(ops.expand_dims(ops.convert_to_tensor(self.queries), 0),
                                 (batch, self.num_classes, self.dim))
        query = self.norm1(query + self.drop(query, training=training))
        mask = None
        if key_mask is not None:  # [B, T] -> [B, C, T]: every class query sees the same keys
            mask = ops.broadcast_to(ops.expand_dims(ops.cast(key_mask, "bool"), 1),
                                    (batch, self.num_classes, ops.shape(memory)[1]))
        attended = self.attention(query, memory, memory, attention_mask=mask, training=training)
        query = self.norm2(query + self.drop(attended, training=training))
        ffn = self.ffn2(self.drop(self.ffn1(query), training=training))
        query = self.norm3(query + self.drop(ffn, training=training))
        return ops.einsum("bcd,cd->bc", query, self.group_kernel) + self.group_bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "dim": self.dim, "ffn_dim": self.ffn_dim,
                "num_heads": self.num_heads, "dropout": self.dropout}


# The layers a cxrlt model file may name besides Keras' own: (module, class name) -> registered name.
OWN_LAYERS = {(cls.__module__, cls.__name__): keras.saving.get_registered_name(cls) for cls in (CSRA, MLDecoder)}
