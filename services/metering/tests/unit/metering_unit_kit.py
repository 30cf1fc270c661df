"""Factories for metering's unit tests."""

from __future__ import annotations

import uuid

from tenantry_common.events import TenantConfig, TenantConfigChanged, Tier


def config_event(tenant_id: uuid.UUID, *, version: int, daily: int) -> TenantConfigChanged:
    return TenantConfigChanged(
        tenant_id=tenant_id,
        version=version,
        changed_by="test",
        config=TenantConfig(
            tenant_name="t",
            tier=Tier.FREE,
            model="m",
            allowed_models=["m"],
            temperature=0.0,
            max_tokens_per_request=10,
            system_prompt_template="x",
            rate_limit_per_minute=1,
            daily_token_budget=daily,
            monthly_spend_budget_micros=0,
            cache_similarity_threshold=0.9,
        ),
    )
