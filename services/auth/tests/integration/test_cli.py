"""The operators' CLI against the real database: bootstrap an operator, change a tenant's
plan, rotate the key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from auth_support import bearer, get_token, settings_env

pytestmark = pytest.mark.integration


async def _cli(edge_settings, *args: str) -> dict:
    """Run the CLI in a thread, so this session's consumers keep heartbeating meanwhile."""
    return await asyncio.to_thread(_cli_sync, edge_settings, *args)


def _cli_sync(edge_settings, *args: str) -> dict:
    env = os.environ | settings_env(edge_settings)
    env.pop("TENANTRY_BOOTSTRAP_OPERATOR_SECRET")
    out = subprocess.run(
        [sys.executable, "-m", "tenantry_auth.cli", *args],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


async def test_bootstrap_operator_prints_credentials_that_get_an_operator_token(
    client, edge_settings
) -> None:
    made = await _cli(edge_settings, "bootstrap-operator", "--client-id", "ops-cli")
    token = await get_token(client, made["client_id"], made["client_secret"])
    assert (await client.get("/v1/tenants", headers=bearer(token))).status_code == 200


async def test_rotate_key_is_published_in_jwks(client, edge_app, edge_settings) -> None:
    made = await _cli(edge_settings, "rotate-key")
    await edge_app.state.edge.keys.load()
    kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert made["kid"] in kids


async def test_change_tenant_moves_it_to_another_tier(client, onboard, edge_settings) -> None:
    tenant = await onboard(tier="free")
    made = await _cli(edge_settings, "change-tenant", str(tenant.tenant_id), "--tier", "pro")
    assert (made["tier"], made["config_version"]) == ("pro", 2)
    assert "daily_token_budget" in made["changed"]
    config = (await client.get("/v1/config", headers=bearer(tenant.admin_token))).json()
    assert (config["version"], config["config"]["tier"]) == (2, "pro")
