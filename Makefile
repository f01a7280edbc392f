# Two commands for a newcomer: `make up` runs the service, `make test` runs the tests.
# Both create the virtual environment and install the pinned requirements first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The install stamp is named after the requirements' hash: editing them reinstalls.
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt requirements-nodeps.txt requirements-dev-nodeps.txt | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)

.PHONY: install up down test lint format smoke bench flower clean

install: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-dev-nodeps.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## Run the API (127.0.0.1:8000), a worker and the bundled S3 server until Ctrl-C.
## Refuses (and touches nothing) while another `make up` runs from this checkout.
up: install
	$(PY) -m devstack up

## Stop what `make up` started.
down:
	@if test -x $(PY); then $(PY) -m devstack down; else echo "nothing to stop"; fi

## Run the whole test suite, after the linter. With CI=true, a missing service fails the run
## instead of skipping.
test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

## The linter and the formatter's check, as configured in pyproject.toml (ruff). `make format`
## rewrites the tree as the formatter wants it.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## `make up` with PostgreSQL, RabbitMQ and Redis absent (embedded stand-ins, a temporary var dir,
## free ports), one photo end to end; the stack is stopped after. About a minute.
smoke: install
	$(PY) -m devstack.smoke

## Print throughput and latency figures of the detector (see docs/benchmarks.md).
bench: install
	$(PY) bench/detector.py

## Flower, the Celery monitor, on http://127.0.0.1:5555 (loopback only), behind basic auth:
##   FLOWER_BASIC_AUTH=admin:a-long-password make flower
## It reads the broker of env.env (or the environment), like the workers.
flower: install
	@test -n "$$FLOWER_BASIC_AUTH" || { echo "make flower: set FLOWER_BASIC_AUTH=user:password (Flower is not served without a login)" >&2; exit 1; }
	$(VENV)/bin/celery -A face_detect_api flower --address=127.0.0.1 --port=5555 --basic-auth="$$FLOWER_BASIC_AUTH"

clean:
	rm -rf var staticfiles .pytest_cache
