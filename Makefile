# Tenantry's front door. `make demo` runs the whole system; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.8
PY := .venv/bin/python
PYTEST := .venv/bin/pytest
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: help install up down status demo test test-unit test-integration test-e2e test-fault \
        lint fmt typecheck bench logs schemas clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --all-packages
	@touch $@

install: .venv/.synced ## create .venv from uv.lock (every package, dev tools, local stack)

up: install ## start broker, model server and all services (uses local Postgres and Redis)
	$(PY) scripts/stack.py up

down: ## stop everything `make up` started
	@$(PY) scripts/stack.py down 2>/dev/null || python3 scripts/stack.py down

status: ## what is running
	@$(PY) scripts/stack.py status

demo: up ## start the stack and run the two-tenant demo through the edge API
	$(PY) scripts/demo.py

test: install ## every test: unit, integration (real services) and end-to-end
	bash scripts/ensure-services.sh
	$(PYTEST) -m "unit or integration or e2e or fault" -p no:cacheprovider

test-unit: install ## unit tests only (no services)
	$(PYTEST) -m unit -q

test-integration: install ## integration tests (real broker, Postgres, Redis, Chroma, model)
	bash scripts/ensure-services.sh
	$(PYTEST) -m integration

test-e2e: install ## end-to-end tests through the edge's HTTP API
	bash scripts/ensure-services.sh
	$(PYTEST) -m "e2e or fault"

lint: install ## ruff and mypy
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy libs/common/src services/*/src

fmt: install ## format and autofix
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

typecheck: install
	.venv/bin/mypy libs/common/src services/*/src

bench: install ## benchmarks (not pass/fail); see bench/README.md
	bash bench/run-all.sh

logs: ## follow the local stack's logs
	tail -n 50 -F var/log/*.log

schemas: install ## export event JSON Schemas to docs/schemas
	$(PY) -m tenantry_common.schemas docs/schemas

clean: down
	rm -rf var .venv .mypy_cache .ruff_cache
