# storefleet: `make run` starts the control plane, `make test` runs everything the tests need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# Evaluated when a recipe runs (after `make uv` may have installed it): uv on PATH, else the
# module pip installed.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
VENV := .venv
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help uv setup run lint fmt test test-fast services docker images edge browser swarm-lab swarm-lab-down screenshots bench clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

setup: uv  ## Create .venv with storefleet and its locked dependencies
	@$(UV) sync --frozen --quiet --compile-bytecode
	@# Store processes start often: keep our own modules compiled too (PYTHONDONTWRITEBYTECODE
	@# may be set on the machine, which would make every start compile from source).
	@$(VENV)/bin/python -m compileall -q src >/dev/null

run: setup  ## Start the control plane on http://127.0.0.1:8000 (embedded process runtime)
	$(VENV)/bin/storefleet serve

lint: setup  ## ruff, ruff format --check, mypy --strict, import-linter
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: setup  ## Format and autofix
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

services:  ## Start PostgreSQL if it is down
	@bash scripts/start-postgres.sh

docker:  ## Install (if absent) and start the Docker engine and the Compose v2 plugin
	@bash scripts/install-docker.sh

images: docker setup  ## Build the store images locally when they are missing (no registry needed)
	@bash scripts/build-images.sh

edge:  ## Install the edge proxy (Caddy) on this host, when it is missing
	@bash scripts/install-edge.sh

browser:  ## Install a headless browser (Debian's chromium) for the browser tests, when it is missing
	@bash scripts/install-browser.sh

swarm-lab: docker images  ## A 3-node Docker Swarm here: the host's engine + 2 engines in network namespaces
	@bash scripts/swarm-lab.sh up

swarm-lab-down:  ## Remove the Swarm lab (its namespaces, engines and the host's swarm)
	@bash scripts/swarm-lab.sh down

test: setup services docker images edge browser swarm-lab lint  ## Install what the tests need, then lint and run every test
	PYTEST=$(VENV)/bin/pytest bash scripts/run-tests.sh

test-fast: setup services edge browser  ## Unit and process-runtime tests only (no Docker)
	$(VENV)/bin/pytest -m "not docker"

screenshots: setup browser  ## Write the dashboard's screenshots to docs/img/ (a scratch control plane)
	PYTHONPATH=tests $(VENV)/bin/python -m helpers.screenshots docs/img

bench: setup services docker images edge  ## Run the benchmarks into bench/results/
	@bash scripts/install-bench-tools.sh
	$(VENV)/bin/python -m bench

clean:  ## Remove the local data dir
	rm -rf var
