"""The tenant directory's wait for a config version (what a request ahead of its config does)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from tenantry_common.events import TenantConfig, TenantOffboarded, Tier
from tenantry_inference.service import TenantDirectory, apply_offboarded

pytestmark = pytest.mark.unit


def config(name: str) -> TenantConfig:
    return TenantConfig(
        tenant_name=name,
        tier=Tier.PRO,
        model="m",
        allowed_models=["m"],
        temperature=0.0,
        max_tokens_per_request=40,
        system_prompt_template="",
        rate_limit_per_minute=100,
        daily_token_budget=1_000,
        monthly_spend_budget_micros=1_000,
        cache_similarity_threshold=0.9,
    )


async def test_a_wait_ends_when_the_version_arrives_not_before() -> None:
    directory, tenant = TenantDirectory(), uuid.uuid4()
    directory.apply_config(tenant_id=tenant, version=1, config=config("v1"))
    waiting = asyncio.create_task(directory.wait_for(tenant, 3, timeout_s=5))
    await asyncio.sleep(0.01)
    directory.apply_config(tenant_id=tenant, version=2, config=config("v2"))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # version 2 is not the one it waits for
    directory.apply_config(tenant_id=tenant, version=3, config=config("v3"))
    assert await asyncio.wait_for(waiting, 1) is True
    assert directory.arrivals == {}


async def test_a_version_already_held_needs_no_wait_and_a_missing_one_times_out() -> None:
    directory, tenant = TenantDirectory(), uuid.uuid4()
    directory.apply_config(tenant_id=tenant, version=2, config=config("v2"))
    assert await directory.wait_for(tenant, 2, timeout_s=0) is True
    assert await directory.wait_for(tenant, 3, timeout_s=0.05) is False
    assert await directory.wait_for(uuid.uuid4(), 1, timeout_s=0.05) is False


async def test_an_offboarded_tenants_wait_ends_at_once() -> None:
    directory, tenant = TenantDirectory(), uuid.uuid4()
    waiting = asyncio.create_task(directory.wait_for(tenant, 1, timeout_s=5))
    await asyncio.sleep(0.01)
    gone = TenantOffboarded(tenant_id=tenant, tenant_name="gone")
    apply_offboarded(directory=directory, event=gone)
    assert await asyncio.wait_for(waiting, 1) is False
