# prefsync developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test demo lint format audit bench

install: $(VENV)/.installed

# Versions and hashes pinned by requirements.lock (make lock), as the Docker image installs
# its own (requirements-image.lock): pip takes no hashes in a constraints file, so the pinned
# set goes first, checked against its hashes, then prefsync itself without dependencies. The
# lock holds the ops extra too: Flower (make flower), which tests/e2e/test_flower.py runs.
$(VENV)/.installed: pyproject.toml requirements.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	# setuptools warns at every editable install that a folder may shadow the package: none does.
	PYTHONWARNINGS="ignore:Editable installation" \
		$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

## run: a worker against PREFSYNC_REDIS_URL (default: Redis on localhost); it prints the
## Redis it connected to (password masked) on stderr
run: install
	$(BIN)/prefsync worker

## flower: Flower on 127.0.0.1:5555 against PREFSYNC_REDIS_URL (give it the flower Redis
## user), its login in FLOWER_BASIC_AUTH=user:password (docs/operations.md#flower)
.PHONY: flower
flower: install
	@test -n "$$FLOWER_BASIC_AUTH" || { echo "error: set FLOWER_BASIC_AUTH=user:password, Flower's login (docs/operations.md#flower)" >&2; exit 2; }
	$(BIN)/celery -A worker flower --address=127.0.0.1 --port=5555 --enable_events=False

## test: unit and end-to-end tests (end-to-end ones start their own redis-server)
test: install
	$(BIN)/python -m pytest

## test-unit: the fast suite (fakeredis, no processes started): seconds, for while you edit
.PHONY: test-unit
test-unit: install
	$(BIN)/python -m pytest tests/unit -q

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
	$(BIN)/python -m bench.ingress $(BENCH_INGRESS_ARGS)
	$(BIN)/python -m bench.backfill $(BENCH_BACKFILL_ARGS)

## bench-ingress: the ingress scenario alone (needs wrk: apt-get install wrk): webhooks
## accepted/s over keep-alive, p99 at about 1,000/s, and `prefsync enqueue` beside them
BENCH_INGRESS_ARGS ?=
.PHONY: bench-ingress
bench-ingress: install
	$(BIN)/python -m bench.ingress $(BENCH_INGRESS_ARGS)

## lint: ruff, and the layers (tests/unit/test_architecture.py: imports point down, no circle)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_architecture.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## audit: pip-audit the pinned dependencies (requirements.lock); --strict fails when one
## cannot be checked. Needs PyPI's vulnerability data (or OSV): not part of .ci/run.
audit: install
	$(BIN)/python -m pip install --quiet pip-audit
	$(BIN)/pip-audit --strict -r requirements.lock

## lock: pin every dependency (and theirs) of pyproject.toml, test and ops extras included,
## with the hashes of their files, into requirements.lock (`make install`); and the same
## versions of what the image needs (the ops extra, no test tools) into
## requirements-image.lock (the Dockerfile).
.PHONY: lock
LOCK_OPTIONS := --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
lock: install
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile $(LOCK_OPTIONS) --extra test --extra ops -o requirements.lock pyproject.toml
	cp requirements.lock requirements-image.lock
	$(BIN)/pip-compile $(LOCK_OPTIONS) --extra ops -o requirements-image.lock pyproject.toml

## pin-images: the digest each image tag of docker-compose.yml and the Dockerfiles names
## today (needs Docker); write the digests there, as image:tag@sha256:...
.PHONY: pin-images
pin-images:
	@for image in $$(sed -n 's/^ *image: \([^@]*\)@.*/\1/p; s/^FROM \([^@ ]*\)@.*/\1/p' \
		docker-compose.yml Dockerfile tests/fakes/Dockerfile | sort -u); do \
		printf '%s@' "$$image"; \
		docker buildx imagetools inspect "$$image" --format '{{json .Manifest.Digest}}' | tr -d '"'; \
	done
