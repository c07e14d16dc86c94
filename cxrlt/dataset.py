"""Read a label CSV into paths, a label matrix and patient/study ids, refusing bad input loudly.

Accepted layouts (columns are found by name, case-sensitive):
- CXR-LT 2023: ``path`` (relative to an image root), ``study_id``, ``ViewPosition``, class columns;
  the patient comes from the MIMIC path ``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``.
- CXR-LT 2024: ``dicom_id, subject_id, study_id, ViewPosition, fpath`` + class columns.
- Generic / NIH: a path column, an optional patient column, 0/1 class columns.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import classes as cls

PATH_COLUMNS = ("path", "fpath", "Path", "filepath", "file", "image", "Image Index")
ID_COLUMNS = ("dicom_id", "image_id", "id")
PATIENT_COLUMNS = ("subject_id", "patient_id", "Patient ID", "patient")
STUDY_COLUMNS = ("study_id", "study")
VIEW_COLUMNS = ("ViewPosition", "view", "View Position")
METADATA_COLUMNS = set(PATH_COLUMNS + ID_COLUMNS + PATIENT_COLUMNS + STUDY_COLUMNS + VIEW_COLUMNS) | {
    "split", "fold", "Sex", "Age", "sex", "age", "license", "doi", "url", "finding",
}
UNCERTAIN_POLICIES = ("error", "zero", "one", "ignore")

_MIMIC_PATIENT = re.compile(r"(?:^|/)p(\d{8})(?:/|$)")
_MIMIC_STUDY = re.compile(r"(?:^|/)s(\d{8})(?:/|$)")

CXRLT_HELP = (
    "CXR-LT 2023 data come from PhysioNet (credentialed access): MIMIC-CXR-JPG 2.0.0 images and the "
    "CXR-LT label files (train.csv, development.csv, test list) from "
    "physionet.org/content/cxr-lt-iccv-workshop-cvamd/. Expected columns: a path column "
    "('path' or 'fpath', relative to --image-root), 'study_id', 'ViewPosition', an optional "
    "'dicom_id'/'subject_id', and one 0/1 column per class. To try cxrlt without them, add --demo."
)


class LabelFileError(ValueError):
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
    classes: str | Sequence[str] | None = "auto",
    require_labels: bool = True,
    uncertain: str = "error",
    allow_outside_root: bool = False,
    check_files: bool = False,
) -> LabelTable:
    """Parse and validate a label CSV. Every problem raises LabelFileError naming file/rows/columns."""
    csv_path = Path(csv_path)
    if uncertain not in UNCERTAIN_POLICIES:
        raise LabelFileError(f"--uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    frame = _read_csv(csv_path)
    where = str(csv_path)

    path_col = _first_present(frame, PATH_COLUMNS)
    if path_col is None:
        raise LabelFileError(
            f"{where}: no image path column; expected one of {list(PATH_COLUMNS)}, found {list(frame.columns)[:12]}"
        )
    rel_paths = frame[path_col].astype(str).str.strip()
    blank = np.flatnonzero((rel_paths == "") | frame[path_col].isna().to_numpy())
    if len(blank):
        raise LabelFileError(f"{where}: empty '{path_col}' in rows {_rows(blank)}")

    root = Path(image_root) if image_root is not None else csv_path.parent
    paths = _resolve_paths(rel_paths.tolist(), root, where, path_col, allow_outside_root)

    id_col = _first_present(frame, ID_COLUMNS)
    ids = frame[id_col].astype(str).to_numpy() if id_col else np.array([Path(p).stem for p in rel_paths])
    _check_unique(ids, where, id_col or f"{path_col} (file stem)")

    patients = _patients(frame, rel_paths, ids)
    studies = _studies(frame, rel_paths, ids)
    view_col = _first_present(frame, VIEW_COLUMNS)
    views = frame[view_col].fillna("").astype(str).to_numpy() if view_col else np.full(len(frame), "", dtype=object)

    class_names = _class_columns(frame, classes, where)
    labels = mask = None
    present = [c for c in class_names if c in frame.columns]
    if present:
        labels, mask = _parse_labels(frame, class_names, where, uncertain)
    elif require_labels:
        raise LabelFileError(f"{where}: no class columns found. {CXRLT_HELP}")

    table = LabelTable(source=csv_path, ids=ids, paths=np.asarray(paths), patients=patients, studies=studies,
                       views=np.asarray(views), classes=tuple(class_names), labels=labels, mask=mask)
    if check_files:
        missing = [p for p in table.paths if not os.path.isfile(p)]
        if missing:
            raise LabelFileError(
                f"{where}: {len(missing)} of {len(table)} image files do not exist under {root}, e.g. "
                f"{missing[:3]}. Check --image-root (the folder the '{path_col}' column is relative to)."
            )
    return table


def _read_csv(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise LabelFileError(f"label file {csv_path} does not exist. {CXRLT_HELP}")
    try:
        frame = pd.read_csv(csv_path, encoding="utf-8", dtype=str, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError as err:
        line = _first_non_utf8_line(csv_path)
        raise LabelFileError(f"{csv_path}: line {line} is not UTF-8 ({err.reason}); re-save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise LabelFileError(f"{csv_path}: the file is empty; expected a header row and one row per image") from None
    except pd.errors.ParserError as err:
        raise LabelFileError(f"{csv_path}: not a readable CSV ({err})") from None
    if frame.empty:
        raise LabelFileError(f"{csv_path}: has a header but no rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _first_non_utf8_line(path: Path) -> int:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _first_present(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in frame.columns), None)


def _rows(index: np.ndarray, limit: int = 5) -> str:
    """CSV row numbers as a user sees them in an editor (header = line 1)."""
    shown = ", ".join(str(int(i) + 2) for i in index[:limit])
    return f"{shown}{'' if len(index) <= limit else f' (+{len(index) - limit} more)'} (line numbers, header = 1)"


def _resolve_paths(rel: list[str], root: Path, where: str, col: str, allow_outside: bool) -> list[str]:
    root_abs = os.path.abspath(root)
    out = []
    for row, p in enumerate(rel):
        if os.path.isabs(p):
            full = os.path.normpath(p)
        else:
            full = os.path.normpath(os.path.join(root_abs, p))
            if not allow_outside and not (full == root_abs or full.startswith(root_abs + os.sep)):
                raise LabelFileError(
                    f"{where}: row {row + 2}, column '{col}': {p!r} points outside the image root {root_abs}; "
                    "fix the path or pass --allow-outside-root if that is intended"
                )
        out.append(full)
    return out


def _check_unique(ids: np.ndarray, where: str, col: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise LabelFileError(f"{where}: {len(dup)} duplicate ids in '{col}', e.g. {list(dup[:5])}; each image must appear once")


def _patients(frame: pd.DataFrame, rel_paths: pd.Series, ids: np.ndarray) -> np.ndarray:
    col = _first_present(frame, PATIENT_COLUMNS)
    if col:
        return frame[col].astype(str).to_numpy()
    found = rel_paths.str.extract(_MIMIC_PATIENT, expand=False)
    if found.notna().all():
        return found.to_numpy(dtype=str)
    # No patient information: every image is its own group (documented; folds cannot prevent leakage).
    return ids.copy()


def _studies(frame: pd.DataFrame, rel_paths: pd.Series, ids: np.ndarray) -> np.ndarray:
    col = _first_present(frame, STUDY_COLUMNS)
    if col:
        return frame[col].astype(str).to_numpy()
    found = rel_paths.str.extract(_MIMIC_STUDY, expand=False)
    return found.to_numpy(dtype=str) if found.notna().all() else ids.copy()


def _class_columns(frame: pd.DataFrame, classes, where: str) -> list[str]:
    wanted = cls.resolve_schema(classes)
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
        return list(wanted)
    candidates = [c for c in frame.columns if c not in METADATA_COLUMNS]
    out = []
    for c in candidates:
        values = set(frame[c].dropna().astype(str).str.strip().unique())
        if values and values <= {"0", "1", "0.0", "1.0", "-1", "-1.0"}:
            out.append(c)
    return out


def _parse_labels(frame: pd.DataFrame, class_names: list[str], where: str, uncertain: str):
    raw = frame[class_names]
    numeric = raw.apply(lambda s: pd.to_numeric(s.str.strip() if s.dtype == object else s, errors="coerce"))
    values = numeric.to_numpy(dtype=np.float64)
    bad_text = raw.notna().to_numpy() & np.isnan(values)
    if bad_text.any():
        r, c = np.argwhere(bad_text)[0]
        raise LabelFileError(
            f"{where}: {int(bad_text.sum())} non-numeric label values, first at line {r + 2}, column "
            f"'{class_names[c]}': {raw.iat[r, c]!r}; labels must be 0 or 1"
        )
    uncertain_cells = np.isnan(values) | (values == -1)
    other = ~uncertain_cells & ~np.isin(values, (0.0, 1.0))
    if other.any():
        r, c = np.argwhere(other)[0]
        raise LabelFileError(
            f"{where}: {int(other.sum())} label values outside {{0, 1}}, first at line {r + 2}, column "
            f"'{class_names[c]}': {values[r, c]!r}"
        )
    mask = None
    if uncertain_cells.any():
        if uncertain == "error":
            rows = np.unique(np.argwhere(uncertain_cells)[:, 0])
            cols = sorted({class_names[c] for c in np.argwhere(uncertain_cells)[:, 1]})
            raise LabelFileError(
                f"{where}: {int(uncertain_cells.sum())} uncertain (-1) or blank labels in rows {_rows(rows)}, "
                f"columns {cols[:6]}; choose a policy with --uncertain zero|one|ignore"
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
