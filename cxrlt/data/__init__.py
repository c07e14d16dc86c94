"""Data: label CSVs -> classes -> folds -> image check -> decoded, sampled, augmented, mixed batches.

It imports only utils and config (ARCHITECTURE.md: the stage order)."""
