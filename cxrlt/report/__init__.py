"""Stage 7, report: one offline HTML report per run or submission, its plots, and Grad-CAM.

`python -m cxrlt.report` is :func:`cxrlt.report.run_report.main`."""

from .run_report import main

__all__ = ["main"]
