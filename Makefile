# maskfleet: `make run` starts the platform locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-unit test-integration lint bench run stop manifests dashboards clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml scripts/install-system.sh
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	scripts/install-system.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: install
	$(BIN)/pytest -q tests/unit

test-integration: install
	$(BIN)/pytest -q tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy shared services training

bench: install
	$(BIN)/python -m loadtest.bench

run: install
	scripts/run-local.sh

stop:
	scripts/run-local.sh stop

clean:
	rm -rf var build *.egg-info

dashboards: install
	$(BIN)/python -m observability.dashboards

manifests: install
	$(BIN)/python scripts/render_manifests.py
