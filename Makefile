# A newcomer needs two commands: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAMPLES := tests/fixtures/speech/*.wav tests/fixtures/speech/*.ogg

.PHONY: run test lint fmt typecheck bench fixtures clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "runner needs Python 3.11 or newer (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## run: transcribe the committed samples through an embedded Redis and one worker
run: $(VENV)/.installed
	$(BIN)/runner transcribe $(SAMPLES)

## test: lint, type-check and run the whole suite (starts its own redis-server)
test: lint typecheck
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

## bench: measure, and rewrite docs/benchmarks.md (half an hour on 2 cores)
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench

## fixtures: regenerate the speech samples (needs espeak-ng)
fixtures: $(VENV)/.installed
	$(BIN)/python scripts/make_fixtures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
