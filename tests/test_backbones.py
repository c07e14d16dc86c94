"""cxrlt's own backbones (ConvNeXt V2, MaxViT) against timm as the oracle.

The fixtures in tests/fixtures/timm were made by tools/make_timm_fixtures.py with timm's own model classes
(small configs through the same code paths as the registered sizes, every parameter and buffer randomised):
a checkpoint as timm saves it, a seeded input, timm's per-stage outputs and logits in eval mode, and for
MaxViT the same at a second input size after timm resized the relative-position tables. Here only NumPy,
safetensors and TensorFlow run.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

from cxrlt.config.schema import OWN_BACKBONES
from cxrlt.model import backbones, models, pretrained
from cxrlt.model.backbones import common, convnextv2, maxvit, timm_weights

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
CASES = {  # fixture -> (family module, a registered backbone whose timm layout it has)
    "convnextv2_mini_linear": (convnextv2, "convnextv2-tiny"),     # Linear MLPs (tiny .. huge)
    "convnextv2_mini_convmlp": (convnextv2, "convnextv2-atto"),    # 1x1-conv MLPs (atto .. nano)
    "maxvit_tf_mini": (maxvit, "maxvit-tiny-tf-512"),
}


def _fixture(name):
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return load_file(str(FIXTURES / f"{name}.safetensors")), load_file(str(FIXTURES / f"{name}.outputs.safetensors")), meta


def _variant(name, meta, image_size=None):
    b = meta["build"]
    if name.startswith("convnextv2"):
        return convnextv2.Variant(tuple(b["depths"]), tuple(b["dims"]), conv_mlp=b["conv_mlp"],
                                  image_size=image_size or meta["sizes"][0])
    return maxvit.Variant(tuple(b["embed_dim"]), tuple(b["depths"]), b["stem_width"], b["head_hidden_size"],
                          dim_head=b["dim_head"], image_size=image_size or meta["sizes"][0])


def _nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def _close(got, ref, what):
    """The parity tolerance: max |diff| <= 1e-4 * max(1, max |ref|), float32."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    diff, scale = np.abs(got - ref).max(), max(1.0, np.abs(ref).max())
    assert diff <= 1e-4 * scale, f"{what}: max |diff| {diff:.3g} > 1e-4 * {scale:.3g}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_timm_checkpoint_matches_timm_stage_by_stage(name):
    """Every timm key lands on exactly one Keras weight of the right shape, and timm's whole model (stages,
    head norm, MaxViT's pre-logits, classifier) gives timm's outputs at every stage, at every fixture size
    (MaxViT's second size through the table resize)."""
    fam, backbone = CASES[name]
    state, outs, meta = _fixture(name)
    for size in meta["sizes"]:
        model = backbones.timm_classifier(fam, _variant(name, meta), size, meta["num_classes"])
        expected = {w.path: tuple(w.shape) for w in model.weights}
        ignored = [k for k in state if fam.keras_weight(k) is None]
        assert all(k.endswith("num_batches_tracked") for k in ignored)
        mapped = timm_weights.map_checkpoint(state, backbone, expected, drop=())
        assert len(mapped) == len(state) - len(ignored) == len(expected)  # one to one, nothing left over
        for w in model.weights:
            value = mapped[w.path]
            if size != meta["sizes"][0] and w.path.endswith("relative_position_bias_table"):
                value = timm_weights.resize_rel_pos_bias_table(value, (int(w.shape[1]) + 1) // 2)
            assert tuple(value.shape) == tuple(w.shape), w.path
            w.assign(value)
        got = model(_nhwc(outs[f"input_{size}"]), training=False)
        for i in range(4):
            _close(got[i], _nhwc(outs[f"stage{i}_{size}"]), f"{name} {size} px stage {i}")
        _close(got[4], outs[f"logits_{size}"], f"{name} {size} px logits")
    keras.backend.clear_session()


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_tensors():
    state, _, meta = _fixture("convnextv2_mini_linear")
    model = backbones.timm_classifier(convnextv2, _variant("convnextv2_mini_linear", meta), 64, 10)
    expected = {w.path: tuple(w.shape) for w in model.weights}
    renamed = {("stages.9.blocks.0.norm.weight" if k == "stages.1.blocks.0.norm.weight" else k): v for k, v in state.items()}
    with pytest.raises(pretrained.WeightsError, match=r"1 tensors with no place.*stages\.9\.blocks\.0\.norm\.weight.*"
                                                      r"1 of its weights not in the file.*stages_1_blocks_0_norm/gamma"):
        timm_weights.map_checkpoint(renamed, "convnextv2-tiny", expected, drop=())
    wide = dict(state, **{"stem.0.bias": np.zeros(9, np.float32)})
    with pytest.raises(pretrained.WeightsError, match=r"stem\.0\.bias has shape \(9,\).*stem_0/bias is \(8,\)"):
        timm_weights.map_checkpoint(wide, "convnextv2-tiny", expected, drop=())
    _, _, mv_meta = _fixture("maxvit_tf_mini")
    with pytest.raises(pretrained.WeightsError, match="does not fit maxvit-tiny-tf-224"):
        timm_weights.map_checkpoint(state, "maxvit-tiny-tf-224", expected, drop=())


def test_rel_pos_table_resize_is_timms():
    """NumPy port of timm.layers.resize_rel_pos_bias_table against timm's own results: up (224 -> 512 px
    windows 7 -> 16), down (512 -> 224) and 512 -> 384."""
    cases = load_file(str(FIXTURES / "rel_pos_resize.safetensors"))
    for src, dst in ((7, 16), (16, 7), (16, 12)):
        got = timm_weights.resize_rel_pos_bias_table(cases[f"src_{src}_{dst}"], dst)
        np.testing.assert_allclose(got, cases[f"dst_{src}_{dst}"], rtol=1e-5, atol=1e-5, err_msg=f"{src} -> {dst}")


def _convert(tmp_path, monkeypatch, fixture, backbone, image_size):
    """Register the fixture's small config under `backbone` and convert its checkpoint with the CLI."""
    fam = backbones.family(backbone)
    _, _, meta = _fixture(fixture)
    monkeypatch.setitem(fam.VARIANTS, backbone, _variant(fixture, meta, image_size))
    assert pretrained.main(["--from-timm", str(FIXTURES / f"{fixture}.safetensors"), "--backbone", backbone,
                            "--out", str(tmp_path / "w")]) == 0
    return tmp_path / "w"


def _pixels(x_nchw, v):
    """timm's normalised input -> the 0..255 pixels a cxrlt model (which normalises itself) must be fed."""
    mean, std = np.asarray(v.mean, np.float32), np.asarray(v.std, np.float32)
    return (_nhwc(x_nchw) * std + mean) * 255.0


def test_maxvit_converted_then_trained_at_another_size_matches_timm(tmp_path, monkeypatch):
    """The product path: `cxrlt weights --from-timm` on the 128 px checkpoint, then a cxrlt model at 160 px
    loaded from the folder: its tables are timm's resized ones and its last stage (the input of "gap") is
    timm's at 160 px. The model then saves and loads through cxrlt's safe loader."""
    folder = _convert(tmp_path, monkeypatch, "maxvit_tf_mini", "maxvit-tiny-tf-512", 128)
    info = json.loads((folder / "maxvit-tiny-tf-512.json").read_text())
    assert (info["image_size"], info["license"], info["dropped"]) == (128, "apache-2.0", ["head.fc.weight", "head.fc.bias"])
    _, outs, _ = _fixture("maxvit_tf_mini")
    built = models.build("maxvit-tiny-tf-512", 3, 160, weights=str(folder), head="gap")
    for key, table in outs.items():
        if key.startswith("table_160:"):
            layer = key.split(":", 1)[1].replace(".rel_pos.relative_position_bias_table", "").replace(".", "_")
            np.testing.assert_allclose(built.model.get_layer(layer).relative_position_bias_table.numpy(), table,
                                       rtol=1e-5, atol=1e-6, err_msg=key)
    features = keras.Model(built.model.input, built.model.get_layer("gap").input)
    x = _pixels(outs["input_160"], maxvit.VARIANTS["maxvit-tiny-tf-512"])
    _close(features(x, training=False), _nhwc(outs["stage3_160"]), "cxrlt model at 160 px, last stage")
    _saves_and_loads(built.model, x, tmp_path / "maxvit.keras")


def test_convnextv2_converted_builds_with_every_head_and_loads_safely(tmp_path, monkeypatch):
    folder = _convert(tmp_path, monkeypatch, "convnextv2_mini_convmlp", "convnextv2-atto", 224)
    _, outs, _ = _fixture("convnextv2_mini_convmlp")
    x = _pixels(outs["input_64"], convnextv2.VARIANTS["convnextv2-atto"])
    for head in ("gap", "csra"):
        built = models.build("convnextv2-atto", 3, 64, weights=str(folder), head=head)
        last = built.model.get_layer("gap").input if head == "gap" else built.model.get_layer("head_norm").input
        _close(keras.Model(built.model.input, last)(x, training=False), _nhwc(outs["stage3_64"]), f"{head}: last stage")
    _saves_and_loads(built.model, x, tmp_path / "convnextv2.keras")
    with pytest.raises(pretrained.WeightsError, match="holds weights for the convnextv2-atto backbone"):
        models.build("convnextv2-tiny", 3, 64, weights=str(folder / "convnextv2-atto.safetensors"))
    with pytest.raises(pretrained.WeightsError, match="has no convnextv2-tiny.safetensors.*--from-timm"):
        models.build("convnextv2-tiny", 3, 64, weights=str(folder))
    with pytest.raises(pretrained.WeightsError, match="no Keras ImageNet download.*--from-timm"):
        models.build("convnextv2-atto", 3, 64, weights="imagenet")


def _saves_and_loads(model, x, path):
    models.save(model, path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    own = {(n["module"], n["class_name"]) for n in models._walk(config) if (n.get("module"), n.get("class_name"))
           in models.OWN_LAYERS}
    assert own, "the file names cxrlt's backbone layers (checked by the allow-list, not skipped)"
    loaded = models.load(path, num_classes=3)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)


def test_the_converter_refuses_what_it_cannot_convert(tmp_path, capsys):
    ckpt = FIXTURES / "convnextv2_mini_linear.safetensors"
    with pytest.raises(SystemExit) as stop:  # the registered (full) tiny is not the fixture's small config
        pretrained.main(["--from-timm", str(ckpt), "--backbone", "convnextv2-tiny", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "does not fit convnextv2-tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrained.main(["--from-timm", str(ckpt), "--backbone", "efficientnetv2-b0", "--out", str(tmp_path)])
    assert "converts for cxrlt's own backbones" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SystemExit):
        pretrained.main(["--from-timm", str(tmp_path / "bad.safetensors"), "--backbone", "convnextv2-tiny",
                         "--out", str(tmp_path)])
    assert "not a readable safetensors file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a MaxViT checkpoint of another size than the name says
        pretrained.main(["--from-timm", str(FIXTURES / "maxvit_tf_mini.safetensors"), "--backbone",
                         "maxvit-tiny-tf-512", "--out", str(tmp_path)])
    assert "trained at 128 px" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_registered_sizes_have_timms_parameter_counts_and_pretrained_cfgs():
    """Every registered size (built with shape-only variables) has exactly timm's parameter count without the
    classifier (timm.create_model(name, num_classes=0)), and the input size, mean, std and licence of the
    timm checkpoint it names (ConvNeXt V2: the fcmae fine-tunes; MaxViT: in1k)."""
    ref = json.loads((FIXTURES / "timm_reference.json").read_text())["models"]
    counts = {}
    for name in sorted(OWN_BACKBONES):
        v = backbones.variant(name)
        counts[name] = (backbones.count_params(name), ref[v.timm_name]["params"])
        tag = "in1k" if name.startswith("maxvit") else "fcmae_ft_in1k"
        cfg = ref[v.timm_name]["tags"][tag]
        assert cfg["input_size"] == [3, v.image_size, v.image_size], name
        np.testing.assert_allclose(v.mean, cfg["mean"], err_msg=name)
        np.testing.assert_allclose(v.std, cfg["std"], err_msg=name)
        assert backbones.family(name).LICENSE == cfg["license"], name
    assert {k: a for k, (a, b) in counts.items()} == {k: b for k, (a, b) in counts.items()}


def test_drop_path_rates_are_timms_and_drop_whole_samples():
    ref = json.loads((FIXTURES / "timm_reference.json").read_text())["drop_path_rates"]
    for name, expected in ref.items():
        with backbones.shapes_only():
            model = backbones.build(name, keras.Input((224, 224, 3)), pooled=True, drop_path=0.2)
        rates = {}
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dropout):
                stage, block = map(int, layer.name.split("_")[1:4:2])
                rates.setdefault((stage, block), set()).add(round(layer.rate, 6))
        want = {(i, j): {round(r, 6)} for i, stage in enumerate(expected) for j, r in enumerate(stage) if r > 0}
        assert rates == want, name
    x = keras.Input((4, 4, 2))
    layer = keras.Model(x, common.drop_path(x, 0.5, "dp"))
    out = layer(np.ones((64, 4, 4, 2), np.float32), training=True).numpy()
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0} and (per_sample == per_sample[:, :1]).all()
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    np.testing.assert_array_equal(layer(np.ones((2, 4, 4, 2), np.float32), training=False), 1.0)


def test_grn_computes_in_float32_under_mixed_precision():
    """Under mixed_float16 a GRN over a 64 x 64 map of values near 100 sums squares far beyond float16's
    65504: computed in float16 the norms are inf and the output NaN; GRN casts up and stays finite."""
    rng = np.random.default_rng(0)
    x = rng.uniform(80, 120, (1, 64, 64, 4)).astype(np.float32)
    gamma, beta = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    g = np.sqrt((x.astype(np.float64) ** 2).sum(axis=(1, 2), keepdims=True))
    want = x + beta + gamma * x * (g / (g.mean(axis=-1, keepdims=True) + 1e-6))
    layer = convnextv2.GlobalResponseNorm(dtype="mixed_float16")
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    got = layer(x.astype(np.float16))
    assert got.dtype == "float16"
    assert np.isfinite(np.asarray(got, np.float32)).all()
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-3)


def test_maxvit_refuses_sizes_its_windows_do_not_divide():
    from cxrlt import config

    with pytest.raises(config.ConfigError, match="multiple of 32"):
        config.load(overrides={"model": {"backbone": "maxvit-tiny-tf-512", "weights": "none"}, "input": {"size": 500}})
    with pytest.raises(config.ConfigError, match="model.drop_path.*not into keras.applications"):
        config.load(overrides={"model": {"backbone": "efficientnetv2-b0", "drop_path": 0.2}})
    with pytest.raises(config.ConfigError, match="--from-timm"):
        config.load(overrides={"model": {"backbone": "convnextv2-base", "weights": "imagenet"}})
    cfg = config.load(overrides={"model": {"backbone": "convnextv2-base", "weights": "none", "drop_path": 0.2}})
    assert cfg["model"]["drop_path"] == 0.2
