"""Label schemas: which classes a data set has, in which order, and which are head/medium/tail.

The order matters: the CXR-LT 2023 CodaLab page scores columns by name *and* expects them in
the official (alphabetical) order, so the order lives here once and everything else imports it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

CXRLT2023 = (
    "Atelectasis",
    "Calcification of the Aorta",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged Cardiomediastinum",
    "Fibrosis",
    "Fracture",
    "Hernia",
    "Infiltration",
    "Lung Lesion",
    "Lung Opacity",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural Effusion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumonia",
    "Pneumoperitoneum",
    "Pneumothorax",
    "Subcutaneous Emphysema",
    "Support Devices",
    "Tortuous Aorta",
)

# Positive training images per class in the real CXR-LT 2023 train.csv (264,849 images), as
# published by the 2023 winning team; shapes the demo set and defines the long tail.
CXRLT2023_TRAIN_COUNTS = {
    "Atelectasis": 67597,
    "Calcification of the Aorta": 4361,
    "Cardiomegaly": 76900,
    "Consolidation": 16038,
    "Edema": 38574,
    "Emphysema": 4255,
    "Enlarged Cardiomediastinum": 30119,
    "Fibrosis": 1158,
    "Fracture": 11883,
    "Hernia": 4049,
    "Infiltration": 10218,
    "Lung Lesion": 2533,
    "Lung Opacity": 79931,
    "Mass": 5529,
    "No Finding": 41869,
    "Nodule": 7663,
    "Pleural Effusion": 69240,
    "Pleural Other": 675,
    "Pleural Thickening": 3369,
    "Pneumomediastinum": 788,
    "Pneumonia": 48093,
    "Pneumoperitoneum": 543,
    "Pneumothorax": 14983,
    "Subcutaneous Emphysema": 2453,
    "Support Devices": 89140,
    "Tortuous Aorta": 3499,
}
CXRLT2023_TRAIN_IMAGES = 264849

# Head / tail grouping of the CXR-LT 2023 winning solution; the other ten classes are "medium".
CXRLT2023_HEAD = (
    "Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity",
    "No Finding", "Pleural Effusion", "Pneumonia", "Support Devices",
)
CXRLT2023_TAIL = (
    "Fibrosis", "Lung Lesion", "Pleural Other", "Pleural Thickening",
    "Pneumomediastinum", "Pneumoperitoneum", "Subcutaneous Emphysema", "Tortuous Aorta",
)

NIH14 = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
    "Fibrosis", "Hernia", "Infiltration", "Mass", "No Finding", "Nodule",
    "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)

SCHEMAS = {"cxrlt2023": CXRLT2023, "nih14": NIH14}

GROUPS = ("head", "medium", "tail")


def resolve_schema(name_or_list) -> tuple[str, ...] | None:
    """A schema name, an explicit list, or None/'auto' (read the 0/1 columns from the CSV)."""
    if name_or_list is None or name_or_list == "auto":
        return None
    if isinstance(name_or_list, str):
        if name_or_list not in SCHEMAS:
            raise ValueError(
                f"unknown class schema {name_or_list!r}; use one of {sorted(SCHEMAS)}, "
                "'auto' (every 0/1 column of the CSV) or an explicit list of column names"
            )
        return SCHEMAS[name_or_list]
    return tuple(str(c) for c in name_or_list)


def class_groups(classes: Sequence[str], train_counts: Mapping[str, float] | Sequence[float] | None = None) -> dict[str, str]:
    """Map each class to head/medium/tail.

    CXR-LT 2023's 26 classes use the winning solution's fixed grouping; any other class list is
    split into terciles of training frequency (most frequent third = head).
    """
    classes = list(classes)
    if set(classes) == set(CXRLT2023):
        return {c: "head" if c in CXRLT2023_HEAD else "tail" if c in CXRLT2023_TAIL else "medium" for c in classes}
    if train_counts is None:
        raise ValueError("class_groups needs training counts for a class list other than CXR-LT 2023")
    if isinstance(train_counts, Mapping):
        counts = np.array([float(train_counts[c]) for c in classes])
    else:
        counts = np.asarray(train_counts, dtype=float)
    order = np.argsort(-counts, kind="stable")
    n = len(classes)
    groups = {}
    for rank, idx in enumerate(order):
        groups[classes[idx]] = GROUPS[min(2, rank * 3 // n)] if n else "medium"
    return groups
