"""Stage 6, evaluate: metrics (mAP, mAUC, mF1, MCC, head/medium/tail), calibration, and aligning a
prediction CSV to a label file.

`python -m cxrlt.evaluate` is :func:`cxrlt.evaluate.align.main`."""

from .align import main

__all__ = ["main"]
