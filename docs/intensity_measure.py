"""Which input.intensity for 16-bit PNGs holding 12-bit values (PadChest): a pixel-level measurement.

    PYTHONPATH=. python docs/intensity_measure.py [N_IMAGES]

Each 8-bit radiograph of ../shared/data/cxr_fullres becomes two 16-bit PNGs the way PadChest's
look: its grey levels mapped linearly onto a per-image window inside 0..4095 (low end 0..400, high
end 2500..4095: the range used varies per image), the second with another window and a burned-in
marker of saturated pixels (4095, 0.3 % of the image, in a corner). Both are decoded at 256 px by
the training decoder with every input.intensity. Reported (medians over the images):
- levels: distinct grey levels (of 256) the decoded image uses;
- mean: its mean grey level (0..255);
- vs 8-bit: mean |decoded - the 8-bit original decoded as usual|, grey levels;
- window+marker: mean |decoded A - decoded B| outside the marker corner: how much the picture a
  model sees depends on the scanner's window and on a marker (0 = not at all).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from cxrlt.data import pipeline

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr_fullres"
SIZE = 256
MODES = ("full_range", "minmax", "percentile")


def to16(grey: np.ndarray, rng, marker: bool) -> np.ndarray:
    lo, hi = rng.uniform(0, 400), rng.uniform(2500, 4095)
    v16 = np.round(lo + grey / 255.0 * (hi - lo)).astype(np.uint16)
    if marker:
        side = int(np.sqrt(0.003 * v16.size))
        v16[:side, :side] = 4095
    return v16


def main(n: int) -> None:
    frame = pd.read_csv(ROOT / "images.csv")
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, rel in enumerate(frame.path[:n]):
            img = Image.open(ROOT / rel).convert("L")
            img.thumbnail((1600, 1600))  # keeps the run short on 2 shared cores
            grey = np.asarray(img, dtype=np.float64)
            paths = {}
            for tag, v in (("8", grey.astype(np.uint8)), ("A", to16(grey, rng, False)), ("B", to16(grey, rng, True))):
                paths[tag] = str(Path(tmp) / f"{k}{tag}.png")
                Image.fromarray(v).save(paths[tag])
            ref = pipeline.decode_image(tf.constant(paths["8"]), SIZE, channels=1).numpy()[..., 0]
            side = int(np.ceil(np.sqrt(0.003) * SIZE)) + 2  # the marker corner at 256 px (stretched: both sides)
            keep = np.ones_like(ref, bool)
            keep[:side * 2, :side * 2] = False
            for mode in MODES:
                a, b = (pipeline.decode_image(tf.constant(paths[t]), SIZE, channels=1, intensity=mode).numpy()[..., 0]
                        for t in "AB")
                rows.append({"mode": mode, "levels": len(np.unique(np.round(a))), "mean": float(a.mean()),
                             "vs 8-bit": float(np.abs(a - ref).mean()),
                             "window+marker": float(np.abs(a - b)[keep].mean())})
    result = pd.DataFrame(rows)
    print(f"{len(result) // len(MODES)} images, decoded at {SIZE} px; medians:")
    print(result.groupby("mode", sort=False).median().round(1).to_string())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
