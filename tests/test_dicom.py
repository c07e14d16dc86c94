"""DICOM input (cxrlt/data/dicom.py): pixels as a reader sees them, every refusal naming the file, the check,
prepare and the pipeline on DICOM files.

Test files are written here with pydicom itself (MONOCHROME1/2, 8-, 12- and 16-bit, a window, a rescale, RLE
compressed by pydicom, JPEG 2000 by pylibjpeg-openjpeg, a JPEG baseline stream from PIL encapsulated) and
compared with arrays computed by hand from the DICOM standard's formulas (PS3.3 C.11.1 rescale, C.11.2.1.2.1
LINEAR window). The world's own files: pydicom's test data (shipped in its wheel), one MR image written by
dcmtk/gdcm in four transfer syntaxes, a truncated file, a structured report, an RT plan.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pydicom
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (JPEG2000Lossless, JPEGBaseline8Bit, ExplicitVRLittleEndian, RLELossless, MPEG2MPML,
                         generate_uid)

from cxrlt.data import check, dicom, pipeline
from cxrlt.data import prepare as prep

PATIENT = "Doe^Jane"  # must never appear in any output
DECODE = tf.function(lambda path: pipeline.decode_image(path, 16, dicom="stored"),  # traced once for every refusal
                     input_signature=[tf.TensorSpec([], tf.string)])
RNG = np.random.default_rng(7)


def make_dicom(pixels: np.ndarray, *, bits_stored: int, photometric: str = "MONOCHROME2", signed: bool = False,
               samples: int = 1, **attributes) -> Dataset:
    """A DX-like single-frame dataset holding `pixels` natively (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = PATIENT, "PID-4711", generate_uid()
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    allocated = 8 if bits_stored <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    for key, value in attributes.items():
        setattr(ds, key, value)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(allocated, signed)]
    ds.PixelData = pixels.astype(dtype).tobytes()
    return ds


def save(ds: Dataset, path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def linear_window(x, center, width):
    """PS3.3 C.11.2.1.2.1 (LINEAR), on the 0..1 output scale."""
    x = np.asarray(x, np.float64)
    c, w = center - 0.5, width - 1.0
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))


STORED12 = RNG.integers(0, 4096, (40, 48)).astype(np.uint16)


# ----------------------------------------------------------------------------- pixels as a reader sees them

@pytest.mark.parametrize("window", ["full_range", "stored"])
def test_monochrome2_12_bit_in_16_bit_words_uses_bits_stored(tmp_path, window):
    """BitsStored 12: the high nibble (here garbage, as overlays once used it) is masked; the full range is 0..4095,
    not 0..65535. Without a stored window `stored` falls back to the percentile stretch."""
    garbage = STORED12 | 0xF000
    path = save(make_dicom(garbage, bits_stored=12), tmp_path / "m2.dcm")
    got = dicom.read(path, window)[..., 0]
    if window == "full_range":
        expected = STORED12 / 4095.0
    else:
        ordered = np.sort(STORED12.ravel())
        lo, hi = (ordered[int(np.ceil(p / 100 * ordered.size)) - 1] for p in (0.5, 99.5))
        expected = np.clip((STORED12 - float(lo)) / (float(hi) - float(lo)), 0, 1)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_monochrome1_16_bit_is_inverted_so_bone_is_bright(tmp_path):
    stored = RNG.integers(0, 65536, (30, 20)).astype(np.uint16)
    path = save(make_dicom(stored, bits_stored=16, photometric="MONOCHROME1"), tmp_path / "m1.dcm")
    np.testing.assert_allclose(dicom.read(path, "full_range")[..., 0], 1.0 - stored / 65535.0, atol=1e-6)
    np.testing.assert_allclose(dicom.read(path, "minmax")[..., 0],
                               1.0 - (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6)


def test_stored_window_after_the_rescale(tmp_path):
    """Modality LUT (slope 2, intercept -1000) then the file's WindowCenter/Width; several windows: the first."""
    ds = make_dicom(STORED12, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                    WindowCenter=[1500, 40], WindowWidth=[3000, 400])
    path = save(ds, tmp_path / "w.dcm")
    expected = linear_window(STORED12 * 2.0 - 1000.0, 1500, 3000)
    np.testing.assert_allclose(dicom.read(path, "stored")[..., 0], expected, atol=1e-6)
    # full_range ignores the window: the rescaled range of 12 stored bits, -1000..7190
    np.testing.assert_allclose(dicom.read(path, "full_range")[..., 0], (STORED12 * 2.0) / 8190.0, atol=1e-6)
    assert dicom.plan(pydicom.dcmread(path), "stored") == "rescale x2 -1000; stored window C 1500 W 3000"


def test_a_stored_voi_lut_wins_over_the_window(tmp_path):
    """VOI LUT Sequence: the LUT's own output range maps to 0..1 (here a 10-bit LUT of 4096 entries, squared)."""
    lut = (np.linspace(0, 1, 4096) ** 2 * 1023).round().astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 10], lut.astype("<u2").tobytes()
    ds = make_dicom(STORED12, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    ds.VOILUTSequence = [item]
    path = save(ds, tmp_path / "lut.dcm")
    np.testing.assert_allclose(dicom.read(path)[..., 0], lut[STORED12] / 1023.0, atol=1e-6)


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000"])
def test_compressed_files_decode_to_the_same_pixels(tmp_path, syntax):
    """Lossless RLE (pydicom's own encoder) and JPEG 2000 (pylibjpeg-openjpeg) read back bit-exact."""
    ds = make_dicom(STORED12[:32, :32], bits_stored=12, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=3000)
    ds.compress(RLELossless if syntax == "rle" else JPEG2000Lossless)
    path = save(ds, tmp_path / f"{syntax}.dcm")
    expected = 1.0 - linear_window(STORED12[:32, :32], 2000, 3000)
    np.testing.assert_allclose(dicom.read(path)[..., 0], expected, atol=1e-6)
    assert check.scan([path]).loc[0, "transfer_syntax"] == pydicom.dcmread(path).file_meta.TransferSyntaxUID.name


def test_jpeg_baseline_dicom_decodes_like_the_jpeg_it_holds(tmp_path):
    """An 8-bit JPEG stream (PIL) encapsulated as JPEG Baseline: pylibjpeg's libjpeg and TensorFlow's libjpeg-turbo
    agree to within the IDCT rounding of two libraries."""
    grey = (np.add.outer(np.arange(48), np.arange(64)) * 2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
    ds = make_dicom(grey, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "jpeg.dcm")
    reference = tf.io.decode_jpeg(buffer.getvalue(), channels=1).numpy()[..., 0] / 255.0
    assert np.abs(dicom.read(path, "full_range")[..., 0] - reference).max() <= 2 / 255


def test_the_same_real_image_in_four_transfer_syntaxes():
    """pydicom's MR_small (written by dcmtk/gdcm) uncompressed, RLE, JPEG 2000 lossless, JPEG-LS lossless: one image,
    its stored window (C 600, W 1600) applied to the signed 16-bit values."""
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    raw = pydicom.dcmread(get_testdata_file(names[0])).pixel_array
    expected = linear_window(raw, 600, 1600)
    for name in names:
        np.testing.assert_allclose(dicom.read(get_testdata_file(name))[..., 0], expected, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------- refusals, each naming the file

def _multi_frame(tmp_path):
    ds = make_dicom(np.zeros((2, 16, 16)), bits_stored=8, NumberOfFrames=2)
    ds.Rows, ds.Columns = 16, 16
    return save(ds, tmp_path / "cine.dcm")


def _pdf(tmp_path):
    ds = make_dicom(np.zeros((1, 1)), bits_stored=8)
    for key in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, key)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF
    ds.MIMETypeOfEncapsulatedDocument, ds.EncapsulatedDocument = "application/pdf", b"%PDF-1.4\n%%EOF\n"
    return save(ds, tmp_path / "report.dcm")


def _truncated(tmp_path, syntax):
    ds = make_dicom(STORED12[:32, :32], bits_stored=12)
    if syntax == "rle":
        ds.compress(RLELossless)
    whole = tmp_path / f"whole_{syntax}.dcm"
    save(ds, whole)
    data = whole.read_bytes()
    (tmp_path / f"cut_{syntax}.dcm").write_bytes(data[:-100])
    return str(tmp_path / f"cut_{syntax}.dcm")


def _unsupported(tmp_path):
    ds = make_dicom(np.zeros((16, 16)), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # a video syntax: no still-image decoder exists for it
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return save(ds, tmp_path / "video.dcm")


REFUSED = {
    "multi-frame": (_multi_frame, "multi-frame DICOM (2 frames)"),
    "pdf": (_pdf, "DICOM without Pixel Data (Encapsulated PDF Storage)"),
    "structured report": (lambda _: get_testdata_file("reportsi.dcm"), "without Pixel Data (Basic Text SR Storage)"),
    "truncated native": (lambda t: _truncated(t, "native"), "truncated DICOM"),
    "truncated rle": (lambda t: _truncated(t, "rle"), "truncated DICOM"),
    "truncated (real file)": (lambda _: get_testdata_file("MR_truncated.dcm"), "truncated DICOM"),
    "unsupported transfer syntax": (_unsupported, "is not one pydicom decodes"),
    "palette colour": (lambda _: get_testdata_file("examples_palette.dcm"), "PALETTE COLOR"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_refused_by_the_decoder_the_check_and_the_pipeline_naming_the_file(tmp_path, kind):
    make, words = REFUSED[kind]
    path = make(tmp_path)
    with pytest.raises(dicom.DicomError, match=re.escape(words)) as err:
        dicom.read(path)
    assert str(path) in str(err.value) and PATIENT not in str(err.value)
    header = check.scan([path]).iloc[0]
    assert header["status"] == "bad" and words.split(" (")[0] in header["reason"], header["reason"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(words)):
        DECODE(tf.constant(str(path)))


def test_a_dcm_name_without_dicom_content_is_refused(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (tmp_path / "raw.dcm").write_bytes(bytes(300))  # a dataset without the Part 10 preamble and marker
    report = check.scan([tmp_path / "x.dcm", tmp_path / "raw.dcm"])
    assert report.loc[1, "status"] == "bad" and "not a DICOM Part 10 file" in report.loc[1, "reason"]
    assert report.loc[0, "status"] == "bad"


# ----------------------------------------------------------------------------- check, pipeline, prepare

@pytest.fixture
def dicom_list(tmp_path):
    """A CSV of a MONOCHROME1 16-bit DICOM, the same picture as a MONOCHROME2 extension-less DICOM (compressed), and
    as an 8-bit PNG; the DICOMs carry a window that maps 0..255 onto exactly what the PNG decodes to."""
    grey = RNG.integers(0, 256, (96, 80)).astype(np.uint16)
    window = dict(WindowCenter=128, WindowWidth=256)  # LINEAR: (x - 127.5) / 255 + 0.5 = x / 255
    save(make_dicom(255 - grey, bits_stored=16, photometric="MONOCHROME1", **window), tmp_path / "a.dcm")
    ds = make_dicom(grey, bits_stored=12, **window)
    ds.compress(RLELossless)
    save(ds, tmp_path / "b")
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "c.png")
    frame = pd.DataFrame({"path": ["a.dcm", "b", "c.png"], "Atelectasis": [1, 0, 1], "Edema": [0, 1, 0]})
    frame.to_csv(tmp_path / "list.csv", index=False)
    return tmp_path, grey


def test_the_check_reports_each_dicom_and_what_decoding_does(dicom_list, capsys):
    root, _ = dicom_list
    out = root / "image_check.csv"
    assert check.main(["--labels", str(root / "list.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "DICOM (photometric interpretation, transfer syntax" in printed and "MONOCHROME1 inverted" in printed
    report = pd.read_csv(out, dtype=str).set_index("id")
    assert set(report.index) == {"a.dcm", "b"}  # every DICOM, even an ok one; the PNG is fine and not listed
    a, b = report.loc["a.dcm"], report.loc["b"]
    assert (a.photometric, a.transfer_syntax, a.width, a.height) == ("MONOCHROME1", "Explicit VR Little Endian", "80", "96")
    assert a.action == "stored window C 128 W 256; MONOCHROME1 inverted (bone bright)"
    assert (b.photometric, b.transfer_syntax, b.status) == ("MONOCHROME2", "RLE Lossless", "ok")
    assert PATIENT not in out.read_text()


def test_the_pipeline_reads_dicom_like_the_png_of_the_same_picture(dicom_list):
    root, _ = dicom_list
    paths = np.array([str(root / n) for n in ("a.dcm", "b", "c.png")])
    cfg = {"input": {"size": 32, "resize": "stretch", "antialias": "auto", "intensity": "percentile",
                     "dicom_window": "stored", "cache": False}, "data": {}}
    batch = next(iter(pipeline.eval_dataset(paths, cfg, batch_size=3))).numpy()
    np.testing.assert_allclose(batch[0], batch[2], atol=1e-3)  # MONOCHROME1 inverted: the PNG's picture
    np.testing.assert_allclose(batch[1], batch[2], atol=1e-3)  # extension-less, RLE: the same
    assert pipeline.dicom_setting(paths[2:], cfg) is None  # a PNG-only list keeps a pure TensorFlow decoder


def test_training_streams_batches_from_dicom_on_the_host_and_for_the_accelerator(dicom_list):
    """train_dataset over a DICOM list: host mode (augmented float batches) and accelerator mode's uint8 wire
    format, whose decode_uint8 equals the float decode rounded."""
    from cxrlt import config

    root, _ = dicom_list
    paths = np.array([str(root / n) for n in ("a.dcm", "b", "c.png")])
    cfg = config.load(None, {"input.size": 32, "mix.mosaic": 0.0})
    images, labels = next(iter(pipeline.train_dataset(paths, np.eye(3)[:, :2], cfg, seed=1, batch_size=3)))
    assert images.shape == (3, 32, 32, 3) and labels.shape == (3, 2)
    raw = next(iter(pipeline.train_dataset(paths, np.eye(3)[:, :2], cfg, seed=1, batch_size=3, on_device=True)))
    assert raw["images"].dtype == tf.uint8 and raw["images"].shape == (3, 32, 32, 1)
    data = (root / "a.dcm").read_bytes()
    as_uint8 = pipeline.decode_uint8(tf.constant(data), 32, dicom="stored").numpy().astype(np.float32)
    as_float = pipeline.decode_bytes(tf.constant(data), 32, channels=1, dicom="stored").numpy()
    assert np.abs(as_uint8 - np.round(as_float)).max() <= 1.0


def test_a_tf_data_service_run_refuses_dicom_it_cannot_decode(dicom_list):
    root, _ = dicom_list
    cfg = {"input": {"size": 32, "data_service": "grpc://127.0.0.1:1", "data_service_streams": 1}, "data": {}}
    with pytest.raises(dicom.DicomError, match="cannot decode DICOM.*python -m cxrlt.prepare"):
        pipeline.train_dataset(np.array([str(root / "a.dcm")]), np.zeros((1, 2)), cfg, seed=0, batch_size=1)


def test_prepare_writes_the_same_shards_from_dicom_as_from_png(dicom_list):
    """16-bit PNG encoding keeps the decoded values: the DICOMs' prepared copies equal the PNG's; the folder
    records its window and refuses a run with another; nothing from the headers is written."""
    root, _ = dicom_list
    out = root / "prepared"
    summary = prep.prepare(root / "list.csv", out, long_side=64, encoding="png16", shard_size=2, workers=1)
    assert summary["images"] == 3 and summary["bad"] == 0
    prepared = prep.open_prepared(out)
    files = prepared.manifest.set_index("source")["file"]
    decoded = {name: tf.io.decode_png((out / files[str(root / name)]).read_bytes(), dtype=tf.uint16).numpy()
               for name in ("a.dcm", "b", "c.png")}
    np.testing.assert_array_equal(decoded["a.dcm"], decoded["c.png"])
    np.testing.assert_array_equal(decoded["b"], decoded["c.png"])
    records = [r for p in sorted((out / "shards").glob("*.tfrecord")) for r in tf.data.TFRecordDataset(str(p))]
    assert len(records) == 3
    assert prepared.plan["dicom_window"] == "stored"
    with pytest.raises(prep.PreparedError, match="--dicom-window stored, but input.dicom_window is full_range"):
        prepared.check_dicom_window("full_range")
    for path in out.rglob("*"):
        if path.is_file():
            assert PATIENT.encode() not in path.read_bytes() and b"PID-4711" not in path.read_bytes(), path


# ----------------------------------------------------------------------------- the product path

def test_predict_and_explain_take_dicom_copies_of_the_demo_test_images(demo_run, tmp_path):
    """The demo run predicts DICOM copies of its test images (MONOCHROME1, some RLE-compressed, some without an
    extension) exactly as it predicts PNG copies of the same pixels, listed together; Grad-CAM draws a DICOM."""
    import shutil

    from cxrlt.predict import inference
    from cxrlt.report import explain

    root, _, _ = demo_run
    run = tmp_path / "demo"
    shutil.copytree(root / "runs" / "demo", run, ignore=shutil.ignore_patterns("predictions", "fold1"))  # one fold
    test = pd.read_csv(root / "data" / "test.csv", dtype=str).head(8)
    png, dcm = test.copy(), test.copy()
    for i, rel in enumerate(test.path):
        grey = tf.io.decode_jpeg((root / "data" / rel).read_bytes(), channels=1).numpy()[..., 0]
        Image.fromarray(grey).save(tmp_path / f"{i}.png")
        ds = make_dicom(255 - grey.astype(np.uint16), bits_stored=8, photometric="MONOCHROME1",
                        WindowCenter=128, WindowWidth=256)
        if i % 2:
            ds.compress(RLELossless)
        name = f"{i}.dcm" if i % 3 else f"{i}"
        save(ds, tmp_path / name)
        png.loc[i, "path"], dcm.loc[i, "path"] = f"{i}.png", name
        png.loc[i, "dicom_id"], dcm.loc[i, "dicom_id"] = f"png{i}", f"dcm{i}"
    pd.concat([png, dcm]).to_csv(tmp_path / "list.csv", index=False)
    out = tmp_path / "predictions.csv"
    assert inference.main(["--run", str(run), "--labels", str(tmp_path / "list.csv"), "--out", str(out)]) == 0
    scores = pd.read_csv(out, dtype={"id": str}).set_index("id")
    np.testing.assert_allclose(scores.loc[[f"dcm{i}" for i in range(8)]].to_numpy(),
                               scores.loc[[f"png{i}" for i in range(8)]].to_numpy(), atol=1e-5)
    assert len(scores.loc[[f"png{i}" for i in range(8)]].drop_duplicates()) == 8  # eight different pictures
    out = tmp_path / "explain"
    assert explain.main(["--run", str(run), "--image", str(tmp_path / "1.dcm"), "--out", str(out)]) == 0
    info = json.loads((out / "1_gradcam.json").read_text())
    assert all((out / name).stat().st_size > 0 for name in info["files"])
    assert len(info["probabilities"]) == 26 and info["image"] == str(tmp_path / "1.dcm")
