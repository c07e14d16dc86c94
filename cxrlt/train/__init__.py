"""Train: the K-fold loop with out-of-fold predictions, the one train step for every tf.distribute
strategy, callbacks, TensorBoard logging, `--init`, and fused runs.

`python -m cxrlt.train` is :func:`cxrlt.train.kfold.main` (through
`__main__.py`; this file imports nothing, so importing one small module of the stage stays cheap)."""
