# Two commands for a fresh machine with Python 3.11:
#   make run   - set up, then the SMTP gateway (127.0.0.1:2525, metrics on 9325) and the admin (127.0.0.1:8000)
#   make test  - set up, then the whole test suite
# and for developers:
#   make check     - ruff (lint, format), mypy (strict), makemigrations --check
#   make test-unit - the unit tier only (tests/unit: no server), in seconds
#   make test-browser - the admin in headless Chromium (tests/browser)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test test-unit test-browser check setup bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(INSTALLED)

.env:
	cp .env.example .env

setup: $(INSTALLED) .env
	$(PY) manage.py migrate --noinput
	$(PY) manage.py loaddata scenarios
	$(PY) manage.py gencert --if-missing

# runsmtp in the foreground, the admin and the delivery worker beside it; Ctrl-C stops all.
# Metrics (docs/operations.md#metrics): the gateway's on 127.0.0.1:9325, the delivery worker's on 9326.
run: setup
	@$(PY) manage.py demohint
	@trap 'kill $$web $$deliver 2>/dev/null; wait $$web $$deliver 2>/dev/null' EXIT INT TERM; \
	$(PY) manage.py runserver 127.0.0.1:8000 --noreload & web=$$!; \
	$(PY) manage.py deliver --metrics-port 9326 & deliver=$$!; \
	$(PY) manage.py runsmtp --metrics-port 9325

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-browser: setup
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

check: $(INSTALLED) .env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run

BENCH_ARGS ?=
# The benchmark (bench/run.py): needs gcc; uses PostgreSQL too when reachable.
bench: setup
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/delivery_run.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-db.sqlite3*
