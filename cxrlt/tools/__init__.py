"""Tools around the job: ablation grids and benchmarks."""
