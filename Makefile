# convserve — `make demo` and `make test` work from a fresh clone on a fresh machine.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test test-fast lint format clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(PY) $(VENV)
	touch $(STAMP)

demo: install
	bash scripts/demo.sh $(DEMO_DIR)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean-venv:
	rm -rf $(VENV)

# Containers end to end (docker/e2e.sh via pytest): installs/starts a Docker engine if needed (root), builds
# both images, trains, serves, predicts, load-tests, tears down. Tens of minutes; not part of `make test`.
.PHONY: test-docker
test-docker: install
	CONVSERVE_DOCKER_TESTS=1 $(BIN)/python -m pytest -q -s -m docker tests/docker
