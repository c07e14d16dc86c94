"""Tools around the job: ablation grids, benchmarks, the augmentation preview."""
