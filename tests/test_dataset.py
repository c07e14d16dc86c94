import numpy as np
import pandas as pd
import pytest

from cxrlt import classes as cls
from cxrlt.dataset import LabelFileError, check_same_classes, read_labels

from .conftest import NIH1000, need


def _cxrlt_frame(n=6, layout="2023"):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        subject, study, dicom = 10000000 + i // 2, 50000000 + i // 2, f"d{i:04d}"
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        row = {"path": rel, "study_id": study, "ViewPosition": "PA"} if layout == "2023" else {
            "dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": "AP", "fpath": rel}
        row.update({c: int(v) for c, v in zip(cls.CXRLT2023, rng.integers(0, 2, 26))})
        rows.append(row)
    return pd.DataFrame(rows)


def test_cxrlt2023_layout_derives_patient_and_study_from_mimic_path(tmp_path):
    frame = _cxrlt_frame()
    frame.to_csv(tmp_path / "train.csv", index=False)
    table = read_labels(tmp_path / "train.csv", classes="cxrlt2023")
    assert table.classes == cls.CXRLT2023
    assert table.labels.shape == (6, 26) and table.labels.dtype == np.float32
    assert list(table.patients) == ["10000000", "10000000", "10000001", "10000001", "10000002", "10000002"]
    assert table.studies[0] == "50000000"
    assert table.ids[0] == "d0000"  # no dicom_id column: the file stem
    assert table.paths[0] == str(tmp_path / frame.path[0])
    np.testing.assert_array_equal(table.labels, frame[list(cls.CXRLT2023)].to_numpy(np.float32))


def test_cxrlt2024_layout_uses_columns_and_image_root(tmp_path):
    _cxrlt_frame(layout="2024").to_csv(tmp_path / "labels.csv", index=False)
    table = read_labels(tmp_path / "labels.csv", image_root=tmp_path / "imgs", classes="auto")
    assert table.classes == cls.CXRLT2023  # auto: every 0/1 column, in CSV order
    assert table.ids[1] == "d0001" and table.patients[1] == "10000000" and table.views[0] == "AP"
    assert table.paths[0].startswith(str(tmp_path / "imgs"))


def test_nih_layout_reads_15_classes_with_patients():
    table = read_labels(need(NIH1000) / "labels.csv", check_files=True)
    assert len(table) == 1000 and len(table.classes) == 15
    assert "No Finding" in table.classes and "path" not in table.classes
    assert len(np.unique(table.patients)) == 264
    assert table.class_counts()[table.classes.index("No Finding")] == 499


def test_unlabelled_image_list_is_accepted_when_allowed(tmp_path):
    _cxrlt_frame()[["path", "study_id"]].to_csv(tmp_path / "test.csv", index=False)
    table = read_labels(tmp_path / "test.csv", classes="cxrlt2023", require_labels=False)
    assert table.labels is None and len(table) == 6
    with pytest.raises(LabelFileError, match="no class columns"):
        read_labels(tmp_path / "test.csv", classes="cxrlt2023")


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("", "empty"),
    ("path,Atelectasis\n", "no rows"),
    ("image_file,A\nx.png,1\n", "no image path column"),
    ("path,A\nx.png,1\nx.png,0\n", "duplicate ids"),
    ("path,A,B\nx.png,1,yes\n", "non-numeric.*line 2.*'B'.*'yes'"),
    ("path,A,B\nx.png,1,2\n", "outside \\{0, 1\\}.*'B'"),
    ("path,A,B\nx.png,1,-1\ny.png,,0\n", "uncertain.*--uncertain"),
    ("path,A\n../../etc/passwd.png,1\n", "outside the image root"),
])
def test_bad_label_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "labels.csv"
    if content is not None:
        path.write_text(content)
    classes = ["A", "B"] if content and ",B" in content else ["A"]
    with pytest.raises(LabelFileError, match=match):
        read_labels(path, classes=classes)


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"path,A\nok.png,1\n\xff\xfe.png,0\n")
    with pytest.raises(LabelFileError, match="line 3 is not UTF-8"):
        read_labels(path, classes=["A"])


def test_missing_class_columns_are_named_with_a_hint(tmp_path):
    frame = _cxrlt_frame().rename(columns={"Pleural Effusion": "Pleural_Effusion"})
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(LabelFileError, match="'Pleural Effusion' \\(found 'Pleural_Effusion'\\?\\)"):
        read_labels(tmp_path / "train.csv", classes="cxrlt2023")


@pytest.mark.parametrize("policy, expected, mask", [("zero", 0.0, None), ("one", 1.0, None), ("ignore", 0.0, 0.0)])
def test_uncertain_label_policies(tmp_path, policy, expected, mask):
    (tmp_path / "l.csv").write_text("path,A,B\nx.png,1,-1\ny.png,0,1\n")
    table = read_labels(tmp_path / "l.csv", classes=["A", "B"], uncertain=policy)
    assert table.labels[0, 1] == expected
    if mask is None:
        assert table.mask is None
    else:
        assert table.mask[0, 1] == 0.0 and table.mask.sum() == 3


def test_missing_image_files_are_listed(tmp_path):
    (tmp_path / "l.csv").write_text("path,A\nnot_there.png,1\n")
    with pytest.raises(LabelFileError, match="1 of 1 image files do not exist.*--image-root"):
        read_labels(tmp_path / "l.csv", classes=["A"], check_files=True)


def test_class_list_mismatch_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text("path,A,B\nx.png,1,0\n")
    (tmp_path / "b.csv").write_text("path,A,C\nx.png,1,0\n")
    with pytest.raises(LabelFileError, match="class lists differ"):
        check_same_classes(read_labels(tmp_path / "a.csv"), read_labels(tmp_path / "b.csv"))
