"""Stage 5, ensemble: combine runs (mean / rank / logit, OOF-fitted weights), per-class thresholds,
and the validated CodaLab submission CSV + zip.

`python -m cxrlt.ensemble` is :func:`cxrlt.ensemble.ensembler.main`."""

from .ensembler import main

__all__ = ["main"]
