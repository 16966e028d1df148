"""Helpers the tests and the benchmarks share: a real daemon in a subprocess, the speech clips,
synthetic audio and the word error rate. Not part of whisperd: setup.py does not install it and
the .deb does not carry it; pytest (``pythonpath``) and ``python -m bench`` import it from the repo root."""
