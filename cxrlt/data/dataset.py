"""Read a label CSV into paths, a label matrix and patient/study ids, refusing bad input loudly.

Accepted layouts (columns are found by name, case-sensitive):
- CXR-LT 2023: ``path`` (relative to an image root), ``study_id``, ``ViewPosition``, class columns;
  the patient comes from the MIMIC path ``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``.
- CXR-LT 2024: ``dicom_id, subject_id, study_id, ViewPosition, fpath`` + class columns.
- CXR-LT 2026: ``ImageID`` (the PadChest PNG file name: id and path; PadChest keeps the files in
  numbered sub-folders, found by `image_index`), ``StudyDate_DICOM``, ``PatientID`` + class columns.
  The organisers' files hold PatientID rounded to three significant digits (``1.90E+38``): kept as
  text and grouped on as given (see `_patients`).
- Generic / NIH: a path column, an optional patient column, 0/1 class columns.

Which edition a file is (its class list and order, its id column) is `editions.py`'s business;
`data.edition: auto` detects it from the header.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..config.schema import UNCERTAIN_POLICIES
from . import classes as cls, editions as eds
from ..utils.errors import UserError

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "fpath", "Path", "filepath", "file", "image", "Image Index", "ImageID")
ID_COLUMNS = ("dicom_id", "image_id", "id", "ImageID")
PATIENT_COLUMNS = ("subject_id", "patient_id", "Patient ID", "patient", "PatientID")
STUDY_COLUMNS = ("study_id", "study")
VIEW_COLUMNS = ("ViewPosition", "view", "View Position")
METADATA_COLUMNS = set(PATH_COLUMNS + ID_COLUMNS + PATIENT_COLUMNS + STUDY_COLUMNS + VIEW_COLUMNS) | {
    "split", "fold", "Sex", "Age", "sex", "age", "license", "doi", "url", "finding",
    "StudyDate_DICOM", "ViewCodeSequence_CodeMeaning",
}
# A number in scientific notation. CXR-LT 2026's own files hold every PatientID so ('1.90E+38': the
# 38-digit PadChest id rounded to 3 significant digits): data, grouped on as given (`_patients`).
_ROUNDED_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?[eE][+-]?\d+$")
# Cell texts that mean "no value" (what pandas, R and spreadsheets write for a missing number):
# a label cell holding one of these is treated like a blank cell, i.e. by the --uncertain policy.
MISSING_TEXTS = {"nan", "na", "n/a"}
_LABEL_TEXTS = {"0", "1", "0.0", "1.0", "-1", "-1.0"}

_MIMIC_PATIENT = re.compile(r"(?:^|/)p(\d{8})(?:/|$)")
_MIMIC_STUDY = re.compile(r"(?:^|/)s(\d{8})(?:/|$)")

CXRLT_HELP = (
    "CXR-LT 2023 data come from PhysioNet (credentialed access): MIMIC-CXR-JPG 2.0.0 images and the "
    "CXR-LT label files (train.csv, development.csv, test list) from "
    "physionet.org/content/cxr-lt-iccv-workshop-cvamd/. Expected columns: a path column "
    "('path' or 'fpath', relative to --image-root), 'study_id', 'ViewPosition', an optional "
    "'dicom_id'/'subject_id', and one 0/1 column per class. To try cxrlt without them, add --demo."
)


class LabelFileError(UserError):
    """A label CSV that cannot be used as it is; the message says where and what to do."""


@dataclass(frozen=True)
class LabelTable:
    """One image per row: everything the rest of cxrlt needs from a label CSV."""

    source: Path
    ids: np.ndarray            # str, unique: dicom_id or the file stem
    paths: np.ndarray          # str, absolute file paths
    patients: np.ndarray       # str; images of one patient never cross folds
    studies: np.ndarray        # str
    views: np.ndarray          # str ('' when unknown)
    classes: tuple[str, ...]
    labels: np.ndarray | None  # float32 [N, C] of 0/1, None for an unlabelled image list
    mask: np.ndarray | None = field(default=None)  # float32 [N, C], 0 where a label is ignored
    edition: str = "generic"   # editions.NAMES: what the file was read as
    id_column: str = "dicom_id"  # the column `ids` came from (a submission's first column)
    task: str = "multilabel"   # multilabel | multiclass | ordinal (single-label rows are one-hot; data/single_label.py)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "LabelTable":
        index = np.asarray(index)
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return replace(self, ids=self.ids[index], paths=self.paths[index], patients=self.patients[index],
                       studies=self.studies[index], views=self.views[index], labels=pick(self.labels),
                       mask=pick(self.mask))

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def class_counts(self) -> np.ndarray:
        if self.labels is None:
            raise LabelFileError(f"{self.source}: has no label columns")
        return self.labels.sum(axis=0)


def read_labels(
    csv_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    classes: str | Sequence[str] | None = "edition",
    require_labels: bool = True,
    uncertain: str = "error",
    allow_outside_root: bool = False,
    check_files: bool = False,
    edition: str = "auto",
    exclude: str | os.PathLike | None = None,
    split: str | None = None,
    index_dir: str | os.PathLike | None = None,
) -> LabelTable:
    """Parse and validate a label CSV. Every problem raises LabelFileError naming file/rows/columns.

    `edition`: auto (detected from the header, one log line says which and why) or an
    editions.NAMES name. `classes`: "edition" (the edition's class list and order; for a generic
    file every 0/1 column), "auto" (every 0/1 column, whatever the edition: also how a near-miss of
    an edition's class list is accepted), a schema name or an explicit list. `exclude`: a file of
    ids (editions' Removal.csv) whose rows are dropped before any other row check, so a removed
    image never stops a run (the image screen runs later, on the table returned). `split`: keep only
    the rows whose 'split' column holds this value (CXR-LT 2024's labels.csv lists its train,
    development and test rows in one file); None or "all" reads every row. `index_dir`: where the index of
    an image root with sub-folders is cached (`image_index`; a run directory)."""
    csv_path = Path(csv_path)
    if uncertain not in UNCERTAIN_POLICIES:
        raise LabelFileError(f"--uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    frame = _read_csv(csv_path)
    where = str(csv_path)
    try:
        # the near-miss check guards the edition's own list: --classes auto or an explicit list opt out
        found = eds.resolve(edition, list(frame.columns), where, classes_auto=classes != "edition")
        if classes == "edition":
            wanted = found.edition.classes if found.edition else None
        elif isinstance(classes, str) and classes in eds.EDITIONS:
            wanted = eds.EDITIONS[classes].classes
        else:
            wanted = cls.resolve_schema(classes)
    except ValueError as err:
        raise LabelFileError(str(err)) from None
    ed = found.edition

    path_col = _first_present(frame, ((ed.path_column,) if ed and ed.path_column else ()) + PATH_COLUMNS)
    if path_col is None:
        header = ",".join(map(str, frame.columns))
        hint = (" (the header has tabs or semicolons: the file must be comma-separated)"
                if re.search(r"[\t;]", header) else "")
        raise LabelFileError(f"{where}: no image path column; expected one of {list(PATH_COLUMNS)}, "
                             f"found {list(frame.columns)[:12]}{hint}")
    id_col = _first_present(frame, ((ed.id_column,) if ed and ed.id_column else ()) + ID_COLUMNS)
    if split is not None:
        frame = _keep_split(frame, split, where)
    if exclude is not None:
        frame = _drop_excluded(frame, read_exclusions(exclude), id_col, path_col, where)
    lines = frame.index.to_numpy()
    blank = frame[path_col].isna().to_numpy()
    if blank.any():
        raise LabelFileError(f"{where}: empty '{path_col}' in rows {_rows(lines[blank])}")
    rel_paths = frame[path_col].str.strip()

    root = Path(image_root) if image_root is not None else csv_path.parent
    if image_root is not None:  # bare file names under a root of sub-folders (PadChest's 0/ ... 54/)
        from . import image_index

        rel_paths = image_index.place(rel_paths, root, where=where, column=path_col, cache_dir=index_dir)
    paths = _resolve_paths(rel_paths, root, where, path_col, allow_outside_root, check_absolute=image_root is not None)

    if id_col:
        blank_ids = frame[id_col].isna().to_numpy()
        if blank_ids.any():
            raise LabelFileError(f"{where}: empty '{id_col}' in rows {_rows(lines[blank_ids])}")
        ids = frame[id_col].str.strip().to_numpy(dtype=object)
        id_name = id_col
    elif ed is None:
        # generic: the path as written is the id (file stems collide when two folders hold image.png),
        # and the submission's id column is headed by the path column's name
        ids, id_name = rel_paths.to_numpy(dtype=object), path_col
    else:
        # an edition's file without its id column (CXR-LT 2023's train.csv): the file stem is the dicom_id
        ids = rel_paths.str.rstrip("/").str.rsplit("/", n=1).str[-1].str.replace(r"(?<=.)\.[^.]*$", "", regex=True)
        ids = ids.to_numpy(dtype=str)
        id_name = ed.id_column or "dicom_id"
    _check_unique(ids, lines, where, id_col or (f"{path_col} (file stem)" if ed else path_col))

    patients = _patients(frame, rel_paths, ids, where)
    studies = _studies(frame, rel_paths, ids)
    view_col = _first_present(frame, VIEW_COLUMNS)
    views = frame[view_col].fillna("").astype(str).to_numpy() if view_col else np.full(len(frame), "", dtype=object)

    class_names = _class_columns(frame, wanted, where)
    labels = mask = None
    present = [c for c in class_names if c in frame.columns]
    if present:
        labels, mask = _parse_labels(frame, class_names, where, uncertain)
        _check_patient_groups(frame, patients, studies, where)  # folds are made from labelled tables
    elif require_labels:
        raise LabelFileError(f"{where}: no class columns found. {CXRLT_HELP}")

    table = LabelTable(source=csv_path, ids=ids, paths=np.asarray(paths), patients=patients, studies=studies,
                       views=np.asarray(views), classes=tuple(class_names), labels=labels, mask=mask,
                       edition=found.name, id_column=id_name)
    if check_files:
        missing = [i for i, p in enumerate(table.paths) if not os.path.isfile(p)]
        if missing:
            raise LabelFileError(
                f"{where}: {len(missing)} of {len(table)} image files do not exist under {root}, e.g. "
                f"{[str(table.paths[i]) for i in missing[:3]]} (rows {_rows(lines[missing], 3)}). "
                f"Check --image-root (the folder the '{path_col}' column is relative to)."
            )
    return table


def training_rows(data: dict) -> dict:
    """The read_labels arguments that pick a run's training rows as its training did (a run's
    `data` settings): its edition, exclusion list and split. Out-of-fold scoring, reports and
    fused runs read the training CSV again and must see the same rows."""
    return {"edition": data.get("edition", "auto"), "exclude": data.get("exclude"), "split": data.get("split")}


def read_exclusions(path: str | os.PathLike) -> set[str]:
    """The ids listed in an exclusion file: a CSV with an id column (ImageID, dicom_id, id, ...,
    or a path column), or one id per line (an optional header line is skipped). CXR-LT 2026's
    Removal.csv is read as it comes."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"exclusion file {path} does not exist (--exclude / data.exclude)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelFileError(f"exclusion file {path} is not UTF-8 text; re-save it as UTF-8") from None
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row and any(c.strip() for c in row)]
    if not rows:
        raise LabelFileError(f"exclusion file {path} is empty; expected one id per line or a CSV with an id column")
    header = [c.strip() for c in rows[0]]
    known = [c for c in ID_COLUMNS + PATH_COLUMNS if c in header]
    if known:
        col = header.index(known[0])
        values = [row[col].strip() for row in rows[1:] if len(row) > col]
    elif len(header) == 1:
        values = [row[0].strip() for row in rows]
    else:
        raise LabelFileError(f"exclusion file {path}: {len(header)} columns but none is an id column "
                             f"({', '.join(ID_COLUMNS)}); keep one id per line or name the id column")
    return {v for v in values if v}


def _drop_excluded(frame: pd.DataFrame, excluded: set[str], id_col: str | None, path_col: str,
                   where: str) -> pd.DataFrame:
    """The rows whose id (or path as written) is not in `excluded`; the count is logged."""
    hit = frame[path_col].fillna("").str.strip().isin(excluded).to_numpy(copy=True)
    if id_col:
        hit |= frame[id_col].fillna("").str.strip().isin(excluded).to_numpy()
    log.info("%s: %d of %d images left out by the exclusion list (%d ids listed)", where, int(hit.sum()),
             len(frame), len(excluded))
    if hit.all():
        raise LabelFileError(f"{where}: the exclusion list removes every image")
    return frame[~hit]


def _keep_split(frame: pd.DataFrame, split: str, where: str) -> pd.DataFrame:
    """The rows of one split when the CSV has a 'split' column (CXR-LT 2024's labels.csv: its train,
    development and test rows in one file); a CSV without the column is returned as it is.

    Training on every row of such a file would train on the rows the challenge scores, so the
    rows of other splits are left out and counted; a file without any row of `split` is refused."""
    if "split" not in frame.columns or split.strip().lower() == "all":
        return frame
    values = frame["split"].fillna("").str.strip()
    keep = (values.str.lower() == split.strip().lower()).to_numpy()
    counts = values[~keep].replace("", "(blank)").value_counts()
    if not keep.any():
        found = ", ".join(f"{v!r} {n}" for v, n in values.replace("", "(blank)").value_counts().items())
        raise LabelFileError(f"{where}: its 'split' column holds no {split!r} row (found {found}); name the rows to "
                             "train on with --set data.split=VALUE, or --set data.split=all to use every row")
    if len(counts):
        log.info("%s: training on the %d rows whose split is %r; %d rows of other splits left out (%s): they are "
                 "the challenge's own evaluation rows (data.split)", where, int(keep.sum()), split,
                 int((~keep).sum()), ", ".join(f"{v} {n}" for v, n in counts.items()))
    return frame[keep]


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """The CSV as strings (blank cells NaN), indexed by each row's line number in the file.

    Parsed with the csv module rather than pandas' reader, because pandas quietly repairs
    structural mistakes (a row with one field too many turns the first column into the index,
    duplicate names become 'A.1', blank names 'Unnamed: 3'); here each is an error naming the line.
    """
    if not csv_path.exists():
        raise LabelFileError(f"label file {csv_path} does not exist. {CXRLT_HELP}")
    if not csv_path.is_file():
        raise LabelFileError(f"label file {csv_path} is not a file (a folder?); pass the CSV itself")
    try:
        raw = csv_path.read_bytes()
    except OSError as err:
        raise LabelFileError(f"label file {csv_path} cannot be read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the header
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise LabelFileError(f"{csv_path}: line {line} is not UTF-8 ({err.reason}); "
                             "re-save the file as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise LabelFileError(f"{csv_path}: line {line} holds a NUL byte; is this a binary file rather than a CSV?")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, lines, header = [], [], None
    try:
        for row in reader:
            if not any(row) or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line, or a row of bare commas (spreadsheet exports end with some)
            if header is None:
                header = [cell.strip() for cell in row]
                header_line = reader.line_num
                continue
            if len(row) != len(header):
                raise LabelFileError(
                    f"{csv_path}: line {reader.line_num} has {len(row)} fields but the header (line {header_line}) "
                    f"has {len(header)}; a missing or extra comma, or an unquoted comma inside a value?"
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise LabelFileError(f"{csv_path}: line {reader.line_num} is not readable CSV ({err})") from None
    if header is None:
        raise LabelFileError(f"{csv_path}: the file is empty; expected a header row and one row per image")
    if not rows:
        raise LabelFileError(f"{csv_path}: has a header but no rows")
    cells = np.array(rows, dtype=object)
    cells[cells == ""] = np.nan  # whitespace-only cells are blanked where they are read (path, ids, labels)
    unnamed = [i for i, name in enumerate(header) if not name]
    filled = [i + 1 for i in unnamed if not pd.isna(cells[:, i]).all()]
    if filled:
        raise LabelFileError(f"{csv_path}: header column(s) {filled[:5]} (counting from 1) have no name but hold "
                             "values; name them in the header")
    keep = [i for i in range(len(header)) if i not in unnamed]  # empty unnamed columns: trailing commas
    header = [header[i] for i in keep]
    _check_header(csv_path, header)
    return pd.DataFrame(cells[:, keep], columns=header, index=pd.Index(lines, name="line"))


def _check_header(csv_path: Path, names: list[str]) -> None:
    seen, dup = set(), []
    for name in names:
        if name in seen and name not in dup:
            dup.append(name)
        seen.add(name)
    if dup:
        raise LabelFileError(f"{csv_path}: duplicate column names in the header: {dup[:5]}; "
                             "each column must be named once")


def _first_present(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in frame.columns), None)


def _rows(lines, limit: int = 5) -> str:
    """Line numbers as a user sees them in an editor (frame.index holds them)."""
    lines = np.asarray(lines)
    shown = ", ".join(str(int(i)) for i in lines[:limit])
    return f"{shown}{'' if len(lines) <= limit else f' (+{len(lines) - limit} more)'} (line numbers, header = 1)"


def _resolve_paths(rel: pd.Series, root: Path, where: str, col: str, allow_outside: bool,
                   check_absolute: bool) -> np.ndarray:
    """Absolute file paths. A relative path that climbs out of the root ('..') is refused unless
    allowed: a label file should not reach into other data sets. Absolute paths are the user's
    explicit choice; they are held to the root only when an image root was given. A path inside
    the root that reaches elsewhere through a symlink (a linked file or folder under the root) is
    refused the same way (`_symlink_escapes`)."""
    root_abs = os.path.normpath(os.path.abspath(root))
    prefix = root_abs.rstrip(os.sep) + os.sep
    # Plain relative paths (no '..', '.', '//', leading '/') need no normalising: one vectorised join.
    odd = rel.str.contains(r"(?:^|/)\.\.?(?:/|$)|//|^/|\\", regex=True).to_numpy()
    full = (prefix + rel).to_numpy(dtype=object)
    escapes = []
    for i in np.flatnonzero(odd):
        p = rel.iat[i]
        full[i] = os.path.normpath(p if os.path.isabs(p) else os.path.join(root_abs, p))
        inside = full[i] == root_abs or full[i].startswith(prefix)
        if not inside and not allow_outside and (check_absolute or not os.path.isabs(p)):
            escapes.append(i)
    if escapes:
        first = rel.iat[escapes[0]]
        raise LabelFileError(
            f"{where}: {len(escapes)} path(s) in column '{col}' point outside the image root {root_abs}, "
            f"first {first!r} in rows {_rows(rel.index.to_numpy()[escapes])}; fix the paths (or --image-root), "
            "or pass --allow-outside-root (data.allow_outside_root) if that is intended"
        )
    if not allow_outside:
        held = np.ones(len(rel), bool) if check_absolute else ~rel.str.startswith("/").to_numpy()
        linked = _symlink_escapes(full, np.flatnonzero(held), root_abs)
        if linked:
            first, target = rel.iat[linked[0][0]], linked[0][1]
            raise LabelFileError(
                f"{where}: {len(linked)} path(s) in column '{col}' lead outside the image root {root_abs} through "
                f"a symlink, first {first!r} (-> {target}) in rows {_rows(rel.index.to_numpy()[[i for i, _ in linked]])}"
                "; copy the images into the root or point --image-root at where they are, or pass "
                "--allow-outside-root (data.allow_outside_root) if following the links is intended")
    return full


def _symlink_escapes(full: np.ndarray, rows: np.ndarray, root_abs: str) -> list[tuple[int, str]]:
    """(row, real target) of the paths inside `root_abs` that resolve outside its real path.

    A symlink under the image root is as much a way out as '..', and lexical checks cannot see it.
    Each directory is resolved once (its parent's real path + one lstat), each file costs one
    lstat: about 0.6 M system calls for CXR-LT's 264,849 images in ~227,000 study folders. Measured
    on a MIMIC-shaped list of 264,849 paths (2 shared cores): +3.0 s on the 2.3 s the rest of
    read_labels takes, paid once per run and command, not per epoch. Files that do not exist are
    not links and pass (the image check reports them)."""
    root_real = os.path.realpath(root_abs)
    inside_root = lambda p: p == root_real or p.startswith(root_real.rstrip(os.sep) + os.sep)  # noqa: E731
    real_dirs = {root_abs: root_real}
    prefix = root_abs.rstrip(os.sep) + os.sep

    def real_dir(folder: str) -> str:
        found = real_dirs.get(folder)
        if found is None:
            parent, name = os.path.split(folder)
            found = os.path.join(real_dir(parent), name)
            if os.path.islink(found):
                found = os.path.realpath(found)
            real_dirs[folder] = found
        return found

    escapes = []
    for i in rows:
        path = full[i]
        if not path.startswith(prefix):  # the root itself, or an allowed absolute path elsewhere
            continue
        folder, name = os.path.split(path)
        target = os.path.join(real_dir(folder), name)
        if os.path.islink(target):
            target = os.path.realpath(target)
        if not inside_root(target):
            escapes.append((int(i), target))
    return escapes


def _check_unique(ids: np.ndarray, lines: np.ndarray, where: str, col: str) -> None:
    frame = pd.DataFrame({"id": ids}, index=lines)
    dup = frame[frame["id"].duplicated(keep=False)]
    if len(dup):
        groups = dup.groupby("id", sort=False).groups
        shown = "; ".join(f"{key!r} in rows {_rows(np.asarray(index), 3)}" for key, index in list(groups.items())[:3])
        raise LabelFileError(f"{where}: {len(groups)} duplicate ids in '{col}': {shown}"
                             f"{' ...' if len(groups) > 3 else ''}; each image must appear once")


def _patients(frame: pd.DataFrame, rel_paths: pd.Series, ids: np.ndarray, where: str) -> np.ndarray:
    """Each image's patient value, as the file writes it (text, never parsed as a number).

    CXR-LT 2026's own files hold PatientID rounded to 3 significant digits ('1.90E+38'). Rounding
    is deterministic: every image of one patient carries one value, so grouping folds on the value
    as given keeps each patient in one fold; one value may stand for several patients, so the
    groups are only coarser. How many distinct values and the largest group are logged."""
    col = _first_present(frame, PATIENT_COLUMNS)
    if col:
        blank = frame[col].isna().to_numpy()
        if blank.any():  # one "nan" patient would pull unrelated images into one fold
            raise LabelFileError(f"{where}: empty '{col}' in rows {_rows(frame.index.to_numpy()[blank])}; "
                                 "every image needs its patient (folds are grouped by patient)")
        values = frame[col].str.strip()
        counts = values.value_counts()
        rounded = int(values.str.fullmatch(_ROUNDED_NUMBER).sum())
        note = ""
        if rounded:
            example = values[values.str.fullmatch(_ROUNDED_NUMBER)].iloc[0]
            note = (f"; {rounded} images carry a rounded number such as {example!r}: one value may stand for several "
                    "patients, so folds group on the value as given (no patient crosses folds, the groups are coarser)")
        log.info("%s: '%s' has %d distinct values for %d images (largest group %r: %d images)%s", where, col,
                 len(counts), len(values), counts.index[0], int(counts.iloc[0]), note)
        return values.to_numpy(dtype=object)
    found = rel_paths.str.extract(_MIMIC_PATIENT, expand=False)
    if found.notna().all():
        return found.to_numpy(dtype=str)
    # No patient information: every image is its own group (documented; folds cannot prevent leakage).
    return ids.copy()


def _studies(frame: pd.DataFrame, rel_paths: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Each image's study. CXR-LT 2026 has no study column: a study is the ImageID's prefix (the part
    before the first '_', PadChest's study number) on one StudyDate_DICOM. Checked against the
    organisers' files: images sharing a prefix and a date always share the patient value, while
    the prefix alone spans several dates (94 of 11,815 prefixes in Removal.csv, up to 1,310 days
    apart) and patient value + date merges other studies (442 groups in Removal.csv)."""
    col = _first_present(frame, STUDY_COLUMNS)
    if col:
        return np.where(frame[col].isna().to_numpy(), ids, frame[col].fillna("").str.strip().to_numpy(dtype=object))
    if "StudyDate_DICOM" in frame.columns:
        names = pd.Series(ids, index=frame.index).astype(str).str.rsplit("/", n=1).str[-1]
        prefix = names.str.split("_", n=1).str[0].str.replace(r"\.[^.]*$", "", regex=True)
        date = frame["StudyDate_DICOM"].fillna("").str.strip()
        return np.where(date == "", prefix, prefix + "/" + date).astype(object)
    found = rel_paths.str.extract(_MIMIC_STUDY, expand=False)
    return found.to_numpy(dtype=str) if found.notna().all() else ids.copy()


def _check_patient_groups(frame: pd.DataFrame, patients: np.ndarray, studies: np.ndarray, where: str) -> None:
    """Refuse only a patient column that would let images of one study fall into different folds: one
    study whose images carry different patient values, or a value unique to every image while the
    studies show images together (an image id in the patient column)."""
    col = _first_present(frame, PATIENT_COLUMNS)
    if col is None or len(patients) < 2:
        return
    grouped = pd.DataFrame({"patient": patients, "study": studies}, index=frame.index)
    repeated = int((grouped["study"].value_counts() > 1).sum())
    if repeated and grouped["patient"].nunique() == len(grouped):
        raise LabelFileError(
            f"{where}: '{col}' holds a different value for every image, while {repeated} studies hold several images: "
            f"it looks like an image id, not a patient id, and folds grouped on it would split studies and patients. "
            "Use the column that names each image's patient")
    per_study = grouped.groupby("study", sort=False)["patient"].nunique()
    split = per_study[per_study > 1]
    if len(split):
        first = split.index[0]
        rows = grouped.index[grouped["study"] == first].to_numpy()
        raise LabelFileError(
            f"{where}: {len(split)} studies hold images of different '{col}' values, e.g. study {first!r} "
            f"(rows {_rows(rows, 4)}: {sorted(set(grouped.loc[rows, 'patient']))[:3]}); folds grouped on '{col}' "
            "would put one study's images in different folds. Give each study's images one patient value")


def _class_columns(frame: pd.DataFrame, wanted: tuple[str, ...] | None, where: str) -> list[str]:
    if wanted is not None:
        missing = [c for c in wanted if c not in frame.columns]
        present = [c for c in wanted if c in frame.columns]
        if missing and present:  # a partly labelled file is a mistake, an unlabelled list is not
            hints = []
            for m in missing[:5]:
                close = difflib.get_close_matches(m, list(frame.columns), n=1)
                hints.append(f"{m!r}" + (f" (found {close[0]!r}?)" if close else ""))
            raise LabelFileError(f"{where}: missing class columns {', '.join(hints)}"
                                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        extra = [c for c in frame.columns if c not in wanted and c not in METADATA_COLUMNS]
        if extra and present:
            log.debug("%s: columns not used as classes: %s", where, extra)
        return list(wanted)
    # auto: a column is a class when its cells are (mostly) label values. A column with a few
    # stray values ('yes', 2) is still a class, so that the parser names the bad cells instead of
    # the class silently disappearing; columns without label values are reported as ignored.
    out, ignored = [], []
    for c in frame.columns:
        if c in METADATA_COLUMNS:
            continue
        cells = frame[c].dropna().astype(str).str.strip()
        cells = cells[~cells.str.lower().isin(MISSING_TEXTS)]
        share = cells.isin(_LABEL_TEXTS).mean() if len(cells) else 0.0
        (out if share >= 0.5 else ignored).append(c)
    if ignored and out:
        log.warning("%s: columns that are not 0/1 labels are ignored: %s (name the classes with --classes "
                    "if one of them is a class)", where, ignored[:10])
    return out


def _cells(raw: pd.DataFrame, bad: np.ndarray, limit: int = 5) -> str:
    """'line 3, column 'B': 'yes'; ...' for the first `limit` flagged cells."""
    where = np.argwhere(bad)
    shown = "; ".join(f"line {raw.index[r]}, column {raw.columns[c]!r}: {raw.iat[r, c]!r}" for r, c in where[:limit])
    return shown + (f"; (+{len(where) - limit} more)" if len(where) > limit else "")


def _cell_value(text: str) -> tuple[float, bool]:
    """(number, is_blank) of one label cell; NaN and not blank for text that is not a number."""
    text = text.strip()
    if text == "" or text.lower() in MISSING_TEXTS:
        return math.nan, True
    try:
        return float(text), False
    except ValueError:
        return math.nan, False


def _parse_labels(frame: pd.DataFrame, class_names: list[str], where: str, uncertain: str):
    raw = frame[class_names]
    # Each distinct cell text is parsed once (a CXR-LT file has ~7 million cells and ~3 distinct texts).
    codes, uniques = pd.factorize(raw.to_numpy(dtype=object).ravel(), use_na_sentinel=True)
    parsed = [_cell_value(str(u)) for u in uniques] + [(math.nan, True)]  # code -1: an empty cell
    values = np.array([v for v, _ in parsed], dtype=np.float64)[codes]
    blank = np.array([b for _, b in parsed], dtype=bool)[codes]
    values, blank = values.reshape(raw.shape), blank.reshape(raw.shape)
    bad_text = ~blank & np.isnan(values)
    if bad_text.any():
        raise LabelFileError(
            f"{where}: {int(bad_text.sum())} non-numeric label values ({_cells(raw, bad_text)}); "
            "labels must be 0 or 1 (-1 or blank for uncertain, see --uncertain)"
        )
    uncertain_cells = blank | (values == -1)
    other = ~uncertain_cells & ~np.isin(values, (0.0, 1.0))
    if other.any():
        raise LabelFileError(
            f"{where}: {int(other.sum())} label values outside {{0, 1}} ({_cells(raw, other)}); "
            "labels must be 0 or 1 (-1 or blank for uncertain, see --uncertain)"
        )
    mask = None
    if uncertain_cells.any():
        if uncertain == "error":
            rows = frame.index.to_numpy()[np.unique(np.argwhere(uncertain_cells)[:, 0])]
            cols = sorted({class_names[c] for c in np.argwhere(uncertain_cells)[:, 1]})
            raise LabelFileError(
                f"{where}: {int(uncertain_cells.sum())} uncertain (-1) or blank labels in rows {_rows(rows)}, "
                f"columns {cols[:6]}{' ...' if len(cols) > 6 else ''}; choose a policy with --uncertain zero|one|ignore"
            )
        fill = {"zero": 0.0, "one": 1.0, "ignore": 0.0}[uncertain]
        if uncertain == "ignore":
            mask = (~uncertain_cells).astype(np.float32)
        values = np.where(uncertain_cells, fill, values)
    return values.astype(np.float32), mask


def check_same_classes(train: LabelTable, other: LabelTable) -> None:
    """Refuse to score or predict with a class list other than the one a model was trained on."""
    if tuple(train.classes) != tuple(other.classes):
        a, b = list(train.classes), list(other.classes)
        raise LabelFileError(
            f"class lists differ: {train.source} has {len(a)} classes, {other.source} has {len(b)}; "
            f"only in the first: {sorted(set(a) - set(b))[:5]}, only in the second: {sorted(set(b) - set(a))[:5]}"
        )
