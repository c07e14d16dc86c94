import numpy as np
import pandas as pd
import pytest

from cxrlt.data import classes as cls
from cxrlt.data.dataset import LabelFileError, check_same_classes, read_labels

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


# --- every bad-input case of issue 8, one row each ------------------------------------------------

@pytest.mark.parametrize("content, match", [
    ("   \n\n", "empty"),
    ("path,A\nx.png,1\ny.png,1,0\n", "line 3 has 3 fields but the header .* has 2"),
    ("path,A,B\nx.png,1,0\ny.png,1\n", "line 3 has 2 fields"),
    ("path,A,A\nx.png,1,0\n", "duplicate column names.*'A'"),
    ("path,,A\nx.png,3,1\n", "column\\(s\\) \\[2\\].*no name but hold values"),
    ("path\tA\nx.png\t1\n", "no image path column.*tabs or semicolons"),
    ("path,A\nx.png,1\n\"unclosed,0\n", "not readable CSV|fields"),
    ("path,A\nx.png,1\ny.png,0\nx.png,1\n", "1 duplicate ids.*'x.png' in rows 2, 4"),
    ("dicom_id,path,A\nd1,x.png,1\n,y.png,0\n", "empty 'dicom_id' in rows 3"),
    ("path,patient_id,A\nx.png,,1\n", "empty 'patient_id' in rows 2.*grouped by patient"),
    ("path,A\nx.png,1\n,0\n", "empty 'path' in rows 3"),
    ("path,A,B\nx.png,1,yes\ny.png,true,0\n", "2 non-numeric.*line 2, column 'B': 'yes'; line 3, column 'A': 'true'"),
    ("path,A\nx.png,0.5\ny.png,2\nz.png,inf\n", "3 label values outside.*line 2.*'0.5'.*line 3.*'2'.*line 4.*'inf'"),
    ("path,A\nx.png,NaN\ny.png,n/a\n", "2 uncertain \\(-1\\) or blank labels in rows 2, 3"),
    ("path,A\nsub/../../x.png,1\n", "outside the image root.*'sub/../../x.png' in rows 2.*--allow-outside-root"),
    ("path,A\nx.png\x00,1\n", "line 2 holds a NUL byte"),
])
def test_more_bad_label_files_name_the_line_and_column(tmp_path, content, match):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    classes = ["A", "B"] if ",B" in content.split("\n")[0] else ["A"]
    with pytest.raises(LabelFileError, match=match):
        read_labels(path, classes=classes)


def test_a_folder_or_an_unknown_schema_is_a_label_file_error(tmp_path):
    with pytest.raises(LabelFileError, match="not a file"):
        read_labels(tmp_path)
    (tmp_path / "l.csv").write_text("path,A\nx.png,1\n")
    with pytest.raises(LabelFileError, match="unknown class schema 'cxrlt2030'"):
        read_labels(tmp_path / "l.csv", classes="cxrlt2030")
    with pytest.raises(LabelFileError, match="--uncertain must be one of"):
        read_labels(tmp_path / "l.csv", uncertain="maybe")


def test_spellings_of_0_and_1_are_read_and_nothing_else_is(tmp_path):
    (tmp_path / "l.csv").write_text("path,A,B,C\nx.png,1.0, 0 ,1\ny.png,0,1.00,-0\n")
    table = read_labels(tmp_path / "l.csv", classes=["A", "B", "C"])
    np.testing.assert_array_equal(table.labels, [[1, 0, 1], [0, 1, 0]])


def test_excel_style_file_with_bom_blank_rows_and_trailing_commas(tmp_path):
    (tmp_path / "l.csv").write_bytes("\ufeffpath,A,\r\nx.png,1,\r\n\r\n,,\r\ny.png,0,\r\n".encode())
    table = read_labels(tmp_path / "l.csv")
    assert table.classes == ("A",) and list(table.ids) == ["x.png", "y.png"]  # generic: the path is the id
    np.testing.assert_array_equal(table.labels[:, 0], [1, 0])


def test_quoted_multiline_cells_keep_line_numbers_right(tmp_path):
    (tmp_path / "l.csv").write_text('path,note,A\nx.png,"two\nlines",1\ny.png,ok,maybe\n')
    with pytest.raises(LabelFileError, match="line 4, column 'A': 'maybe'"):
        read_labels(tmp_path / "l.csv", classes=["A"])


def test_extra_columns_are_ignored_and_named_in_auto_mode(tmp_path, caplog):
    (tmp_path / "l.csv").write_text("path,A,comment,site\nx.png,1,fine,boston\ny.png,0,blurry,nyc\n")
    assert read_labels(tmp_path / "l.csv", classes=["A"]).classes == ("A",)
    with caplog.at_level("WARNING"):
        assert read_labels(tmp_path / "l.csv").classes == ("A",)
    assert "not 0/1 labels are ignored: ['comment', 'site']" in caplog.text


def test_auto_mode_keeps_a_class_with_a_stray_value_and_names_the_cell(tmp_path):
    # Before: a class column with one 'yes' silently stopped being a class in auto mode.
    (tmp_path / "l.csv").write_text("path,A,B\nx.png,1,0\ny.png,0,1\nz.png,1,yes\n")
    with pytest.raises(LabelFileError, match="line 4, column 'B': 'yes'"):
        read_labels(tmp_path / "l.csv")


def test_uncertain_ignore_mask_marks_exactly_the_uncertain_cells(tmp_path):
    (tmp_path / "l.csv").write_text("path,A,B,C\nx.png,-1,1,\ny.png,0,NaN,1\nz.png,1,0,-1.0\n")
    table = read_labels(tmp_path / "l.csv", classes=["A", "B", "C"], uncertain="ignore")
    np.testing.assert_array_equal(table.mask, [[0, 1, 0], [1, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(table.labels * table.mask, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    sub = table.subset([2, 0])
    np.testing.assert_array_equal(sub.mask, table.mask[[2, 0]])  # the mask follows the rows


def test_absolute_paths_are_held_to_an_explicit_image_root(tmp_path):
    (tmp_path / "l.csv").write_text(f"path,A\n{tmp_path}/imgs/x.png,1\n/elsewhere/y.png,0\n")
    table = read_labels(tmp_path / "l.csv")  # no root given: absolute paths are taken as written
    assert list(table.paths) == [f"{tmp_path}/imgs/x.png", "/elsewhere/y.png"]
    with pytest.raises(LabelFileError, match="1 path\\(s\\).*'/elsewhere/y.png' in rows 3"):
        read_labels(tmp_path / "l.csv", image_root=tmp_path / "imgs")
    allowed = read_labels(tmp_path / "l.csv", image_root=tmp_path / "imgs", allow_outside_root=True)
    assert allowed.paths[1] == "/elsewhere/y.png"


def test_a_test_list_with_part_of_the_training_classes_is_refused(tmp_path):
    # predict.read_image_list reads a test list with the run's classes: a partial set is a mistake.
    (tmp_path / "test.csv").write_text("path,A\nx.png,1\n")
    with pytest.raises(LabelFileError, match="missing class columns 'B'"):
        read_labels(tmp_path / "test.csv", classes=["A", "B"], require_labels=False)
    (tmp_path / "list.csv").write_text("path\nx.png\n")
    assert read_labels(tmp_path / "list.csv", classes=["A", "B"], require_labels=False).labels is None


def test_the_label_file_is_never_modified(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes(b"\xef\xbb\xbfpath,A\r\nx.png,-1\r\n")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_labels(path, uncertain="zero")
    with pytest.raises(LabelFileError):
        read_labels(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
