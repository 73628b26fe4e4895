# Two set-up commands (see README): `make run-all` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cellbench-installed

.PHONY: install test bench lint run-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --benchmark-disable $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/benchmarks --benchmark-enable --benchmark-only --benchmark-json=$(or $(BENCH_JSON),reports/benchmark.json)

lint: $(STAMP)
	$(VENV)/bin/ruff check cellbench tests

run-all: $(STAMP)
	$(VENV)/bin/cellbench run-all $(RUN_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
