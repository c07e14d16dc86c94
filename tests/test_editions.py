"""CXR-LT editions: readers and auto-detection, near-miss class lists, removal lists, 38-digit
patient ids, task-2 column order by name, submissions in each edition's layout. No TensorFlow."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlt.data import classes as cls, editions, folds
from cxrlt.data.dataset import LabelFileError, read_exclusions, read_labels
from cxrlt.ensemble import submission


def _frame(edition: str, n: int = 8, seed: int = 0) -> pd.DataFrame:
    """A label CSV in the edition's layout (columns as the organisers' files have them)."""
    rng = np.random.default_rng(seed)
    e = editions.EDITIONS[edition]
    rows = []
    for i in range(n):
        if edition == "cxrlt2026-task1":
            row = {"ImageID": f"2161{i:04d}_{i:03d}-1.png", "StudyDate_DICOM": f"2015010{i % 3}",
                   "PatientID": str(10 ** 37 + i // 2 * 123456789012345678901)}
        else:
            subject, study = 10000000 + i // 2, 50000000 + i // 2
            row = {"dicom_id": f"d{i:04d}", "subject_id": str(subject), "study_id": f"s{study}",
                   "ViewPosition": "" if i == 3 else "PA", "ViewCodeSequence_CodeMeaning": "postero-anterior",
                   "fpath": f"files/p{str(subject)[:2]}/p{subject}/s{study}/d{i:04d}.jpg"}
        row.update({c: int(v) for c, v in zip(e.classes, rng.integers(0, 2, len(e.classes)))})
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("edition, id_column", [("cxrlt2024-task1", "dicom_id"), ("cxrlt2024-task2", "dicom_id"),
                                                ("cxrlt2026-task1", "ImageID")])
def test_each_edition_is_detected_and_read_with_its_columns(tmp_path, caplog, edition, id_column):
    frame = _frame(edition)
    frame.to_csv(tmp_path / "train.csv", index=False)
    with caplog.at_level(logging.INFO, logger="cxrlt"):
        table = read_labels(tmp_path / "train.csv")
    assert table.edition == edition and table.id_column == id_column
    assert table.classes == editions.EDITIONS[edition].classes
    assert f"edition {edition} (auto-detected: all" in caplog.text
    assert list(table.ids) == list(frame[id_column])
    np.testing.assert_array_equal(table.labels, frame[list(table.classes)].to_numpy(np.float32))


def test_edition_facts():
    assert len(editions.CXRLT2024_TASK1) == 40 and list(editions.CXRLT2024_TASK1) == sorted(editions.CXRLT2024_TASK1)
    assert len(editions.CXRLT2026_TASK1) == 30 and editions.CXRLT2026_TASK1[:3] == ("Normal", "aortic elongation",
                                                                                     "cardiomegaly")
    sub = editions.CXRLT2024_TASK2_SUBMISSION
    assert len(sub) == 26 and sub[sub.index("Mass") + 1] == "Normal" and sub[sub.index("Normal") + 1] == "Nodule"
    train = editions.CXRLT2024_TASK2
    assert list(train) == sorted(sub) and train[train.index("Nodule") + 1] == "Normal"


def test_task2_from_the_40_class_file_and_its_submission_written_by_name(tmp_path):
    """data.edition cxrlt2024-task2 on the 40-class training file: the 26 task-2 classes in training
    (alphabetical) order; the submission puts each column where the sample has it, by name."""
    _frame("cxrlt2024-task1").to_csv(tmp_path / "train.csv", index=False)
    table = read_labels(tmp_path / "train.csv", edition="cxrlt2024-task2")
    assert table.classes == editions.CXRLT2024_TASK2
    probs = np.tile(np.linspace(0.01, 0.26, 26), (len(table), 1))  # column j of the model = 0.01 (j + 1)
    sample = tmp_path / "development_task2_sample_submission.csv"
    pd.DataFrame({"dicom_id": table.ids, **{c: 0.5 for c in editions.CXRLT2024_TASK2_SUBMISSION}}).to_csv(sample,
                                                                                                           index=False)
    id_column, order, ids = submission.layout_from_sample(sample, list(table.classes), table.ids)
    out, _ = submission.write_submission(tmp_path / "sub.csv", ids, probs, classes=order, model_classes=table.classes,
                                         id_column=id_column, expected_ids=table.ids, make_zip=False)  # as the ensembler
    written = pd.read_csv(out)
    assert list(written.columns[1:]) == list(editions.CXRLT2024_TASK2_SUBMISSION)
    for c in ("Normal", "Nodule", "Mass"):  # each value stayed with its class
        assert written[c].iloc[0] == pytest.approx(probs[0, list(table.classes).index(c)], abs=1e-6)
    assert submission.main(["--check", str(out), "--sample-submission", str(sample)]) == 0
    swapped = written[["dicom_id", *editions.CXRLT2024_TASK2]]  # alphabetical: Normal after Nodule
    swapped.to_csv(tmp_path / "alpha.csv", index=False)
    assert submission.main(["--check", str(tmp_path / "alpha.csv"), "--edition", "cxrlt2024-task2"]) == 1


def test_a_near_miss_of_an_edition_names_the_missing_columns_unless_classes_auto(tmp_path):
    frame = _frame("cxrlt2024-task2").drop(columns=["Pleural Effusion"])
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(LabelFileError, match="25 of the 26 CXR-LT 2024 task 2 class columns; missing 'Pleural "
                                             "Effusion'.*--classes auto"):
        read_labels(tmp_path / "train.csv")
    table = read_labels(tmp_path / "train.csv", classes="auto")
    assert len(table.classes) == 25 and table.edition == "generic"
    old = pd.DataFrame({"path": ["a.png", "b.png"], **{c: [0, 1] for c in cls.CXRLT2023 if c != "Hernia"}})
    old.to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(LabelFileError, match="25 of the 26 CXR-LT 2023 class columns; missing 'Hernia'"):
        read_labels(tmp_path / "old.csv")


def test_generic_ids_are_the_path_so_same_named_files_do_not_collide(tmp_path):
    pd.DataFrame({"path": ["a/image.png", "b/image.png"], "A": [0, 1]}).to_csv(tmp_path / "l.csv", index=False)
    table = read_labels(tmp_path / "l.csv")
    assert table.edition == "generic" and table.id_column == "path" and list(table.ids) == ["a/image.png", "b/image.png"]


def test_38_digit_patient_ids_are_text_and_group_correctly(tmp_path):
    """Two patients whose ids differ only in the last digits: as float64 they would be one patient."""
    a, b = "19032873654021982314021938476501234567", "19032873654021982314021938476501234568"
    assert float(a) == float(b)
    frame = _frame("cxrlt2026-task1", n=6)
    frame["PatientID"] = [a, a, b, b, a, b]
    frame.to_csv(tmp_path / "train.csv", index=False)
    table = read_labels(tmp_path / "train.csv")
    assert list(table.patients) == [a, a, b, b, a, b]
    assert table.studies[0] == f"{frame.ImageID[0].split('_')[0]}/{frame.StudyDate_DICOM[0]}"  # prefix on one day
    fold_of = folds.make_folds(table, 2, seed=0)
    assert len(set(fold_of[table.patients == a])) == 1 and len(set(fold_of[table.patients == b])) == 1
    assert set(fold_of) == {0, 1}


FIXTURES = Path(__file__).parent / "fixtures"


def _fixture_copy(tmp_path, name: str, crlf: bool = False) -> Path:
    """A fixture file (rows copied from the organisers' files), with CRLF line ends as the
    organisers' own files have them when `crlf`."""
    text = (FIXTURES / name).read_text()
    out = tmp_path / Path(name).name
    out.write_bytes((text.replace("\n", "\r\n") if crlf else text).encode())
    return out


@pytest.mark.parametrize("crlf", [False, True])
def test_the_organisers_2026_rows_are_read_with_their_rounded_patient_ids(tmp_path, caplog, crlf):
    """Rows copied from CXRLT_2026_training.csv: PatientID '3.24E+38' etc. (rounded by the organisers)
    is data. Folds group on the value as given; the log says how many values and the largest group."""
    train = _fixture_copy(tmp_path, "cxrlt2026/CXRLT_2026_training.rows.csv", crlf)
    with caplog.at_level(logging.INFO, logger="cxrlt"):
        table = read_labels(train)
    raw = pd.read_csv(train, dtype=str)
    assert table.edition == "cxrlt2026-task1" and list(table.ids) == list(raw.ImageID)
    assert list(table.patients) == list(raw.PatientID)  # as written: '1.20E+38', never a float
    counts = raw.PatientID.value_counts()
    assert (f"'PatientID' has {len(counts)} distinct values for {len(raw)} images (largest group "
            f"{counts.index[0]!r}: {counts.iloc[0]} images)") in caplog.text
    assert "one value may stand for several patients" in caplog.text
    fold_of = folds.make_folds(table, 2, seed=0)
    for value in set(table.patients):  # '1.20E+38' holds two different studies: one fold
        assert len(set(fold_of[table.patients == value])) == 1
    assert set(fold_of) == {0, 1}


@pytest.mark.parametrize("edition, column", [("cxrlt2024-task1", "subject_id"), ("cxrlt2026-task1", "PatientID")])
def test_every_editions_patient_column_in_scientific_notation_is_grouped_as_given(tmp_path, edition, column):
    frame = _frame(edition, n=6)
    frame[column] = ["1.90E+38", "1.90E+38", "2.28E+38", "2.28E+38", "1.90E+38", "1.90E+38"]  # one value a study
    frame.to_csv(tmp_path / "train.csv", index=False)
    table = read_labels(tmp_path / "train.csv")
    assert list(table.patients) == list(frame[column])


def test_only_a_patient_column_that_leaks_is_refused(tmp_path):
    """Two images of one study with different patient values; a patient value unique to every image
    while studies repeat (an image id in the patient column): both would split a study over folds."""
    frame = _frame("cxrlt2024-task1", n=6)  # studies s5000000{0,0,1,1,2,2}
    frame.loc[1, "subject_id"] = "99999999"
    frame.to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(LabelFileError, match="1 studies hold images of different 'subject_id' values, e.g. study "
                                             "'s50000000' \(rows 2, 3"):
        read_labels(tmp_path / "split.csv")
    frame["subject_id"] = [f"img{i}" for i in range(6)]
    frame.to_csv(tmp_path / "unique.csv", index=False)
    with pytest.raises(LabelFileError, match="'subject_id' holds a different value for every image, while 3 studies "
                                             "hold several images: it looks like an image id"):
        read_labels(tmp_path / "unique.csv")


def test_a_2026_study_is_the_imageid_prefix_on_one_date_checked_against_the_organisers_rows(tmp_path):
    """Rows copied from the organisers' test list and Removal.csv. A prefix (PadChest's study number)
    can span dates (101991612320249193176205024735415183351: 20140317 and 20140325) and even two
    patient values on two dates (1968207128932687946838220991884828344); patient value + date
    holds two prefixes ('4.92E+37' on 20160219). Prefix + date: one patient value each."""
    test = read_labels(_fixture_copy(tmp_path, "cxrlt2026/CXRLT_2026_TEST_ALL_TASK1.rows.csv", crlf=True),
                       classes=list(editions.CXRLT2026_TASK1), require_labels=False, edition="cxrlt2026-task1")
    study = dict(zip(test.ids, test.studies))
    assert study["101991612320249193176205024735415183351_4_xfebel.png"] == \
        "101991612320249193176205024735415183351/20140317"
    assert study["101991612320249193176205024735415183351_5_bzvnok.png"] == \
        "101991612320249193176205024735415183351/20140325"
    assert study["113186032546764588865380623816387095374-3_1ud9by.png"] == \
        "113186032546764588865380623816387095374-3/20150401"
    same_day = [i for i in test.ids if i.startswith(("184367867792566425803923260848393170382",
                                                     "269697928512297839221083123009097742966"))]
    assert len(same_day) == 2 and len({study[i] for i in same_day}) == 2  # one patient value, one date, two studies
    removal = _fixture_copy(tmp_path, "cxrlt2026/Removal.rows.csv", crlf=True)
    rows = read_labels(removal, classes=list(editions.CXRLT2026_TASK1), require_labels=False,
                       edition="cxrlt2026-task1")
    for table in (test, rows):
        frame = pd.DataFrame({"study": table.studies, "patient": table.patients})
        assert frame.groupby("study").patient.nunique().max() == 1
    prefix = pd.Series(rows.ids).str.split("_").str[0]
    assert pd.DataFrame({"p": prefix, "v": rows.patients}).groupby("p").v.nunique().max() == 2  # the prefix alone: not
    assert len(set(rows.studies[prefix == "1968207128932687946838220991884828344"])) == 2


def test_the_organisers_test_list_reads_with_its_30_empty_columns(tmp_path):
    """CXRLT_2026_TEST_ALL_TASK1.csv as published (CRLF, 30 empty unnamed columns, rounded
    PatientIDs): an image list of ids, dates and patient values, no labels."""
    path = _fixture_copy(tmp_path, "cxrlt2026/CXRLT_2026_TEST_ALL_TASK1.rows.csv", crlf=True)
    table = read_labels(path, require_labels=False)
    assert table.edition == "cxrlt2026-task1" and not table.has_labels
    assert list(table.ids) == [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    assert "2.28E+38" in set(table.patients)
    assert set(read_exclusions(_fixture_copy(tmp_path, "cxrlt2026/Removal.rows.csv", crlf=True))) == set(
        pd.read_csv(FIXTURES / "cxrlt2026/Removal.rows.csv", dtype=str).ImageID)


def test_published_headers_of_2023_and_2024_are_the_editions(tmp_path):
    """The 2024 sample submissions' headers (5th-place team's config) and 2023's class order
    (CheXFusion's config) against the edition tables; the 2024 demo's sample header too."""
    from cxrlt.data import synthetic

    t1 = (FIXTURES / "cxrlt2024/development_task1_sample_submission.header.csv").read_text().strip().split(",")
    t2 = (FIXTURES / "cxrlt2024/development_task2_sample_submission.header.csv").read_text().strip().split(",")
    for header, name in ((t1, "cxrlt2024-task1"), (t2, "cxrlt2024-task2")):
        e = editions.EDITIONS[name]
        assert header[0] == e.id_column and tuple(header[1:]) == e.submission_classes
    assert (FIXTURES / "cxrlt2023/chexfusion_classes.txt").read_text().split("\n")[:-1] == list(cls.CXRLT2023)
    demo = synthetic.make_demo(tmp_path / "d24", n_patients=20, image_size=32, edition="cxrlt2024-task1")
    assert pd.read_csv(demo.sample_submission, nrows=0).columns.tolist() == t1


def test_a_split_column_trains_on_the_train_rows_only(tmp_path, caplog):
    """CXR-LT 2024's labels.csv (PhysioNet 2.0.0) lists train, development and test rows in one file
    with a 'split' column: the training run reads the train rows and says how many it left out."""
    from cxrlt import config
    from cxrlt.train import kfold

    frame = _frame("cxrlt2024-task1", n=8)
    frame.insert(5, "split", ["train", "train", "development", "development", "train", "train", "test", "test"])
    frame.to_csv(tmp_path / "labels.csv", index=False)
    for path in frame.fpath:  # data.check_images off: the files need only exist
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    cfg = config.load(overrides={"data.labels": str(tmp_path / "labels.csv"), "data.check_images": "off",
                                 "out": str(tmp_path / "runs"), "name": "s"})
    with caplog.at_level(logging.INFO, logger="cxrlt"):
        table = kfold.resolve_data(cfg)
    assert list(table.ids) == list(frame.dicom_id[frame.split == "train"])
    assert "training on the 4 rows whose split is 'train'; 4 rows of other splits left out (development 2, test 2)" \
        in caplog.text
    every = read_labels(tmp_path / "labels.csv", split="all")
    assert len(every) == 8
    with pytest.raises(LabelFileError, match="'split' column holds no 'training' row \(found 'train' 4, "
                                             "'development' 2, 'test' 2\).*data.split=all"):
        read_labels(tmp_path / "labels.csv", split="training")


@pytest.mark.parametrize("content", ["ImageID\n{a}\n{b}\n", "{a}\n{b}\n", "ImageID,reason\n{a},bad\n{b},dup\n"])
def test_exclusion_lists_as_they_come(tmp_path, caplog, content):
    frame = _frame("cxrlt2026-task1", n=6)
    frame.to_csv(tmp_path / "train.csv", index=False)
    removal = tmp_path / "Removal.csv"
    removal.write_text(content.format(a=frame.ImageID[1], b=frame.ImageID[4]))
    with caplog.at_level(logging.INFO, logger="cxrlt"):
        table = read_labels(tmp_path / "train.csv", exclude=removal)
    assert len(table) == 4 and frame.ImageID[1] not in table.ids and frame.ImageID[4] not in table.ids
    assert "2 of 6 images left out by the exclusion list" in caplog.text


def test_submission_per_edition_passes_check_against_its_sample_header(tmp_path):
    for name, e in editions.EDITIONS.items():
        frame = _frame(name, n=5) if name != "cxrlt2023" else None
        ids = list(frame[e.id_column]) if frame is not None else [f"d{i}" for i in range(5)]
        sample = tmp_path / f"{name}_sample.csv"
        pd.DataFrame({e.id_column: ids, **{c: 0.0 for c in e.submission_classes}}).to_csv(sample, index=False)
        probs = np.random.default_rng(0).random((5, len(e.submission_classes)))
        out, _ = submission.write_submission(tmp_path / f"{name}.csv", ids, probs, classes=e.submission_classes,
                                             id_column=e.id_column, expected_ids=ids, make_zip=False)
        assert submission.main(["--check", str(out), "--sample-submission", str(sample)]) == 0
        assert submission.main(["--check", str(out), "--edition", name]) == 0
    assert submission.main(["--check", str(tmp_path / "cxrlt2026-task1.csv")]) == 1  # 2023's layout by default


def test_a_sample_of_another_task_or_other_images_is_refused(tmp_path):
    sample = tmp_path / "s.csv"
    pd.DataFrame({"dicom_id": ["a", "b"], **{c: 0 for c in editions.CXRLT2024_TASK1}}).to_csv(sample, index=False)
    with pytest.raises(submission.SubmissionError, match="class columns differ.*Adenopathy"):
        submission.layout_from_sample(sample, list(editions.CXRLT2024_TASK2))
    with pytest.raises(submission.SubmissionError, match="ids differ from the test list: 1 not in the test list \\['b'\\]"):
        submission.layout_from_sample(sample, list(editions.CXRLT2024_TASK1), ["a", "c"])


def test_the_config_schema_knows_the_editions_and_class_lists_the_data_stage_defines():
    """config/schema.py holds the names (it sits below data and imports no reader): kept in step here."""
    from cxrlt.config import schema
    from cxrlt.data import classes

    assert schema.EDITIONS == tuple(editions.EDITIONS)
    assert schema.EDITION_NAMES == editions.NAMES
    assert schema.CLASS_SCHEMAS == tuple(classes.SCHEMAS)
    assert set(schema.DEMO_EDITIONS.values()) <= set(editions.EDITIONS)
