"""Look at the augmentations: a grid of real training images, one row per op, labels under each tile.

    python -m cxrlt.augment --labels ../shared/data/cxr_fullres/images.csv --label-column finding --out preview.png

Rows: the original, seed 002's basic set, Mosaic (crop and resize variants), MixUp, CutMix,
CutOut (with the config's label rule), and seed 000's weak and strong pipelines (like seed 002's
Figure 3). Mixed tiles list every finding their label carries.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from ..utils import atomic, cli
from ..data import augment, dataset, mix, pipeline
from .. import config


def load_examples(csv: Path, image_root, label_column: str | None, n: int, seed: int):
    """(paths, multi-hot labels, class names) of `n` images: 0/1 columns, or one text column one-hot encoded."""
    if label_column:
        frame = pd.read_csv(csv)
        if label_column not in frame.columns:
            raise dataset.LabelFileError(f"{csv}: no column {label_column!r}")
        table = dataset.read_labels(csv, image_root=image_root, classes=None, require_labels=False,
                                    allow_outside_root=True)
        names = sorted(frame[label_column].astype(str).unique())
        labels = np.stack([(frame[label_column].astype(str) == c).to_numpy(np.float32) for c in names], axis=1)
        paths = table.paths
    else:
        table = dataset.read_labels(csv, image_root=image_root, allow_outside_root=True)
        paths, labels, names = table.paths, table.labels, list(table.classes)
    pick = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)), replace=False)
    return paths[pick], labels[pick], names


def rows(images, labels, cfg: dict, seed: int):
    s = tf.constant([seed, 0], tf.int64)
    mode = cfg["mix"]["label_mode"]
    basic = augment.make_basic_augment(cfg["augment"])
    weak, strong = augment.albu_pipeline("weak", seed), augment.albu_pipeline("strong", seed)
    albu = lambda p: np.stack([np.repeat(p(image=x[..., 0].astype(np.uint8))["image"][..., None], 3, -1)  # noqa: E731
                               for x in images.numpy()]).astype(np.float32)
    return [
        ("original", images, labels),
        ("basic (seed 002)", tf.stack([basic(x, tf.constant([seed, i], tf.int64)) for i, x in enumerate(images)]), labels),
        ("Mosaic, crop", *mix.mosaic_crop(images, labels, s, label_mode=mode)),
        ("Mosaic, resize", *mix.mosaic_resize(images, labels, s, label_mode=mode)),
        ("MixUp", *mix.mixup(images, labels, s, cfg["mix"]["mixup_alpha"], mode)),
        ("CutMix", *mix.cutmix(images, labels, s, cfg["mix"]["cutmix_alpha"], mode)),
        ("CutOut", *mix.cutout(images, labels, s, cfg["mix"]["cutout_size"])),
        ("weak (seed 000)", albu(weak), labels),
        ("strong (seed 000)", albu(strong), labels),
    ]


def render(grid, names, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(grid), int(grid[0][1].shape[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.1 * n_cols + 1.2, 2.55 * n_rows), squeeze=False)
    for r, (title, images, labels) in enumerate(grid):
        images, labels = np.asarray(images), np.asarray(labels)
        for c in range(n_cols):
            ax = axes[r][c]
            ax.imshow(images[c, ..., 0], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            found = [f"{names[j]}" + ("" if labels[c, j] >= 0.999 else f" {labels[c, j]:.2f}")
                     for j in np.flatnonzero(labels[c] > 1e-3)]
            ax.set_xlabel("\n".join(textwrap.wrap(", ".join(found) or "(none)", 26)[:3]), fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=10, fontweight="bold")
    fig.tight_layout()
    with atomic.atomic_path(out, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.augment", __doc__)
    parser.add_argument("--config", help="YAML config whose augment/mix settings to show")
    parser.add_argument("--labels", type=Path, help="label CSV (default: the config's data.labels)")
    parser.add_argument("--image-root")
    parser.add_argument("--label-column", help="a text column to use as labels (e.g. 'finding')")
    parser.add_argument("--n", type=int, default=6, help="images per row")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("preview.png"))
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        cfg = config.load(args.config)
        csv = args.labels or cfg["data"]["labels"]
        if csv is None:
            raise config.ConfigError("no images: pass --labels CSV (e.g. ../shared/data/cxr_fullres/images.csv)")
        paths, labels, names = load_examples(Path(csv), args.image_root or cfg["data"]["image_root"],
                                             args.label_column, args.n, args.seed)
        images = tf.stack([pipeline.decode_image(tf.constant(p), args.size, cfg["input"]["resize"],
                                                 dicom=pipeline.dicom_setting([p], cfg)) for p in paths])
        render(rows(images, tf.constant(labels), cfg, args.seed), names, args.out)
        print(f"wrote {args.out}")
    return 0
