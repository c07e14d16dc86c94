"""Predict: fold models x TTA over an image list (cached per fold), and study aggregation.

`python -m cxrlt.predict` is :func:`cxrlt.predict.inference.main` (through
`__main__.py`; this file imports nothing, so importing one small module of the stage stays cheap)."""
