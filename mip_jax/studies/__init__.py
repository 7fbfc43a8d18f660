"""Studies made of protocol runs: the cell engine and its aggregation, results files, the
attribution table, the paper's experiments, the frontier, benchmarks."""
