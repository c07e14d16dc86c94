"""Stage 3, train: the K-fold loop with out-of-fold predictions, the one train step for every
tf.distribute strategy, callbacks, TensorBoard logging and the run directory.

`python -m cxrlt.train` is :func:`cxrlt.train.kfold.main`."""

from .kfold import main

__all__ = ["main"]
