"""The two peers: LiteLLM's proxy and Portkey's open-source gateway, both before the instant server.

Both are installed by ``bench/gateway/setup.sh`` under ``var/bench`` (never into the project's
environment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LITELLM_MASTER_KEY = "sk-bench-litellm-master"
# Redis db 15 keeps LiteLLM's cooldown/usage keys away from Tenantry's (db 0) and the tests'.
LITELLM_REDIS_URL = "redis://127.0.0.1:6379/15"


@dataclass(frozen=True)
class Launch:
    """How to start a server and what its clients must send."""

    cmd: list[str]
    env: dict[str, str | None]
    headers: dict[str, str]
    ready_path: str


def litellm_config(*, upstream_base_url: str, model: str) -> str:
    """LiteLLM's proxy config (YAML is a superset of JSON): one model, master key, Redis, no DB."""
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": upstream_base_url,
                    "api_key": "sk-instant",
                },
            }
        ],
        "router_settings": {"redis_url": LITELLM_REDIS_URL},
        "litellm_settings": {
            # What a deployment would run: no response cache (that would skip the upstream),
            # no callbacks (nothing to log to here), quiet logs.
            "cache": False,
            "set_verbose": False,
            "json_logs": True,
            "telemetry": False,
        },
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    return json.dumps(config, indent=2)


def litellm_launch(
    *, venv: Path, config_dir: Path, port: int, upstream_base_url: str, model: str, workers: int
) -> Launch:
    """Write LiteLLM's config and return how to run it: no database, uvicorn with `workers`."""
    config_dir.mkdir(parents=True, exist_ok=True)
    config = config_dir / "litellm.yaml"
    config.write_text(litellm_config(upstream_base_url=upstream_base_url, model=model))
    env: dict[str, str | None] = {
        # No DATABASE_URL: the proxy then runs without Prisma (whose engines it would download).
        "DATABASE_URL": None,
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "DISABLE_ADMIN_UI": "True",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
        "NO_DOCS": "True",
        # Never reach the internet for the model-cost map at start.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    cmd = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        str(workers),
        # uvicorn's supervisor replaces a worker that misses a 5 s health ping; on 2 shared
        # cores a busy or still-importing worker misses it, and was being killed and re-spawned
        # in a loop (each re-spawn burning a core for ~10 s of imports). 60 s keeps them alive.
        "--timeout_worker_healthcheck",
        "60",
    ]
    return Launch(cmd=cmd, env=env, headers={}, ready_path="/health/liveliness")


def portkey_launch(*, install_dir: Path, port: int, upstream_base_url: str) -> Launch:
    """How to run Portkey's gateway (one Node process) and the headers that aim it at upstream."""
    entry = install_dir / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    env: dict[str, str | None] = {
        # --headless and production: no log UI streaming every request to a browser.
        "NODE_ENV": "production",
        # Portkey refuses custom hosts on private addresses unless they are trusted.
        "TRUSTED_CUSTOM_HOSTS": "127.0.0.1,localhost",
    }
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": upstream_base_url,
    }
    return Launch(
        cmd=["node", str(entry), f"--port={port}", "--headless"],
        env=env,
        headers=headers,
        ready_path="/",
    )
