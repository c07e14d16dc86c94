"""The single-label demo sets (`--demo-task multiclass|ordinal`): the CXR-LT demo's radiograph phantoms, one
class or one grade per image, long-tailed, with patients of one to three images, as a generic label file
(path, patient_id, label | grade) that the single-label reader detects as it would a user's.

- multiclass: "No Finding" and seven findings, each image carrying exactly one visible trace, class shares
  falling from 40 % to 2 % (about seed 000's and Hyper-Kvasir's head-to-tail ratios at demo scale);
- ordinal: grades 0-4 of a made-up severity, each grade adding a finding to the previous grade's (grade 0
  clear lungs, 4 opacity + consolidation + edema + effusion), shares 50/20/15/9/6 % as EyePACS' skew.

    python -m cxrlt.train --config configs/demo.yaml --demo-task multiclass
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..utils import atomic
from .synthetic import DemoData, render

VERSION = 1
MULTICLASS = ("No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Support Devices", "Nodule",
              "Pneumoperitoneum", "Hernia")
MULTICLASS_SHARES = (0.40, 0.18, 0.13, 0.09, 0.08, 0.06, 0.04, 0.02)
# grade -> the findings its radiograph shows (each grade adds one to the one below)
GRADES = ((), ("Lung Opacity",), ("Lung Opacity", "Consolidation"), ("Lung Opacity", "Consolidation", "Edema"),
          ("Lung Opacity", "Consolidation", "Edema", "Pleural Effusion"))
GRADE_SHARES = (0.50, 0.20, 0.15, 0.09, 0.06)
TASKS = ("multiclass", "ordinal")


def class_names(task: str) -> list[str]:
    """The demo's classes in model order: the findings (alphabetical, as a label file's names are read), or the
    grades 0-4."""
    return sorted(MULTICLASS) if task == "multiclass" else [str(k) for k in range(len(GRADES))]


def folder_for(demo_dir, task: str) -> Path:
    """Where the demo of `task` lives: beside the multi-label demo, never inside or over it."""
    return Path(f"{demo_dir}-{task}")


def make_single_label_demo(out_dir, task: str, *, n_patients: int = 400, image_size: int = 128, seed: int = 0,
                           test_fraction: float = 0.2) -> DemoData:
    """Generate (or reuse, when complete with these parameters) the `task` demo set in `out_dir`."""
    if task not in TASKS:
        raise ValueError(f"a single-label demo is multiclass or ordinal, not {task!r}")
    out = Path(out_dir)
    params = {"version": VERSION, "task": task, "n_patients": n_patients, "image_size": image_size, "seed": seed,
              "test_fraction": test_fraction}
    demo = DemoData(root=out, train_csv=out / "train.csv", test_csv=out / "test.csv", edition="generic")
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("params") == params:
        return demo
    rng = np.random.default_rng([seed, 24])
    shares = MULTICLASS_SHARES if task == "multiclass" else GRADE_SHARES
    rows = []
    for patient in range(n_patients):
        for study in range(int(rng.integers(1, 4))):
            k = int(rng.choice(len(shares), p=np.asarray(shares) / np.sum(shares)))
            rows.append({"path": f"images/p{patient:05d}_{study}.png", "patient_id": f"P{patient:05d}", "k": k})
    frame = pd.DataFrame(rows)
    for i, row in enumerate(frame.itertuples(index=False)):
        findings = (MULTICLASS[row.k],) if task == "multiclass" else GRADES[row.k]
        pixels = render({name: 1 for name in findings}, image_size, np.random.default_rng([seed, 24, i]))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        path = out / row.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    if task == "multiclass":
        frame["label"] = [MULTICLASS[k] for k in frame.k]
    else:
        frame["grade"] = frame.k
    patients = frame.patient_id.unique()
    test = set(rng.choice(patients, max(1, int(round(len(patients) * test_fraction))), replace=False))
    is_test = frame.patient_id.isin(test)
    columns = ["path", "patient_id", "label" if task == "multiclass" else "grade"]
    atomic.write_csv(demo.train_csv, frame.loc[~is_test, columns])
    atomic.write_csv(demo.test_csv, frame.loc[is_test, columns])
    atomic.write_json(manifest, {"params": params, "images": len(frame)})
    return demo
