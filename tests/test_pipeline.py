import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cxrlt import config
from cxrlt.data import pipeline

from .conftest import FULLRES, need, write_png


def _cfg(size=32, cache=False, resize="stretch"):
    cfg = config.load(overrides={"input": {"size": size, "cache": cache, "resize": resize}})
    return cfg


def test_decode_grey_jpeg_rgb_and_16bit_to_the_same_scale(tmp_path):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    paths = [
        write_png(tmp_path / "g.png", grey),
        write_png(tmp_path / "rgb.png", np.stack([grey] * 3, -1)),
        write_png(tmp_path / "rgba.png", np.dstack([grey] * 3 + [np.full_like(grey, 255)])),
    ]
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    paths.append(tmp_path / "g16.png")
    out = [pipeline.decode_image(tf.constant(str(p)), 32).numpy() for p in paths]
    for image in out:
        assert image.shape == (32, 32, 3) and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 255
        np.testing.assert_array_equal(image[..., 0], image[..., 2])  # grey replicated
        np.testing.assert_allclose(image[..., 0], out[0][..., 0], atol=1.5)  # 16-bit scaled, not truncated


def test_letterbox_keeps_aspect_and_pads(tmp_path):
    path = write_png(tmp_path / "wide.png", np.full((10, 40), 200, np.uint8))
    image = pipeline.decode_image(tf.constant(str(path)), 40, "letterbox").numpy()
    assert image.shape == (40, 40, 3)
    assert image[0, 20, 0] == 0 and abs(image[20, 20, 0] - 200) < 1
    stretched = pipeline.decode_image(tf.constant(str(path)), 40, "stretch").numpy()
    assert abs(stretched[0, 20, 0] - 200) < 1


def test_full_resolution_radiographs_decode_at_training_size():
    rows = [line.split(",")[0] for line in (need(FULLRES) / "images.csv").read_text().splitlines()[1:4]]
    for rel in rows:
        image = pipeline.decode_image(tf.constant(str(FULLRES / rel)), 96).numpy()
        assert image.shape == (96, 96, 3) and 10 < image.mean() < 245
        wire = pipeline.decode_uint8(tf.io.read_file(str(FULLRES / rel)), 96).numpy()  # accelerator mode's uint8
        assert wire.dtype == np.uint8 and np.abs(wire.astype(np.float32) - image[..., :1]).max() <= 0.5 + 1e-3


def test_train_stream_is_seeded_batched_and_infinite(tmp_path):
    rng = np.random.default_rng(0)
    paths = [str(write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))) for i in range(10)]
    labels = np.eye(10, dtype=np.float32)[:, :3]
    for cache in (False, True):
        cfg = _cfg(cache=cache)
        a = list(pipeline.train_dataset(np.array(paths), labels, cfg, seed=1, batch_size=4).take(6))
        b = list(pipeline.train_dataset(np.array(paths), labels, cfg, seed=1, batch_size=4).take(6))
        assert len(a) == 6  # 24 images from 10: repeats across epochs
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.shape == (4, 32, 32, 3) and ya.shape == (4, 3)
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())


def test_eval_stream_keeps_file_order(tmp_path):
    paths = [str(write_png(tmp_path / f"{i}.png", np.full((8, 8), i * 20, np.uint8))) for i in range(7)]
    means = np.concatenate([x.numpy().mean(axis=(1, 2, 3)) for x in pipeline.eval_dataset(np.array(paths), _cfg(), batch_size=3)])
    np.testing.assert_allclose(means, np.arange(7) * 20, atol=0.5)


def test_a_stream_started_at_batch_b_is_the_uninterrupted_stream_from_b(tmp_path):
    """Exact resume: shuffling (and the RAM cache), the basic augmentation, Mosaic and MixUp, a class sampler
    and Balanced-MixUp all give batch b onwards the same from start_batch=b as from the start."""
    from cxrlt.data import augment, mix

    rng = np.random.default_rng(0)
    paths = np.array([str(write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8)))
                      for i in range(12)])
    labels = (rng.random((12, 3)) < 0.4).astype(np.float32)
    labels[:, 0] = 1.0
    variants = [({"cache": True}, {}), ({"cache": False}, {"sampling": {"sampler": "sqrt"}}),
                ({"cache": False}, {"mix": {"balanced_mixup": 0.2}})]
    for input_cfg, extra in variants:
        cfg = config.load(overrides={"input": {"size": 32, "resize": "stretch", **input_cfg}, **extra,
                                     "mix": {"mosaic": 0.5, "mixup": 0.3, **extra.get("mix", {})}})
        options = {**augment.options_from_config(cfg, None, 3), "mixer": mix.mixer_from_config(cfg, 3)}
        whole = list(pipeline.train_dataset(paths, labels, cfg, seed=3, batch_size=4, **options).take(7))
        later = list(pipeline.train_dataset(paths, labels, cfg, seed=3, batch_size=4, start_batch=4, **options).take(3))
        for (xa, ya), (xb, yb) in zip(whole[4:], later):
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
        assert not np.array_equal(whole[0][0].numpy(), later[0][0].numpy())


def test_class_aware_sampling_sees_the_whole_table_on_every_input_pipeline(tmp_path):
    """Multi-worker: a rare class whose images all fall into pipeline 1's share is still drawn by pipeline 0
    (class statistics from the whole table), and the two pipelines draw different streams."""
    rng = np.random.default_rng(0)
    paths = np.array([str(write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8)))
                      for i in range(16)])
    labels = np.zeros((16, 2), np.float32)
    labels[:, 0] = 1.0
    labels[[1, 3], 1] = 1.0  # odd rows: pipeline 1 of 2 would hold every positive of class 1
    cfg = config.load(overrides={"input": {"size": 32, "resize": "stretch"}, "sampling": {"sampler": "class"},
                                 "mix": {"mosaic": 0.0}})
    drawn = [np.concatenate([y.numpy() for _, y in pipeline.train_dataset(paths, labels, cfg, seed=0, batch_size=4,
                                                                          shard=(2, i)).take(8)])
             for i in (0, 1)]
    assert drawn[0][:, 1].sum() >= 8  # class-balanced: about half of pipeline 0's 32 draws are class-1 images
    assert not np.array_equal(drawn[0], drawn[1])


def test_accelerator_mode_gives_the_host_batches(tmp_path):
    """augment.device accelerator: tf.data ships uint8 grey batches and the seeds; device_preprocess (the
    batched basic set, the mixers, grey -> RGB, in the train step) gives the host path's batches for the
    same seed. The images are at the training size, so the uint8 trip loses nothing."""
    from cxrlt.data import augment, mix

    rng = np.random.default_rng(0)
    paths = np.array([str(write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8)))
                      for i in range(12)])
    labels = (rng.random((12, 3)) < 0.5).astype(np.float32)
    mask = (rng.random((12, 3)) < 0.8).astype(np.float32)
    cfg = config.load(overrides={"input": {"size": 32, "resize": "stretch"},
                                 "augment": {"scale": 0.2, "rotate_deg": 15, "brightness": 0.1, "contrast": 0.2},
                                 "mix": {"mosaic": 0.4, "mixup": 0.3, "cutmix": 0.3, "cutout": 0.5}})
    mixer = mix.mixer_from_config(cfg, 5)
    host = list(pipeline.train_dataset(paths, labels, cfg, seed=5, batch_size=4, mask=mask, mixer=mixer,
                                       augment_fn=augment.make_basic_augment(cfg["augment"])).take(6))
    raw = list(pipeline.train_dataset(paths, labels, cfg, seed=5, batch_size=4, mask=mask, on_device=True).take(6))
    assert raw[0]["images"].dtype == tf.uint8 and raw[0]["images"].shape == (4, 32, 32, 1)
    preprocess = tf.function(pipeline.device_preprocess(cfg["augment"], mixer, 3, masked=True))
    for (xh, yh, mh), batch in zip(host, raw):
        xd, yd, md = preprocess(batch)
        np.testing.assert_allclose(xd.numpy(), xh.numpy(), atol=2e-3)
        np.testing.assert_allclose(yd.numpy(), yh.numpy(), atol=1e-6)
        np.testing.assert_array_equal(md.numpy(), mh.numpy())
    assert not np.allclose(host[0][0].numpy()[0], host[1][0].numpy()[0])  # augmentation did something
    later = pipeline.train_dataset(paths, labels, cfg, seed=5, batch_size=4, mask=mask, on_device=True, start_batch=3)
    for a, b in zip(raw[3:], later.take(3)):  # a resumed stream: the same images, labels, seeds and mixer steps
        for key in ("images", "labels", "seeds", "draws", "update"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    with pytest.raises(ValueError, match="device_preprocess"):
        pipeline.train_dataset(paths, labels, cfg, seed=5, batch_size=4, mixer=mixer, on_device=True)


def test_augment_device_resolves_and_says_why():
    from cxrlt.data import augment

    assert augment.resolve_device(config.load()) == ("host", "augment.device auto, no GPU visible")  # CI has no GPU
    assert augment.resolve_device(config.load(overrides={"augment": {"device": "accelerator"}}))[0] == "accelerator"
    strategy = config.load(overrides={"augment": {"device": "accelerator", "strategy": "strong-weak"}})
    with pytest.raises(ValueError, match="albumentations on the host"):
        augment.resolve_device(strategy)


def test_16bit_pngs_with_12bit_content_through_the_decoder(tmp_path):
    """PadChest-like: 12-bit values (window 300..4095) in a 16-bit PNG; a flat image decodes to zeros."""
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    v16 = (300 + grey.astype(np.float64) / 248 * (4095 - 300)).astype(np.uint16)
    Image.fromarray(v16).save(tmp_path / "p16.png")
    path = tf.constant(str(tmp_path / "p16.png"))
    assert bool(pipeline.is_png16(tf.io.read_file(path)))
    full = pipeline.decode_image(path, 32, channels=1, intensity="full_range").numpy()
    assert full.max() < 16.5  # 4095 / 65535 of 255: the near-black picture full_range gives
    for mode in ("minmax", "percentile"):
        out = pipeline.decode_image(path, 32, channels=1, intensity=mode).numpy()[..., 0]
        assert out.min() == 0 and out.max() == 255  # the image's own range stretched over 0..255
        np.testing.assert_allclose(out, grey.astype(np.float32) / 248 * 255, atol=1.5 if mode == "minmax" else 4)
    flat = np.full((8, 8), 2000, np.uint16)
    Image.fromarray(flat).save(tmp_path / "flat.png")
    assert pipeline.decode_image(tf.constant(str(tmp_path / "flat.png")), 8, intensity="percentile").numpy().max() == 0


def test_8bit_images_decode_exactly_as_before_whatever_the_intensity(grey_images):
    _, paths = grey_images
    for p in paths:
        base = pipeline.decode_image(tf.constant(str(p)), 24).numpy()
        for mode in ("minmax", "percentile"):
            np.testing.assert_array_equal(pipeline.decode_image(tf.constant(str(p)), 24, intensity=mode).numpy(), base)
