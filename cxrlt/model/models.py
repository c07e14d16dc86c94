"""Backbone by name -> global average pooling -> dropout -> one logit per class (seed 002's head; `model.head:
csra | ml_decoder` put cxrlt.model.heads' attention heads on the last feature map instead).

The training model ends in logits (losses take `from_logits=True`: stable, and needed by the
logit-based losses); the model that is saved and shipped ends in sigmoid probabilities, so a
`.keras` file from cxrlt predicts probabilities wherever it is loaded. Both share one set of layers.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

from ..config.schema import BACKBONES, HEADS, MINUS_ONE_TO_ONE, OWN_BACKBONES  # constructors; heads; own
from ..utils.errors import UserError
from . import backbones as backbones_mod, fusion as fusion_mod, heads as heads_mod, outputs as outputs_mod
from .weights_files import WeightsError, resolve as resolve_weights_file  # WeightsError is models.WeightsError too

# The last feature map before pooling (G26), as Keras 3.15 names it. ConvNeXt(include_top=False) ends in an
# auto-named LayerNormalization ("layer_normalization", "_N" suffixed when several models are built in one
# process); "..._stage_3_block_2_identity" is the last block's branch before its residual add. So
# cxrlt.explain.feature_layer takes the input of the "gap" layer instead of looking a name up here.
# cxrlt's own backbones (cxrlt.model.backbones) name their layers after timm's modules: the last stage's last block
# ends in "stages_3_blocks_<last>_add" (ConvNeXt V2) or "..._attn_grid_add2" (MaxViT), the input of "gap".
FEATURE_LAYER = {"efficientnetv2": "top_activation", "convnext": "layer_normalization",
                 "convnextv2": "stages_3_blocks_{last}_add", "maxvit": "stages_3_blocks_{last}_attn_grid_add2"}


class ModelFileError(UserError):
    """A model file that cannot be used; the message says why."""


@dataclass
class Built:
    train_model: keras.Model    # image (0..255) -> logits; what `fit` trains
    model: keras.Model          # image (0..255) -> probabilities; what is saved and predicts


def backbone_names() -> list[str]:
    return sorted({**BACKBONES, **OWN_BACKBONES})


# The layers between the backbone's last feature map and the logits: a model's "head" for --init, per-part
# learning rates (optim.backbone_lr_mult) and the frozen-backbone warm-up (train.freeze_backbone_epochs)
HEAD_LAYERS = ("head_batchnorm", "gap", "head_dropout", "logits", "logit_scale")
CLASSIFIERS = ("auto", "dense", "cosine")
HEAD_NORMS = ("none", "batchnorm")


@dataclass
class HeadOptions:
    """How the head is made (the model.* settings beyond model.head; `head_options(cfg)` reads them)."""

    csra_lambda: float = 0.1
    csra_heads: int = 1                        # the authors' default: one head, temperature 1
    csra_temperatures: list | None = None      # None: the authors' temperatures for csra_heads (heads.CSRA_TEMPERATURES)
    csra_variant: str = "official"             # official (Kevinz-code/CSRA) | cxrlt2026_winner (hieuphamha19/CXR_LT)
    ml_decoder_train_queries: bool = False     # the authors' ML-Decoder: random, frozen queries
    classifier: str = "dense"                  # gap head: dense | cosine (LDAM's normalised classifier)
    logit_scale: float = 1.0                   # cosine: the saved model predicts sigmoid(logit_scale x cosine)
    head_norm: str = "none"                    # batchnorm: BatchNormalization on the feature map before the head


def head_options(cfg: dict) -> HeadOptions:
    """The head of a config: model.classifier auto is the cosine classifier when the loss is LDAM on the gap head
    (as LDAM's official model, whose logits are cosines the loss scales by loss.params.scale)."""
    m = cfg["model"]
    classifier = m.get("classifier", "auto")
    ldam = cfg["loss"]["name"] == "ldam"
    if classifier == "auto":
        classifier = "cosine" if ldam and m["head"] == "gap" else "dense"
    scale = 1.0
    if classifier == "cosine":
        from .losses import ldam_scale

        scale = ldam_scale(cfg["loss"]["params"]) if ldam else 1.0
    return HeadOptions(csra_lambda=m["csra_lambda"], csra_heads=m.get("csra_heads", 1),
                       csra_temperatures=m.get("csra_temperatures"), csra_variant=m.get("csra_variant", "official"),
                       ml_decoder_train_queries=m.get("ml_decoder_train_queries", False), classifier=classifier,
                       logit_scale=scale, head_norm=m.get("head_norm", "none"))


def build(backbone: str, num_classes: int, image_size: int, *, weights: str | None = "none",
          dropout: float = 0.3, pixel_range: str = "0_255", head: str = "gap", csra_lambda: float | None = None,
          sync_batchnorm: bool = False, head_options: HeadOptions | None = None, drop_path: float = 0.0,
          output: str = "sigmoid") -> Built:
    """Build the classifier. `weights`: none | imagenet | path to a backbone weights file.
    `head`: gap (seed 002) | csra | ml_decoder (cxrlt.model.heads), on the backbone's last feature map;
    `head_options` (HeadOptions, default the authors' forms) say how; `csra_lambda` overrides its lambda.
    A weights path may be a folder written by `python -m cxrlt weights` (its <backbone>.weights.h5 is used,
    or, for cxrlt's own backbones, the <backbone>.safetensors converted from a timm checkpoint).
    `sync_batchnorm`: every BatchNormalization normalises over the global batch (`synchronize_batchnorm`).
    `drop_path`: stochastic depth of cxrlt's own backbones (timm's drop_path_rate; cxrlt.model.backbones).
    `output`: sigmoid (multi-label) | softmax (one class per image) | corn (ordinal: K-1 logits, K grade
    probabilities; cxrlt.model.outputs).

    cxrlt's own backbones keep timm's pre-classifier head: with `gap` the pooled features pass timm's head
    norm (and MaxViT's pre-logits Linear + tanh) before dropout and the logits, as timm's
    create_model(num_classes=N); csra / ml_decoder read the feature map with that norm applied per position,
    as timm with global_pool=''."""
    names = {**BACKBONES, **OWN_BACKBONES}
    if backbone not in names:
        import difflib

        close = difflib.get_close_matches(backbone, names, n=1)
        raise ValueError(f"unknown backbone {backbone!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" Offered: {', '.join(backbone_names())}")
    if drop_path and backbone not in OWN_BACKBONES:
        raise ValueError(f"drop_path is built into cxrlt's own backbones, not into keras.applications' {backbone}")
    options = head_options or HeadOptions()
    if csra_lambda is not None:
        options = HeadOptions(**{**options.__dict__, "csra_lambda": csra_lambda})
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    # Keras backbones normalise 0..255 themselves; seed 002 fed 0..1, which needs their
    # preprocessing off (EfficientNetV2 then sees 0..1 where it was pretrained on -1..1).
    include_preprocessing = pixel_range == "0_255"
    if not include_preprocessing:
        x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")(x)
    if backbone in MINUS_ONE_TO_ONE:  # no built-in preprocessing: ImageNet weights expect -1..1 ("tf" mode)
        x = keras.layers.Rescaling(2.0 / (255.0 if include_preprocessing else 1.0), offset=-1.0, name="to_minus_one_one")(x)
        include_preprocessing = None
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; use one of {', '.join(HEADS)}")
    if options.classifier == "cosine" and head != "gap":
        raise ValueError(f"the cosine classifier is a gap head's; model.head {head} has its own classifier")
    own = backbone in OWN_BACKBONES
    if own:
        base = _make_own_backbone(backbone, x, weights, include_preprocessing, pooled=head == "gap",
                                  drop_path=drop_path)
    else:
        base = _make_backbone(getattr(keras.applications, BACKBONES[backbone]), backbone, x, weights,
                              include_preprocessing)
    feature_map = base.output  # an own backbone with gap: already pooled through timm's head norm
    if options.head_norm == "batchnorm":  # the CXR-LT 2026 winner's BatchNorm2d between backbone and head
        feature_map = keras.layers.BatchNormalization(name="head_batchnorm")(feature_map)
    elif options.head_norm != "none":
        raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {options.head_norm!r}")
    n_logits = num_classes - 1 if output == "corn" else num_classes  # CORN: one logit per grade threshold
    if head == "gap":
        features = feature_map if own else keras.layers.GlobalAveragePooling2D(name="gap")(feature_map)
        features = keras.layers.Dropout(dropout, name="head_dropout")(features)
        if options.classifier == "cosine":
            logits = heads_mod.CosineDense(n_logits, name="logits", dtype="float32")(features)
        else:
            logits = keras.layers.Dense(n_logits, name="logits", dtype="float32")(features)
    else:
        logits = attach_head(feature_map, n_logits, head, dropout=dropout, options=options)
    scaled = logits
    if options.logit_scale != 1.0:  # what the loss scored: sigmoid(s x cosine) (LDAM), so the probabilities are its
        scaled = keras.layers.Rescaling(options.logit_scale, name="logit_scale", dtype="float32")(logits)
    probs = outputs_mod.probabilities(scaled, output, num_classes)  # sigmoid, softmax or CORN's grade probabilities
    name = backbone.replace("-", "_")
    built = Built(train_model=keras.Model(inputs, logits, name=f"{name}_logits"), model=keras.Model(inputs, probs, name=name))
    if sync_batchnorm:  # backbone and head: the two models share their layers
        synchronize_batchnorm(built.train_model)
    return built


def head_variables(model: keras.Model) -> list:
    """The trainable variables of the head (HEAD_LAYERS); every other trainable variable is the backbone's."""
    return [v for layer in model.layers if layer.name in HEAD_LAYERS for v in layer.trainable_variables]


def synchronize_batchnorm(model: keras.Model) -> int:
    """Make every BatchNormalization layer of `model` (nested models included) synchronized: under a
    tf.distribute strategy its batch mean and variance are all-reduced over the replicas, so it normalises
    over the global batch, as one device would (a per-replica batch of 2-4 radiographs at 768 px gives
    noisy statistics). Returns how many layers it changed.

    Keras 3 reads `BatchNormalization.synchronized` on every call (its moments use the replica context's
    all-reduce when it is set, plain moments outside a strategy), so setting the attribute on the built
    layers is enough: no rebuild, the weights stay, and the saved config records synchronized=true, which
    outside a strategy or with training=False (prediction) changes nothing."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


def attach_head(feature_map, num_classes: int, head: str, *, dropout: float = 0.3, csra_lambda: float | None = None,
                options: HeadOptions | None = None):
    """feature map [B, H, W, D] -> dropout ("head_dropout") -> the csra / ml_decoder head, named "logits" (float32).
    Grad-CAM (cxrlt.report.explain) finds the feature map as the input of "head_dropout" (or of "head_batchnorm")."""
    options = options or HeadOptions()
    lam = options.csra_lambda if csra_lambda is None else csra_lambda
    x = keras.layers.Dropout(dropout, name="head_dropout")(feature_map)
    if head == "csra":
        if options.csra_variant == "cxrlt2026_winner":
            return heads_mod.CSRA(num_classes, lam=lam, temperatures=[1.0], normalize=False, use_bias=True,
                                  variant="cxrlt2026_winner", name="logits", dtype="float32")(x)
        temperatures = heads_mod.csra_temperatures(options.csra_heads, options.csra_temperatures)
        return heads_mod.CSRA(num_classes, lam=lam, temperatures=temperatures, normalize=True, use_bias=False,
                              name="logits", dtype="float32")(x)
    if head == "ml_decoder":
        return heads_mod.MLDecoder(num_classes, train_queries=options.ml_decoder_train_queries, name="logits",
                                   dtype="float32")(x)
    raise ValueError(f"attach_head builds csra or ml_decoder, not {head!r} (gap is built by build)")


def _make_backbone(constructor, backbone: str, x, weights, include_preprocessing: bool) -> keras.Model:
    weights = "none" if weights in (None, "", "none", "None") else weights
    kwargs = dict(include_top=False, input_tensor=x, include_preprocessing=include_preprocessing)
    if include_preprocessing is None:  # a constructor without the argument (MobileNetV2, ResNet50V2)
        del kwargs["include_preprocessing"]
    if weights == "none":
        return constructor(weights=None, **kwargs)
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as err:  # URL/socket/HTTP errors differ by platform; all mean "no download"
            raise WeightsError(
                f"could not download ImageNet weights for {backbone} ({type(err).__name__}: {err}). "
                f"Without network access: on a machine that has it, run python -m cxrlt weights --backbone {backbone} "
                "--out weights/, copy weights/ here and pass --weights weights/; or pass --weights none (train "
                "from scratch)."
            ) from None
    path = Path(os.path.expanduser(str(weights)))
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist (use --weights none|imagenet|PATH)")
    path = resolve_weights_file(path, backbone)  # a folder from `cxrlt weights`; refuses another backbone's file
    model = constructor(weights=None, **kwargs)
    # Keras reports layers it could not fill only as warnings ("Skipping ... Affected layers will
    # retain their freshly-initialized weights"): a partial load must not pass as a pretrained model.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(path))
        except Exception as err:
            raise WeightsError(
                f"{path} does not fit the {backbone} backbone ({type(err).__name__}: {str(err)[:300]}); "
                "is it a weights file for another backbone, or a truncated download?"
            ) from None
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message).lower()
               or "could not be loaded" in str(w.message).lower()]
    if skipped:
        raise WeightsError(f"{path} fills the {backbone} backbone only in part ({len(skipped)} parts skipped, e.g. "
                           f"{skipped[0][:200]}); is it a weights file for another backbone?")
    return model


def _make_own_backbone(backbone: str, x, weights, include_preprocessing: bool, *, pooled: bool,
                       drop_path: float) -> keras.Model:
    """cxrlt's own backbone (ConvNeXt V2, MaxViT): weights none, or a timm checkpoint converted by
    `python -m cxrlt weights --from-timm` (Keras has no ImageNet download for them)."""
    from .backbones import timm_weights

    weights = "none" if weights in (None, "", "none", "None") else weights
    if weights == "imagenet":
        raise WeightsError(f"{backbone} has no Keras ImageNet download: convert timm's checkpoint once with "
                           f"python -m cxrlt weights --from-timm model.safetensors --backbone {backbone} --out DIR, then "
                           "pass --weights DIR (docs/backbones.md says where to get the file), or --weights none")
    path = None
    if weights != "none":
        path = Path(os.path.expanduser(str(weights)))
        if not path.exists():
            raise WeightsError(f"weights file {path} does not exist (use --weights none|PATH)")
        path = resolve_weights_file(path, backbone)
        if path.suffix != timm_weights.SUFFIX:
            raise WeightsError(f"{path} is not a converted timm checkpoint for {backbone}: convert one with python -m "
                               f"cxrlt weights --from-timm model.safetensors --backbone {backbone} --out DIR")
    base = backbones_mod.build(backbone, x, pooled=pooled, include_preprocessing=include_preprocessing,
                               drop_path=drop_path)
    if path is not None:
        timm_weights.load(base, path, backbone)
    return base


# cxrlt's own layers a model file may name (module, class) -> registered name: the two heads, the study fusion,
# the layers of cxrlt's own backbones (GRN, MaxViT's partition attention, tanh-GELU)
OWN_LAYERS = {**heads_mod.OWN_LAYERS, **fusion_mod.OWN_LAYERS, **backbones_mod.OWN_LAYERS}

# What a cxrlt model file may name (config.json "module"/"class_name" pairs): Keras' own classes of
# these kinds, nothing else (not builtins, os, a custom package, or a Keras function such as
# keras.utils.get_file). Checked before Keras sees the file.
CODE_CLASSES = {"Lambda", "__lambda__", "TFOpLambda", "function",
                # Keras' own wrappers of foreign code: a pickled torch module, JAX/Flax call functions
                "TorchModuleWrapper", "JaxLayer", "FlaxLayer"}
# Keras' own layers that load another model from a path named in the config (a SavedModel's graph runs as is).
MODEL_LOADING_CLASSES = {"TFSMLayer"}
# Config keys that, holding a string, make a Keras layer read a file when it is built: StringLookup,
# IntegerLookup and TextVectorization take `vocabulary` (and `idf_weights`) as a list or as a file path.
FILE_KEYS = {"vocabulary", "idf_weights", "filepath", "file_path", "path", "vocabulary_path", "vocabulary_file"}


def _safe_bases() -> tuple[type, ...]:
    return (keras.Operation, keras.initializers.Initializer, keras.regularizers.Regularizer,
            keras.constraints.Constraint, keras.DTypePolicy, keras.losses.Loss, keras.metrics.Metric,
            keras.optimizers.Optimizer, keras.optimizers.schedules.LearningRateSchedule)


def _is_keras_class(module: str, name: str) -> bool:
    if module != "keras" and not module.startswith("keras."):
        return False  # never import a module outside Keras because a file names it
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    return isinstance(obj, type) and issubclass(obj, _safe_bases())


def check_model_file(path: Path) -> None:
    """Refuse a file that is not a whole .keras archive, or whose config names code.

    Keras' safe_mode already refuses Lambda layers; this adds an allow-list (Keras' own layer,
    operation, initializer... classes: defence in depth against deserialisation tricks such as
    CVE-2025-1550 and CVE-2025-8747) plus cxrlt's own layers (OWN_LAYERS: the two heads, the study fusion, the
    backbone layers of cxrlt.model.backbones),
    checks every member's CRC (a truncated or bit-flipped file), and never accepts the legacy .h5 format, which has no safe mode for everything it can hold.
    """
    if not zipfile.is_zipfile(path):
        head = path.read_bytes()[:8]
        kind = "a legacy HDF5 (.h5) model, which cxrlt does not load" if head.startswith(b"\x89HDF") else \
            "not a .keras (zip) archive"
        raise ModelFileError(f"{path} is {kind}; it may be truncated or another kind of file: retrain the fold "
                             "or restore the file (cxrlt writes .keras files)")
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            if broken is not None:
                raise ModelFileError(f"{path}: member {broken!r} fails its CRC check; the file is corrupt or "
                                     "truncated: retrain the fold or restore the file")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path} is not a whole .keras archive ({type(err).__name__}: {str(err)[:200]}); "
                             "it may be truncated: retrain the fold or restore the file") from None
    for node in _walk(config):
        module, name = node.get("module"), node.get("class_name")
        if name in CODE_CLASSES:
            raise ModelFileError(f"{path} holds a {name} layer, i.e. Python code; cxrlt never runs code from a "
                                 "model file (refused)")
        _refuse_file_reads(path, name, node.get("config"))
        if module is None:
            continue
        if (module, name) in OWN_LAYERS:  # cxrlt's own heads and study fusion: exactly these names, numbers-only configs
            if node.get("registered_name") != OWN_LAYERS[(module, name)]:
                raise ModelFileError(f"{path} names {module}.{name} under the registered name "
                                     f"{node.get('registered_name')!r}; refused")
            continue
        if not isinstance(module, str) or not isinstance(name, str) or not _is_keras_class(module, name):
            raise ModelFileError(f"{path} names {module}.{name}, which is not one of Keras' own layer or "
                                 "operation classes; refused (cxrlt never imports or runs code named in a model file)")
        registered = node.get("registered_name")
        if registered not in (None, name):
            raise ModelFileError(f"{path} names the custom object {registered!r}; refused (cxrlt models hold "
                                 "only built-in Keras layers)")


def _refuse_file_reads(path: Path, name, layer_config) -> None:
    """Keras' own layers pass the allow-list, but some read other files when built: TFSMLayer loads
    a SavedModel (whose graph runs unchecked), StringLookup(vocabulary="/etc/passwd") reads any file
    it is pointed at (its lines become the vocabulary, which the model then carries). A cxrlt model
    needs neither, and safe_mode stops neither, so a model file may read nothing but itself."""
    if name in MODEL_LOADING_CLASSES:
        target = layer_config.get("filepath") if isinstance(layer_config, dict) else None
        raise ModelFileError(f"{path} holds a {name} layer, which loads another model ({target!r}); cxrlt never "
                             "loads a model named inside a model file (refused)")
    if not isinstance(layer_config, dict):
        return
    for key in sorted(FILE_KEYS & set(layer_config)):
        value = layer_config[key]
        if isinstance(value, str) and value:
            raise ModelFileError(f"{path} holds a {name} layer whose {key} is the file {value[:200]!r}; cxrlt never "
                                 "reads files named inside a model file (refused: a cxrlt model holds only "
                                 "built-in layers and its own weights)")


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def load(path: str | os.PathLike, *, num_classes: int | None = None) -> keras.Model:
    """Load a saved cxrlt model safely: checked first (check_model_file), then Keras safe_mode."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    check_model_file(path)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as err:
        raise ModelFileError(f"{path} is not a loadable Keras model ({type(err).__name__}: {str(err)[:300]}); "
                             "it may be truncated: retrain the fold or restore the file") from None
    outputs = model.outputs[0].shape[-1]
    if num_classes is not None and outputs != num_classes:
        raise ModelFileError(f"{path} predicts {outputs} classes but the data has {num_classes}")
    return model


def save(model: keras.Model, path: str | os.PathLike) -> None:
    """Save atomically: the previous good file survives a crash or a full disk."""
    from ..utils.atomic import atomic_path

    with atomic_path(path, suffix=".tmp.keras") as tmp:
        model.save(tmp)
