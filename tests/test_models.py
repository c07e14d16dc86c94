import time

import keras
import numpy as np
import pytest

from cxrlt import models


@pytest.mark.parametrize("name", models.backbone_names())
def test_every_offered_backbone_builds_with_the_seed_002_head(name):
    built = models.build(name, num_classes=5, image_size=32, weights="none", dropout=0.3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probs = built.model(x, training=False).numpy()  # eager: no tracing, keeps the test cheap
    logits = built.train_model(x, training=False).numpy()
    assert probs.shape == (2, 5) and logits.shape == (2, 5)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)  # one set of weights
    names = [layer.name for layer in built.model.layers[-4:]]
    assert names == ["gap", "head_dropout", "logits", "probabilities"]
    keras.backend.clear_session()


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(ValueError, match="did you mean 'efficientnetv2-s'"):
        models.build("efficientnetv2s", 3, 32)


def test_imagenet_without_network_fails_fast_naming_the_fix():
    started = time.time()
    with pytest.raises(models.WeightsError, match="--weights none.*--weights PATH"):
        models.build("efficientnetv2-b0", 3, 32, weights="imagenet")
    assert time.time() - started < 60


def test_local_weights_file_is_loaded_and_checked(tmp_path):
    donor = keras.applications.EfficientNetV2B0(include_top=False, weights=None, input_shape=(32, 32, 3))
    kernel = donor.get_layer("stem_conv").kernel
    kernel.assign(np.random.default_rng(1).normal(size=kernel.shape).astype("float32"))
    donor.save_weights(tmp_path / "b0.weights.h5")
    built = models.build("efficientnetv2-b0", 3, 32, weights=str(tmp_path / "b0.weights.h5"))
    np.testing.assert_array_equal(built.model.get_layer("stem_conv").kernel.numpy(), kernel.numpy())
    loaded = {w.path: w.numpy() for w in built.model.weights}
    for w in donor.weights:  # every backbone weight, not just the one we changed
        np.testing.assert_array_equal(loaded[w.path], w.numpy(), err_msg=w.path)
    with pytest.raises(models.WeightsError, match="does not fit the convnext-tiny backbone"):
        models.build("convnext-tiny", 3, 32, weights=str(tmp_path / "b0.weights.h5"))
    with pytest.raises(models.WeightsError, match="does not exist"):
        models.build("efficientnetv2-b0", 3, 32, weights=str(tmp_path / "nope.h5"))


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
