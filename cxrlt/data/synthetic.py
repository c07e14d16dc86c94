"""The embedded demo data: a CXR-LT-format set of chest radiograph phantoms, made from a seed.

Same 26 classes, same CSV columns and MIMIC path layout as CXR-LT 2023, patients with several
studies whose images share labels, and class frequencies that follow the real CXR-LT long tail
(compressed, prevalence ~ real**0.5, so the rarest class still has a couple of dozen images in a
1,000-image set). Each finding leaves its own visible trace in its own place (an enlarged heart,
a meniscus, a tube, a dark crescent...), large enough to survive downscaling to 64 px, with
jitter of position, size and intensity, so a small CNN can learn it but not trivially.

    python -m cxrlt.synthetic --out demo_data
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from ..utils import atomic, cli
from . import classes as cls

VERSION = 1
MIN_PREVALENCE = 0.03


@dataclass(frozen=True)
class DemoData:
    root: Path       # image root; CSV paths are relative to it
    train_csv: Path  # labelled training list
    test_csv: Path   # test list (2023/2024: labelled, so the demo can be scored offline; 2026: as published, no labels)
    exclude: Path | None = None            # a removal list (the 2026 layout's Removal.csv)
    sample_submission: Path | None = None  # the test list's sample submission (2024 / 2026 layouts)
    edition: str = "cxrlt2023"
    test_truth: Path | None = None         # 2026: the test list's labels, for scoring the demo offline only


# The 2026 demo's file names are the organisers' (CXR-LT/CXR-LT-2026, "CXRLT-2026-TRAINING DATA/").
FILES_2026 = {"train": "CXRLT_2026_training.csv", "test": "CXRLT_2026_TEST_ALL_TASK1.csv", "exclude": "Removal.csv",
              "sample": "development_sample_submission.zip", "truth": "test_labels.csv", "images": "images"}


def demo_files(folder, edition: str) -> DemoData:
    """Where the demo of `edition` in `folder` keeps its files (whether or not they are written yet)."""
    out = Path(folder)
    if edition == "cxrlt2023":
        return DemoData(root=out, train_csv=out / "train.csv", test_csv=out / "test.csv")
    if edition.startswith("cxrlt2026"):
        f = FILES_2026
        return DemoData(root=out / f["images"], train_csv=out / f["train"], test_csv=out / f["test"],
                        exclude=out / f["exclude"], sample_submission=out / f["sample"], edition=edition,
                        test_truth=out / f["truth"])
    return DemoData(root=out, train_csv=out / "train.csv", test_csv=out / "test.csv",
                    sample_submission=out / "test_sample_submission.csv", edition=edition)


def prevalences() -> dict[str, float]:
    """Per-class probability that a study carries the finding: the real long tail, compressed."""
    real = {c: n / cls.CXRLT2023_TRAIN_IMAGES for c, n in cls.CXRLT2023_TRAIN_COUNTS.items()}
    return {c: max(MIN_PREVALENCE, 0.55 * math.sqrt(p)) for c, p in real.items()}


# class -> (shape, centre y, centre x, size, intensity); coordinates in units of the image side.
TRACES = {
    "Atelectasis": ("hline", 0.62, 0.30, 0.12, 70),
    "Calcification of the Aorta": ("ring", 0.30, 0.56, 0.035, 90),
    "Cardiomegaly": ("heart", 0.62, 0.55, 0.20, 60),
    "Consolidation": ("blob", 0.58, 0.70, 0.07, 70),
    "Edema": ("haze", 0.48, 0.50, 0.17, 40),
    "Emphysema": ("dark_lungs", 0.45, 0.50, 0.0, -35),
    "Enlarged Cardiomediastinum": ("rect", 0.33, 0.50, 0.08, 55),
    "Fibrosis": ("stripes", 0.28, 0.30, 0.08, 55),
    "Fracture": ("dline", 0.35, 0.16, 0.07, 110),
    "Hernia": ("blob", 0.79, 0.40, 0.05, 90),
    "Infiltration": ("patches", 0.45, 0.68, 0.06, 55),
    "Lung Lesion": ("blob", 0.30, 0.72, 0.04, 85),
    "Lung Opacity": ("blob", 0.63, 0.27, 0.08, 55),
    "Mass": ("blob", 0.38, 0.30, 0.06, 100),
    "Nodule": ("blob", 0.48, 0.78, 0.025, 120),
    "Pleural Effusion": ("meniscus", 0.72, 0.70, 0.12, 90),
    "Pleural Other": ("vstrip", 0.45, 0.83, 0.03, 75),
    "Pleural Thickening": ("cap", 0.20, 0.32, 0.07, 80),
    "Pneumomediastinum": ("vdark", 0.38, 0.45, 0.025, -70),
    "Pneumonia": ("patches", 0.58, 0.35, 0.05, 70),
    "Pneumoperitoneum": ("crescent", 0.79, 0.68, 0.08, -80),
    "Pneumothorax": ("dark_apex", 0.20, 0.72, 0.08, -75),
    "Subcutaneous Emphysema": ("vdark_stripes", 0.50, 0.10, 0.04, -70),
    "Support Devices": ("tube", 0.40, 0.58, 0.30, 140),
    "Tortuous Aorta": ("wave", 0.42, 0.57, 0.12, 70),
}


def _ellipse(yy, xx, cy, cx, ry, rx, soft=0.02):
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - d) / (soft / min(ry, rx)) + 0.5, 0.0, 1.0)


def _gauss(yy, xx, cy, cx, r):
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))


def _trace(shape, yy, xx, cy, cx, s, rng):
    """A unit-intensity map of one finding's trace."""
    if shape in ("blob", "haze"):
        return _gauss(yy, xx, cy, cx, s)
    if shape == "ring":
        r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        return np.exp(-((r - s) ** 2) / (2 * (s / 3) ** 2))
    if shape == "hline":
        return np.exp(-((yy - cy) ** 2) / (2 * 0.012 ** 2)) * (np.abs(xx - cx) < s)
    if shape == "vstrip":
        return np.exp(-((xx - cx) ** 2) / (2 * s ** 2)) * (np.abs(yy - cy) < 0.2)
    if shape == "rect":
        return ((np.abs(yy - cy) < s) & (np.abs(xx - cx) < 0.09)).astype(float)
    if shape == "stripes":
        return _gauss(yy, xx, cy, cx, s * 1.5) * (np.sin(xx * 90 + yy * 40) > 0.3)
    if shape == "dline":
        return np.exp(-(((yy - cy) - (xx - cx)) ** 2) / (2 * 0.012 ** 2)) * (np.abs(xx - cx) < s)
    if shape == "patches":
        out = np.zeros_like(yy)
        for _ in range(3):
            out += _gauss(yy, xx, cy + rng.uniform(-0.06, 0.06), cx + rng.uniform(-0.05, 0.05), s)
        return np.clip(out, 0, 1)
    if shape == "meniscus":
        return ((yy > cy) & (np.abs(xx - cx) < s) & (yy < 0.8)).astype(float) * np.clip((yy - cy) / 0.04, 0, 1)
    if shape == "cap":
        return np.exp(-((yy - cy) ** 2) / (2 * 0.02 ** 2)) * (np.abs(xx - cx) < s)
    if shape == "vdark":
        return np.exp(-((xx - cx) ** 2) / (2 * s ** 2)) * (np.abs(yy - cy) < 0.15)
    if shape == "crescent":
        r = np.sqrt(((yy - cy) / 0.5) ** 2 + (xx - cx) ** 2)
        return ((r > s * 0.7) & (r < s) & (yy < cy)).astype(float)
    if shape == "dark_apex":
        return _ellipse(yy, xx, cy, cx, s * 1.2, s * 0.9)
    if shape == "vdark_stripes":
        return (np.abs(xx - cx) < s) * (np.abs(yy - cy) < 0.25) * (np.sin(yy * 120) > 0.2)
    if shape == "tube":
        tube = np.exp(-((xx - cx - 0.03 * np.sin(yy * 8)) ** 2) / (2 * 0.008 ** 2)) * (yy > 0.05) * (yy < cy + 0.2)
        device = ((np.abs(yy - 0.22) < 0.035) & (np.abs(xx - 0.25) < 0.035)).astype(float)
        return np.clip(tube + device, 0, 1)
    if shape == "wave":
        return np.exp(-((xx - cx - 0.04 * np.sin((yy - cy) * 25)) ** 2) / (2 * 0.012 ** 2)) * (np.abs(yy - cy) < s)
    raise ValueError(shape)


def render(labels: dict[str, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """One grey radiograph phantom (uint8 [size, size]) carrying the traces of `labels`."""
    ax = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    dy, dx = rng.uniform(-0.03, 0.03, 2)
    yy, xx = yy - dy, xx - dx
    img = np.full((size, size), 15.0)
    img += 105 * _ellipse(yy, xx, 0.52, 0.5, 0.47, 0.43)                      # body
    lung = _ellipse(yy, xx, 0.45, 0.31, 0.28, 0.14) + _ellipse(yy, xx, 0.45, 0.69, 0.28, 0.14)
    img -= 55 * lung
    img += 18 * lung * (np.sin(yy * 70 + np.abs(xx - 0.5) * 12) > 0.6)         # ribs
    heart_r = 0.13 * (1.45 if labels.get("Cardiomegaly") else 1.0) * rng.uniform(0.93, 1.07)
    img += 60 * _ellipse(yy, xx, 0.6, 0.55, heart_r * 0.85, heart_r)           # heart
    img += 45 * (np.abs(xx - 0.5) < 0.025) * (yy > 0.08)                      # spine
    img += 35 * (yy > 0.74 + 0.04 * np.cos((xx - 0.5) * 6)) * _ellipse(yy, xx, 0.52, 0.5, 0.47, 0.43)
    for name, (shape, cy, cx, s, amp) in TRACES.items():
        if not labels.get(name) or shape == "heart":
            continue
        if shape == "dark_lungs":
            img += amp * lung
            continue
        j = rng.uniform(-0.025, 0.025, 2)
        img += amp * rng.uniform(0.75, 1.25) * _trace(shape, yy, xx, cy + j[0], cx + j[1], s * rng.uniform(0.85, 1.15), rng)
    img = (img - img.mean()) * rng.uniform(0.85, 1.15) + img.mean() + rng.uniform(-12, 12)
    img += rng.normal(0, 7, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(out)


def _dicom_id(seed: int, index: int) -> str:
    h = hashlib.sha1(f"cxrlt-demo-{seed}-{index}".encode()).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def _sample_studies(n_patients: int, rng: np.random.Generator) -> pd.DataFrame:
    prev = prevalences()
    findings = [c for c in cls.CXRLT2023 if c != "No Finding"]
    p_nf = prev["No Finding"]
    rows = []
    subjects = 10000000 + rng.choice(9_000_000, n_patients, replace=False)
    study_ids = iter(50000000 + rng.choice(9_000_000, n_patients * 4, replace=False))
    for subject in subjects:
        for _ in range(rng.integers(1, 4)):
            labels = dict.fromkeys(cls.CXRLT2023, 0)
            if rng.random() < p_nf:
                labels["No Finding"] = 1
            else:
                for c in findings:
                    labels[c] = int(rng.random() < prev[c] / (1 - p_nf))
                if not any(labels.values()):
                    labels[findings[rng.integers(len(findings))]] = 1
            study = int(next(study_ids))
            views = ["PA" if rng.random() < 0.6 else "AP"] + (["LATERAL"] if rng.random() < 0.3 else [])
            for view in views:
                rows.append({"subject": int(subject), "study_id": study, "ViewPosition": view, **labels})
    return pd.DataFrame(rows)


def make_demo(out_dir, *, n_patients: int = 400, image_size: int = 128, seed: int = 0,
              test_fraction: float = 0.2, edition: str = "cxrlt2023") -> DemoData:
    """Generate (or reuse, if already complete with these parameters) the demo set in `out_dir`.

    `edition` other than cxrlt2023 writes that edition's layout instead (`make_edition_demo`); the
    2023 demo is made exactly as it always was (same files, byte for byte)."""
    if edition != "cxrlt2023":
        return make_edition_demo(out_dir, edition, n_patients=n_patients, image_size=image_size, seed=seed,
                                 test_fraction=test_fraction)
    out = Path(out_dir)
    params = {"version": VERSION, "n_patients": n_patients, "image_size": image_size, "seed": seed,
              "test_fraction": test_fraction}
    demo = DemoData(root=out, train_csv=out / "train.csv", test_csv=out / "test.csv")
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("params") == params:
        return demo
    rng = np.random.default_rng(seed)
    frame = _sample_studies(n_patients, rng)
    frame.insert(0, "dicom_id", [_dicom_id(seed, i) for i in range(len(frame))])
    frame["path"] = [f"files/p{str(s)[:2]}/p{s}/s{st}/{d}.jpg"
                     for s, st, d in zip(frame.subject, frame.study_id, frame.dicom_id)]
    for i, row in enumerate(frame.itertuples(index=False)):
        labels = {c: frame.at[i, c] for c in cls.CXRLT2023}
        pixels = render(labels, image_size, np.random.default_rng([seed, i]))
        if row.ViewPosition == "LATERAL":
            pixels = np.ascontiguousarray(pixels[:, ::-1])  # a crude stand-in; labels are the study's
        path = out / row.path
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    subjects = frame.subject.unique()
    test_subjects = set(rng.choice(subjects, max(1, int(round(len(subjects) * test_fraction))), replace=False))
    is_test = frame.subject.isin(test_subjects)
    columns = ["dicom_id", "study_id", "ViewPosition", "path", *cls.CXRLT2023]
    atomic.write_csv(demo.train_csv, frame.loc[~is_test, columns])
    atomic.write_csv(demo.test_csv, frame.loc[is_test, columns])
    atomic.write_json(manifest, {"params": params, "images": len(frame)})
    return demo


from .editions import DEMO_EDITIONS  # noqa: E402  (--edition YEAR of the demo command)
# Where a class of another edition takes its visible trace from (a 2023 class): the demo's labels
# stay learnable from the pixels. Classes of the same name map to themselves, Normal to No Finding.
_TRACE_OF = {
    "aortic elongation": "Tortuous Aorta", "aortic atheromatosis": "Calcification of the Aorta",
    "alveolar pattern": "Consolidation", "azygos lobe": "Pleural Other", "Hydropneumothorax": "Pneumothorax",
    "Kyphosis": "Fibrosis", "pneumoperitoneo": "Pneumoperitoneum", "vascular hilar enlargement":
    "Enlarged Cardiomediastinum", "vertebral degenerative changes": "Fibrosis", "hyperinflated lung": "Emphysema",
    "interstitial pattern": "Infiltration", "central venous catheter": "Support Devices",
    "hypoexpansion": "Lung Opacity", "bronchiectasis": "Lung Lesion", "hemidiaphragm elevation": "Edema",
    "sternotomy": "Pneumomediastinum", "calcified densities": "Pneumonia", "Adenopathy": "Enlarged Cardiomediastinum",
    "Azygos Lobe": "Pleural Other", "Clavicle Fracture": "Fracture", "Fissure": "Pleural Thickening",
    "Granuloma": "Nodule", "Infarction": "Lung Opacity", "Lobar Atelectasis": "Atelectasis",
    "Pulmonary Embolism": "Edema", "Pulmonary Hypertension": "Enlarged Cardiomediastinum",
    "Rib Fracture": "Fracture", "Round(ed) Atelectasis": "Atelectasis", "Tuberculosis": "Infiltration",
}


def _trace_class(name: str) -> str:
    if name == "Normal":
        return "No Finding"
    if name in cls.CXRLT2023:
        return name
    return _TRACE_OF.get(name) or next(c for c in cls.CXRLT2023 if c.lower() == name.lower())


def make_edition_demo(out_dir, edition: str, *, n_patients: int = 400, image_size: int = 128, seed: int = 0,
                      test_fraction: float = 0.2) -> DemoData:
    """A demo set in another edition's layout, so each edition runs end to end without its data.

    cxrlt2024-task1: the 2024 columns (dicom_id, subject_id, study_id 's5...', ViewPosition, some
    blank, ViewCodeSequence_CodeMeaning, fpath) + 40 classes, MIMIC-style JPEG paths; a sample
    submission of the test list (dicom_id + the 40 classes, the 5th-place team's header).
    cxrlt2026-task1: the organisers' files as published (`_write_2026`). Each class's label is that
    of the 2023 finding whose trace it borrows (`_TRACE_OF`).
    """
    from . import editions

    e = editions.EDITIONS[edition]
    out = Path(out_dir)
    params = {"version": VERSION, "edition": edition, "n_patients": n_patients, "image_size": image_size,
              "seed": seed, "test_fraction": test_fraction, **({"layout": 2} if edition.startswith("cxrlt2026") else {})}
    demo = demo_files(out, edition)
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("params") == params:
        return demo
    is_2026 = edition.startswith("cxrlt2026")
    rng = np.random.default_rng([seed, 2026 if is_2026 else 2024])
    frame = _sample_studies(n_patients, rng)
    labels = pd.DataFrame({c: frame[_trace_class(c)].to_numpy() for c in e.classes})
    n = len(frame)
    subjects = frame.subject.unique()
    test_subjects = set(rng.choice(subjects, max(1, int(round(len(subjects) * test_fraction))), replace=False))
    is_test = frame.subject.isin(test_subjects).to_numpy()
    if is_2026:
        meta, files = _meta_2026(frame, rng)
    else:
        dicom = [_dicom_id(seed, i) for i in range(n)]
        files = [f"files/p{str(s)[:2]}/p{s}/s{st}/{d}.jpg" for s, st, d in zip(frame.subject, frame.study_id, dicom)]
        view = frame.ViewPosition.where(rng.random(n) > 0.04, "")  # ~4 % blank, as in the 2024 files
        meta = pd.DataFrame({"dicom_id": dicom, "subject_id": frame.subject.astype(str),
                             "study_id": ["s" + str(st) for st in frame.study_id], "ViewPosition": view,
                             "ViewCodeSequence_CodeMeaning": view.map({"PA": "postero-anterior", "AP": "antero-posterior",
                                                                       "LATERAL": "lateral", "": ""}),
                             "fpath": files})
    for i, row in enumerate(frame.itertuples(index=False)):
        pixels = render({c: frame.at[i, c] for c in cls.CXRLT2023}, image_size, np.random.default_rng([seed, i]))
        if row.ViewPosition == "LATERAL":
            pixels = np.ascontiguousarray(pixels[:, ::-1])
        path = demo.root / files[i]
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        if is_2026:  # PadChest: 16-bit PNG, 12-bit values in a window that varies per image
            lo, hi = rng.uniform(0, 400), rng.uniform(2500, 4095)
            Image.fromarray(np.round(lo + pixels / 255.0 * (hi - lo)).astype(np.uint16)).save(buffer, format="PNG")
        else:
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    table = pd.concat([meta, labels], axis=1)
    if is_2026:
        _write_2026(demo, table, is_test, files, rng)
    else:
        atomic.write_csv(demo.train_csv, table.loc[~is_test])
        atomic.write_csv(demo.test_csv, table.loc[is_test])
        sample = pd.DataFrame({e.id_column: table.loc[is_test, e.id_column].to_numpy(),
                               **{c: 0.5 for c in e.submission_classes}})
        atomic.write_csv(demo.sample_submission, sample)
    atomic.write_json(manifest, {"params": params, "images": len(table)})
    return demo


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _meta_2026(frame: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, list[str]]:
    """ImageID, StudyDate_DICOM and PatientID as the organisers' files write them, and each image's
    file under the image root (PadChest's numbered sub-folders).

    - ImageID `<study number>_<6 lower-case letters/digits>.png`, the study number 37-39 digits; a
      patient's later study now and then reuses the earlier one's number on another date, as 94
      of the 11,815 prefixes of the real Removal.csv do (so a study is the prefix on one date);
    - StudyDate_DICOM `YYYYMMDD`;
    - PatientID rounded to 3 significant digits ('1.90E+38'), drawn from a pool about a third the
      size of the patients, so that one value stands for several patients as in the real files."""
    subjects = list(frame.subject.unique())
    pool = [f"{rng.uniform(1.0, 3.4):.2f}E+38" if rng.random() < 0.8 else f"{rng.uniform(1.0, 9.99):.2f}E+37"
            for _ in range(max(5, len(subjects) // 3))]
    patient_of = {s: pool[int(rng.integers(len(pool)))] for s in subjects}
    prefix_of, date_of, last_prefix = {}, {}, {}
    for subject, study in frame[["subject", "study_id"]].drop_duplicates().itertuples(index=False):
        reuse = subject in last_prefix and rng.random() < 0.3
        digits = int(rng.integers(37, 40))
        prefix_of[study] = last_prefix[subject] if reuse else str(int(rng.integers(1, 10))) + "".join(
            str(d) for d in rng.integers(0, 10, digits - 1))
        last_prefix[subject] = prefix_of[study]
        day = np.datetime64("2014-01-01") + int(rng.integers(0, 4 * 365))
        date_of[study] = str(day).replace("-", "")
    ids = [f"{prefix_of[st]}_{''.join(_BASE36[k] for k in rng.integers(0, 36, 6))}.png" for st in frame.study_id]
    meta = pd.DataFrame({"ImageID": ids, "StudyDate_DICOM": [date_of[st] for st in frame.study_id],
                         "PatientID": [patient_of[s] for s in frame.subject]})
    files = [f"{i % 3}/{name}" for i, name in enumerate(ids)]  # numbered sub-folders, like PadChest's 0/ ... 54/
    return meta, files


def _write_2026(demo: DemoData, table: pd.DataFrame, is_test: np.ndarray, files: list[str],
                rng: np.random.Generator) -> None:
    """The files as the organisers publish them (read from CXR-LT/CXR-LT-2026 and the copies in the
    teams' repositories; tests/fixtures/cxrlt2026 holds rows of them):

    - CXRLT_2026_training.csv: ImageID,StudyDate_DICOM,PatientID + the 30 classes;
    - CXRLT_2026_TEST_ALL_TASK1.csv: ImageID,StudyDate_DICOM,PatientID and 30 empty unnamed columns
      (every row ends in 30 commas), sorted by ImageID, CRLF line ends;
    - Removal.csv: ImageID,StudyDate_DICOM,PatientID, CRLF, listing every test image. The demo adds
      one truncated PNG that the training CSV names too: the image screen would stop the run on it,
      were the list not applied while the CSV is read;
    - development_sample_submission.zip: one CSV (ImageID + the 30 classes, random values) and a
      code/ folder, as a submission zip holds them.
    test_labels.csv (the test images' labels) is the demo's own, to score it offline."""
    cols = ["ImageID", "StudyDate_DICOM", "PatientID"]
    test = table.loc[is_test].sort_values("ImageID")
    train = table.loc[~is_test]
    broken = train.iloc[[0]].copy()
    broken["ImageID"] = "100000000000000000000000000000000000000_broken.png"
    (demo.root / "0").mkdir(parents=True, exist_ok=True)
    (demo.root / "0" / broken["ImageID"].iloc[0]).write_bytes(b"\x89PNG\r\n\x1a\n")  # truncated
    atomic.write_csv(demo.train_csv, pd.concat([train, broken], ignore_index=True))
    empty = "," * 30
    lines = [",".join(cols) + empty] + [",".join(row) + empty for row in test[cols].itertuples(index=False)]
    atomic.write_text(demo.test_csv, "\r\n".join(lines) + "\r\n")
    removed = pd.concat([test[cols], broken[cols]]).sort_values("ImageID")
    atomic.write_text(demo.exclude, "\r\n".join([",".join(cols)] + [",".join(r) for r in removed.itertuples(index=False)])
                      + "\r\n")
    atomic.write_csv(demo.test_truth, test)
    from . import editions

    sample = pd.DataFrame({"ImageID": test.ImageID.to_numpy(),
                           **{c: np.round(rng.random(len(test)), 4) for c in editions.CXRLT2026_TASK1}})
    with atomic.atomic_path(demo.sample_submission) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("submission.csv", sample.to_csv(index=False))
            archive.writestr("code/README.txt", "the code that made these random predictions\n")


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.synthetic", __doc__)
    parser.add_argument("--out", default="demo_data")
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--size", type=int, default=128,
                        help="side of the square images written, in px (not the model input: that is train --size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--edition", choices=sorted(DEMO_EDITIONS), default="2023", help="the layout to write")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    edition = DEMO_EDITIONS[args.edition]
    demo = make_demo(args.out, n_patients=args.patients, image_size=args.size, seed=args.seed, edition=edition)
    for split in (demo.train_csv, demo.test_csv):
        frame = pd.read_csv(split)
        print(f"{split}: {len(frame)} images")
    from .editions import EDITIONS

    names = list(EDITIONS[edition].classes)
    counts = pd.read_csv(demo.train_csv)[names].sum().sort_values(ascending=False)
    print(counts.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
