"""The CXR-LT editions: what each one's label files, classes and submissions look like.

One place for the facts a user would otherwise have to get right by hand (sources: the challenges'
pages and overview papers, the teams' repositories):

- ``cxrlt2023`` (ICCV 2023 CVAMD): MIMIC-CXR-JPG, 26 classes, alphabetical (the order of
  CheXFusion's config.yaml); CSV ``path`` (or ``fpath``), ``study_id``, ``ViewPosition``; submission
  ``dicom_id`` + 26 probabilities, zipped with a ``code/`` folder (CheXFusion's writer packs one).
- ``cxrlt2024-task1`` (MICCAI 2024): MIMIC-CXR-JPG, 40 classes, alphabetical; CSV ``dicom_id,
  subject_id, study_id, ViewPosition, ViewCodeSequence_CodeMeaning, fpath`` + classes.
- ``cxrlt2024-task2``: the 26 classes of 2023 with "No Finding" renamed "Normal". The training
  CSVs are strictly alphabetical (Normal after Nodule) but the sample submission keeps Normal
  where No Finding stood (after Mass, before Nodule; the 5th-place team's ``sub_cols_task2``), so
  the model order and the submission order differ and columns are always written by name.
  PhysioNet's 2.0.0 ``labels.csv`` holds every row with a ``split`` column (``data.split``).
- ``cxrlt2026-task1`` (ISBI 2026): PadChest + NIH, 30 classes in the organisers' (not
  alphabetical) order; CSV ``ImageID`` (the PadChest PNG file name, also the path; the PNGs lie in
  numbered sub-folders), ``StudyDate_DICOM``, ``PatientID`` (rounded by the organisers to 3
  significant digits, ``1.90E+38``, kept as text) + classes; a study is the ImageID prefix on one
  date. Submission: a zip of the CSV and a ``code/`` folder (the organisers' rules). The rules
  name the id column ``dicom_id`` while both public team writers use ``ImageID``: the default is
  ``ImageID`` and a sample submission's own header wins (``--sample-submission``).
- ``generic``: any path column + 0/1 columns; the submission's id column is the CSV's own id
  column, or its path column when it has none.

The zero-shot tasks (2024 task 3, 2026 task 2) need a vision-language model: out of scope.
Nothing here imports TensorFlow or pandas: the config check uses the names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

from . import classes as cls
from ..config.schema import DEMO_EDITIONS  # noqa: F401  (--demo-edition YEAR -> edition; data.demo_edition)
from ..utils.errors import UserError

log = logging.getLogger(__name__)

CXRLT2024_TASK1 = (
    "Adenopathy", "Atelectasis", "Azygos Lobe", "Calcification of the Aorta", "Cardiomegaly",
    "Clavicle Fracture", "Consolidation", "Edema", "Emphysema", "Enlarged Cardiomediastinum", "Fibrosis",
    "Fissure", "Fracture", "Granuloma", "Hernia", "Hydropneumothorax", "Infarction", "Infiltration",
    "Kyphosis", "Lobar Atelectasis", "Lung Lesion", "Lung Opacity", "Mass", "Nodule", "Normal",
    "Pleural Effusion", "Pleural Other", "Pleural Thickening", "Pneumomediastinum", "Pneumonia",
    "Pneumoperitoneum", "Pneumothorax", "Pulmonary Embolism", "Pulmonary Hypertension", "Rib Fracture",
    "Round(ed) Atelectasis", "Subcutaneous Emphysema", "Support Devices", "Tortuous Aorta", "Tuberculosis",
)
# Task 2's sample submission: 2023's order with "Normal" where "No Finding" stood.
CXRLT2024_TASK2_SUBMISSION = tuple("Normal" if c == "No Finding" else c for c in cls.CXRLT2023)
# ... and its training CSVs: the same names, strictly alphabetical (Normal after Nodule).
CXRLT2024_TASK2 = tuple(sorted(CXRLT2024_TASK2_SUBMISSION))

CXRLT2026_TASK1 = (
    "Normal", "aortic elongation", "cardiomegaly", "pleural effusion", "Nodule", "atelectasis",
    "pleural thickening", "aortic atheromatosis", "Support Devices", "alveolar pattern", "fracture", "Hernia",
    "Emphysema", "azygos lobe", "Hydropneumothorax", "Kyphosis", "Mass", "Pneumothorax",
    "Subcutaneous Emphysema", "pneumoperitoneo", "vascular hilar enlargement", "vertebral degenerative changes",
    "hyperinflated lung", "interstitial pattern", "central venous catheter", "hypoexpansion", "bronchiectasis",
    "hemidiaphragm elevation", "sternotomy", "calcified densities",
)

# A CSV holding at least this share of an edition's classes, but not all, is a near-miss: most
# likely a column lost in an export, which would otherwise train a smaller model without a word.
NEAR_MISS_SHARE = 0.6


class EditionError(UserError):
    """A label file that looks like a CXR-LT edition but is not quite one, or an unknown edition name."""


@dataclass(frozen=True)
class Edition:
    """The layout of one edition's files. Column fields name the edition's own column (None: none)."""

    name: str
    title: str
    classes: tuple[str, ...]             # model / training order (the training CSV's)
    submission_classes: tuple[str, ...]  # the official submission's column order (by name)
    id_column: str | None                # image id; also the submission's first column
    path_column: str | None
    patient_column: str | None
    study_column: str | None
    view_column: str | None
    marker_columns: tuple[str, ...] = ()  # metadata columns that only this edition's files have
    head: tuple[str, ...] | None = None  # the organisers' / a published grouping; None: terciles
    tail: tuple[str, ...] | None = None
    needs_code: bool = False  # the submission zip must hold a code/ folder (2026: the rules; 2023: CheXFusion's zip)

    def groups(self, classes: Sequence[str], train_counts: Mapping[str, float] | Sequence[float] | None):
        """head / medium / tail per class: the published grouping where there is one (2023), else
        training-frequency terciles (the 2024 and 2026 organisers published none)."""
        if self.head is not None and set(classes) == set(self.classes):
            return {c: "head" if c in self.head else "tail" if c in self.tail else "medium" for c in classes}
        return cls.class_groups(classes, train_counts)


EDITIONS: dict[str, Edition] = {e.name: e for e in (
    Edition("cxrlt2023", "CXR-LT 2023", cls.CXRLT2023, cls.CXRLT2023, "dicom_id", "path", "subject_id",
            "study_id", "ViewPosition", head=cls.CXRLT2023_HEAD, tail=cls.CXRLT2023_TAIL, needs_code=True),
    Edition("cxrlt2024-task1", "CXR-LT 2024 task 1", CXRLT2024_TASK1, CXRLT2024_TASK1, "dicom_id", "fpath",
            "subject_id", "study_id", "ViewPosition", ("ViewCodeSequence_CodeMeaning",)),
    Edition("cxrlt2024-task2", "CXR-LT 2024 task 2", CXRLT2024_TASK2, CXRLT2024_TASK2_SUBMISSION, "dicom_id",
            "fpath", "subject_id", "study_id", "ViewPosition", ("ViewCodeSequence_CodeMeaning",)),
    Edition("cxrlt2026-task1", "CXR-LT 2026 task 1", CXRLT2026_TASK1, CXRLT2026_TASK1, "ImageID", "ImageID",
            "PatientID", None, None, ("ImageID", "StudyDate_DICOM", "PatientID"), needs_code=True),
)}
NAMES = ("auto", *EDITIONS, "generic")  # data.edition (config/schema.py EDITION_NAMES, kept in step by a test)


def submission_order(edition: Edition | None, classes: Sequence[str]) -> list[str]:
    """The official submission column order when `classes` are the edition's, else the training order."""
    if edition is not None and set(classes) == set(edition.submission_classes):
        return list(edition.submission_classes)
    return list(classes)


def class_groups(name: str, classes: Sequence[str], counts) -> dict[str, str]:
    """head / medium / tail per class for a file read as edition `name` (generic: terciles)."""
    edition = get(name)
    return edition.groups(classes, counts) if edition else cls.class_groups(classes, counts)


def get(name: str) -> Edition | None:
    """The edition called `name`; None for generic."""
    if name == "generic":
        return None
    if name not in EDITIONS:
        raise EditionError(f"unknown edition {name!r}; use one of {', '.join(NAMES)}")
    return EDITIONS[name]


@dataclass(frozen=True)
class Detected:
    edition: Edition | None  # None: generic
    why: str

    @property
    def name(self) -> str:
        return self.edition.name if self.edition else "generic"


def detect(columns: Sequence[str], where: str = "the label file") -> Detected:
    """Which edition a CSV header belongs to, and why.

    By class columns first: the edition whose whole class list is present wins, the longest list
    first (2024 task 1's 40 classes contain task 2's 26). Then the edition's own metadata columns
    (2026's ImageID / PatientID) name it for an unlabelled image list. Otherwise generic.
    """
    cols = set(columns)
    for e in sorted(EDITIONS.values(), key=lambda e: -len(e.classes)):
        if set(e.classes) <= cols:
            return Detected(e, f"all {len(e.classes)} of its class columns are present")
    if any(c in cols for e in EDITIONS.values() for c in e.classes):
        return Detected(None, "no edition's whole class list is present")  # a near-miss is resolve's to refuse
    for e in EDITIONS.values():
        if e.marker_columns and set(e.marker_columns) <= cols:
            return Detected(e, f"its columns {list(e.marker_columns)} are present (no class columns)")
    if {"dicom_id", "subject_id", "fpath"} <= cols:
        return Detected(EDITIONS["cxrlt2024-task1"], "its columns dicom_id, subject_id, fpath are present "
                                                     "(no class columns)")
    return Detected(None, "no edition's class list or columns are present")


def near_miss(columns: Sequence[str]) -> tuple[Edition, list[str]] | None:
    """(edition, its missing class columns) when a header holds most but not all of an edition's
    classes and no edition's whole list; None otherwise."""
    cols = set(columns)
    if any(set(e.classes) <= cols for e in EDITIONS.values()):
        return None
    best = None
    for e in EDITIONS.values():
        present = sum(c in cols for c in e.classes)
        share = present / len(e.classes)
        if share >= NEAR_MISS_SHARE and (best is None or share > best[0]):
            best = (share, e)
    if best is None:
        return None
    e = best[1]
    return e, [c for c in e.classes if c not in cols]


def resolve(requested: str, columns: Sequence[str], where: str, *, classes_auto: bool = False) -> Detected:
    """The edition to read a CSV as: `requested` (a name, or 'auto' to detect it), logged once.

    A near-miss of a known class list is refused (naming the missing columns) unless the user
    said `classes_auto` (--classes auto: train on whatever 0/1 columns there are)."""
    if requested == "auto":
        found = detect(columns, where)
        if found.edition is None and not classes_auto:
            miss = near_miss(columns)
            if miss:
                e, missing = miss
                import difflib

                named = []
                for m in missing[:8]:
                    close = difflib.get_close_matches(m, [c for c in columns if c not in e.classes], n=1)
                    named.append(repr(m) + (f" (found {close[0]!r}?)" if close else ""))
                raise EditionError(
                    f"{where}: has {len(e.classes) - len(missing)} of the {len(e.classes)} {e.title} class columns; "
                    f"missing {', '.join(named)}{' ...' if len(missing) > 8 else ''}. Restore the missing columns, "
                    f"or pass --classes auto to train on the columns the file has")
        log.info("%s: edition %s (auto-detected: %s)", where, found.name, found.why)
        return found
    edition = get(requested)
    log.info("%s: edition %s (data.edition)", where, requested)
    return Detected(edition, "set by data.edition")
