import zipfile

import numpy as np
import pandas as pd
import pytest

from cxrlt.data import classes as cls
from cxrlt.ensemble.submission import SubmissionError, check_file, main, read_submission, validate_frame, write_submission

C = list(cls.CXRLT2023)
IDS = [f"id{i}" for i in range(5)]


def _frame():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((5, 26)), columns=C)
    frame.insert(0, "dicom_id", IDS)
    return frame


def test_write_read_round_trip_and_zip(tmp_path):
    probs = np.random.default_rng(1).random((5, 26))
    csv, zipped = write_submission(tmp_path / "s.csv", IDS, probs, classes=C, expected_ids=IDS)
    ids, back = read_submission(csv, classes=C)
    assert list(ids) == IDS and np.allclose(back, probs, atol=1e-6)
    with zipfile.ZipFile(zipped) as z:
        assert z.namelist() == ["s.csv"]
    assert check_file(zipped, classes=C, expected_ids=IDS).startswith("OK")


def _broken(kind):
    f = _frame()
    if kind == "missing id":
        return f.iloc[:-1], "1 missing.*id4"
    if kind == "unexpected id":
        f.loc[0, "dicom_id"] = "stranger"
        return f, "unexpected.*stranger"
    if kind == "duplicate":
        f.loc[1, "dicom_id"] = "id0"
        return f, "duplicate ids.*id0"
    if kind == "nan":
        f.loc[2, "Edema"] = np.nan
        return f, "id2.*'Edema'"
    if kind == "inf":
        f.loc[2, "Mass"] = np.inf
        return f, "id2.*'Mass'"
    if kind == "out of range":
        f.loc[3, "Hernia"] = 1.5
        return f, "id3.*'Hernia'.*1.5"
    if kind == "column order":
        cols = ["dicom_id", C[1], C[0], *C[2:]]
        return f[cols], "out of order.*column 2 is 'Calcification of the Aorta'"
    if kind == "missing column":
        return f.drop(columns=["Nodule"]), "missing \\['Nodule'\\]"
    if kind == "extra column":
        return f.assign(Extra=0.1), "unexpected \\['Extra'\\]"
    if kind == "id column":
        return f.rename(columns={"dicom_id": "id"}), "first column must be 'dicom_id'"
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["missing id", "unexpected id", "duplicate", "nan", "inf", "out of range",
                                  "column order", "missing column", "extra column", "id column"])
def test_every_kind_of_broken_submission_is_named(kind):
    frame, match = _broken(kind)
    with pytest.raises(SubmissionError, match=match):
        validate_frame(frame, classes=C, expected_ids=IDS)


def test_a_refused_submission_leaves_the_previous_file_intact(tmp_path):
    good = np.full((5, 26), 0.5)
    write_submission(tmp_path / "s.csv", IDS, good, classes=C)
    before = (tmp_path / "s.csv").read_bytes()
    with pytest.raises(SubmissionError):
        write_submission(tmp_path / "s.csv", IDS, np.full((5, 26), np.nan), classes=C)
    assert (tmp_path / "s.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.zip"]  # no temp files left


def test_check_cli_reports_ok_and_errors(tmp_path, capsys):
    frame, _ = _broken("nan")
    frame.to_csv(tmp_path / "bad.csv", index=False)
    _frame().to_csv(tmp_path / "good.csv", index=False)
    assert main(["--check", str(tmp_path / "good.csv")]) == 0
    assert main(["--check", str(tmp_path / "bad.csv")]) == 1
    assert "'Edema'" in capsys.readouterr().err


def test_values_just_below_half_are_not_written_as_half(tmp_path):
    """A threshold-mapped 0.49999951 is a negative; 6-decimal rounding must not make it 0.500000."""
    probs = np.array([[0.4999995], [0.49999951], [0.49999949], [0.5], [0.5000004], [0.9999999]])
    ids = [f"i{k}" for k in range(len(probs))]
    out, _ = write_submission(tmp_path / "s.csv", ids, probs, classes=["A"], make_zip=False)
    written = pd.read_csv(out)["A"].to_numpy()
    np.testing.assert_array_equal(written >= 0.5, probs[:, 0] >= 0.5)
    assert written[1] == 0.499999 and written[2] == 0.499999 and written[3] == 0.5


def _sample_zip(path, id_column, ids, classes, extra=("code/README.txt", "code/data/split.csv")):
    """A sample submission zip holding one predictions CSV beside a code/ folder (which may hold CSVs
    of its own), as a CodaLab submission zip does."""
    frame = pd.DataFrame({id_column: ids, **{c: 0.5 for c in classes}})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("sample_submission.csv", frame.to_csv(index=False))
        for name in extra:
            archive.writestr(name, "a,b\n1,2\n")
    return path


def test_a_sample_submission_zip_with_other_entries_is_read_and_names_the_id_column(tmp_path):
    """CXR-LT 2026 publishes development_sample_submission.zip. A zip of several entries (the CSV and
    a code/ folder, itself holding a CSV) is read; the written submission's id column follows the
    sample (the 2026 rules say dicom_id, the team writers ImageID): the sample's header decides."""
    from cxrlt.data import editions
    from cxrlt.ensemble.submission import expected_layout, layout_from_sample

    ids = ["100303250289824462365601716073337204998_42hmtt.png", "100314450852379498616738398237033471531_fft9bx.png"]
    classes = list(editions.CXRLT2026_TASK1)
    for id_column in ("dicom_id", "ImageID"):
        sample = _sample_zip(tmp_path / f"{id_column}.zip", id_column, ids, classes)
        got, order, sample_ids = layout_from_sample(sample, classes, ids)
        assert got == id_column and order == classes and list(sample_ids) == ids
        assert expected_layout("cxrlt2026-task1", sample, None)[0] == id_column
        assert expected_layout("cxrlt2026-task1", sample, "ImageID")[0] == "ImageID"  # --id-column overrides
        out, _ = write_submission(tmp_path / f"{id_column}.csv", ids, np.full((2, 30), 0.25), classes=order,
                                  id_column=got, expected_ids=ids, make_zip=False)
        assert pd.read_csv(out, nrows=0).columns[0] == id_column
        assert main(["--check", str(out), "--sample-submission", str(sample)]) == 0
    assert expected_layout("cxrlt2026-task1", None, None)[0] == "ImageID"  # no sample: the edition's default
    two = _sample_zip(tmp_path / "two.zip", "ImageID", ids, classes, extra=("other.csv",))
    with pytest.raises(SubmissionError, match=r"a zip holding one CSV was expected \(outside code/\), found \['sample_submission.csv', 'other.csv'\]"):
        layout_from_sample(two, classes, ids)


def test_check_lists_the_zip_and_warns_when_an_edition_needs_code(tmp_path, capsys):
    """The 2026 rules: one zip of the predictions CSV and a code/ folder. --check lists what a zip
    holds and warns when code/ is missing (2023 too: CheXFusion's zip held one); 2024: no rule found."""
    from cxrlt.data import editions

    ids, classes = ["a.png", "b.png"], list(editions.CXRLT2026_TASK1)
    csv, bare = write_submission(tmp_path / "sub.csv", ids, np.full((2, 30), 0.3), classes=classes,
                                 id_column="ImageID", expected_ids=ids)
    code = {"code/cxrlt/a.py": b"x = 1\n", "code/runs/r/config.yaml": b"seed: 1\n", "code/pip_freeze.txt": b"a==1\n"}
    _, full = write_submission(tmp_path / "full.csv", ids, np.full((2, 30), 0.3), classes=classes,
                               id_column="ImageID", expected_ids=ids, code=code)
    with zipfile.ZipFile(full) as archive:
        assert archive.namelist() == ["full.csv", *sorted(code)]
        assert archive.read("code/runs/r/config.yaml") == b"seed: 1\n"
    assert main(["--check", str(full), "--edition", "cxrlt2026-task1"]) == 0
    out = capsys.readouterr().out
    assert "the zip holds full.csv and code/ (3 files: cxrlt, pip_freeze.txt, runs)" in out and "warning" not in out
    for path in (bare, csv):
        assert main(["--check", str(path), "--edition", "cxrlt2026-task1"]) == 0
        assert "warning: CXR-LT 2026 task 1 submissions are one zip of the predictions CSV and a code/ folder" in \
            capsys.readouterr().out
    assert main(["--check", str(bare), "--edition", "cxrlt2024-task1", "--sample-submission",
                 str(_sample_zip(tmp_path / "s24.zip", "dicom_id", ids, classes))]) == 1  # other classes: refused
    with pytest.raises(ValueError, match="under code/"):
        write_submission(tmp_path / "bad.csv", ids, np.full((2, 30), 0.3), classes=classes, id_column="ImageID",
                         code={"../x.py": b""})
