"""Stage 4, predict: fold models x TTA over an image list (cached per fold), and study aggregation.

`python -m cxrlt.predict` is :func:`cxrlt.predict.inference.main`."""

from .inference import main

__all__ = ["main"]
