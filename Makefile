# Flagpost: the two commands that matter are `make run` (demo) and `make test` (whole suite).
# Both set everything up from a clean checkout on a Debian machine.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.flagpost-installed
PYTEST_ARGS ?=
# Test files run in this many processes (pytest-xdist, one file per process at a time: a file's
# tests share its fixtures); most tests wait on real servers and agents, so 3 suit 2 cores.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 3
DEMO_ARGS ?=

.PHONY: run test setup services lint typecheck proto bench chaos clean

$(STAMP): pyproject.toml
	scripts/bootstrap.sh $(VENV)
	@touch $(STAMP)

setup: $(STAMP)

## make run: a demo on SQLite in a temp dir with five local agents; Ctrl-C stops it.
## Extra demo options go in DEMO_ARGS, e.g. `make run DEMO_ARGS=--keep` keeps the demo dir.
run: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

## make test: install everything (venv, chromium, PostgreSQL running), lint, type-check, test.
test: setup services lint typecheck
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

services:
	scripts/ensure_services.sh

lint: setup
	$(VENV)/bin/ruff check agent server tests scripts alembic
	$(VENV)/bin/ruff format --check agent server tests scripts alembic

typecheck: setup
	$(VENV)/bin/mypy

## make proto: regenerate the committed protobuf modules after editing agent.proto.
proto: setup
	$(PY) scripts/gen_proto.py

## make bench: ingest benchmark (prints figures; see BENCHMARKS.md).
bench: setup services
	$(PY) -m tests.bench.ingest --db sqlite
	$(PY) -m tests.bench.ingest --db postgresql

## make chaos: the long fault-injection runs.
chaos: setup services
	FLAGPOST_CHAOS=long $(PY) -m pytest -m slow tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
