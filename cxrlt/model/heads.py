"""Classification heads on a backbone's last feature map, beyond seed 002's GAP -> dropout -> dense.

* ``csra``: class-specific residual attention (Zhu & Wu, ICCV 2021), as the authors' code has it
  (Kevinz-code/CSRA, ``pipeline/csra.py``): ``num_heads`` heads, each a bias-free 1x1 projection whose class
  scores are divided by the norm of that class's weight vector; head h's logit is the spatial mean of its
  scores plus ``lam`` times the softmax(T_h x score)-weighted sum of them over the positions (T = 99 stands
  for the max); the logits of the heads add up. Their defaults: 1 head with T = 1, lambda 0.1; 2, 4, 6, 8
  heads take the temperatures of their ``MHA.temp_settings``. ``variant="cxrlt2026_winner"`` is the form in
  the CXR-LT 2026 task-1 winner's code (hieuphamha19/CXR_LT, ``train_csra_head.py``), another head under the
  same name: a linear classifier (with bias) on the spatially averaged features plus ``lam`` times the same
  classifier on the features pooled by a softmax over the positions of a second, bias-free 1x1 projection.
  Model files written before these options load as they were written (the old form: one max head, no
  normalisation, a bias), because a layer config without them means that form.
* ``ml_decoder``: ML-Decoder (Ridnik et al., WACV 2023), CheXFusion's head (CXR-LT 2023 winner): the feature
  map's positions, projected to ``dim`` (768) with a ReLU, are the keys/values of one transformer decoder
  layer whose queries are one vector per class (no self-attention, as the authors' decoder layer:
  query + dropout(query) -> LayerNorm; cross-attention, 8 heads -> residual + LayerNorm; FFN 2048 with ReLU
  -> residual + LayerNorm; dropout 0.1), then the group fully-connected output: class c's logit is its own
  query output times its own weight vector, plus a bias. The queries are random and FROZEN, as in the
  authors' code (``query_embed.requires_grad_(False)``) and CheXFusion's; ``train_queries=True`` trains them.
* ``CosineDense``: the normalised (cosine) classifier of LDAM's official model (kaidic/LDAM-DRW,
  ``NormedLinear``): the cosine between the feature vector and each class's weight vector, no bias.

All are Keras layers registered under ``cxrlt>``; `cxrlt.model.models.check_model_file` accepts exactly these
names besides Keras' own classes, and their configs hold numbers only. Each runs in float32 (the logits of
every head do, under mixed precision too).
"""

from __future__ import annotations

import keras
from keras import ops


# Kevinz-code/CSRA pipeline/csra.py MHA.temp_settings: the temperatures of 1, 2, 4, 6 and 8 heads (99 = max pooling)
CSRA_TEMPERATURES = {1: [1.0], 2: [1.0, 99.0], 4: [1.0, 2.0, 4.0, 99.0], 6: [1.0, 2.0, 3.0, 4.0, 5.0, 99.0],
                     8: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 99.0]}
MAX_TEMPERATURE = 99.0  # the authors' code: T == 99 means max pooling over the positions
CSRA_VARIANTS = ("official", "cxrlt2026_winner")


def csra_temperatures(num_heads: int, temperatures=None) -> list[float]:
    """The temperatures of ``num_heads`` heads: as given, or the authors' settings for 1, 2, 4, 6, 8 heads."""
    if temperatures is None:
        if int(num_heads) not in CSRA_TEMPERATURES:
            raise ValueError(f"csra: the authors' code has temperatures for 1, 2, 4, 6 or 8 heads, not {num_heads}; "
                             "give model.csra_temperatures (one per head, 99 = max)")
        return list(CSRA_TEMPERATURES[int(num_heads)])
    temperatures = [float(t) for t in temperatures]
    if len(temperatures) != int(num_heads) or any(not t > 0 for t in temperatures):
        raise ValueError(f"csra: {num_heads} head(s) need as many temperatures > 0 (99 = max), got {temperatures}")
    return temperatures


def _softmax_over_positions(x):
    """Softmax over axis 1 written out (Keras' ops.softmax warns about a 1-position feature map, which tiny test
    images give; the value is the same)."""
    e = ops.exp(x - ops.max(x, axis=1, keepdims=True))
    return e / ops.sum(e, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="cxrlt")
class CSRA(keras.layers.Layer):
    """[B, H, W, D] feature map -> [B, C] logits (see the module docstring for the three forms).

    ``temperatures`` (one per head) None with ``normalize=False`` and ``use_bias=True`` is the form of model
    files written before the authors' form was offered (one head, mean + lam * max, a bias); `build()` in
    cxrlt.model.models always passes the form explicitly."""

    def __init__(self, num_classes: int, lam: float = 0.1, temperatures=None, normalize: bool = False,
                 use_bias: bool = True, variant: str = "official", **kwargs):
        super().__init__(**kwargs)
        if variant not in CSRA_VARIANTS:
            raise ValueError(f"csra: variant must be one of {CSRA_VARIANTS}, got {variant!r}")
        self.num_classes, self.lam, self.variant = int(num_classes), float(lam), variant
        self.temperatures = [MAX_TEMPERATURE] if temperatures is None else [float(t) for t in temperatures]
        self.normalize, self.use_bias = bool(normalize), bool(use_bias)
        if variant == "cxrlt2026_winner" and (len(self.temperatures) != 1 or self.temperatures[0] != 1.0):
            raise ValueError("csra: the cxrlt2026_winner variant has one softmax head (temperature 1)")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernels = [self.add_weight(shape=(channels, self.num_classes), initializer="glorot_uniform",
                                        name="kernel" if i == 0 else f"kernel_{i}")
                        for i in range(len(self.temperatures))]
        if self.variant == "cxrlt2026_winner":  # the classifier shared by the GAP and the attention branch
            self.attention_kernel = self.add_weight(shape=(channels, self.num_classes), initializer="glorot_uniform",
                                                    name="attention_kernel")
        self.bias = self.add_weight(shape=(self.num_classes,), initializer="zeros", name="bias") if self.use_bias else None

    @property
    def kernel(self):
        """The first head's projection (the only one of the old form and of the winner's variant)."""
        return self.kernels[0]

    def scores(self, x, head: int = 0):
        """Per-position class scores [B, H, W, C] of one head (no bias; divided by the weight norms if normalised)."""
        s = ops.einsum("bhwd,dc->bhwc", x, self.kernels[head])
        if self.normalize:
            s = s / ops.sqrt(ops.sum(ops.square(self.kernels[head]), axis=0))
        return s

    def call(self, x):
        if self.variant == "cxrlt2026_winner":
            return self._winner(x)
        logits = 0.0
        for head, temperature in enumerate(self.temperatures):
            s = ops.reshape(self.scores(x, head), (ops.shape(x)[0], -1, self.num_classes))  # [B, HW, C]
            if temperature == MAX_TEMPERATURE:
                attended = ops.max(s, axis=1)
            else:
                attended = ops.sum(s * _softmax_over_positions(s * temperature), axis=1)
            logits = logits + ops.mean(s, axis=1) + self.lam * attended
        return logits if self.bias is None else logits + self.bias

    def _winner(self, x):
        """logit = W mean_hw(x) + b + lam * (W (sum_hw softmax_hw(a_c) x) + b), a = the attention projection."""
        flat = ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))                        # [B, HW, D]
        attention = _softmax_over_positions(ops.einsum("bnd,dc->bnc", flat, self.attention_kernel))
        pooled = ops.einsum("bnc,bnd->bcd", attention, flat)                             # [B, C, D]
        gap = ops.matmul(ops.mean(flat, axis=1), self.kernel)
        attended = ops.einsum("bcd,dc->bc", pooled, self.kernel)
        if self.bias is not None:
            gap, attended = gap + self.bias, attended + self.bias
        return gap + self.lam * attended

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "lam": self.lam,
                "temperatures": self.temperatures, "normalize": self.normalize, "use_bias": self.use_bias,
                "variant": self.variant}


@keras.saving.register_keras_serializable(package="cxrlt")
class CosineDense(keras.layers.Layer):
    """[B, D] features -> [B, C] cosines ``x / |x| . w_c / |w_c|`` (LDAM's NormedLinear: no bias; the loss
    scales them by s). Initialised as theirs: uniform(-1, 1) columns (their renorm only rescales columns,
    which the cosine ignores)."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(int(input_shape[-1]), self.num_classes), name="kernel",
                                      initializer=keras.initializers.RandomUniform(-1.0, 1.0))

    def call(self, x):
        x = x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), 1e-12)
        w = self.kernel / ops.maximum(ops.sqrt(ops.sum(ops.square(self.kernel), axis=0, keepdims=True)), 1e-12)
        return ops.matmul(x, w)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="cxrlt")
class MLDecoder(keras.layers.Layer):
    """[B, H, W, D] feature map -> [B, C] logits: one query per class, one cross-attention decoder layer,
    group fully-connected output (see the module docstring)."""

    def __init__(self, num_classes: int, dim: int = 768, ffn_dim: int = 2048, num_heads: int = 8,
                 dropout: float = 0.1, train_queries: bool = True, **kwargs):
        # train_queries defaults to True here so that model files written before the option load as they were;
        # cxrlt.model.models.build passes model.ml_decoder_train_queries (default false, the authors' choice)
        super().__init__(**kwargs)
        self.train_queries = bool(train_queries)
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
                                       name="queries", trainable=self.train_queries)
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
                "num_heads": self.num_heads, "dropout": self.dropout, "train_queries": self.train_queries}


# The layers a cxrlt model file may name besides Keras' own: (module, class name) -> registered name.
OWN_LAYERS = {(cls.__module__, cls.__name__): keras.saving.get_registered_name(cls) for cls in (CSRA, MLDecoder, CosineDense)}
