import json
import shutil
import time
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest

from cxrlt.config.schema import OWN_BACKBONES
from cxrlt.model import models


# Every keras.applications backbone, and the smallest of each of cxrlt's own families (tests/test_backbones.py
# checks every registered size's parameter count against timm without allocating them)
@pytest.mark.parametrize("name", [n for n in models.backbone_names() if n not in OWN_BACKBONES]
                         + ["convnextv2-atto", "maxvit-tiny-tf-224"])
def test_every_offered_backbone_builds_with_the_seed_002_head(name):
    built = models.build(name, num_classes=5, image_size=32, weights="none", dropout=0.3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probs = built.model(x, training=False).numpy()  # eager: no tracing, keeps the test cheap
    logits = built.train_model(x, training=False).numpy()
    assert probs.shape == (2, 5) and logits.shape == (2, 5)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)  # one set of weights
    names = [layer.name for layer in built.model.layers[-4:]]
    if name in OWN_BACKBONES:  # timm's pre-classifier head (norm, MaxViT's pre-logits) between gap and dropout
        assert names[1:] == ["head_dropout", "logits", "probabilities"] and names[0].startswith("head_")
        assert built.model.get_layer("gap")
    else:
        assert names == ["gap", "head_dropout", "logits", "probabilities"]
    if name in ("efficientnetv2-b0", "convnext-tiny", "convnextv2-atto", "maxvit-tiny-tf-224"):  # each family's layer types
        # what models.load's allow-list will see in a saved file (ConvNeXt names
        # keras.src.applications.convnext.LayerScale and keras.src.ops.numpy.Add): all accepted
        for node in models._walk(keras.saving.serialize_keras_object(built.model)):
            if "module" in node:  # Keras' own, or (cxrlt's own backbones) cxrlt's registered layers
                assert (models._is_keras_class(node["module"], node["class_name"])
                        or (node["module"], node["class_name"]) in models.OWN_LAYERS), node
    keras.backend.clear_session()


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'efficientnetv2-s'"):
        models.build("efficientnetv2s", 3, 32)


def test_imagenet_without_network_fails_fast_naming_the_fix():
    started = time.time()
    with pytest.raises(models.WeightsError, match=r"python -m cxrlt weights --backbone efficientnetv2-b0.*--weights weights/.*--weights none"):
        models.build("efficientnetv2-b0", 3, 32, weights="imagenet")
    assert time.time() - started < 60


def test_local_weights_file_is_loaded_and_checked(tmp_path):
    donor = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(32, 32, 3))
    kernel = donor.get_layer("stem_conv").kernel
    kernel.assign(np.random.default_rng(1).normal(size=kernel.shape).astype("float32"))
    # Every other weight gets a random value too, so that "loaded" cannot be confused with "freshly
    # initialised" (BatchNorm's ones and zeros are the same in any two fresh models).
    rng = np.random.default_rng(2)
    for w in donor.weights:
        if w is not kernel:
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype(w.dtype))
    donor.save_weights(tmp_path / "b0.weights.h5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = models.build("efficientnetv2-b0", 3, 32, weights=str(tmp_path / "b0.weights.h5"))
    assert not [w for w in caught if "Skipping" in str(w.message)]
    np.testing.assert_array_equal(built.model.get_layer("stem_conv").kernel.numpy(), kernel.numpy())
    loaded = {w.path: w.numpy() for w in built.model.weights}
    assert len(donor.weights) == 359
    for w in donor.weights:  # every backbone weight, not just the one we changed
        np.testing.assert_array_equal(loaded[w.path], w.numpy(), err_msg=w.path)
    with warnings.catch_warnings(record=True) as caught:  # the ~100 "Skipping nested container" warnings
        warnings.simplefilter("always")                  # of a mismatched file are folded into the error
        with pytest.raises(models.WeightsError, match="does not fit the convnext-tiny backbone"):
            models.build("convnext-tiny", 3, 32, weights=str(tmp_path / "b0.weights.h5"))
    assert not [w for w in caught if "Skipping" in str(w.message)]
    with pytest.raises(models.WeightsError, match="does not exist"):
        models.build("efficientnetv2-b0", 3, 32, weights=str(tmp_path / "nope.h5"))
    shutil.copy(tmp_path / "b0.weights.h5", tmp_path / "cut.weights.h5")
    with h5py.File(tmp_path / "cut.weights.h5", "a") as f:  # one layer's weights missing
        del f["layers"]["conv2d"]
    with pytest.raises(models.WeightsError, match="does not fit the efficientnetv2-b0 backbone.*stem_conv"):
        models.build("efficientnetv2-b0", 3, 32, weights=str(tmp_path / "cut.weights.h5"))


def test_saved_model_loads_safely_and_checks_class_count(tmp_path):
    built = models.build("efficientnetv2-b0", 4, 32)
    models.save(built.model, tmp_path / "m.keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]  # no temp file left behind
    x = np.full((1, 32, 32, 3), 128.0, "float32")
    np.testing.assert_allclose(models.load(tmp_path / "m.keras", num_classes=4).predict(x, verbose=0),
                               built.model.predict(x, verbose=0), rtol=1e-5)
    with pytest.raises(models.ModelFileError, match="predicts 4 classes but the data has 26"):
        models.load(tmp_path / "m.keras", num_classes=26)
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(models.ModelFileError, match="truncated"):
        models.load(tmp_path / "cut.keras")


def test_pixel_range_0_1_rescales_inside_the_model():
    built = models.build("efficientnetv2-b0", 2, 32, pixel_range="0_1")
    assert built.model.get_layer("to_unit_range") is not None


def _small_model(with_lambda=False):
    """A small real Keras model: enough to exercise load/save checks without building a backbone."""
    inputs = keras.Input((8,), name="x")
    x = keras.layers.Lambda(lambda t: t * 2.0, name="code")(inputs) if with_lambda else inputs
    outputs = keras.layers.Dense(3, activation="sigmoid", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def _rewrite_config(src, dst, edit):
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for item in a.infolist():
            data = a.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            b.writestr(item, data)


def test_model_files_that_hold_code_are_refused_before_keras_reads_them(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that a Lambda is being saved
        _small_model(with_lambda=True).save(tmp_path / "lambda.keras")
    with pytest.raises(models.ModelFileError, match="holds a Lambda layer, i.e. Python code"):
        models.load(tmp_path / "lambda.keras")
    models.save(_small_model(), tmp_path / "plain.keras")
    assert models.load(tmp_path / "plain.keras", num_classes=3).outputs[0].shape[-1] == 3

    def smuggle(config):  # a layer that deserialises to os.system (the shape of CVE-2025-1550 exploits)
        config["config"]["layers"][1].update(module="os", class_name="system")

    _rewrite_config(tmp_path / "plain.keras", tmp_path / "smuggled.keras", smuggle)
    with pytest.raises(models.ModelFileError, match="names os.system.*refused"):
        models.load(tmp_path / "smuggled.keras")

    def keras_function(config):  # a Keras function rather than a class (the shape of CVE-2025-8747)
        config["config"]["layers"][1].update(module="keras.utils", class_name="get_file")

    _rewrite_config(tmp_path / "plain.keras", tmp_path / "function.keras", keras_function)
    with pytest.raises(models.ModelFileError, match="names keras.utils.get_file, which is not one of Keras' own"):
        models.load(tmp_path / "function.keras")

    def custom(config):
        config["config"]["layers"][1]["registered_name"] = "evil>Dense"

    _rewrite_config(tmp_path / "plain.keras", tmp_path / "custom.keras", custom)
    with pytest.raises(models.ModelFileError, match="custom object 'evil>Dense'"):
        models.load(tmp_path / "custom.keras")


def test_corrupt_and_foreign_model_files_are_named(tmp_path):
    models.save(_small_model(), tmp_path / "m.keras")
    data = bytearray((tmp_path / "m.keras").read_bytes())
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        info = z.getinfo("model.weights.h5")
    flip = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[flip] ^= 0xFF  # one flipped bit inside the weights: same size, intact zip directory
    (tmp_path / "flipped.keras").write_bytes(bytes(data))
    with pytest.raises(models.ModelFileError, match="'model.weights.h5' fails its CRC check"):
        models.load(tmp_path / "flipped.keras")
    with h5py.File(tmp_path / "legacy.h5", "w") as f:
        f.attrs["model_config"] = "{}"
    with pytest.raises(models.ModelFileError, match="legacy HDF5 \\(.h5\\) model, which cxrlt does not load"):
        models.load(tmp_path / "legacy.h5")
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(models.ModelFileError, match="not a .keras \\(zip\\) archive"):
        models.load(tmp_path / "empty.keras")
    with pytest.raises(models.ModelFileError, match="does not exist"):
        models.load(tmp_path / "nope.keras")


# ----------------------------------------------------------------------------- model.head: csra, ml_decoder

def _tiny_head_model(head, classes=3, size=16, options=None):
    """A two-conv 'backbone' (4 x 4 feature map) under one of cxrlt's heads: what build() puts on a real one."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="tiny_conv")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="tiny_features")(x)
    logits = models.attach_head(x, classes, head, dropout=0.1, options=options)
    probs = keras.layers.Activation("sigmoid", name="probabilities", dtype="float32")(logits)
    return keras.Model(inputs, logits), keras.Model(inputs, probs)


def ref_csra_official(features, kernels, temperatures, lam):
    """Kevinz-code/CSRA pipeline/csra.py (CSRA.forward, summed over MHA's heads) in NumPy: per head the 1x1 scores
    divided by each class's weight norm, the spatial mean plus lam x (max if T == 99 else the softmax(T score)
    weighted sum); no bias."""
    x = features.reshape(features.shape[0], -1, features.shape[-1]).astype(np.float64)
    logit = 0.0
    for kernel, t in zip(kernels, temperatures):
        kernel = kernel.astype(np.float64)
        score = np.einsum("bnd,dc->bnc", x, kernel) / np.linalg.norm(kernel, axis=0)
        base = score.mean(axis=1)
        if t == 99:
            att = score.max(axis=1)
        else:
            soft = np.exp(score * t - (score * t).max(axis=1, keepdims=True))
            soft /= soft.sum(axis=1, keepdims=True)
            att = (score * soft).sum(axis=1)
        logit = logit + base + lam * att
    return logit


def ref_csra_winner(features, classifier_kernel, bias, attention_kernel, lam):
    """The CXR-LT 2026 winner's CSRA.forward (hieuphamha19/CXR_LT train_csra_head.py) in NumPy."""
    x = features.reshape(features.shape[0], -1, features.shape[-1]).astype(np.float64)
    logit_gap = x.mean(axis=1) @ classifier_kernel + bias
    att = np.einsum("bnd,dc->bcn", x, attention_kernel)
    att = np.exp(att - att.max(axis=2, keepdims=True))
    att /= att.sum(axis=2, keepdims=True)
    csra_feat = np.einsum("bcn,bnd->bcd", att, x)
    logit_csra = (csra_feat * classifier_kernel.T[None]).sum(axis=2) + bias
    return logit_gap + lam * logit_csra


def _features_and_input(model):
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    return x, keras.Model(model.inputs, model.get_layer("tiny_features").output)(x).numpy()


@pytest.mark.parametrize("heads,temperatures,lam", [(1, None, 0.1), (4, None, 0.5), (2, [3.0, 99.0], 0.3)])
def test_csra_equals_the_authors_multi_head_code(heads, temperatures, lam):
    options = models.HeadOptions(csra_lambda=lam, csra_heads=heads, csra_temperatures=temperatures)
    train_model, model = _tiny_head_model("csra", options=options)
    head = model.get_layer("logits")
    assert head.bias is None and head.normalize and len(head.kernels) == heads
    rng = np.random.default_rng(3)
    kernels = [rng.normal(size=k.shape).astype("float32") for k in head.kernels]
    for variable, value in zip(head.kernels, kernels):
        variable.assign(value)
    x, features = _features_and_input(model)
    expected = ref_csra_official(features, kernels, temperatures or {1: [1], 4: [1, 2, 4, 99]}[heads], lam)
    np.testing.assert_allclose(train_model(x, training=False).numpy(), expected, rtol=1e-4, atol=1e-4)
    # the authors' normalisation: scaling a class's weights does not change its logit
    head.kernels[0].assign(kernels[0] * np.array([3.0, 0.5, 7.0], "float32"))
    np.testing.assert_allclose(train_model(x, training=False).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_csra_winner_variant_equals_their_code():
    options = models.HeadOptions(csra_lambda=0.1, csra_variant="cxrlt2026_winner")
    train_model, model = _tiny_head_model("csra", options=options)
    head = model.get_layer("logits")
    rng = np.random.default_rng(4)
    kernel, attention = (rng.normal(size=head.kernel.shape).astype("float32") for _ in range(2))
    bias = np.array([0.5, -1.0, 0.2], "float32")
    head.kernel.assign(kernel)
    head.attention_kernel.assign(attention)
    head.bias.assign(bias)
    x, features = _features_and_input(model)
    np.testing.assert_allclose(train_model(x, training=False).numpy(),
                               ref_csra_winner(features, kernel, bias, attention, 0.1), rtol=1e-4, atol=1e-4)


def test_a_csra_layer_saved_before_the_options_keeps_its_formula():
    """A model file's CSRA config without the new keys (written before them) is the old head: mean + lam * max
    of unnormalised scores, plus a bias."""
    from cxrlt.model import heads

    layer = heads.CSRA.from_config({"num_classes": 3, "lam": 0.1, "name": "logits", "dtype": "float32"})
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2, 4, 4, 16)).astype("float32")
    layer.build(features.shape)
    kernel = rng.normal(size=(16, 3)).astype("float32")
    layer.kernel.assign(kernel)
    layer.bias.assign(np.array([0.5, -1.0, 0.0], "float32"))
    scores = np.einsum("bhwd,dc->bhwc", features.astype(np.float64), kernel)
    expected = scores.mean(axis=(1, 2)) + 0.1 * scores.max(axis=(1, 2)) + np.array([0.5, -1.0, 0.0])
    np.testing.assert_allclose(layer(features).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_ml_decoder_queries_are_frozen_by_default_as_the_authors():
    import tensorflow as tf
    from cxrlt.model import losses

    for train_queries in (False, True):
        train_model, model = _tiny_head_model("ml_decoder", options=models.HeadOptions(ml_decoder_train_queries=train_queries))
        decoder = model.get_layer("logits")
        queries = decoder.queries.numpy().copy()
        assert any(v is decoder.queries for v in train_model.trainable_variables) == train_queries
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
        y = (rng.uniform(size=(4, 3)) > 0.5).astype("float32")
        with tf.GradientTape() as tape:
            value = losses.get_loss("focal")(y, train_model(x, training=True))
        grads = tape.gradient(value, train_model.trainable_variables)
        keras.optimizers.Adam(1e-2).apply_gradients(zip(grads, train_model.trainable_variables))
        assert np.array_equal(decoder.queries.numpy(), queries) != train_queries


@pytest.mark.parametrize("head", ["csra", "ml_decoder"])
def test_attention_heads_train_save_load_safely_and_predict_the_same(head, tmp_path):
    from cxrlt.model import losses
    from cxrlt.report import explain

    train_model, model = _tiny_head_model(head)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    y = (rng.uniform(size=(4, 3)) > 0.5).astype("float32")
    optimizer, loss = keras.optimizers.Adam(1e-3), losses.get_loss("focal")
    before = [w.copy() for w in model.get_weights()]
    import tensorflow as tf

    with tf.GradientTape() as tape:  # one train step, eager
        value = loss(y, train_model(x, training=True))
    grads = tape.gradient(value, train_model.trainable_variables)
    assert all(g is not None for g in grads)
    optimizer.apply_gradients(zip(grads, train_model.trainable_variables))
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    if head == "ml_decoder":
        d = model.get_layer("logits")
        assert d.queries.shape == (3, 768) and d.group_kernel.shape == (3, 768)
        assert d.ffn1.kernel.shape == (768, 2048) and d.attention.num_heads == 8 and d.dropout == 0.1
    models.save(model, tmp_path / "m.keras")
    loaded = models.load(tmp_path / "m.keras", num_classes=3)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert type(loaded.get_layer("logits")) is type(model.get_layer("logits"))

    # the allow-list takes exactly cxrlt's own head under its own registered name
    def rename(config):
        for layer in config["config"]["layers"]:
            if layer["config"]["name"] == "logits":
                layer["registered_name"] = "evil>Head"
    _rewrite_config(tmp_path / "m.keras", tmp_path / "renamed.keras", rename)
    with pytest.raises(models.ModelFileError, match="registered name 'evil>Head'"):
        models.load(tmp_path / "renamed.keras")

    # Grad-CAM finds the feature map under the head and gives a [0, 1] map per class
    assert explain.feature_layer(loaded).name == "tiny_features"
    maps = explain.gradcam(loaded, x[:1], [0, 1])
    assert maps.shape == (2, 1, 16, 16) and maps.min() >= 0.0 and maps.max() <= 1.0


def test_build_puts_each_head_on_a_real_backbone():
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    for head in ("csra", "ml_decoder"):
        built = models.build("efficientnetv2-b0", 4, 32, head=head, dropout=0.2)
        assert [layer.name for layer in built.model.layers[-3:]] == ["head_dropout", "logits", "probabilities"]
        probs = built.model(x, training=False).numpy()
        np.testing.assert_allclose(probs, 1 / (1 + np.exp(-built.train_model(x, training=False).numpy())), rtol=1e-5)
        for node in models._walk(keras.saving.serialize_keras_object(built.model)):
            if "module" in node and (node["module"], node["class_name"]) not in models.heads_mod.OWN_LAYERS:
                assert models._is_keras_class(node["module"], node["class_name"]), node
        from cxrlt.report import explain

        assert explain.feature_layer(built.model).name == "top_activation"
        keras.backend.clear_session()
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        models.build("efficientnetv2-b0", 4, 32, head="mlp")


def test_ldam_cosine_classifier_and_the_head_norm_on_a_real_backbone(tmp_path):
    """model.classifier auto with loss ldam: the logits are cosines (LDAM's NormedLinear), the saved model predicts
    sigmoid(scale x cosine), what the loss scored; model.head_norm batchnorm sits before the head, Grad-CAM still
    targets the backbone's map, and per-part rates see it as head."""
    from cxrlt import config
    from cxrlt.report import explain

    cfg = config.load(overrides={"loss": {"name": "ldam"}, "model": {"head_norm": "batchnorm"}})
    options = models.head_options(cfg)
    assert options.classifier == "cosine" and options.logit_scale == 30.0
    built = models.build("efficientnetv2-b0", 4, 32, head_options=options)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    cosines = built.train_model(x, training=False).numpy()
    assert np.abs(cosines).max() <= 1.0 + 1e-5
    np.testing.assert_allclose(built.model(x, training=False).numpy(), 1 / (1 + np.exp(-30.0 * cosines)), rtol=1e-5)
    head_names = {v.path.split("/")[0] for v in models.head_variables(built.train_model)}
    assert head_names == {"head_batchnorm", "logits"}
    assert explain.feature_layer(built.model).name == "top_activation"
    models.save(built.model, tmp_path / "m.keras")
    loaded = models.load(tmp_path / "m.keras", num_classes=4)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), built.model(x, training=False).numpy(), rtol=1e-5)
    assert models.head_options(config.load(overrides={"loss": {"name": "ldam", "params": {"scale": 1.0}},
                                                      "model": {"head": "csra"}})).classifier == "dense"
    with pytest.raises(config.ConfigError, match="set loss.params.scale 1"):
        config.load(overrides={"loss": {"name": "ldam"}, "model": {"head": "ml_decoder"}})
