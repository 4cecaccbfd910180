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

# Every test, in TEST_PROCESSES pytest-xdist processes (each with its own private Redis, simulator
# and worker; the run order is tests/conftest.py's, the lanes tests/support/lanes.py's). Most of
# the suite waits (worker start-ups, countdowns, the fault rows' outages), so 3 processes on 2
# cores (4 were faster but timing-sensitive rows failed under their load). CI runs this; README,
# "Testing", has the times measured (34 min before, one process).
TEST_PROCESSES ?= 3
test: lint
	$(BIN)/python -m pytest -n $(TEST_PROCESSES)

# The quick loop while editing: lint, the unit tests and CHECK_SEEDS of the simulation's seeds
# (make test runs all 2,000), in 2 processes: 41 s on a warm checkout, quiet machine (2 min
# 43 s with the cores shared by other runs). Not run here: tests/integration, tests/client, tests/examples,
# tests/deploy, tests/reliability and the other 1,800 seeds.
CHECK_SEEDS ?= 200
check: lint
	SIM_SEEDS=$(CHECK_SEEDS) $(BIN)/python -m pytest -n 2 tests/unit tests/sim

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
