"""Tenantry as a bench target: onboard tenants through the edge API, gateway mode, tokens.

The stack must run with the bench's model catalogue (``catalogue_env``) so that inference calls
the instant server, and with a bootstrap operator secret so that the bench can get an operator
token (the edge creates the ``operator`` client at start; ``make up`` keeps the secret in
``var/operator.secret``).
Everything here goes through the edge's public HTTP API, as an operator and tenant admins would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procs import http_status

MODEL = "instant"
OPERATOR_CLIENT_ID = "operator"

# Edge API paths (services/auth/src/tenantry_auth/api.py).
TOKEN_PATH = "/v1/oauth/token"
TENANTS_PATH = "/v1/tenants"
CLIENTS_PATH = "/v1/clients"
CONFIG_PATH = "/v1/config"
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"


class EdgeRefused(RuntimeError):
    """The edge answered an onboarding call with an unexpected status."""


def catalogue(*, instant_base_url: str) -> dict[str, dict[str, Any]]:
    """The model catalogue for the bench: one model served by the instant server."""
    return {
        MODEL: {
            "base_url": instant_base_url,
            "served_name": MODEL,
            "input_price_micros_per_mtok": 50_000,
            "output_price_micros_per_mtok": 100_000,
            "context_window": 8192,
        }
    }


def catalogue_env(*, instant_base_url: str) -> dict[str, str]:
    """Environment for every Tenantry service (``make up`` passes it through)."""
    return {"TENANTRY_MODELS": json.dumps(catalogue(instant_base_url=instant_base_url))}


def run_stack(
    *command: str,
    instant_base_url: str,
    check: bool,
    settings: Mapping[str, str] | None = None,
) -> None:
    """``scripts/stack.py <command>`` with the bench's model catalogue (the instant server) and
    any ``settings`` (environment variables) over this process's environment; with ``check``, a
    failure raises with the end of what the script printed."""
    env = os.environ | dict(settings or {}) | catalogue_env(instant_base_url=instant_base_url)
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[2] / "scripts" / "stack.py"),
            *command,
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and done.returncode:
        printed = (done.stdout + done.stderr).strip().splitlines()[-20:]
        raise RuntimeError(
            f"scripts/stack.py {' '.join(command)} failed (rc {done.returncode}):\n"
            + "\n".join(printed)
        )


@dataclass(frozen=True)
class BenchTenant:
    """A tenant the bench onboarded: its admin client, and a member client as a frontend's."""

    tenant_id: str
    admin_client_id: str
    admin_client_secret: str
    member_client_id: str = ""
    member_client_secret: str = ""


def _call(
    edge_url: str,
    path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    payload: Mapping[str, Any] | None = None,
    form: Mapping[str, str] | None = None,
    expect: tuple[int, ...] = (200, 201, 202),
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One JSON call to the edge; raise EdgeRefused (with the edge's reason) on another status."""
    headers = {"Accept": "application/json"}
    body: bytes | None = None
    if payload is not None:
        body = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        body = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, raw = http_status(
        edge_url + path, method=method, body=body, headers=headers, timeout_s=timeout_s
    )
    if status not in expect:
        reason = raw[:500].decode(errors="replace")
        raise EdgeRefused(f"{method} {path} -> {status or 'no connection'}: {reason}")
    return json.loads(raw) if raw else {}


def client_token(*, edge_url: str, client_id: str, client_secret: str) -> str:
    """An access token by the client-credentials grant (form-encoded, as OAuth 2 defines it)."""
    answer = _call(
        edge_url,
        TOKEN_PATH,
        method="POST",
        form={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        },
        expect=(200,),
    )
    return str(answer["access_token"])


def operator_token(*, edge_url: str, secret: str) -> str:
    """The bootstrap operator's token."""
    return client_token(edge_url=edge_url, client_id=OPERATOR_CLIENT_ID, client_secret=secret)


def onboard(*, edge_url: str, operator: str, name: str) -> BenchTenant:
    """Create one enterprise tenant as an operator; returns its admin credentials."""
    answer = _call(
        edge_url,
        TENANTS_PATH,
        method="POST",
        token=operator,
        payload={"name": name, "tier": "enterprise", "admin_contact": "bench@tenantry.invalid"},
    )
    return BenchTenant(
        tenant_id=str(answer["tenant_id"]),
        admin_client_id=str(answer["client_id"]),
        admin_client_secret=str(answer["client_secret"]),
    )


def add_member_client(*, edge_url: str, admin: str, tenant: BenchTenant) -> BenchTenant:
    """A member client for the tenant (what a product's frontend would hold), as its admin."""
    answer = _call(
        edge_url,
        CLIENTS_PATH,
        method="POST",
        token=admin,
        payload={"name": "bench frontend", "role": "member"},
    )
    return BenchTenant(
        tenant_id=tenant.tenant_id,
        admin_client_id=tenant.admin_client_id,
        admin_client_secret=tenant.admin_client_secret,
        member_client_id=str(answer["client_id"]),
        member_client_secret=str(answer["client_secret"]),
    )


def wait_active(*, edge_url: str, operator: str, tenant_ids: list[str], timeout_s: float) -> None:
    """Poll until every tenant is active (all services acknowledged its provisioning)."""
    deadline = time.monotonic() + timeout_s
    pending = list(tenant_ids)
    while pending and time.monotonic() < deadline:
        still = []
        for tenant_id in pending:
            answer = _call(edge_url, f"{TENANTS_PATH}/{tenant_id}", token=operator)
            if answer.get("status") == "failed":
                raise EdgeRefused(f"tenant {tenant_id} failed onboarding: {answer}")
            if answer.get("status") != "active":
                still.append(tenant_id)
        pending = still
        if pending:
            time.sleep(0.5)
    if pending:
        raise TimeoutError(f"{len(pending)} tenants not active after {timeout_s:.0f} s")


def gateway_mode_update() -> dict[str, Any]:
    """Gateway mode: the instant model, no RAG, no semantic cache, every control on, and
    enterprise-tier ceilings so that the controls run without refusing the bench's load."""
    return {
        "model": MODEL,
        "allowed_models": [MODEL],
        "max_tokens_per_request": 64,
        "features": {
            "rag": False,
            "streaming": True,
            "semantic_cache": False,
            "fine_tuning": False,
        },
        "rate_limit_per_minute": 600,
        "daily_token_budget": 5_000_000,
        "monthly_spend_budget_micros": 2_000_000_000,
    }


def set_gateway_mode(*, edge_url: str, admin: str) -> None:
    """Apply gateway_mode_update to the tenant of the admin token (PUT /v1/config)."""
    _call(edge_url, CONFIG_PATH, method="PUT", token=admin, payload=gateway_mode_update())


def prepare_tenants(
    *,
    edge_url: str,
    operator_secret: str,
    count: int,
    state_file: Path,
    run_label: str,
    broker_started_at: float | None = None,
    activation_timeout_s: float = 180.0,
) -> list[str]:
    """Onboard `count` tenants in gateway mode (or reuse those in state_file) and return one
    fresh member access token per tenant."""
    tenants = _reusable(
        state_file=state_file, edge_url=edge_url, count=count, newer_than=broker_started_at
    )
    if tenants is None:
        operator = operator_token(edge_url=edge_url, secret=operator_secret)
        created = [
            onboard(edge_url=edge_url, operator=operator, name=f"bench {run_label} tenant {i:03d}")
            for i in range(count)
        ]
        wait_active(
            edge_url=edge_url,
            operator=operator,
            tenant_ids=[t.tenant_id for t in created],
            timeout_s=activation_timeout_s,
        )
        tenants = [
            add_member_client(edge_url=edge_url, admin=_admin_token(edge_url, t), tenant=t)
            for t in created
        ]
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps([asdict(t) for t in tenants], indent=1))
        state_file.chmod(0o600)
    # Applied on every run, so that a reused tenant is in gateway mode whatever happened since.
    for tenant in tenants:
        set_gateway_mode(edge_url=edge_url, admin=_admin_token(edge_url, tenant))
    return [
        client_token(
            edge_url=edge_url,
            client_id=t.member_client_id,
            client_secret=t.member_client_secret,
        )
        for t in tenants
    ]


def _admin_token(edge_url: str, tenant: BenchTenant) -> str:
    return client_token(
        edge_url=edge_url,
        client_id=tenant.admin_client_id,
        client_secret=tenant.admin_client_secret,
    )


def _reusable(
    *, state_file: Path, edge_url: str, count: int, newer_than: float | None
) -> list[BenchTenant] | None:
    """Tenants of an earlier run on the same broker whose credentials still work.

    The local broker keeps its topics in memory: after a restart the services have forgotten
    tenants onboarded before it, so those are not reused.
    """
    if not state_file.exists():
        return None
    if newer_than is not None and state_file.stat().st_mtime < newer_than:
        return None
    try:
        tenants = [BenchTenant(**row) for row in json.loads(state_file.read_text())]
    except (ValueError, TypeError):
        return None
    if len(tenants) < count:
        return None
    try:
        client_token(
            edge_url=edge_url,
            client_id=tenants[0].member_client_id,
            client_secret=tenants[0].member_client_secret,
        )
    except EdgeRefused:
        return None
    return tenants[:count]
