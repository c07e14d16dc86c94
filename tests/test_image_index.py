"""Bare file names (CXR-LT 2026's ImageID) under an image root of sub-folders (PadChest's 0/ ... 54/):
found in one walk, the index cached in the run, a name found twice refused with both paths, a tree
of links into another disk allowed only with --allow-outside-root. No TensorFlow."""

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlt.data import editions, image_index
from cxrlt.data.dataset import LabelFileError, read_labels

from .conftest import write_png

# ImageIDs copied from the organisers' test list (tests/fixtures/cxrlt2026)
NAMES = ["100303250289824462365601716073337204998_42hmtt.png", "100314450852379498616738398237033471531_fft9bx.png",
         "101126299944644944835561376898203180176_2_o5vjuy.png", "113186032546764588865380623816387095374-3_1ud9by.png"]


def _padchest(root, names=NAMES, folders=("0", "1", "54")):
    pixels = np.full((8, 8), 1000, np.uint16)
    for i, name in enumerate(names):
        write_png(root / folders[i % len(folders)] / name, pixels)
    return root


def _list(tmp_path, names=NAMES):
    path = tmp_path / "list.csv"
    pd.DataFrame({"ImageID": names, "StudyDate_DICOM": "20161010", "PatientID": "1.90E+38",
                  **{c: 0 for c in editions.CXRLT2026_TASK1}}).to_csv(path, index=False)
    return path


def test_bare_names_are_found_in_sub_folders_with_one_walk_cached_in_the_run(tmp_path, monkeypatch):
    root = _padchest(tmp_path / "png")
    walks = []
    real_walk = image_index.walk
    monkeypatch.setattr(image_index, "walk", lambda r: walks.append(r) or real_walk(r))
    table = read_labels(_list(tmp_path), image_root=root, index_dir=tmp_path / "run", check_files=True)
    assert [os.path.relpath(p, root) for p in table.paths] == [
        f"0/{NAMES[0]}", f"1/{NAMES[1]}", f"54/{NAMES[2]}", f"0/{NAMES[3]}"]
    assert list(table.ids) == NAMES and len(walks) == 1
    again = read_labels(_list(tmp_path), image_root=root, index_dir=tmp_path / "run")  # a resumed run, the ensemble
    assert list(again.paths) == list(table.paths) and len(walks) == 1  # from the cache, no second walk
    (root / "0" / NAMES[0]).rename(root / "1" / NAMES[0])  # a moved file: the cache is out of date
    moved = read_labels(_list(tmp_path), image_root=root, index_dir=tmp_path / "run", check_files=True)
    assert moved.paths[0] == str(root / "1" / NAMES[0]) and len(walks) == 2


def test_a_name_found_twice_is_refused_naming_both_paths(tmp_path):
    root = _padchest(tmp_path / "png")
    write_png(root / "7" / NAMES[2], np.zeros((8, 8), np.uint8))
    with pytest.raises(image_index.ImageIndexError, match=f"1 file names of 'ImageID' are found twice under .*png: "
                                                          f"'{NAMES[2]}' at 54/{NAMES[2]} and 7/{NAMES[2]}"):
        read_labels(_list(tmp_path), image_root=root)


def test_a_tree_of_links_into_another_disk_needs_allow_outside_root(tmp_path):
    other = _padchest(tmp_path / "other_disk")
    root = tmp_path / "png"
    root.mkdir()
    for folder in ("0", "1", "54"):
        os.symlink(other / folder, root / folder)
    with pytest.raises(LabelFileError, match="lead outside the image root .* through a symlink.*--allow-outside-root"):
        read_labels(_list(tmp_path), image_root=root)
    table = read_labels(_list(tmp_path), image_root=root, allow_outside_root=True, check_files=True)
    assert table.paths[1] == str(root / "1" / NAMES[1])
    assert np.asarray(Image.open(table.paths[1])).max() == 1000


def test_names_directly_under_the_root_need_no_walk(tmp_path, monkeypatch):
    root = tmp_path / "flat"
    for name in NAMES:
        write_png(root / name, np.zeros((8, 8), np.uint8))
    monkeypatch.setattr(image_index, "walk", lambda r: pytest.fail("walked a flat root"))
    table = read_labels(_list(tmp_path), image_root=root, check_files=True)
    assert list(table.paths) == [str(root / n) for n in NAMES]
