"""The pre-flight image check against a corpus of broken files that the tests make themselves.

The ground truth is the training decoder: every verdict is held against what
`pipeline.decode_image` does with the same file, so a change to the decoder that makes a rule
wrong (say CMYK becomes readable) fails here instead of silently misleading users.
"""

from __future__ import annotations

import gc
import io

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from cxrlt.data import check
from cxrlt import config
from cxrlt.train import kfold as train
from cxrlt.data.pipeline import decode_image

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 255, (64, 48), dtype=np.uint8)


def _jpeg(array=GREY, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def _save(fmt: str, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(GREY).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def _bits12() -> bytes:
    data = bytearray(_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 4] = 12  # the SOF0 precision byte: a 12-bit JPEG header
    return bytes(data)


def _idat_zeroed() -> bytes:
    data = bytearray(_png(GREY))
    middle = len(data) // 2
    data[middle:middle + 40] = bytes(40)  # inside the compressed pixels: the header and IEND stay intact
    return bytes(data)


# name -> (file bytes, header verdict, deep verdict, does pipeline.decode_image read it?)
CORPUS = {
    "grey.jpg": (_jpeg(), "ok", "ok", True),
    "rgb.jpg": (_jpeg(np.dstack([GREY] * 3)), "ok", "ok", True),
    "progressive.jpg": (_jpeg(progressive=True), "ok", "ok", True),
    "grey.png": (_png(GREY), "ok", "ok", True),
    "grey16.png": (_png(Image.fromarray(GREY.astype(np.uint16) * 257)), "ok", "ok", True),
    "palette.png": (_png(Image.fromarray(GREY).convert("P")), "ok", "ok", True),
    "onebit.png": (_png(GREY > 128), "ok", "ok", True),
    "rgba.png": (_png(np.dstack([GREY] * 3 + [np.full_like(GREY, 128)])), "warning", "warning", True),
    "grey_alpha.png": (_png(Image.fromarray(GREY).convert("LA")), "warning", "warning", True),
    "png_named.jpg": (_png(GREY), "warning", "warning", True),
    "tall_100x3000.png": (_png(RNG.integers(0, 255, (3000, 100), dtype=np.uint8)), "warning", "warning", True),
    "flat.png": (_png(np.full((64, 48), 7, np.uint8)), "ok", "warning", True),
    "one_pixel.png": (_png(GREY[:1, :1]), "bad", "bad", True),  # decodes, but holds no image
    "cmyk.jpg": (_save("JPEG", "CMYK"), "bad", "bad", False),
    "bits12.jpg": (_bits12(), "bad", "bad", False),
    "zero_bytes.jpg": (b"", "bad", "bad", False),
    "truncated.jpg": (_jpeg()[: len(_jpeg()) // 2], "bad", "bad", False),
    "no_end_marker.jpg": (_jpeg()[:-2], "bad", "bad", False),
    "truncated.png": (_png(GREY)[: len(_png(GREY)) // 2], "bad", "bad", False),
    "idat_zeroed.png": (_idat_zeroed(), "ok", "bad", False),  # only a decode can see it
    "text.jpg": (b"this is not an image\n", "bad", "bad", False),
    "grey.bmp": (_save("BMP"), "bad", "bad", False),
    "grey.gif": (_save("GIF"), "bad", "bad", False),
    "grey.webp": (_save("WEBP"), "bad", "bad", False),
    "grey.tif": (_save("TIFF"), "bad", "bad", False),
    "scan.dcm": (bytes(128) + b"DICM" + bytes(64), "bad", "bad", False),
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken_images")
    paths = {}
    for name, (data, *_rest) in CORPUS.items():
        (root / name).write_bytes(data)
        paths[name] = str(root / name)
    (root / "a_folder.png").mkdir()
    paths["a_folder.png"] = str(root / "a_folder.png")
    paths["missing.png"] = str(root / "missing.png")
    return root, paths


@pytest.fixture(scope="session")
def huge(tmp_path_factory):
    """A 10,000 x 10,000 JPEG and PNG (100 megapixels; small files, since the content is flat)."""
    root = tmp_path_factory.mktemp("huge")
    image = Image.new("L", (10_000, 10_000), 90)
    image.save(root / "huge.jpg", quality=50)
    image.save(root / "huge.png")
    del image
    gc.collect()
    return root / "huge.jpg", root / "huge.png"


def _verdicts(report: pd.DataFrame, paths: dict) -> dict:
    by_path = dict(zip(report["path"], report["status"]))
    return {name: by_path[p] for name, p in paths.items()}


def test_header_check_names_every_broken_file(corpus):
    root, paths = corpus
    report = check.scan(paths.values())
    assert list(report["path"]) == list(paths.values())  # input order kept
    got = _verdicts(report, paths)
    expected = {name: header for name, (_, header, _, _) in CORPUS.items()}
    expected.update({"a_folder.png": "bad", "missing.png": "bad"})
    assert got == expected
    reasons = dict(zip(report["path"], report["reason"]))
    for name, words in [("missing.png", "missing"), ("zero_bytes.jpg", "0 bytes"), ("truncated.jpg", "truncated"),
                        ("cmyk.jpg", "CMYK"), ("one_pixel.png", "1 x 1"), ("tall_100x3000.png", "aspect ratio 30"),
                        ("png_named.jpg", "PNG content in a .jpg"), ("rgba.png", "alpha"), ("grey.tif", "TIFF"),
                        ("scan.dcm", "DICOM"), ("bits12.jpg", "12-bit JPEG: tf.io.decode_jpeg reads 8-bit"), ("a_folder.png", "not a regular file")]:
        assert words in reasons[paths[name]], (name, reasons[paths[name]])
    assert (report.loc[report["status"] == "ok", "reason"] == "").all()


def test_deep_check_agrees_with_the_training_decoder(corpus):
    _, paths = corpus
    report = check.scan([paths[n] for n in CORPUS], deep=True)
    got = dict(zip(CORPUS, report["status"]))
    assert got == {name: deep for name, (_, _, deep, _) in CORPUS.items()}
    for name, (_, _, deep, readable) in CORPUS.items():
        try:
            decode_image(tf.constant(paths[name]), 16)
            decoded = True
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            decoded = False
        assert decoded == readable, f"{name}: decode_image {'reads' if decoded else 'refuses'} it; update check.py"
        if not decoded:
            assert deep == "bad", name  # nothing the decoder refuses may pass
        elif deep == "bad":
            assert name == "one_pixel.png"  # the one rule that is policy, not decoder ability
    reasons = dict(zip(CORPUS, report["reason"]))
    assert "Invalid PNG data" in reasons["idat_zeroed.png"] and "uniform image" in reasons["flat.png"]


def _peak_rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_huge_images_are_checked_without_decoding_them_whole(huge):
    jpg, png = huge
    header = check.scan([jpg, png])
    assert list(header["status"]) == ["warning", "warning"]
    assert header["reason"].str.contains("10000 x 10000 px \\(100 MP\\)").all()
    check.scan([jpg], deep=True)  # warm TensorFlow's JPEG path outside the measurement
    # Reset this process's peak-RSS mark (Linux: clear_refs "5"), then measure the deep check alone.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _peak_rss_mib()
    deep = check.scan([jpg, png], deep=True)
    grown = _peak_rss_mib() - before
    assert list(deep["status"]) == ["warning", "warning"]
    # A whole decode of one of them is 100 MB as uint8 and 400 MB as float32 (the pipeline's dtype).
    assert grown < 80, f"the deep check grew the peak RSS by {grown:.0f} MiB"


def test_deep_check_catches_a_corrupt_huge_png_stream(huge, tmp_path):
    _, png = huge
    data = bytearray(png.read_bytes())
    data[len(data) // 2: len(data) // 2 + 32] = bytes(32)
    (tmp_path / "huge_bad.png").write_bytes(bytes(data))
    report = check.scan([tmp_path / "huge_bad.png"], deep=True)
    assert report["status"][0] == "bad" and "CRC" in report["reason"][0]


def test_limits_are_parameters():
    tiny = check.Limits(min_side=1, max_aspect=100.0, warn_pixels=10, max_pixels=40)
    found = check.Finding(width=5, height=9)
    check._size_rules(found, tiny)
    assert found.status == "bad" and "45 MP" not in found.reasons[0] and "downscale" in found.reasons[0]


def test_cli_writes_the_list_and_exits_1_on_bad_images(corpus, tmp_path, capsys):
    root, paths = corpus
    names = ["grey.jpg", "rgba.png", "truncated.jpg", "missing.png"]
    pd.DataFrame({"path": names, "A": [1, 0, 1, 0]}).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "report.csv"
    assert check.main(["--labels", str(tmp_path / "labels.csv"), "--image-root", str(root), "--out", str(out)]) == 1
    listed = pd.read_csv(out)
    assert list(listed["id"]) == ["rgba.png", "truncated.jpg", "missing.png"]  # generic CSV: the id is the path as written
    assert list(listed["status"]) == ["warning", "bad", "bad"]
    printed = capsys.readouterr().out
    assert "4 images: 1 ok, 1 with warnings, 2 bad" in printed and "truncated.jpg: truncated" in printed
    pd.DataFrame({"path": ["grey.jpg", "grey16.png"], "A": [1, 0]}).to_csv(tmp_path / "good.csv", index=False)
    assert check.main(["--labels", str(tmp_path / "good.csv"), "--image-root", str(root), "--out", str(out),
                       "--deep"]) == 0
    assert len(pd.read_csv(out)) == 0  # the previous list is replaced, not appended to


def _training_cfg(tmp_path, corpus_root, names, *, test_names=None, **data):
    labels = pd.DataFrame({"path": names, "patient_id": range(len(names)), "A": np.arange(len(names)) % 2})
    labels.to_csv(tmp_path / "train.csv", index=False)
    overrides = {"data": {"labels": str(tmp_path / "train.csv"), "image_root": str(corpus_root), **data},
                 "model": {"weights": "none"}, "out": str(tmp_path / "runs"), "name": "r"}
    if test_names:
        pd.DataFrame({"path": test_names}).to_csv(tmp_path / "test.csv", index=False)
        overrides["data"].update(test_labels=str(tmp_path / "test.csv"), test_image_root=str(corpus_root))
    return config.load(overrides=overrides)


GOOD = ["grey.jpg", "progressive.jpg", "rgb.jpg", "grey16.png", "rgba.png"]


def test_training_stops_with_the_list_of_bad_images(corpus, tmp_path):
    root, _ = corpus
    cfg = _training_cfg(tmp_path, root, [*GOOD, "cmyk.jpg", "zero_bytes.jpg"])
    with pytest.raises(check.ImageCheckError, match="2 of 7 training images cannot be used") as err:
        train.resolve_data(cfg)
    assert "cmyk.jpg: CMYK" in str(err.value) and "zero_bytes.jpg: empty file" in str(err.value)
    assert "--skip-bad" in str(err.value)
    recorded = pd.read_csv(tmp_path / "runs" / "r" / "image_check.csv")
    assert set(recorded["id"]) == {"cmyk.jpg", "zero_bytes.jpg", "rgba.png"}  # bad and warning rows (generic: id = path)
    assert not (tmp_path / "runs" / "r" / "excluded_images.csv").exists()


def test_skip_bad_leaves_them_out_and_records_them(corpus, tmp_path):
    root, _ = corpus
    cfg = _training_cfg(tmp_path, root, [*GOOD, "cmyk.jpg", "missing.png"], skip_bad=True)
    table = train.resolve_data(cfg)
    assert sorted(table.ids) == sorted(GOOD)  # a generic CSV's ids are its paths as written
    assert table.labels.shape == (5, 1)
    excluded = pd.read_csv(tmp_path / "runs" / "r" / "excluded_images.csv")
    assert list(excluded["id"]) == ["cmyk.jpg", "missing.png"] and (excluded["status"] == "bad").all()
    assert excluded["reason"].str.len().gt(0).all()


def test_bad_test_images_stop_training_even_with_skip_bad(corpus, tmp_path):
    root, _ = corpus
    cfg = _training_cfg(tmp_path, root, GOOD, test_names=["grey.jpg", "truncated.png"], skip_bad=True)
    with pytest.raises(check.ImageCheckError, match="(?s)1 of 2 test images.*truncated.png.*every listed image"):
        train.resolve_data(cfg)


def test_check_images_off_falls_back_to_the_existence_check(corpus, tmp_path):
    root, _ = corpus
    cfg = _training_cfg(tmp_path, root, [*GOOD, "missing.png"], check_images="off")
    with pytest.raises(check.LabelFileError, match="1 of 6 image files do not exist"):
        train.resolve_data(cfg)


def test_bench_times_both_modes_on_the_same_files(corpus, tmp_path, capsys):
    root, _ = corpus
    pd.DataFrame({"path": ["grey.jpg", "rgb.jpg", "grey16.png"]}).to_csv(tmp_path / "l.csv", index=False)
    assert check.main(["--labels", str(tmp_path / "l.csv"), "--image-root", str(root), "--bench",
                       "--out", str(tmp_path / "never.csv")]) == 0
    printed = capsys.readouterr().out
    assert "3 images" in printed and "images/s" in printed and "x faster" in printed
    assert not (tmp_path / "never.csv").exists()


def test_a_model_input_larger_than_the_images_is_noted(tmp_path, caplog):
    """--size 767 on 128 px demo images trained silently on upscaled pixels."""
    import logging

    from cxrlt.data import dataset

    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.fromarray(GREY).save(tmp_path / "img" / f"{i}.png")  # 64 x 48
    (tmp_path / "l.csv").write_text("path,A\n" + "".join(f"img/{i}.png,{i % 2}\n" for i in range(4)))
    table = dataset.read_labels(tmp_path / "l.csv")
    with caplog.at_level(logging.WARNING, logger="cxrlt.check"):
        check.screen_table(table, input_size=64)
        assert not caplog.records  # the long side is 64: nothing upscaled
        check.screen_table(table, input_size=767)
    assert "input.size 767 is larger than the long side of 100% of the training images (median 64 px)" in caplog.text
    with caplog.at_level(logging.WARNING, logger="cxrlt.train"):
        train.note_input_size(config.load(None, {"input.size": 767}))
    assert "input.size 767 is not a multiple of 32" in caplog.text and "use 736 or 768" in caplog.text
