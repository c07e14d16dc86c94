"""The TensorBoard callback writes the epoch's scalars and one augmented batch, read back from the event files."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cxrlt.train.tensorboard_log import IMAGE_TAG, TensorBoardLogger


class FakeValidation(keras.callbacks.Callback):
    """Stands in for ValidationMetrics: puts the val_* keys into `logs`, as the training loop's callbacks do."""

    def on_epoch_end(self, epoch, logs=None):
        logs.update(val_mAP=0.1 + epoch, val_mAUC=0.6, val_mF1=0.2, val_tail_mAP=0.05 * (epoch + 1))


def read_events(log_dir):
    """{tag: {step: (plugin, value)}} from every event file under log_dir."""
    found = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = (value.metadata.plugin_data.plugin_name,
                                                              tf.make_ndarray(value.tensor))
    return found


def test_scalars_per_epoch_and_one_image_batch(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 4), dtype=np.float32), (rng.random((16, 3)) > 0.5).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(2e-3), "mse")
    images = rng.random((5, 12, 12, 3), dtype=np.float32) * 255
    batches = tf.data.Dataset.from_tensors((images, y[:5]))
    log_dir = tmp_path / "fold0" / "tensorboard"
    logger = TensorBoardLogger(log_dir, images=batches, class_names=["Edema", "Hernia", "Nodule"], max_images=4)
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[FakeValidation(), logger])

    events = read_events(log_dir)
    for tag in ("loss", "val_mAP", "val_mAUC", "val_mF1", "val_tail_mAP", "lr"):
        assert sorted(events[tag]) == [1, 2] and events[tag][1][0] == "scalars", tag
    assert events["loss"][2][1] == np.float32(history.history["loss"][1])
    assert events["val_mAP"][2][1] == np.float32(1.1) and events["lr"][1][1] == np.float32(2e-3)
    plugin, encoded = events[IMAGE_TAG][0]
    assert plugin == "images" and len(encoded) == 2 + 4  # width, height, then one PNG per image
    assert tf.io.decode_png(encoded[2]).shape == (12, 12, 3)
    table = events[IMAGE_TAG + "_findings"][0][1].item().decode()
    assert table.count("\n| ") == 4 and "Edema" in table

    # A resumed fold continues its curves and does not write the image batch a second time.
    # The engine's way: an optimizer outside the model is passed in.
    model.fit(x, y, epochs=3, initial_epoch=2, verbose=0,
              callbacks=[FakeValidation(), TensorBoardLogger(log_dir, images=lambda: images,
                                                             optimizer=keras.optimizers.SGD(0.25))])
    events = read_events(log_dir)
    assert sorted(events["val_mAP"]) == [1, 2, 3] and list(events[IMAGE_TAG]) == [0]
    assert events["lr"][3][1] == np.float32(0.25)
