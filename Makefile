# The two commands a new user needs: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# pytest's workers: the e2e tests mostly wait on real processes, so more workers than the
# machine's two cores keep both busy (docs/testing.md has the measurements).
TEST_WORKERS ?= 4

.PHONY: dev test lint typecheck check docs bench sim screenshots openapi clean

# uv installs the same packages from the same ranges as pip would, in 9 s instead of 25
# (bytecode included): a fresh clone's `make test` has six minutes in all.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.5,<1'
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

# make dev PORT=3001 API_PORT=8766 MANAGEMENT_PORT=8768 when the defaults are taken.
PORT ?= 3000
API_PORT ?=
MANAGEMENT_PORT ?=
dev: $(STAMP)
	$(BIN)/graph-runs dev --port $(PORT) $(if $(API_PORT),--api-port $(API_PORT)) $(if $(MANAGEMENT_PORT),--management-port $(MANAGEMENT_PORT))

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/deptry .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	# Bytecode is written even where the environment says not to: without it every test
	# worker and every Dagster process the e2e tests start compiles the code again.
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The docs site at http://127.0.0.1:8000, rebuilt as pages change.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The management API's benchmark also needs Debian's wrk (apt-get install wrk).
bench: $(STAMP)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev,bench]'
	$(BIN)/pytest tests/benchmarks --benchmark-only --benchmark-columns=median,min,max,rounds

# openapi.json, the management API's contract, from the code (a test fails when they differ).
openapi: $(STAMP)
	$(BIN)/graph-runs api openapi > openapi.json

# The README's pictures of the Dagster UI (docs/images), from a fresh demo stack; needs
# Debian's chromium (apt-get install chromium). Not part of make test.
screenshots: $(STAMP)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev,screenshots]'
	$(BIN)/python scripts/screenshots.py

# The fault simulator on more seeds than make test runs: make sim SEEDS=50 HOURS=24
# (BACKEND=postgres with GRAPH_RUNS_TEST_POSTGRES_URL set). A failure prints its replay.
SEEDS ?= 20
HOURS ?= 24
BACKEND ?= sqlite
sim: $(STAMP)
	$(BIN)/python -m tests.simulation --seeds $(SEEDS) --hours $(HOURS) --backend $(BACKEND)

clean:
	rm -rf $(VENV) .graph_runs .pytest_cache .ruff_cache .mypy_cache
