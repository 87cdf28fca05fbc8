# Every target creates .venv on first use. `make` alone lists the targets.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help dev test test-fast reliability bench lint format typecheck check clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP) ## Run the whole system here (embedded Redis, sandbox ChiliPiper, web, worker)
	$(BIN)/crmhook dev

test: $(STAMP) ## Run the whole test suite
	$(BIN)/pytest

test-fast: $(STAMP) ## Run the tests that need no worker process
	$(BIN)/pytest -m "not slow and not reliability"

reliability: $(STAMP) ## Run the failure scenarios (kills, restarts, faults, fuzzing)
	$(BIN)/pytest -m reliability

bench: $(STAMP) ## Measure the whole system on this machine (about 6 minutes; docs/benchmarks.md)
	$(BIN)/crmhook bench

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy, strict on webhooks/, worker/ and bench/
	$(BIN)/mypy

check: lint typecheck test ## Everything CI runs

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
