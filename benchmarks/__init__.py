"""Scripts that print measured figures (``python -m benchmarks.bench_model`` etc.); never timed unit tests."""
