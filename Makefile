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

# The test suite, with the pytest-benchmark suite (tests/benchmarks) run briefly and kept as JSON,
# then the speed regression guard: each benchmark's time relative to the poly transform's in the same
# run, against benchmarks/speed_baseline.json (fails on a ratio more than 3x worse).
test: $(STAMP)
	mkdir -p reports
	$(PY) -m pytest -q -p no:cacheprovider --benchmark-enable --benchmark-max-time=0.5 --benchmark-min-rounds=2 \
		--benchmark-json=reports/benchmark-ci.json $(PYTEST_ARGS)
	$(PY) benchmarks/speed_guard.py reports/benchmark-ci.json

bench: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/benchmarks --benchmark-enable --benchmark-only --benchmark-json=$(or $(BENCH_JSON),reports/benchmark.json)

lint: $(STAMP)
	$(VENV)/bin/ruff check cellbench tests

run-all: $(STAMP)
	$(VENV)/bin/cellbench run-all $(RUN_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
