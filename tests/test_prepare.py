"""cxrlt.prepare on real radiographs: sizes, bad-file listing, kill -9 + resume bit-identical; the
pipeline reading prepared files and TFRecord shards; DCT-scaled decoding of a huge JPEG."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from cxrlt import config
from cxrlt.data import pipeline, prepare

from .conftest import FULLRES, REPO, need

LONG_SIDE = 96


def _good_images(k=4):
    frame = pd.read_csv(need(FULLRES) / "images.csv")
    return [os.path.normpath(FULLRES / p) for p in frame["path"][:k]]


def _write_list(path, files):
    pd.DataFrame({"path": [str(f) for f in files], "patient_id": range(len(files))}).to_csv(path, index=False)
    return path


def _args(csv, out, *extra):
    return ["--labels", str(csv), "--out", str(out), "--long-side", str(LONG_SIDE), "--log-level", "WARNING", *extra]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """4 real radiographs and 2 bad files prepared at long side 96, 2 images per shard."""
    root = tmp_path_factory.mktemp("prepared")
    good = _good_images()
    broken = root / "broken.jpg"
    broken.write_bytes(open(good[1], "rb").read()[:3000])  # a truncated JPEG
    text = root / "notes.png"
    text.write_text("not an image")
    csv = _write_list(root / "list.csv", [good[0], good[1], broken, good[2], good[3], text])
    out = root / "out"
    with pytest.raises(SystemExit) as stopped:
        prepare.main(_args(csv, out, "--shard-size", "2"))
    assert stopped.value.code == 2
    assert not (out / "manifest.csv").exists()  # no usable folder until the bad files are dealt with
    assert prepare.main(_args(csv, out, "--shard-size", "2", "--skip-bad")) == 0
    return out, good, [broken, text]


def test_prepare_lists_bad_files_and_keeps_ids_order_and_aspect(prepared):
    out, good, bad = prepared
    listed = pd.read_csv(out / "bad.csv")
    assert listed["line"].tolist() == [4, 7] and listed["path"].tolist() == [str(p) for p in bad]
    assert all(reason.startswith("cannot decode") for reason in listed["reason"])
    manifest = pd.read_csv(out / "manifest.csv", dtype={"id": str})
    assert manifest["id"].tolist() == [str(p) for p in good]  # CSV order; a generic list's ids are its paths
    assert manifest["source"].tolist() == good
    for row in manifest.itertuples():
        with Image.open(row.source) as original:
            assert (row.orig_width, row.orig_height) == original.size
        with Image.open(out / row.file) as shrunk:
            assert shrunk.mode == "L" and shrunk.format == "JPEG" and shrunk.size == (row.width, row.height)
        assert max(row.height, row.width) == LONG_SIDE  # every source is larger: shrunk, never upscaled
        assert abs(row.height / row.width - row.orig_height / row.orig_width) < 2 / LONG_SIDE
    records = {}
    for shard in sorted((out / "shards").glob("*.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(shard)):
            r = prepare.parse_record(raw)
            records[r["id"].numpy().decode()] = r
    assert set(records) == set(manifest["id"])
    for row in manifest.itertuples():
        r = records[row.id]
        assert r["image"].numpy() == (out / row.file).read_bytes()  # the same bytes in both forms
        assert (int(r["height"]), int(r["width"]), int(r["orig_height"]), int(r["orig_width"])) == (
            row.height, row.width, row.orig_height, row.orig_width)


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_killed_with_sigkill_resumes_to_identical_bytes(tmp_path):
    csv = _write_list(tmp_path / "list.csv", _good_images())
    assert prepare.main(_args(csv, tmp_path / "a", "--shard-size", "1")) == 0
    env = {**os.environ, prepare.KILL_AFTER_ENV: "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = subprocess.run([sys.executable, "-m", "cxrlt.prepare", *_args(csv, tmp_path / "b", "--shard-size", "1")],
                            cwd=REPO, env=env, capture_output=True, check=False)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    partial = tmp_path / "b"
    assert not (partial / "manifest.csv").exists() and len(list((partial / "done").glob("*.json"))) == 1
    finished = (partial / "done" / "shard-00000.json").stat().st_mtime_ns
    assert prepare.main(_args(csv, partial, "--shard-size", "1")) == 0
    assert (partial / "done" / "shard-00000.json").stat().st_mtime_ns == finished  # not redone
    assert _tree(partial) == _tree(tmp_path / "a")
    # a finished shard whose marker is lost is redone, to the same bytes
    (partial / "done" / "shard-00002.json").unlink()
    (partial / "shards" / "shard-00002-of-00004.tfrecord").write_bytes(b"garbage")
    assert prepare.main(_args(csv, partial, "--shard-size", "1")) == 0
    assert _tree(partial) == _tree(tmp_path / "a")
    with pytest.raises(SystemExit):  # other settings in the same folder are refused
        prepare.main(_args(csv, partial, "--shard-size", "2"))


def _cfg(out, reader="auto", size=32):
    return config.load(overrides={"input": {"size": size}, "data": {"prepared": str(out), "prepared_reader": reader}})


def test_pipeline_reads_the_same_images_from_shards_and_files_in_eval_order(prepared):
    out, good, bad = prepared
    paths, labels = np.array(good), np.eye(len(good), dtype=np.float32)
    cfg = _cfg(out)
    evaluated = np.concatenate([x.numpy() for x in pipeline.eval_dataset(paths, cfg, batch_size=3)])
    backwards = np.concatenate([x.numpy() for x in pipeline.eval_dataset(paths[::-1], cfg, batch_size=3)])
    np.testing.assert_array_equal(backwards, evaluated[::-1])
    files = pipeline.source_files(paths, cfg)
    assert all(f.startswith(str(out)) for f in files)
    direct = np.stack([pipeline.decode_image(tf.constant(f), 32).numpy() for f in files])
    np.testing.assert_array_equal(evaluated, direct)
    for reader in ("tfrecord", "files"):
        seen = {}
        for shard in (None, (2, 0), (2, 1)):
            ds = pipeline.train_dataset(paths, labels, _cfg(out, reader), seed=3, batch_size=4, shard=shard)
            rows = set()
            for x, y in ds.take(3):
                for image, row in zip(x.numpy(), y.numpy().argmax(1)):
                    np.testing.assert_array_equal(image, evaluated[row])  # same pixels as evaluation reads
                    rows.add(int(row))
            seen[shard] = rows
        assert seen[None] == {0, 1, 2, 3}
        assert seen[(2, 0)].isdisjoint(seen[(2, 1)]) and seen[(2, 0)] | seen[(2, 1)] == {0, 1, 2, 3}, reader


def test_prepared_folder_refuses_images_it_does_not_hold(prepared, tmp_path):
    out, good, bad = prepared
    cfg = _cfg(out)
    with pytest.raises(prepare.PreparedError, match=r"1 were undecodable .*bad\.csv"):
        pipeline.source_files(np.array([good[0], str(bad[0])]), cfg)
    other = _good_images(6)[4:]
    assert list(pipeline.source_files(np.array(other), cfg, required=False)) == other  # e.g. a test list: raw files
    with pytest.raises(prepare.PreparedError, match="not in the list it was prepared from"):
        pipeline.train_dataset(np.array(other), np.eye(2, dtype=np.float32), cfg, seed=0, batch_size=2)
    with pytest.raises(prepare.PreparedError, match="--long-side >= 128"):
        pipeline.source_files(np.array(good), _cfg(out, size=128))
    with pytest.raises(prepare.PreparedError, match="no manifest"):
        os.makedirs(tmp_path / "half")
        (tmp_path / "half" / "prepare.json").write_text(json.dumps({"format_version": 1}))
        pipeline.source_files(np.array(good), _cfg(tmp_path / "half"))


def test_jpeg_dct_scale_is_the_largest_that_covers_the_target():
    index = lambda h, w, size, fit="square": int(pipeline.jpeg_scale_index(h, w, size, fit))  # noqa: E731
    assert pipeline.JPEG_RATIOS[index(2000, 2000, 768)] == 2
    assert pipeline.JPEG_RATIOS[index(2000, 2000, 250)] == 8 and pipeline.JPEG_RATIOS[index(2000, 2000, 251)] == 4
    assert pipeline.JPEG_RATIOS[index(3000, 2500, 1024)] == 2 and pipeline.JPEG_RATIOS[index(500, 500, 768)] == 1
    assert pipeline.JPEG_RATIOS[index(1000, 4000, 500, "square")] == 2  # both sides >= 500
    assert pipeline.JPEG_RATIOS[index(1000, 4000, 500, "long")] == 8  # the long side >= 500


def test_huge_jpeg_decodes_at_a_reduced_scale_to_the_target_size(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 10_000).astype(np.uint8), (10_000, 1))  # 10,000 x 10,000
    path = tmp_path / "huge.jpg"
    Image.fromarray(ramp).save(path, quality=75)
    del ramp
    data = tf.io.read_file(str(path))
    grey = pipeline.decode_grey(data, 768)
    assert grey.shape == (1250, 1250, 1)  # 1/8 scale: 1.6 M pixels decoded, not 100 M
    image = pipeline.decode_image(tf.constant(str(path)), 768).numpy()
    assert image.shape == (768, 768, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[384, :, 0], np.linspace(0, 255, 768), atol=3)  # the ramp survives
