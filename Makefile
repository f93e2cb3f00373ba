# prefsync developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test demo lint format audit bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## run: a worker against PREFSYNC_REDIS_URL (default: Redis on localhost)
run: install
	$(BIN)/prefsync worker

## test: unit and end-to-end tests (end-to-end ones start their own redis-server)
test: install
	$(BIN)/python -m pytest

## chaos: the fault tests (tests/e2e/test_faults.py) with ten times the events and longer
## faults, printing what each measured; minutes, not in `make test` (which runs them short).
## Then the Redis soak (tests/e2e/test_soak.py): 50 Redis faults of 1-10 s in a row under
## load, with short limits and with the defaults (about half an hour)
.PHONY: chaos
chaos: install
	PREFSYNC_CHAOS=1 $(BIN)/python -m pytest tests/e2e/test_faults.py tests/e2e/test_soak.py -rP -v

## demo: own redis-server, fake Braze/Brevo and a worker; deliver the examples, show the calls
demo: install
	$(BIN)/python -m tests.demo

## bench: throughput/latency benchmark (not in `make test`): own redis-server, fast fake
## Braze/Brevo, the worker and a naive baseline; writes bench/RESULTS.md.
## BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="--scale 0.01 --runs 1"
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## audit: pip-audit the installed dependencies; --strict fails when one cannot be checked.
## Needs PyPI's vulnerability data (or OSV): not part of .ci/run, whose machine may lack it.
audit: install
	$(BIN)/python -m pip install --quiet pip-audit
	$(BIN)/pip-audit --strict --skip-editable
