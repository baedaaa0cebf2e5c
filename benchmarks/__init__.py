"""otsort's benchmark harness: ``python -m benchmarks`` (see README.md in this folder)."""
