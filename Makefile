# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the project into it on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test check lint unit integration worker bench clean

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The app's side (client/): the examples and tests/client import it as an app would.
	$(BIN)/python -m pip install --quiet -e ./client
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/tts-worker demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

# The quick loop while editing: lint, the unit tests and the simulation's 2,000 seeds, about
# 5 minutes on 2 cores (test, which CI runs: everything, ~34 min in a fresh clone).
check: lint
	$(BIN)/python -m pytest tests/unit tests/sim

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

worker: install
	$(BIN)/celery -A workers.app worker -l INFO

# The benchmarks (rows 1-7, ~33 min on 2 cores): write BENCHMARKS.md and BENCHMARKS.json.
# `make bench ROWS=1,3` reruns some rows and keeps the others' last figures.
ROWS ?= 1,2,3,4,5,6,7
bench: install
	$(BIN)/python -m bench --rows $(ROWS) --out BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache audio
