"""whisperd benchmarks: `make bench`. See bench/RESULTS.md."""
