"""TensorBoard logging for a fold: per-epoch scalars and, once, a few augmented training images.

    callback = TensorBoardLogger(run.fold_dir(k) / "tensorboard", images=one_batch, class_names=classes)
    tensorboard --logdir runs/<name>        # one run per fold in the TensorBoard UI

Scalars are whatever numbers the epoch's `logs` carry (loss, val_mAP, val_mAUC, val_mF1,
val_tail_mAP, ... as ValidationMetrics puts them there) plus the optimizer's learning rate as `lr`;
the step is the 1-based epoch, as in history.csv, so a resumed fold continues its curves. Pass the
optimizer when the model is not compiled with it (cxrlt.engine keeps it outside the model).
It must run after the callback that adds the val_* keys (Keras calls callbacks in list order).

`images` is a tf.data dataset or a zero-argument callable giving one batch: images (0..255, [B, H,
W, 1 or 3]) or (images, labels, ...). Prefer a callable over a small dataset: taking one batch from
the full training stream fills its shuffle buffer (with input.cache: decodes every image) first.
The batch is written once per fold directory (a resumed fold does not write it again), with a text
summary listing each image's findings when `class_names` is given (mixed labels with their weight).

Event files are TensorBoard's append-only record format, not replaced atomically; a crash loses at
most the last unflushed epoch, which the rerun writes again. Viewing needs the `tensorboard` package
(pinned in setup.cfg); tf.summary needs it to write as well.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

IMAGE_TAG = "augmented_training_batch"


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes fold<k>/tensorboard/ event files: scalars at each epoch end, the image batch at the start."""

    def __init__(self, log_dir, images=None, *, class_names=None, max_images: int = 8, optimizer=None):
        super().__init__()
        self.log_dir, self.images, self.max_images = Path(log_dir), images, int(max_images)
        self.optimizer = optimizer  # cxrlt.engine keeps the optimizer outside the model; else model.optimizer
        self.class_names = list(class_names) if class_names is not None else None
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        return self._writer

    def on_train_begin(self, logs=None):
        if self.images is None or any(self.log_dir.glob("events.out.tfevents.*")):
            return
        images, labels = first_batch(self.images)
        self.write_images(images, labels, step=0)

    def on_epoch_end(self, epoch, logs=None):
        values = scalars(logs or {})
        if "lr" not in values and "learning_rate" not in values:
            lr = learning_rate(self.optimizer or getattr(getattr(self, "model", None), "optimizer", None))
            if lr is not None:
                values["lr"] = lr
        with self.writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=epoch + 1)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_images(self, images, labels=None, step: int = 0) -> None:
        images = np.asarray(images, dtype=np.float32)[: self.max_images]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"TensorBoardLogger: images must be [batch, height, width, 1|3], got {images.shape}")
        with self.writer.as_default():
            tf.summary.image(IMAGE_TAG, np.clip(images / 255.0, 0.0, 1.0), step=step, max_outputs=len(images),
                             description="Training images after augmentation and batch mixing, as the model sees them.")
            if labels is not None and self.class_names:
                tf.summary.text(IMAGE_TAG + "_findings", findings_table(np.asarray(labels)[: len(images)], self.class_names),
                                step=step)
        self.writer.flush()


def first_batch(source):
    """(images, labels or None) from a dataset, a callable, or an array / (images, labels) pair."""
    batch = source() if callable(source) and not isinstance(source, tf.data.Dataset) else source
    if isinstance(batch, tf.data.Dataset):
        batch = next(iter(batch.take(1)))
    if isinstance(batch, dict):
        raise ValueError("TensorBoardLogger: give images as an array or an (images, labels) tuple, not a dict")
    if isinstance(batch, (tuple, list)):
        return np.asarray(batch[0]), (np.asarray(batch[1]) if len(batch) > 1 else None)
    return np.asarray(batch), None


def scalars(logs: dict) -> dict[str, float]:
    """The entries of Keras' `logs` that are single numbers."""
    out = {}
    for key, value in logs.items():
        try:
            array = np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if array.size == 1:
            out[str(key)] = float(array.reshape(()))
    return out


def learning_rate(optimizer) -> float | None:
    """The optimizer's current learning rate (a schedule evaluated at the current step)."""
    lr = getattr(optimizer, "learning_rate", None)
    if lr is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(lr))
    except (TypeError, ValueError):
        return None


def findings_table(labels: np.ndarray, class_names) -> str:
    """Markdown: one row per image with its findings (weights shown for mixed, non-0/1 labels)."""
    rows = ["| image | findings |", "|---|---|"]
    for i, row in enumerate(labels):
        found = [f"{class_names[j]}" + ("" if row[j] >= 0.999 else f" ({row[j]:.2f})") for j in np.flatnonzero(row > 1e-3)]
        rows.append(f"| {i} | {', '.join(found) or '(none)'} |")
    return "\n".join(rows)
