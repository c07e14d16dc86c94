"""CXR-LT 2026 end to end on files in the organisers' published format (`--demo-edition 2026` writes
them: rounded PatientIDs shared across patients, the test list's 30 empty columns, CRLF Removal.csv,
16-bit PNGs in numbered sub-folders): the README's commands train, ensemble into a zip with the CSV
and code/, and `submission --check` accepts it. One tiny run (32 px, 1 epoch, 2 folds)."""

import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from cxrlt import config
from cxrlt.data import editions, synthetic

from .conftest import REPO, TINY

FIXTURES = Path(__file__).parent / "fixtures" / "cxrlt2026"


def _cfg(root, *extra):
    from cxrlt.config import loader
    import argparse

    parser = argparse.ArgumentParser()
    loader.add_arguments(parser)
    args = parser.parse_args(["--demo-edition", "2026", "--set", f"data.demo_dir={root / 'data'}",
                              "--set", "data.demo_patients=20", "--set", "data.demo_image_size=48",
                              "--set", f"out={root / 'runs'}", *extra])
    return config.from_args(args)


def test_the_2026_demo_writes_the_files_as_the_organisers_publish_them(tmp_path):
    """Header lines, line ends, id / date / patient forms and the image layout, against rows copied from
    the organisers' files (tests/fixtures/cxrlt2026)."""
    demo = synthetic.make_demo(tmp_path / "d", n_patients=20, image_size=32, edition="cxrlt2026-task1")
    first = lambda p: p.read_bytes().split(b"\n", 1)[0].rstrip(b"\r")  # noqa: E731
    for name, path in (("CXRLT_2026_TEST_ALL_TASK1", demo.test_csv), ("Removal", demo.exclude),
                       ("CXRLT_2026_training", demo.train_csv)):
        assert first(path) == first(FIXTURES / f"{name}.rows.csv"), name
        assert path.name == f"{name}.csv"
    for path in (demo.test_csv, demo.exclude):  # the organisers' files end their lines with CRLF
        lines = path.read_bytes().split(b"\n")[:-1]
        assert lines and all(line.endswith(b"\r") for line in lines)
    assert all(line.endswith(b"," * 30 + b"\r") for line in demo.test_csv.read_bytes().split(b"\n")[:-1])
    assert all(line.count(b",") == 2 for line in demo.exclude.read_bytes().split(b"\n")[:-1])
    train = pd.read_csv(demo.train_csv, dtype=str)
    real = pd.read_csv(FIXTURES / "CXRLT_2026_training.rows.csv", dtype=str)
    for frame in (train[~train.ImageID.str.contains("broken")], real):
        assert frame.ImageID.str.fullmatch(r"\d{36,39}(-\d)?(_\d{1,2})?_[0-9a-z-]{6}\.png").all()
        assert frame.StudyDate_DICOM.str.fullmatch(r"20[01]\d[01]\d[0-3]\d").all()
        assert frame.PatientID.str.fullmatch(r"\d\.\d\dE\+3[5-8]").all()
    assert train.PatientID.nunique() < 16  # 16 training patients share fewer rounded values: shared across patients
    prefix = train.ImageID.str.split("_").str[0]
    assert (train.groupby(prefix).StudyDate_DICOM.nunique() > 1).any()  # a prefix on two dates, as in Removal.csv
    test = pd.read_csv(demo.test_csv, dtype=str)
    assert set(pd.read_csv(demo.exclude, dtype=str).ImageID) >= set(test.ImageID)  # Removal lists the test images
    folders = {p.parent.name for p in demo.root.rglob("*.png")}
    assert folders == {"0", "1", "2"} and not list(demo.root.glob("*.png"))  # numbered sub-folders only
    with zipfile.ZipFile(demo.sample_submission) as archive:
        assert sorted(archive.namelist()) == ["code/README.txt", "submission.csv"]


def test_the_removal_list_is_applied_before_the_image_screen(tmp_path):
    from cxrlt.data import check
    from cxrlt.data.dataset import read_labels
    from cxrlt.train import kfold

    table = kfold.resolve_data(_cfg(tmp_path))  # the broken file is listed in Removal.csv: no screen error
    demo = synthetic.demo_files(tmp_path / "data-cxrlt2026-task1", "cxrlt2026-task1")
    assert table.edition == "cxrlt2026-task1" and not any("broken" in i for i in table.ids)
    assert len(set(table.patients)) == len(set(pd.read_csv(demo.train_csv, dtype=str).PatientID))  # as text
    with pytest.raises(check.ImageCheckError, match="broken.png"):  # without the list the screen stops
        check.screen_table(read_labels(demo.train_csv, image_root=demo.root), deep=False, skip_bad=False,
                           record_dir=tmp_path / "rec")


def _readme_commands(path: Path = REPO / "README.md") -> list[str]:
    """The README's CXR-LT 2026 commands (the code block of its section), one string each."""
    section = path.read_text().split("## Train on CXR-LT 2026", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.split("#", 1)[0].strip() for line in joined.splitlines() if line.strip().startswith("python")]


def test_the_readme_2026_commands_on_files_in_the_published_format(tmp_path, capsys):
    """The README's commands, with its folders pointed at files in the published format: 2 folds trained
    with the removal list, the images found in sub-folders, folds grouped on the rounded PatientIDs;
    the ensemble reads the sample submission zip and writes a zip with the CSV and code/ (the runs'
    configs and commands, cxrlt's source, pip freeze, --code DIR); submission --check accepts it."""
    from cxrlt.ensemble import ensembler, submission
    from cxrlt.evaluate import align
    from cxrlt.train import kfold

    demo = synthetic.make_demo(tmp_path / "cxr-lt-2026", n_patients=20, image_size=48, edition="cxrlt2026-task1")
    folders = {"cxr-lt-2026/": f"{demo.train_csv.parent}/", "padchest/png": str(demo.root), "runs/": f"{tmp_path}/runs/",
               "submissions/": f"{tmp_path}/submissions/", "my_code/": f"{tmp_path}/my_code/",
               "development_sample_submission.zip": demo.sample_submission.name}
    commands = []
    for line in _readme_commands()[:3]:
        for old, new in folders.items():
            line = line.replace(old, new)
        commands.append(line.split()[2:])
    train, ensemble, check = commands
    assert train[0] == "cxrlt.train" and ensemble[0] == "cxrlt.ensemble" and check[0] == "cxrlt.submission"
    (tmp_path / "my_code").mkdir()
    (tmp_path / "my_code" / "notes.py").write_text("# my own preprocessing\n")
    train = [a.replace("configs/", f"{REPO}/configs/") for a in train[1:]]
    # --batch-size 8: grouped on 6 rounded values, the 16 training patients make uneven folds (one of 10 images)
    assert kfold.main([*train, "--out", str(tmp_path / "runs"), "--epochs", "1", *TINY, "--batch-size", "8"]) == 0
    run = tmp_path / "runs" / "t26"
    folds = pd.read_csv(run / "folds.csv", dtype=str)
    assert len(folds) == len(pd.read_csv(demo.train_csv)) - 1 and not folds.id.str.contains("broken").any()
    assert folds.groupby("patient").fold.nunique().max() == 1 and folds.fold.nunique() == 2  # rounded values as given
    assert list(run.glob("image_index-*.txt"))  # the sub-folders' index, cached in the run
    assert ensembler.main(ensemble[1:]) == 0
    out = tmp_path / "submissions" / "t26.csv"
    written = pd.read_csv(out, dtype=str)
    sample = submission.read_sample(demo.sample_submission)
    assert list(written.columns) == [sample[0], *editions.CXRLT2026_TASK1] and list(written.ImageID) == list(sample[2])
    capsys.readouterr()
    assert submission.main(check[1:]) == 0
    report = capsys.readouterr().out
    assert report.startswith(f"OK: {out.with_suffix('.zip')}") and "code/ (" in report and "warning" not in report
    with zipfile.ZipFile(out.with_suffix(".zip")) as archive:
        names = set(archive.namelist())
        command = archive.read("code/runs/t26/command.txt").decode()
        assert "python -m cxrlt.train --config" in command and "--exclude" in command
        freeze = archive.read("code/pip_freeze.txt").decode()
        assert re.search(r"^tensorflow(_cpu|-cpu)?==2\.", freeze, re.M) and "\nkeras==3." in freeze
        assert archive.read("code/cxrlt/data/dataset.py") == (REPO / "cxrlt/data/dataset.py").read_bytes()
        assert archive.read("code/user/notes.py") == b"# my own preprocessing\n"
        assert archive.read("code/runs/t26/config.yaml") == (run / "config.yaml").read_bytes()
    assert {"t26.csv", "code/cxrlt_version.txt", "code/ensemble_command.txt", "code/README.txt"} <= names
    assert align.main(["--pred", str(out), "--labels", str(demo.test_truth)]) == 0
    assert ensembler.main([*ensemble[1:], "--id-column", "dicom_id", "--no-zip", "--out", str(tmp_path / "d.csv")]) == 0
    assert pd.read_csv(tmp_path / "d.csv", nrows=0).columns[0] == "dicom_id"  # --id-column overrides the sample
