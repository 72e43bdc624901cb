# Two entry points for a fresh machine: `make demo` and `make test`.
# Both build .venv themselves: torch 2.13.0 (CPU wheel) first, then medtune.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medtune-installed

.PHONY: demo test test-fast lint install benchmarks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Ray's bundled jemalloc (decay off) avoids glibc's page-fault storm in CPU training:
# ~2x faster steps (benchmarks/jemalloc.py). Trial workers get it from medtune itself.
JEMALLOC = LD_PRELOAD=$$($(BIN)/python -c 'from orchestrator.runtime import jemalloc_path; print(jemalloc_path() or "")') \
	MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1

# Two searches on the shipped real sample under one coordinator, then the HTML report.
demo: $(STAMP)
	rm -rf results/demo
	$(JEMALLOC) $(BIN)/medtune run examples/demo.yaml --out results/demo

# PYTEST_ARGS: extra pytest options (CI adds --durations=25).
test: $(STAMP)
	$(JEMALLOC) $(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

# The fast tier: no Ray cluster (configs, data, searchers, trainables, zoo, spec).
test-fast: $(STAMP)
	$(JEMALLOC) $(BIN)/python -m pytest -q -m "not ray and not cluster" $(PYTEST_ARGS) tests

# Ruff with the rules in pyproject.toml ([tool.ruff]); checks only, never rewrites files.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) results runs
