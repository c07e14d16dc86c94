"""cxrlt's own backbones: Keras 3 ports of timm's ConvNeXt V2 and MaxViT (`_tf`), which neither Keras
applications nor KerasHub offer. Their ImageNet weights come from timm checkpoints converted with
`python -m cxrlt weights --from-timm` (cxrlt.model.backbones.timm_weights); `model.backbone` names them
(config.schema.OWN_BACKBONES lists the names, each family module its sizes).

A backbone here is what timm's model is without its ImageNet classifier: image -> stages -> the head's
pre-classifier part (head.norm, and MaxViT's pre-logits Linear + tanh), applied

* after global average pooling (`pooled=True`, cxrlt's `gap` head): timm's `create_model(..., num_classes=N)`;
* at every position (`pooled=False`, the csra / ml_decoder heads read a feature map): timm with global_pool=''.
"""

from __future__ import annotations

import contextlib

import keras

from ...config.schema import OWN_BACKBONES
from . import common, convnextv2, maxvit

FAMILIES = {"convnextv2": convnextv2, "maxvit": maxvit}

# cxrlt's own layers a model file may name: (module, class name) -> registered name
OWN_LAYERS = {(cls.__module__, cls.__name__): keras.saving.get_registered_name(cls)
              for cls in (common.GELUTanh, convnextv2.GlobalResponseNorm, maxvit.PartitionAttention)}


def family(name: str):
    """The family module (convnextv2 / maxvit) of a registered backbone name."""
    return FAMILIES[OWN_BACKBONES[name]]


def variant(name: str):
    return family(name).VARIANTS[name]


def build(name: str, x, *, pooled: bool, include_preprocessing: bool = True, drop_path: float = 0.0) -> keras.Model:
    """Backbone `name` on the input tensor `x` (pixels 0..255, normalised with the checkpoint's mean and std;
    with include_preprocessing False the pixels pass as they come, as cxrlt's input.pixel_range 0_1 wants)
    -> a keras.Model from `x` to pooled features [B, D] (`pooled`) or a feature map [B, h, w, D]. The global
    pooling layer is named "gap" (Grad-CAM reads its input). `drop_path`: timm's drop_path_rate."""
    fam, v = family(name), variant(name)
    y = common.normalise(x, v.mean, v.std) if include_preprocessing else x
    features = fam.stages(y, v, drop_path)[-1]
    if pooled:
        features = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    return keras.Model(x, fam.head_pre(features, v), name=name.replace("-", "_"))


def count_params(name: str, image_size: int | None = None, pooled: bool = True) -> int:
    """Parameters of backbone `name` (timm's count without its ImageNet classifier), from the shapes of a
    model built with lazy variables (shapes_only: nothing is allocated, so even the 660 M of ConvNeXt
    V2-huge cost only the graph)."""
    size = image_size or variant(name).image_size
    with shapes_only():
        model = build(name, keras.Input((size, size, 3)), pooled=pooled)
        return int(sum(_prod(w.shape) for w in model.trainable_weights))  # BatchNorm statistics are buffers in timm


@contextlib.contextmanager
def shapes_only():
    """Build models whose variables have shapes and no values: Keras defers a variable's initialisation inside
    a StatelessScope; with initialize_variables=False nothing is initialised when it ends either, and the
    deferred ones are dropped from Keras' list (or the next StatelessScope would fill 660 M parameters)."""
    from keras.src.backend.common import global_state  # Keras 3's list of deferred variables

    before = list(global_state.get_global_attribute("uninitialized_variables", None) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute("uninitialized_variables", before)


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def timm_classifier(fam, v, image_size: int, num_classes: int) -> keras.Model:
    """timm's whole model (normalised NCHW->NHWC input, stages, pooled head with its classifier "head_fc")
    for family module `fam` and variant `v`, outputs [stage 0..3, logits]: what a conversion is checked
    against timm with (tests/test_backbones.py)."""
    x = keras.Input((image_size, image_size, 3), name="image")
    outs = fam.stages(x, v)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(outs[-1])
    logits = keras.layers.Dense(num_classes, name="head_fc")(fam.head_pre(pooled, v))
    return keras.Model(x, [*outs, logits])
