"""Learned study fusion: CheXFusion's stage 2 (Park et al., CXR-LT 2023 winner) over a trained run's FROZEN features.

In CXR-LT the labels belong to the study (one report), while the images are scored one by one. Stage 2 of
CheXFusion looks at a study's images together: every image's last feature map (the trained backbone, frozen)
-> a 3x3 stride-2 convolution to ``dim`` channels -> + a fixed 2-D sinusoidal position encoding (first half of
the channels the row, second half the column, sin/cos pairs) -> + a learned view embedding -> the tokens of
all of the study's images form one sequence, where an empty image slot is a learned padding token that the
key-padding mask hides -> a 2-layer TransformerEncoder (8 heads, FFN 2048, dropout 0.1, post-norm with ReLU:
PyTorch's TransformerEncoderLayer defaults) -> the ML-Decoder head (cxrlt.model.heads.MLDecoder, same mask)
-> one set of logits per study.

Choices made here, and why:

* The view embedding is indexed by the image's view group (PA, AP, lateral, other/unknown; the caller maps
  ViewPosition to these ids), not by the slot number. With no slot embedding the output is independent of the
  order in which a study's images are stacked (self-attention and the decoder's cross-attention are
  permutation-invariant over tokens), so a study has one prediction whatever the CSV's row order.
* Padded slots are masked in the encoder's self-attention AND in the decoder's cross-attention, so a study's
  logits do not depend on what is in its empty slots, on the padding token, or on how many slots there are
  (``max_images``). The padding token still replaces an empty slot's tokens, so they stay finite (a padded
  query's own output is never read).

The model's inputs are ``features`` [B, S, h, w, C] (float; S = max_images), ``valid`` [B, S] (1 = a real image)
and ``views`` [B, S] (int32 in [0, num_views)). Like cxrlt.model.models.build, `build` gives a logits model
for training and a probabilities model (the same layers) that is saved as a fused run's fold model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from . import heads


@dataclass
class FusionModels:
    train_model: keras.Model    # (features, valid, views) -> logits; what the fusion trainer fits
    model: keras.Model          # (features, valid, views) -> probabilities; a fused run's fold<k>/model.keras


def sinusoid_2d(height: int, width: int, dim: int) -> np.ndarray:
    """[height, width, dim] fixed 2-D position encoding: channels [0, c) encode the row, [c, 2c) the column
    (c = 2 * ceil(dim / 4)), each as sin/cos pairs at geometric frequencies 1 / 10000^(2i / c); cut to dim."""
    c = int(math.ceil(dim / 4) * 2)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, c, 2, dtype=np.float64) / c))

    def encode(n):
        angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]
        return np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(n, c)

    out = np.zeros((height, width, 2 * c), np.float64)
    out[:, :, :c] = encode(height)[:, None, :]
    out[:, :, c:] = encode(width)[None, :, :]
    return out[:, :, :dim].astype(np.float32)


class _EncoderLayer(keras.layers.Layer):
    """PyTorch's TransformerEncoderLayer (norm_first=False, ReLU): x = LN(x + drop(SA(x))); x = LN(x + drop(FFN(x)))."""

    def __init__(self, dim: int, heads_: int, ffn_dim: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        self.attention = keras.layers.MultiHeadAttention(heads_, dim // heads_, dropout=dropout, name="self_attention",
                                                         dtype=policy)
        self.ffn1 = keras.layers.Dense(ffn_dim, activation="relu", name="ffn1", dtype=policy)
        self.ffn2 = keras.layers.Dense(dim, name="ffn2", dtype=policy)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1", dtype=policy)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2", dtype=policy)
        self.drop = keras.layers.Dropout(dropout, name="drop", dtype=policy)
        self.dim, self.ffn_dim = dim, ffn_dim

    def build(self, input_shape):
        shape = (None, None, self.dim)
        self.attention.build(shape, shape)
        self.ffn1.build(shape)
        self.ffn2.build((None, None, self.ffn_dim))
        self.norm1.build(shape)
        self.norm2.build(shape)

    def call(self, x, attention_mask, training=None):
        attended = self.attention(x, x, x, attention_mask=attention_mask, training=training)
        x = self.norm1(x + self.drop(attended, training=training))
        ffn = self.ffn2(self.drop(self.ffn1(x), training=training))
        return self.norm2(x + self.drop(ffn, training=training))


@keras.saving.register_keras_serializable(package="cxrlt")
class StudyFusion(keras.layers.Layer):
    """[features [B, S, h, w, C], valid [B, S], views [B, S]] -> [B, num_classes] study logits (module docstring)."""

    def __init__(self, num_classes: int, dim: int = 768, layers: int = 2, num_heads: int = 8, ffn_dim: int = 2048,
                 dropout: float = 0.1, num_views: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.dim, self.layers, self.num_heads = int(num_classes), int(dim), int(layers), int(num_heads)
        self.ffn_dim, self.dropout, self.num_views = int(ffn_dim), float(dropout), int(num_views)
        if self.dim % self.num_heads:
            raise ValueError(f"fusion: dim {self.dim} must be a multiple of num_heads {self.num_heads}")
        policy = self.dtype_policy
        self.reduce = keras.layers.Conv2D(self.dim, 3, strides=2, padding="same", name="reduce", dtype=policy)
        self.view_embedding = keras.layers.Embedding(self.num_views, self.dim, name="view_embedding", dtype=policy)
        self.encoder = [_EncoderLayer(self.dim, self.num_heads, self.ffn_dim, self.dropout, name=f"encoder{i}",
                                      dtype=policy) for i in range(self.layers)]
        self.decoder = heads.MLDecoder(self.num_classes, dim=self.dim, ffn_dim=self.ffn_dim, num_heads=self.num_heads,
                                       dropout=self.dropout, name="ml_decoder", dtype=policy)

    def build(self, input_shape):
        slots, height, width, channels = (int(v) for v in input_shape[0][1:])
        self.slots, self.height, self.width, self.channels = slots, height, width, channels
        self.reduce.build((None, height, width, channels))
        self.out_h, self.out_w = -(-height // 2), -(-width // 2)  # "same" padding, stride 2
        self.position = sinusoid_2d(self.out_h, self.out_w, self.dim)  # fixed, not a weight
        self.view_embedding.build((None, slots))
        self.padding_token = self.add_weight(shape=(self.dim,), initializer=keras.initializers.RandomNormal(stddev=1.0),
                                             name="padding_token")
        for layer in self.encoder:
            layer.build((None, None, self.dim))
        self.decoder.build((None, None, self.dim))

    def call(self, inputs, training=None):
        features, valid, views = inputs
        batch, tokens_per_image = ops.shape(features)[0], self.out_h * self.out_w
        x = ops.reshape(ops.cast(features, self.compute_dtype), (-1, self.height, self.width, self.channels))
        x = self.reduce(x) + ops.cast(ops.convert_to_tensor(self.position), self.compute_dtype)[None]
        x = ops.reshape(x, (batch, self.slots, tokens_per_image, self.dim))
        x = x + self.view_embedding(ops.cast(views, "int32"))[:, :, None, :]
        is_image = ops.cast(valid, "bool")  # [B, S]
        x = ops.where(is_image[:, :, None, None], x, ops.cast(self.padding_token, self.compute_dtype))
        x = ops.reshape(x, (batch, self.slots * tokens_per_image, self.dim))
        key_mask = ops.reshape(ops.broadcast_to(is_image[:, :, None], (batch, self.slots, tokens_per_image)),
                               (batch, self.slots * tokens_per_image))
        attention_mask = ops.broadcast_to(key_mask[:, None, :], (batch, self.slots * tokens_per_image,
                                                                  self.slots * tokens_per_image))
        for layer in self.encoder:
            x = layer(x, attention_mask, training=training)
        return self.decoder(x, training=training, key_mask=key_mask)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "dim": self.dim, "layers": self.layers,
                "num_heads": self.num_heads, "ffn_dim": self.ffn_dim, "dropout": self.dropout,
                "num_views": self.num_views}


NUM_VIEWS = 4  # view groups: 0 PA, 1 AP, 2 lateral, 3 other / unknown (cxrlt.predict.fusion.view_ids)


def build(num_classes: int, feature_shape, *, max_images: int = 4, dim: int = 768, layers: int = 2,
          num_heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1, num_views: int = NUM_VIEWS) -> FusionModels:
    """The fusion models over frozen feature maps of shape `feature_shape` = (h, w, C)."""
    h, w, c = (int(v) for v in feature_shape)
    features = keras.Input((max_images, h, w, c), name="features")
    valid = keras.Input((max_images,), name="valid")
    views = keras.Input((max_images,), dtype="int32", name="views")
    logits = StudyFusion(num_classes, dim=dim, layers=layers, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout,
                         num_views=num_views, name="logits", dtype="float32")([features, valid, views])
    probs = keras.layers.Activation("sigmoid", name="probabilities", dtype="float32")(logits)
    inputs = [features, valid, views]
    return FusionModels(train_model=keras.Model(inputs, logits, name="study_fusion_logits"),
                        model=keras.Model(inputs, probs, name="study_fusion"))


def feature_model(model: keras.Model, pool: int = 1) -> keras.Model:
    """image -> the last feature map of a cxrlt classifier (the input of its "gap" pooling, or of "head_dropout"
    for the csra / ml_decoder heads), average-pooled by `pool` (1 = as is). The backbone stays frozen: the
    extractor is only ever called with training=False."""
    fmap = None
    for name in ("gap", "head_dropout"):
        try:
            fmap = model.get_layer(name).input
            break
        except ValueError:
            continue
    if fmap is None or len(fmap.shape) != 4:
        raise ValueError(f"model {model.name} has no 'gap' or 'head_dropout' layer on a [B, h, w, C] feature map; "
                         "is it a cxrlt classifier (python -m cxrlt.train)?")
    if pool > 1:
        fmap = keras.layers.AveragePooling2D(pool, strides=pool, padding="same", name="feature_pool")(fmap)
    extractor = keras.Model(model.inputs, fmap, name=f"{model.name}_features")
    extractor.trainable = False
    return extractor


# The layers a fused model file may name besides Keras' own and cxrlt.model.heads' (models.check_model_file).
OWN_LAYERS = {(cls.__module__, cls.__name__): keras.saving.get_registered_name(cls) for cls in (StudyFusion,)}
