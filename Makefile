# maskfleet: `make run` starts the platform locally, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# requirements/dev.txt is the hash-checked lock `make install` installs (see `make lock`).
LOCK := requirements/dev.txt
LOCKS := $(wildcard requirements/*.txt) loadtest/peers/requirements.txt
UV ?= $(BIN)/uv
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-unit test-integration lint audit lock bench bench-peers run stop manifests protos dashboards clean

install: $(INSTALLED)

# Exactly the locked versions, every file checked against its hash; then the project itself
# with --no-deps (its dependencies are all in the lock) and without build isolation (the
# locked setuptools builds it, nothing unpinned is downloaded). A changed lock reinstalls.
$(INSTALLED): pyproject.toml $(LOCK) scripts/install-system.sh
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	scripts/install-system.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Two pytest processes. The Helm Go library (helm-python-sdk renders the chart in-process)
# crashes the interpreter with SIGSEGV once the same process has run TensorFlow, OpenVINO/NNCF
# and gRPC clients (seen at the first chart render after the integration tests), so every test
# that renders the chart runs in a process of its own, and the rest in another.
HELM_TESTS := tests/k8s tests/observability tests/unit/test_rollout_chart.py \
	tests/unit/test_rollout_traffic.py tests/integration/test_inference_drain.py \
	tests/integration/test_rollout_prometheus.py tests/integration/test_worker_liveness.py

test: install
	$(BIN)/pytest -q -p no:cacheprovider $(HELM_TESTS)
	$(BIN)/pytest -q -p no:cacheprovider $(addprefix --ignore=,$(HELM_TESTS))

test-unit: install
	$(BIN)/pytest -q tests/unit

test-integration: install
	$(BIN)/pytest -q tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy shared services training loadtest

# Known vulnerabilities in every locked version (PyPI's advisory data, via pip-audit).
audit: install
	for lock in $(LOCKS); do \
	  echo "pip-audit $$lock"; \
	  $(BIN)/pip-audit --strict --progress-spinner off --disable-pip --require-hashes -r $$lock || exit 1; \
	done

# Re-solve requirements/*.txt after editing pyproject.toml; LOCK_ARGS="--upgrade" moves every
# pin to the newest allowed, LOCK_ARGS="--upgrade-package NAME" one package. Needs uv: the
# dev lock installs it into .venv, or pass UV=/path/to/uv.
lock:
	UV=$(UV) scripts/lock.sh $(LOCK_ARGS)

bench: install
	$(BIN)/python -m loadtest.bench

# maskfleet beside MLServer and PyTriton on the same SavedModel (loadtest/README.md). The peers
# live in a virtualenv of their own, from their own hash-checked lock: their pins (numpy<2,
# MLServer's FastAPI) clash with the project's. `make test` never installs them.
PEERS_VENV := var/peers-venv
PEERS_LOCK := loadtest/peers/requirements.txt

$(PEERS_VENV)/.installed: $(PEERS_LOCK)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --require-hashes -r $(PEERS_LOCK)
	touch $@

bench-peers: install $(PEERS_VENV)/.installed
	$(BIN)/python -m loadtest.peers --peers-python $(PEERS_VENV)/bin/python $(PEERS_ARGS)

run: install
	scripts/run-local.sh

stop:
	scripts/run-local.sh stop

clean:
	rm -rf var build *.egg-info

dashboards: install
	$(BIN)/python -m observability.dashboards

# Regenerate the checked-in gRPC modules after editing the .proto (a test checks they match).
protos: install
	PYTHON=$(BIN)/python scripts/gen_grpc.sh

manifests: install
	$(BIN)/python scripts/render_manifests.py
