# convserve — `make demo` and `make test` work from a fresh clone on a fresh machine.
SHELL := /bin/bash
# PY=python3.12 (a name or a path) picks the interpreter; by default scripts/find_python.sh does
PY ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)
PORT ?= 8080

.PHONY: install demo serve test test-fast lint format clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/find_python.sh
	bash scripts/install.sh "$(PY)" $(VENV)
	touch $(STAMP)

demo: install
	PORT=$(PORT) bash scripts/demo.sh $(DEMO_NAME)

# Serve the newest demo's model in the foreground until Ctrl-C (run `make demo` first).
serve: install
	@store=$$(ls -td model_store/*/ 2>/dev/null | head -1); \
	if [ -z "$$store" ]; then echo "error: no model_store/*/ yet: run make demo first" >&2; exit 2; fi; \
	$(BIN)/python serving/serve.py --model-store "$$store" --models alexnet=alexnet.mar --port $(PORT) \
		--run-dir logs/serve --foreground

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

# Every supported Python found here, each in a fresh venv through scripts/install.sh: the fast suite and an end to
# end from the built wheel, as a table (matrix/matrix.md). The first run downloads torch for each Python (GBs).
.PHONY: test-matrix
test-matrix:
	python3 scripts/test_matrix.py --out matrix

# Containers end to end (docker/e2e.sh via pytest): installs/starts a Docker engine if needed (root), builds
# both images, trains, serves, predicts, load-tests, tears down. Tens of minutes; not part of `make test`.
.PHONY: test-docker
test-docker: install
	CONVSERVE_DOCKER_TESTS=1 $(BIN)/python -m pytest -q -s -m docker tests/docker
