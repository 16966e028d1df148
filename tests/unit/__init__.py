"""The unit tier (a package, so its test_worker.py and test_pipeline.py do not clash with tests/'s)."""
