# One-command set-up: every target creates/refreshes .venv as needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pxp-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all test-faults lint format bench bench-service bench-faults clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[core,service,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m pxp.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The fault suite's full form (`make test` runs it bounded, 3 jobs per scenario).
FAULT_JOBS ?= 20
test-faults: $(STAMP)
	PXP_FAULT_JOBS=$(FAULT_JOBS) $(PY) -m pytest -m fault tests/faults $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Each script prints a markdown table; see README "Results" for the flags used there.
bench: $(STAMP)
	$(PY) bench/criteria.py
	$(PY) bench/criteria.py --models digits_vit:heads digits_vit:neurons
	$(PY) bench/attribution_speed.py
	$(PY) bench/search.py
	$(PY) bench/compression.py
	$(PY) bench/sweep_speed.py

# Needs the local Postgres and Redis (production layout on loopback).
bench-service: $(STAMP)
	$(PY) bench/service_load.py --spawn production

# Fault table (own Postgres cluster and Redis on spare ports; see docs/reliability.md).
bench-faults: $(STAMP)
	$(PY) bench/faults.py --jobs $(FAULT_JOBS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
