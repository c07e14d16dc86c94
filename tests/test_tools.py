"""The preview and benchmark commands run on real radiographs and write what they promise."""

import json

from PIL import Image

from cxrlt.report import preview
from cxrlt.tools import bench

from .conftest import FULLRES, need


def test_augmentation_preview_writes_one_row_per_op(tmp_path):
    out = tmp_path / "preview.png"
    assert preview.main(["--labels", str(need(FULLRES) / "images.csv"), "--label-column", "finding",
                         "--n", "3", "--size", "64", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.height > 2 * image.width  # 9 rows of 3 tiles


def test_pipeline_benchmark_reports_rates_and_ratios(tmp_path):
    assert bench.main(["pipeline", "--images", str(need(FULLRES) / "images.csv"), "--sizes", "64", "--max-images", "6",
                       "--batch-size", "4", "--n", "4", "--rounds", "1", "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    result = report["sizes"]["64"]
    assert result["decode+resize (ceiling)"]["ratio_to_ceiling"] == 1.0
    assert all(entry["images_per_s"] > 0 and entry["images_per_cpu_s"] > 0 for entry in result.values())
    assert {"naive PIL generator", "before DCT scaling (whole decode, antialias)", "seed 002 full (basic + mosaic p=0.5)",
            "albumentations strong (seed 000)", "prepared files: decode+resize"} <= set(result)
    shards = result["prepared shards: decode+resize"]
    assert shards["ratio_vs"] == "decode+resize (ceiling)" and shards["ratio"] == shards["ratio_to_ceiling"]
    assert result["prepared shards: seed 002 full"]["ratio_vs"] == "seed 002 full (basic + mosaic p=0.5)"
    assert report["prepare"]["images"] == 6 and report["per_epoch"]["64"]["speedup"] > 0
    assert result["bare tf.data decode+resize (baseline)"]["ratio_to_bare"] == 1.0
    accelerator = result["accelerator mode, host side (uint8 grey batches)"]
    assert accelerator["cpu_ratio_to_bare"] > 0 and result["prepared shards: accelerator mode, host side"]["ratio_vs"] == \
        "accelerator mode, host side (uint8 grey batches)"


def test_cpu_benchmark_gives_cpu_ms_per_image_and_cores_per_gpu(tmp_path):
    assert bench.main(["cpu", "--images", str(need(FULLRES) / "images.csv"), "--sizes", "64", "--max-images", "6",
                       "--batch-size", "4", "--n", "4", "--rounds", "1", "--rates", "145", "400",
                       "--json", str(tmp_path / "c.json")]) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    row = report["sizes"]["64"]
    assert set(row) == {"bare tf.data decode+resize (baseline)", "host mode (seed 002 full), raw files",
                        "accelerator mode, raw files", "host mode (seed 002 full), prepared shards",
                        "accelerator mode, prepared shards"}
    for entry in row.values():
        cores = entry["cores_for_images_per_s"]
        assert entry["cpu_ms_per_image"] > 0 and cores["400"] > cores["145"] > 0
        assert abs(cores["145"] - 0.145 * entry["cpu_ms_per_image"]) < 0.01  # cores = rate x CPU-seconds per image
    assert report["cores_per_gpu"]["64"]["accelerator mode, raw files"] == row["accelerator mode, raw files"][
        "cores_for_images_per_s"]


def test_loop_benchmark_times_each_k_against_the_first(tmp_path):
    out = tmp_path / "loop.json"
    assert bench.main(["loop", "--ks", "1", "4", "--steps", "8", "--rounds", "1", "--json", str(out)]) == 0
    ks = json.loads(out.read_text())["ks"]
    assert set(ks) == {"1", "4"} and ks["1"]["ratio"] == 1.0
    assert all(k["steps_per_s"] > 0 for k in ks.values())


def test_heads_benchmark_reports_rate_and_parameters_per_head(tmp_path):
    out = tmp_path / "heads.json"
    assert bench.main(["heads", "--heads", "csra", "--size", "32", "--steps", "2", "--warmup", "1",
                       "--json", str(out)]) == 0
    heads = json.loads(out.read_text())["heads"]
    assert heads["csra"]["ratio"] == 1.0 and heads["csra"]["images_per_s"] > 0
    assert heads["csra"]["trainable_params"] > 5_000_000  # B0's backbone + the CSRA head
