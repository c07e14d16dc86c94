"""Untrusted input (issue 17): prepared folders, TFRecord shards and image headers from elsewhere,
symlinks under the image root, model files that read other files, YAML tags on the command line,
submission zips with escaping entry names. Tiny files only; no model is built or trained."""

import io
import json
import os
import shutil
import struct
import zipfile
import zlib

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from cxrlt import config
from cxrlt.data import check, pipeline, prepare
from cxrlt.data import prepared as prepared_mod
from cxrlt.data.dataset import LabelFileError, read_labels
from cxrlt.data.prepared import PreparedError, open_prepared

from .conftest import write_png

N_IMAGES = 4


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    """4 random 40 x 48 PNGs prepared at long side 32, 2 per shard (files and TFRecord shards)."""
    root = tmp_path_factory.mktemp("tiny_prepared")
    rng = np.random.default_rng(0)
    paths = [write_png(root / "raw" / f"im{i}.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
             for i in range(N_IMAGES)]
    pd.DataFrame({"path": [str(p) for p in paths], "patient_id": range(N_IMAGES)}).to_csv(root / "list.csv",
                                                                                          index=False)
    out = root / "out"
    assert prepare.main(["--labels", str(root / "list.csv"), "--out", str(out), "--long-side", "32",
                         "--shard-size", "2", "--workers", "1", "--log-level", "WARNING"]) == 0
    return out


def _copy(folder, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(folder, dst, symlinks=True)
    return dst


def _set_manifest_file(folder, row: int, value: str) -> pd.DataFrame:
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"id": str, "source": str, "file": str})
    manifest.loc[row, "file"] = value
    manifest.to_csv(folder / "manifest.csv", index=False)
    return manifest


# --- 2a: prepared folders -----------------------------------------------------------------------------

def test_prepared_manifest_entries_are_confined_to_the_folder(tiny_prepared, tmp_path):
    open_prepared(tiny_prepared)  # the folder as prepared opens
    secret = write_png(tmp_path / "elsewhere" / "secret.png", np.full((40, 40), 7, np.uint8))

    climbing = _copy(tiny_prepared, tmp_path, "climbing")
    _set_manifest_file(climbing, 1, os.path.relpath(secret, climbing))  # ../elsewhere/secret.png
    with pytest.raises(PreparedError, match=r"manifest.csv: line 3 file '\.\./elsewhere/secret.png'.*outside the "
                                            r"prepared folder.*prepare the folder again"):
        open_prepared(climbing)

    absolute = _copy(tiny_prepared, tmp_path, "absolute")
    _set_manifest_file(absolute, 0, str(secret))
    with pytest.raises(PreparedError, match="line 2 file .*an empty or absolute name"):
        open_prepared(absolute)

    linked = _copy(tiny_prepared, tmp_path, "linked")
    manifest = pd.read_csv(linked / "manifest.csv", dtype=str)
    target = linked / manifest.loc[2, "file"]
    target.unlink()
    target.symlink_to(secret)  # a symlinked file inside the folder is a way out as well
    with pytest.raises(PreparedError, match=f"line 4 file '{manifest.loc[2, 'file']}' .*-> {secret}"):
        open_prepared(linked)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming width x height, and nothing else: no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16 x 16 JPEG whose SOF0 marker is rewritten to claim width x height."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_decoder_reads_the_header_size_and_refuses_too_many_pixels_before_decoding(tmp_path):
    """The same limit as the pre-flight check (2**28 px), from the header alone: the PNG has no pixel
    data and the JPEG's entropy data is 16 x 16, so any message but the guard's would come from a decode."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(buf, "PNG")
    assert pipeline.header_dimensions(tf.constant(buf.getvalue())).numpy().tolist() == [20, 30]
    assert pipeline.header_dimensions(tf.constant(_jpeg_claiming(300, 200))).numpy().tolist() == [200, 300]
    assert pipeline.header_dimensions(tf.constant(b"GIF89a")).numpy().tolist() == [0, 0]  # short, not PNG/JPEG
    assert pipeline.MAX_IMAGE_PIXELS == check.LIMITS.max_pixels == 2 ** 28  # one limit, two places that apply it
    for name, data in [("bomb.png", _png_header(20000, 20000)), ("bomb.jpg", _jpeg_claiming(60000, 60000))]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"(?s){pipeline.PIXEL_LIMIT_MESSAGE}.*{name}"):
            pipeline.decode_image(tf.constant(str(tmp_path / name)), 32)
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"(?s){pipeline.PIXEL_LIMIT_MESSAGE}.*{name}"):
            pipeline.decode_uint8(tf.constant(data), 32, name=name)  # augment.device accelerator's decoder
    # just under the limit passes the guard (and then fails in the decoder, which has no pixels to read)
    with pytest.raises(tf.errors.InvalidArgumentError) as under:
        pipeline.decode_bytes(tf.constant(_png_header(2 ** 14, 2 ** 14)), 32)
    assert pipeline.PIXEL_LIMIT_MESSAGE not in str(under.value)


def _prepared_cfg(folder, reader="files"):
    return config.load(overrides={"input": {"size": 32}, "data": {"prepared": str(folder), "prepared_reader": reader}})


def test_prepared_files_and_shards_are_held_to_the_pixel_limit(tiny_prepared, tmp_path):
    bomb = _jpeg_claiming(60000, 60000)
    files = _copy(tiny_prepared, tmp_path, "files")
    manifest = pd.read_csv(files / "manifest.csv", dtype=str)
    (files / manifest.loc[0, "file"]).write_bytes(bomb)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"(?s){pipeline.PIXEL_LIMIT_MESSAGE}.*{manifest.loc[0, 'file']}"):
        list(pipeline.eval_dataset(manifest["source"].to_numpy(), _prepared_cfg(files), batch_size=4))

    shards = _copy(tiny_prepared, tmp_path, "shards")
    shard_files = sorted((shards / "shards").glob("*.tfrecord"))
    for shard in shard_files:  # every record's image replaced by the bomb, ids and sizes kept
        records = [prepared_mod.parse_record(r) for r in tf.data.TFRecordDataset(str(shard))]
        with tf.io.TFRecordWriter(str(shard)) as writer:
            for r in records:
                feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(r[k])]))
                           for k in ("height", "width", "orig_height", "orig_width")}
                feature["id"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[r["id"].numpy()]))
                feature["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[bomb]))
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    labels = np.zeros((N_IMAGES, 1), np.float32)
    ds = pipeline.train_dataset(manifest["source"].to_numpy(), labels, _prepared_cfg(shards, "tfrecord"), seed=0,
                                batch_size=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"(?s){pipeline.PIXEL_LIMIT_MESSAGE}.*TFRecord id"):
        next(iter(ds))


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_a_shard_whose_record_length_runs_past_its_end_is_refused_before_tensorflow_reads_it(tiny_prepared, tmp_path):
    """A 1 TiB length with a valid CRC: TensorFlow's reader would try to allocate it and abort the
    process. The shard is refused when the pipeline opens it; TensorFlow never sees it here."""
    folder = _copy(tiny_prepared, tmp_path)
    shard = min((folder / "shards").glob("*.tfrecord"))
    real = shard.read_bytes()
    length = struct.unpack("<Q", real[:8])[0]
    assert struct.unpack("<I", real[8:12])[0] == _masked_crc32c(real[:8])  # the CRC below is one TF accepts
    huge = struct.pack("<Q", 2 ** 40)
    shard.write_bytes(real[:12 + length + 4] + huge + struct.pack("<I", _masked_crc32c(huge)) + b"\0" * 64)
    with pytest.raises(PreparedError, match=r"record 1 at byte \d+ claims 1,099,511,627,776 bytes.*prepare the folder"):
        prepared_mod.check_record_lengths(shard)
    manifest = pd.read_csv(folder / "manifest.csv", dtype=str)
    with pytest.raises(PreparedError, match=shard.name):  # raised while the dataset is built, before any read
        pipeline.train_dataset(manifest["source"].to_numpy(), np.zeros((N_IMAGES, 1), np.float32),
                               _prepared_cfg(folder, "tfrecord"), seed=0, batch_size=2)
    shard.write_bytes(real[:7])
    with pytest.raises(PreparedError, match="record 0 at byte 0 is cut off"):
        prepared_mod.check_record_lengths(shard)
    for good in sorted((tiny_prepared / "shards").glob("*.tfrecord")):
        prepared_mod.check_record_lengths(good)


# --- 2b: symlinks under the image root ------------------------------------------------------------------

def test_symlinks_out_of_the_image_root_are_refused_unless_allowed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_png(root / "img" / "a.png", np.zeros((20, 20), np.uint8))
    write_png(outside / "secret.png", np.zeros((20, 20), np.uint8))
    (root / "link.png").symlink_to(outside / "secret.png")  # a linked file
    (root / "linkdir").symlink_to(outside)  # a linked folder
    (root / "inside.png").symlink_to(root / "img" / "a.png")  # a link that stays inside: fine
    (tmp_path / "l.csv").write_text("path,A\nimg/a.png,1\nlink.png,0\nlinkdir/secret.png,1\ninside.png,0\n")
    with pytest.raises(LabelFileError, match=r"2 path\(s\) in column 'path' lead outside the image root .* through a "
                                             r"symlink, first 'link.png' \(-> .*secret.png\) in rows 3, 4 .*"
                                             r"--allow-outside-root"):
        read_labels(tmp_path / "l.csv", image_root=root)
    allowed = read_labels(tmp_path / "l.csv", image_root=root, allow_outside_root=True)
    assert list(allowed.paths) == [str(root / p) for p in ("img/a.png", "link.png", "linkdir/secret.png", "inside.png")]
    # the root itself reached through a symlink is not "outside"
    (tmp_path / "root_link").symlink_to(root)
    (tmp_path / "ok.csv").write_text("path,A\nimg/a.png,1\ninside.png,0\n")
    assert len(read_labels(tmp_path / "ok.csv", image_root=tmp_path / "root_link")) == 2


# --- 2c: model files that read other files ----------------------------------------------------------------

def _model_file(path, layer: dict):
    config_json = {"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
                   "config": {"name": "m", "layers": [
                       {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                        "config": {"batch_shape": [None, 1], "dtype": "string", "name": "x"}},
                       {"registered_name": None, **layer}]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config_json))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.0"}))
    return path


@pytest.mark.parametrize("layer, match", [
    ({"module": "keras.layers", "class_name": "StringLookup", "config": {"vocabulary": "/etc/passwd"}},
     "StringLookup layer whose vocabulary is the file '/etc/passwd'"),
    ({"module": "keras.layers", "class_name": "IntegerLookup", "config": {"vocabulary": "/tmp/ids.txt"}},
     "IntegerLookup layer whose vocabulary is the file"),
    ({"module": "keras.layers", "class_name": "TextVectorization", "config": {"vocabulary": "vocab.txt"}},
     "TextVectorization layer whose vocabulary is the file 'vocab.txt'"),
    ({"module": "keras.layers", "class_name": "TFSMLayer", "config": {"filepath": "/tmp/saved_model"}},
     "TFSMLayer layer, which loads another model \\('/tmp/saved_model'\\)"),
    ({"module": "keras.layers", "class_name": "TorchModuleWrapper", "config": {"module": "gASV..."}},
     "TorchModuleWrapper layer, i.e. Python code"),
], ids=["StringLookup", "IntegerLookup", "TextVectorization", "TFSMLayer", "TorchModuleWrapper"])
def test_model_files_whose_layers_read_other_files_are_refused(tmp_path, layer, match):
    from cxrlt.model import models

    path = _model_file(tmp_path / "m.keras", layer)
    with pytest.raises(models.ModelFileError, match=f"m.keras holds a {match}.*refused"):
        models.check_model_file(path)
    with pytest.raises(models.ModelFileError, match=match):
        models.load(path)


def test_a_lookup_layer_with_an_inline_vocabulary_passes_the_check(tmp_path):
    from cxrlt.model import models

    models.check_model_file(_model_file(tmp_path / "ok.keras", {
        "module": "keras.layers", "class_name": "StringLookup", "config": {"vocabulary": ["a", "b"]}}))


# --- 2d: --set values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, named", [
    ("loss.params.gamma=!!python/name:os.system", "loss.params.gamma"),
    ("loss.params=!!python/name:os.system", "loss.params"),
    ("predict.view_weights.PA=!!python/object/apply:os.system [ls]", "predict.view_weights.PA"),
    ("loss.params.gamma=[1,", "loss.params.gamma"),
    ("data.classes=[A, B", "data.classes"),
])
def test_every_bad_set_value_is_one_error_line(setting, named, capsys):
    from cxrlt.train.kfold import main

    with pytest.raises(SystemExit) as stopped:
        main(["--set", setting, "--log-level", "ERROR"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: command line: ") and f"{named}=" in err, err


# --- 2e: submission zips --------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, why", [("../../x.csv", "a '..' part"), ("/tmp/x.csv", "an absolute path"),
                                         ("C:/x.csv", "an absolute path"), ("sub\\x.csv", "a backslash")])
def test_submission_check_refuses_zip_entries_that_escape_their_folder(tmp_path, capsys, entry, why):
    from cxrlt.data import classes as cls
    from cxrlt.ensemble import submission

    classes = list(cls.CXRLT2023)
    csv, _ = submission.write_submission(tmp_path / "s.csv", ["a", "b"], np.full((2, len(classes)), 0.5),
                                         classes=classes, make_zip=False)
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr(entry, csv.read_bytes())
    with pytest.raises(submission.SubmissionError, match=f"zip entry {entry!r}".replace("\\", "\\\\") + f".*{why}.*CodaLab"):
        submission.check_file(tmp_path / "bad.zip", classes=classes)
    assert submission.main(["--check", str(tmp_path / "bad.zip")]) == 1
    out = capsys.readouterr()
    assert "OK" not in out.out and out.err.startswith("error:")
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as archive:
        archive.writestr("s.csv", csv.read_bytes())
    assert submission.check_file(tmp_path / "good.zip", classes=classes).startswith("OK")
