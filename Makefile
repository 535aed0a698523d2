# Clearway — `make run` starts the standalone demo, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# Integration tests: their own database and Redis db index (see docs/testing.md).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/clearway_it
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672//

.PHONY: run test test-fast test-integration package-smoke lint check browser-deps axe-deps sandbox-deps audit-deps services clean

# OPA's evaluator is installed apart from pyproject.toml: its metadata asks for Python >= 3.14,
# but it runs on 3.11 (see requirements/opa.txt), so pip must ignore that, pinned by hash.
$(VENV)/.installed: pyproject.toml requirements/opa.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Clearway needs Python 3.11 (found %s)" % sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo]'
	$(PY) -m pip install --quiet --ignore-requires-python --no-deps --require-hashes -r requirements/opa.txt
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[demo,dev]'
	@touch $@

run: $(VENV)/.installed sandbox-deps
	$(PY) manage.py standalone --port $(PORT)

browser-deps:
	@bash .ci/browser-deps

axe-deps:
	@bash .ci/axe-deps

sandbox-deps:
	@bash .ci/sandbox-deps

audit-deps:
	@bash .ci/audit-deps

services:
	@bash .ci/services

check: $(VENV)/.installed-dev
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

lint: check
	$(VENV)/bin/bandit -q -c pyproject.toml --severity-level high -r orchestrator governance dashboard

test-fast: $(VENV)/.installed-dev sandbox-deps
	$(VENV)/bin/pytest -m "not integration and not browser" -q -p no:cacheprovider -n 2

test-integration: $(VENV)/.installed-dev browser-deps axe-deps sandbox-deps audit-deps services
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) TEST_AMQP_URL=$(TEST_AMQP_URL) \
	  $(VENV)/bin/pytest -m "integration or browser" -q -p no:cacheprovider

# The wheel, installed outside the source tree into a fresh virtualenv: clearway migrate,
# check --deploy, standalone answering /healthz, verify-audit (.ci/package-smoke).
package-smoke: $(VENV)/.installed-dev
	PYTHON=$(PYTHON) bash .ci/package-smoke

test: lint test-fast test-integration package-smoke

clean:
	rm -rf $(VENV) var/ test-artifacts/
