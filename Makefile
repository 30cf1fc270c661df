# Tenantry's front door. `make demo` runs the whole system; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.8
PY := .venv/bin/python
PYTEST := .venv/bin/pytest
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: help install tools up down status demo test test-unit test-integration test-e2e test-fault \
        lint fmt typecheck bench logs schemas clean k8s-topics deploy-check images compose-up \
        compose-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --all-packages
	@touch $@

install: .venv/.synced ## create .venv from uv.lock (every package, dev tools, local stack)

tools: ## Debian tools the deployment tests use (docker-compose validates compose files offline)
	@command -v docker-compose >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } || \
	  echo "[tools] could not install docker-compose; the compose test will fail" >&2

up: install ## start broker, model server and all services (uses local Postgres and Redis)
	$(PY) scripts/stack.py up

down: ## stop everything `make up` started
	@$(PY) scripts/stack.py down 2>/dev/null || python3 scripts/stack.py down

status: ## what is running
	@$(PY) scripts/stack.py status

demo: up ## start the stack and run the two-tenant demo through the edge API
	$(PY) scripts/demo.py

test: install tools ## every test: unit, integration (real services), end-to-end and fault injection
	bash scripts/ensure-services.sh
	$(PYTEST) -m "unit or integration or e2e or fault" -p no:cacheprovider

test-unit: install ## unit tests only (no services)
	$(PYTEST) -m unit -q

test-integration: install ## integration tests (real broker, Postgres, Redis, Chroma, model)
	bash scripts/ensure-services.sh
	$(PYTEST) -m integration

test-e2e: install ## end-to-end tests through the edge's HTTP API
	bash scripts/ensure-services.sh
	$(PYTEST) -m e2e

test-fault: install ## fault injection under load (kill -9, Postgres and Redis restarts); ~2-4 min
	$(PYTEST) -m fault

lint: install ## ruff, mypy and hadolint
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy libs/common/src services/*/src
	.venv/bin/hadolint deploy/Dockerfile deploy/model-server.Dockerfile

fmt: install ## format and autofix
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

typecheck: install
	.venv/bin/mypy libs/common/src services/*/src

bench: install ## benchmarks (not pass/fail); see bench/README.md
	bash bench/run-all.sh

logs: ## follow the local stack's logs
	tail -n 50 -F var/log/*.log

schemas: install ## export event JSON Schemas (docs/schemas) and AsyncAPI documents (docs/asyncapi)
	$(PY) -m tenantry_common.schemas docs/schemas
	$(PY) -m tenantry_metering.schemas docs/schemas
	$(PY) scripts/asyncapi.py docs/asyncapi

k8s-topics: install ## regenerate k8s/base/kafka-topics.yaml from topics.py
	$(PY) deploy/gen_k8s_topics.py

deploy-check: install tools ## Dockerfiles, compose and every k8s manifest, offline
	$(PY) deploy/gen_k8s_topics.py --check
	docker-compose -f docker-compose.yml config -q
	$(PYTEST) -m unit tests/deploy -q

images: ## build every image (needs a Docker engine)
	for s in auth retrieval inference metering audit; do \
	  docker build -f deploy/Dockerfile --build-arg SERVICE=$$s -t tenantry/$$s:local . ; done
	docker build -f deploy/model-server.Dockerfile -t tenantry/model-server:local .

compose-up: ## the whole stack in containers (needs a Docker engine)
	docker compose up -d --build

compose-down:
	docker compose down

clean: down
	rm -rf var .venv .mypy_cache .ruff_cache
