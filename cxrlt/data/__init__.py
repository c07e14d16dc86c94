"""Stage 1, data: label CSVs -> classes -> folds -> image check -> decoded, sampled, augmented, mixed batches.

Nothing here imports train, predict, ensemble, report or tools."""
