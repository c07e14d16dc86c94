"""The CXR-LT CodaLab submission: validated before it is written, written atomically, zipped.

    python -m cxrlt.submission --check submissions/ens.csv [--labels test.csv]

A submission is an id column (`dicom_id`) then one probability column per class in the official
order, one row per test image, every id once, values finite in [0, 1]. A file that breaks any of
these is never written; an existing good file is left as it was.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic
from ..data import classes as cls
from ..evaluate.align import PredictionFileError, some_of, check_table


SubmissionError = PredictionFileError  # a submission that CodaLab would reject or score wrongly


def validate_frame(frame: pd.DataFrame, *, classes, expected_ids=None, id_column: str = "dicom_id") -> None:
    """CodaLab reads columns by position and scores probabilities: the ordered, [0, 1] form of the one check."""
    check_table(frame, classes, id_column=id_column, expected_ids=expected_ids, ordered=True, probabilities=True)


def write_submission(path, ids, probs: np.ndarray, *, classes, id_column: str = "dicom_id", expected_ids=None,
                     make_zip: bool = True) -> tuple[Path, Path | None]:
    path = Path(path)
    frame = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(classes))
    frame.insert(0, id_column, [str(i) for i in ids])
    validate_frame(frame, classes=classes, expected_ids=expected_ids, id_column=id_column)
    if not make_zip:
        atomic.write_csv(path, frame, float_format="%.6f")
        return path, None
    # The pair is committed together: both temporaries are written in full (a full disk stops the
    # command here, leaving the old CSV and zip as they were), then two renames replace them.
    zip_path = path.with_suffix(".zip")
    with atomic.atomic_path(zip_path) as zip_tmp, atomic.atomic_path(path) as csv_tmp:
        frame.to_csv(csv_tmp, index=False, float_format="%.6f")
        # A fixed timestamp: the same scores give the same zip, byte for byte (a rerun after a kill too).
        entry = zipfile.ZipInfo(path.name, date_time=(1980, 1, 1, 0, 0, 0))
        entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
        with zipfile.ZipFile(zip_tmp, "w") as archive:
            archive.writestr(entry, csv_tmp.read_bytes())
    return path, zip_path


def _unsafe_entry(name: str) -> str | None:
    """Why a zip member name would escape the folder it is unpacked into, or None.

    An absolute name, a drive letter, a backslash (a Windows separator that other unzippers treat
    as a plain character) or a `..` part: the grader's unzip may refuse such an archive (CodaLab
    then reports a failed submission) or write outside its folder, and Python's zipfile reads the
    entry happily, so --check would print OK for it."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if "\\" in name:
        return "a backslash in the name"
    if ".." in name.split("/"):
        return "a '..' part"
    return None


def _read_frame(path: Path, id_column: str) -> pd.DataFrame:
    if not path.is_file():
        raise SubmissionError(f"{path} does not exist")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    why = _unsafe_entry(name)
                    if why:
                        raise SubmissionError(f"{path}: the zip entry {name!r} has {why}, which CodaLab may reject "
                                              "(and an unzip may write outside its folder); zip the CSV under its "
                                              "plain file name, e.g. zip -j sub.zip sub.csv")
                names = [n for n in archive.namelist() if n.endswith(".csv")]
                if len(names) != 1:
                    raise SubmissionError(f"{path}: the zip must hold exactly one CSV, found {names}")
                with archive.open(names[0]) as fh:
                    return pd.read_csv(fh, dtype={id_column: str})
        return pd.read_csv(path, dtype={id_column: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, zipfile.BadZipFile) as err:
        raise SubmissionError(f"{path}: not a readable CSV ({err})") from None


def read_submission(path, *, classes, id_column: str = "dicom_id") -> tuple[np.ndarray, np.ndarray]:
    frame = _read_frame(Path(path), id_column)
    missing = [c for c in [id_column, *classes] if c not in frame.columns]
    if missing:
        raise SubmissionError(f"{path}: missing columns {some_of(missing)}")
    return frame[id_column].astype(str).to_numpy(), frame[list(classes)].to_numpy(dtype=np.float32)


def check_file(path, *, classes, expected_ids=None, id_column: str = "dicom_id") -> str:
    path = Path(path)
    frame = _read_frame(path, id_column)
    try:
        validate_frame(frame, classes=classes, expected_ids=expected_ids, id_column=id_column)
    except SubmissionError as err:
        raise SubmissionError(f"{path}: {err}") from None
    return f"OK: {path} has {len(frame)} rows, {id_column} + {len(classes)} classes in order, values in [0, 1]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrlt.submission", description=__doc__.split("\n")[0])
    parser.add_argument("--check", required=True, type=Path, help="submission CSV (or .zip) to validate")
    parser.add_argument("--labels", type=Path, help="test image list; its ids must each appear once")
    parser.add_argument("--id-column", default="dicom_id")
    args = parser.parse_args(argv)
    expected = None
    try:
        if args.labels:
            from ..data.dataset import read_labels

            expected = read_labels(args.labels, classes=cls.CXRLT2023, require_labels=False,
                                   allow_outside_root=True).ids
        print(check_file(args.check, classes=cls.CXRLT2023, expected_ids=expected, id_column=args.id_column))
    except (SubmissionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
