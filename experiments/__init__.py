"""Entry points: training, sweeps, merges and benchmarks."""
