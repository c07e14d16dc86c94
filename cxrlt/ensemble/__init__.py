"""Ensemble: combine runs (mean / rank / logit, OOF-fitted weights), apply per-class thresholds, and the validated CodaLab submission CSV + zip.

`python -m cxrlt.ensemble` is :func:`cxrlt.ensemble.ensembler.main` (through
`__main__.py`; this file imports nothing, so importing one small module of the stage stays cheap)."""
