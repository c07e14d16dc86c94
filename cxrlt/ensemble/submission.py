"""The CXR-LT CodaLab submission: validated before it is written, written atomically, zipped.

    python -m cxrlt.submission --check submissions/ens.csv [--labels test.csv] [--edition NAME |
                               --sample-submission development_task1_sample_submission.csv]

A submission is an id column (the edition's: `dicom_id` for 2023/2024, `ImageID` for 2026) then
one probability column per class in the official order, one row per test image, every id once,
values finite in [0, 1]. A file that breaks any of these is never written; an existing good file
is left as it was. An official sample submission (a CSV, or a zip holding one CSV beside other
entries), when given, is the authority on the header, its id column's name and the id list.

The zip CodaLab takes holds the CSV and, for the editions whose rules ask for it (2026; 2023, as
CheXFusion's zip shows), a `code/` folder; `--check` of a zip lists what it holds and warns when
that folder is missing.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic, cli
from ..data import classes as cls
from ..evaluate.align import PredictionFileError, some_of, check_table


SubmissionError = PredictionFileError  # a submission that CodaLab would reject or score wrongly


def validate_frame(frame: pd.DataFrame, *, classes, expected_ids=None, id_column: str = "dicom_id") -> None:
    """CodaLab reads columns by position and scores probabilities: the ordered, [0, 1] form of the one check."""
    check_table(frame, classes, id_column=id_column, expected_ids=expected_ids, ordered=True, probabilities=True)


DECIMALS = 6  # what the CSV keeps (float_format below)


def keep_decision(probs: np.ndarray) -> np.ndarray:
    """Values below 0.5 that 6-decimal rounding would write as 0.500000 become 0.499999.

    CodaLab counts a value >= 0.5 as a positive. A threshold-mapped score in [0.4999995, 0.5) is a
    negative in memory but would be written as 0.500000 and read back as a positive; flooring just
    those values keeps every 0.5 decision as it was (and moves no value by more than 1e-6)."""
    probs = np.asarray(probs, dtype=np.float64)
    below = (probs < 0.5) & (np.round(probs, DECIMALS) >= 0.5)
    return np.where(below, 0.5 - 10.0 ** -DECIMALS, probs)


CODE_FOLDER = "code/"


def prediction_csvs(names) -> list[str]:
    """The zip entries that can be the predictions CSV: CSVs outside code/ (and outside the
    __MACOSX/ and ._ resource forks a Mac's zip adds)."""
    return [n for n in names if n.lower().endswith(".csv") and not n.startswith((CODE_FOLDER, "__MACOSX/"))
            and not n.rsplit("/", 1)[-1].startswith("._")]


def read_sample(path) -> tuple[str, list[str], np.ndarray]:
    """(id column, class columns in order, ids in order) of an official sample submission: a CSV,
    or a zip holding one CSV (beside a code/ folder or other files, as a submission zip does)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"sample submission {path} does not exist (--sample-submission)")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = prediction_csvs(archive.namelist())
                if len(names) != 1:
                    raise SubmissionError(f"sample submission {path}: a zip holding one CSV was expected (outside "
                                          f"code/), found {names or 'none'} among {some_of(archive.namelist())}; "
                                          "unzip it and pass the CSV")
                with archive.open(names[0]) as fh:
                    frame = pd.read_csv(fh, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, zipfile.BadZipFile) as err:
        raise SubmissionError(f"sample submission {path}: not a readable CSV ({err})") from None
    if frame.shape[1] < 2:
        raise SubmissionError(f"sample submission {path}: expected an id column then class columns, "
                              f"found {list(frame.columns)}")
    id_column, order = frame.columns[0], list(frame.columns[1:])
    ids = frame[id_column].astype(str).str.strip().to_numpy()
    dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(dup):
        raise SubmissionError(f"sample submission {path}: {len(dup)} duplicate ids in {id_column!r}: {some_of(dup)}")
    return id_column, order, ids


def layout_from_sample(sample, classes, ids=None) -> tuple[str, list[str], np.ndarray]:
    """The sample's (id column, class order, ids), checked against the model's classes and, when
    given, the test list's ids: a sample naming other classes or other images is an error, never
    a silently reordered or partial submission."""
    id_column, order, sample_ids = read_sample(sample)
    missing, extra = [c for c in classes if c not in order], [c for c in order if c not in classes]
    if missing or extra:
        raise SubmissionError(f"sample submission {sample}: its class columns differ from the model's: the sample "
                              f"lacks {some_of(missing)}, has no model for {some_of(extra)} (is it another task's "
                              "sample?)")
    if ids is not None:
        ids = [str(i) for i in ids]
        lacking, surplus = sorted(set(sample_ids) - set(ids)), sorted(set(ids) - set(sample_ids))
        if lacking or surplus:
            raise SubmissionError(f"sample submission {sample}: its ids differ from the test list: {len(lacking)} "
                                  f"not in the test list {some_of(lacking)}, {len(surplus)} test images not in "
                                  f"the sample {some_of(surplus)}; predict the list the sample belongs to")
    return id_column, order, sample_ids


def write_submission(path, ids, probs: np.ndarray, *, classes, id_column: str = "dicom_id", expected_ids=None,
                     make_zip: bool = True, model_classes=None, code: dict[str, bytes] | None = None
                     ) -> tuple[Path, Path | None]:
    """`probs` columns are `classes` in order, or, with `model_classes` (the model's column order), are
    taken by name into the order of `classes` (the official order, e.g. 2024 task 2's Normal after Mass).
    `code`: {entry name under code/: bytes} packed into the zip beside the CSV (`code_folder.collect`)."""
    path = Path(path)
    if model_classes is not None:
        probs = np.asarray(probs)[:, [list(model_classes).index(c) for c in classes]]
    frame = pd.DataFrame(keep_decision(probs), columns=list(classes))
    frame.insert(0, id_column, [str(i) for i in ids])
    validate_frame(frame, classes=classes, expected_ids=expected_ids, id_column=id_column)
    if not make_zip:
        atomic.write_csv(path, frame, float_format=f"%.{DECIMALS}f")
        return path, None
    # The pair is committed together: both temporaries are written in full (a full disk stops the
    # command here, leaving the old CSV and zip as they were), then two renames replace them.
    zip_path = path.with_suffix(".zip")
    with atomic.atomic_path(zip_path) as zip_tmp, atomic.atomic_path(path) as csv_tmp:
        frame.to_csv(csv_tmp, index=False, float_format=f"%.{DECIMALS}f")
        # A fixed timestamp: the same scores give the same zip, byte for byte (a rerun after a kill too).
        with zipfile.ZipFile(zip_tmp, "w") as archive:
            archive.writestr(_entry(path.name), csv_tmp.read_bytes())
            for name in sorted(code or {}):
                if not name.startswith(CODE_FOLDER) or _unsafe_entry(name):
                    raise ValueError(f"code entry {name!r} must be a relative path under {CODE_FOLDER}")
                archive.writestr(_entry(name), code[name])
    return path, zip_path


def _entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
    return entry


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
    return _read_submission(path, id_column)[0]


def _read_submission(path: Path, id_column: str) -> tuple[pd.DataFrame, list[str] | None]:
    """(the predictions, every entry name of the zip, or None for a bare CSV)."""
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
                names = prediction_csvs(archive.namelist())
                if len(names) != 1:
                    raise SubmissionError(f"{path}: the zip must hold exactly one predictions CSV (outside code/), "
                                          f"found {names}")
                with archive.open(names[0]) as fh:
                    return pd.read_csv(fh, dtype={id_column: str}), archive.namelist()
        return pd.read_csv(path, dtype={id_column: str}), None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, zipfile.BadZipFile) as err:
        raise SubmissionError(f"{path}: not a readable CSV ({err})") from None


def describe_zip(names: list[str]) -> str:
    """What a submission zip holds, e.g. 'sub.csv and code/ (142 files: cxrlt 120, runs 6, ...)'."""
    csvs = prediction_csvs(names)
    code = [n for n in names if n.startswith(CODE_FOLDER) and not n.endswith("/")]
    parts = {}
    for n in code:
        top = n[len(CODE_FOLDER):].split("/", 1)[0]
        parts[top] = parts.get(top, 0) + 1
    listed = ", ".join(f"{k} {v}" if v > 1 else k for k, v in sorted(parts.items()))
    other = [n for n in names if n not in csvs and n not in code and not n.endswith("/")]
    return (f"{', '.join(csvs)}" + (f" and code/ ({len(code)} files: {listed})" if code else ", no code/ folder")
            + (f"; other entries {some_of(other)}" if other else ""))


def read_submission(path, *, classes, id_column: str = "dicom_id") -> tuple[np.ndarray, np.ndarray]:
    frame = _read_frame(Path(path), id_column)
    missing = [c for c in [id_column, *classes] if c not in frame.columns]
    if missing:
        raise SubmissionError(f"{path}: missing columns {some_of(missing)}")
    return frame[id_column].astype(str).to_numpy(), frame[list(classes)].to_numpy(dtype=np.float32)


def check_file(path, *, classes, expected_ids=None, id_column: str = "dicom_id", edition: str | None = None) -> str:
    """The OK line(s) of a valid submission; for a zip, also what it holds, and a warning line when
    `edition`'s rules ask for a code/ folder the zip lacks (or when a bare CSV is checked for one)."""
    from ..data import editions

    path = Path(path)
    frame, names = _read_submission(path, id_column)
    try:
        validate_frame(frame, classes=classes, expected_ids=expected_ids, id_column=id_column)
    except SubmissionError as err:
        raise SubmissionError(f"{path}: {err}") from None
    lines = [f"OK: {path} has {len(frame)} rows, {id_column} + {len(classes)} classes in order, values in [0, 1]"]
    if names is not None:
        lines.append(f"  the zip holds {describe_zip(names)}")
    ed = editions.EDITIONS.get(edition or "")
    has_code = names is not None and any(n.startswith(CODE_FOLDER) for n in names)
    if ed is not None and ed.needs_code and not has_code:
        what = "this zip has no code/ folder" if names is not None else "this is a bare CSV"
        lines.append(f"warning: {ed.title} submissions are one zip of the predictions CSV and a code/ folder with the "
                     f"code that made them; {what}. python -m cxrlt.ensemble writes both (--code DIR adds your own)")
    return "\n".join(lines)


def expected_layout(edition: str | None, sample, id_column: str | None, classes=None) -> tuple[str, list[str], object]:
    """(id column, class order, sample ids or None) a submission is checked against: the sample
    submission when given, else the edition's (default CXR-LT 2023), else `classes` (a run's)."""
    from ..data import editions

    if sample is not None:
        base = classes if classes is not None else (
            editions.get(edition).submission_classes if edition not in (None, "generic") else None)
        if base is None:
            got_id, order, ids = read_sample(sample)
        else:
            got_id, order, ids = layout_from_sample(sample, list(base))
        return id_column or got_id, order, ids
    if classes is not None:
        return id_column or "dicom_id", list(classes), None
    ed = editions.get(edition or "cxrlt2023")
    if ed is None:
        raise SubmissionError("--edition generic has no fixed class list: pass --sample-submission or --runs")
    return id_column or ed.id_column, list(ed.submission_classes), None


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.submission", __doc__)
    parser.add_argument("--check", required=True, type=Path, help="submission CSV (or .zip, its contents listed) to "
                                                                     "validate")
    parser.add_argument("--labels", type=Path, help="test image list; its ids must each appear once")
    parser.add_argument("--edition", help="cxrlt2023 (default) | cxrlt2024-task1 | cxrlt2024-task2 | cxrlt2026-task1")
    parser.add_argument("--sample-submission", type=Path, help="official sample file (a CSV, or a zip holding one): "
                                                               "header order, id column and id list")
    parser.add_argument("--id-column", help="default: the edition's (dicom_id; ImageID for 2026) or the sample's")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    expected = None
    try:
        id_column, order, sample_ids = expected_layout(args.edition, args.sample_submission, args.id_column)
        expected = sample_ids
        if args.labels:
            from ..data.dataset import read_labels

            expected = read_labels(args.labels, classes=order, require_labels=False, allow_outside_root=True,
                                   edition=args.edition or "auto").ids
            if sample_ids is not None and set(map(str, sample_ids)) != set(map(str, expected)):
                raise SubmissionError(f"{args.labels} and {args.sample_submission} list different images")
        print(check_file(args.check, classes=order, expected_ids=expected, id_column=id_column,
                         edition=args.edition or (None if args.sample_submission else "cxrlt2023")))
    except (SubmissionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
