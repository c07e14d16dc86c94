"""Report: one offline HTML report per run or submission, its plots, Grad-CAM, and the augmentation preview.

`python -m cxrlt.report` is :func:`cxrlt.report.run_report.main` (through
`__main__.py`; this file imports nothing, so importing one small module of the stage stays cheap)."""
