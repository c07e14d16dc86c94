"""Evaluate: metrics (mAP, mAUC, mF1, MCC, head/medium/tail), calibration, per-class thresholds tuned
on out-of-fold predictions, and aligning a prediction CSV to a label file.

`python -m cxrlt.evaluate` is :func:`cxrlt.evaluate.align.main` (through
`__main__.py`; this file imports nothing, so importing one small module of the stage stays cheap)."""
