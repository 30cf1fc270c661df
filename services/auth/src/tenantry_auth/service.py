"""The edge's logic: tenants, clients, tokens, configuration, documents and chat admission.

No HTTP or broker types here: events leave through ``Edge.publish``; refusals are the
exceptions below, which the API turns into status codes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.attributes import set_committed_value
from tenantry_common.auth import Principal, Role
from tenantry_common.budget import BudgetStore, RefusalReason, seconds_until_next_day
from tenantry_common.budget import Reservation as BudgetHold
from tenantry_common.db import transaction
from tenantry_common.events import (
    MAX_MESSAGE_CHARS,
    AuditRecorded,
    AuditStatus,
    AuditType,
    ChatMessage,
    ChatOptions,
    ChatRequested,
    Citation,
    ContextRetrieved,
    DocumentDeleted,
    DocumentEvent,
    DocumentIndexed,
    DocumentSubmitted,
    Event,
    FeatureFlags,
    LeakagePolicy,
    LifecycleAction,
    ReplyTo,
    Reservation,
    ResponseFormat,
    SamplingHints,
    SearchRequested,
    TenantConfig,
    TenantConfigChanged,
    TenantLifecycleAcknowledged,
    TenantOffboarded,
    TenantProvisioned,
    Tier,
    TokenUsage,
    ToolOptions,
)
from tenantry_common.ids import PLATFORM_TENANT_ID, derived_id, utcnow
from tenantry_common.settings import LOCAL_MODEL
from tenantry_common.topics import (
    AUDIT,
    CHAT_CONTEXT,
    CHAT_REQUESTS,
    CHAT_RESPONSES,
    DOCUMENTS,
    TENANTS_CONFIG,
    TENANTS_LIFECYCLE,
    TopicSpec,
)

from tenantry_auth import repository as repo
from tenantry_auth.access import AccessGuard
from tenantry_auth.admission import Admission
from tenantry_auth.config import Settings
from tenantry_auth.configs import ConfigCache
from tenantry_auth.conversations import ConversationStore
from tenantry_auth.keys import KeyRing
from tenantry_auth.models import Client, Document, DocumentStatus, Feedback, Tenant, TenantStatus
from tenantry_auth.ratelimit import RateDecision
from tenantry_auth.security import SecretHasher, new_client_id, new_client_secret, tenant_of_client

log = logging.getLogger("tenantry.auth.service")

SOURCE = "edge"
Publish = Callable[[TopicSpec, Event], Awaitable[None]]


# --------------------------------------------------------------------------- refusals


class EdgeError(Exception):
    """A refusal the caller can read (``detail``), with optional response headers."""

    def __init__(self, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class NotFound(EdgeError):
    pass


class Conflict(EdgeError):
    pass


class Invalid(EdgeError):
    pass


class ModelNotAllowed(Invalid):
    """The model asked for is not one of the tenant's allowed models."""


class FormatNotTaken(Invalid):
    """The request's response format is one its model's server does not take."""

    param = "response_format"


class ToolsNotTaken(FormatNotTaken):
    """The request offers tools to a model whose server does not take them."""

    param = "tools"


class Forbidden(EdgeError):
    pass


class InvalidClient(EdgeError):
    pass


class RateLimited(EdgeError):
    pass


class BudgetRefused(EdgeError):
    pass


class Unavailable(EdgeError):
    pass


class TooLarge(EdgeError):
    pass


# --------------------------------------------------------------------------- the composition


@dataclass
class Edge:
    """Everything the edge's logic works with (built once by ``app.build_app``)."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    publish: Publish
    guard: AccessGuard
    keys: KeyRing
    hasher: SecretHasher
    budgets: BudgetStore
    admission: Admission
    configs: ConfigCache
    conversations: ConversationStore


# --------------------------------------------------------------------------- tiers and config


@dataclass(frozen=True)
class TierLimits:
    daily_tokens: int
    rate_per_minute: int
    monthly_spend_micros: int
    max_tokens_per_request: int


TIER_LIMITS: dict[Tier, TierLimits] = {
    Tier.FREE: TierLimits(50_000, 20, 5_000_000, 512),
    Tier.PRO: TierLimits(500_000, 120, 100_000_000, 2_048),
    Tier.ENTERPRISE: TierLimits(5_000_000, 600, 2_000_000_000, 8_192),
}

ALLOWED_PLACEHOLDERS = frozenset({"tenant_name", "tier", "custom_instructions"})
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
DEFAULT_TEMPLATE = (
    "You are the assistant of {{tenant_name}} ({{tier}} plan). Answer only from the provided "
    "context and say so when it does not contain the answer.\n{{custom_instructions}}"
)


def default_model(settings: Settings, tier: Tier) -> str:
    """A new tenant's model: the local one if catalogued for its tier, else the first shared
    one open to its tier (settings require one)."""
    shared = [
        name for name, spec in settings.models.items() if spec.owner is None and spec.open_to(tier)
    ]
    return LOCAL_MODEL if LOCAL_MODEL in shared else shared[0]


def default_config(*, name: str, tier: Tier, settings: Settings) -> TenantConfig:
    """A new tenant's configuration: the tier's limits and the platform's defaults."""
    limits = TIER_LIMITS[tier]
    model = default_model(settings, tier)
    return TenantConfig(
        tenant_name=name,
        tier=tier,
        model=model,
        allowed_models=[model],
        temperature=0.2,
        max_tokens_per_request=limits.max_tokens_per_request,
        system_prompt_template=DEFAULT_TEMPLATE,
        custom_instructions="",
        features=FeatureFlags(),
        rate_limit_per_minute=limits.rate_per_minute,
        daily_token_budget=limits.daily_tokens,
        monthly_spend_budget_micros=limits.monthly_spend_micros,
        cache_similarity_threshold=max(0.92, settings.cache_similarity_floor),
        leakage_policy=LeakagePolicy.BLOCK,
    )


def check_template(template: str) -> None:
    """Refuse unknown placeholders and stray braces in a system prompt template."""
    names = _PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in ALLOWED_PLACEHOLDERS})
    if unknown:
        raise Invalid(
            f"unknown placeholder(s) {unknown} in system_prompt_template; "
            f"allowed: {sorted(ALLOWED_PLACEHOLDERS)}"
        )
    rest = _PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise Invalid("system_prompt_template has an unbalanced '{{' or '}}'")


def check_config(config: TenantConfig, settings: Settings, *, tenant_id: uuid.UUID) -> None:
    """Platform rules on top of the contract: the tenant's catalogue (shared models and its
    own), models open to its tier, fine-tuning, cache floor, template, tier caps."""
    visible = {m: spec for m, spec in settings.models.items() if spec.visible_to(tenant_id)}
    named = {config.model, *config.allowed_models}
    # Another tenant's own model is "not in the catalogue", as for a name that is nowhere: a
    # tenant learns neither that it exists nor whose it is.
    if unknown := sorted(named - visible.keys()):
        raise Invalid(f"model(s) {unknown} are not in the catalogue {sorted(visible)}")
    if closed := sorted(m for m in named if not visible[m].open_to(config.tier)):
        raise Invalid(f"model(s) {closed} are not available on the {config.tier.value} tier")
    if config.features.fine_tuning and config.tier is not Tier.ENTERPRISE:
        raise Invalid("features.fine_tuning (the tenant's own models) is for the enterprise tier")
    own = sorted(m for m in named if visible[m].owner is not None)
    if own and not config.features.fine_tuning:
        raise Invalid(f"model(s) {own} are this tenant's own: they need features.fine_tuning on")
    if config.cache_similarity_threshold < settings.cache_similarity_floor:
        raise Invalid(
            f"cache_similarity_threshold may not be below the platform floor "
            f"{settings.cache_similarity_floor}"
        )
    check_template(config.system_prompt_template)
    limits = TIER_LIMITS[config.tier]
    caps = {
        "rate_limit_per_minute": (config.rate_limit_per_minute, limits.rate_per_minute),
        "daily_token_budget": (config.daily_token_budget, limits.daily_tokens),
        "monthly_spend_budget_micros": (
            config.monthly_spend_budget_micros,
            limits.monthly_spend_micros,
        ),
        "max_tokens_per_request": (config.max_tokens_per_request, limits.max_tokens_per_request),
    }
    for name, (value, cap) in caps.items():
        if value > cap:
            raise Invalid(f"{name} may be at most {cap} on the {config.tier.value} tier")
    if config.end_user_rate_limit_per_minute > config.rate_limit_per_minute:
        raise Invalid(
            "end_user_rate_limit_per_minute may be at most the tenant's rate_limit_per_minute "
            f"({config.rate_limit_per_minute})"
        )
    if config.end_user_daily_token_budget > config.daily_token_budget:
        raise Invalid(
            "end_user_daily_token_budget may be at most the tenant's daily_token_budget "
            f"({config.daily_token_budget})"
        )


class ConfigUpdate(BaseModel):
    """What a tenant admin may change (every field optional: omitted fields stay as they are)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=200)
    allowed_models: list[str] | None = Field(default=None, min_length=1, max_length=50)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens_per_request: int | None = Field(default=None, ge=1, le=32_768)
    system_prompt_template: str | None = Field(default=None, max_length=8_000)
    custom_instructions: str | None = Field(default=None, max_length=4_000)
    features: FeatureFlags | None = Field(
        default=None, description="The flags to change; those left out stay as they are."
    )
    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    end_user_rate_limit_per_minute: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Requests per minute per end user (a request's `user`); 0 turns it off.",
    )
    daily_token_budget: int | None = Field(default=None, ge=0, le=10**12)
    end_user_daily_token_budget: int | None = Field(
        default=None,
        ge=0,
        le=10**12,
        description="Tokens per UTC day per end user (a request's `user`), within the "
        "tenant's daily budget; 0 turns it off.",
    )
    monthly_spend_budget_micros: int | None = Field(default=None, ge=0, le=10**15)
    cache_similarity_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    leakage_policy: LeakagePolicy | None = None
    expected_version: int | None = Field(
        default=None, ge=1, description="Refuse (409) unless the current version is this one."
    )


def merged_config(current: TenantConfig, update: ConfigUpdate) -> TenantConfig:
    """The current config with the update applied, validated as a whole."""
    changes = update.model_dump(exclude_none=True, exclude={"expected_version", "features"})
    data = current.model_dump() | changes
    if update.features is not None:
        # Only the flags sent change: {"features": {"streaming": false}} leaves RAG as it was.
        data["features"] = current.features.model_dump() | update.features.model_dump(
            exclude_unset=True
        )
    try:
        return TenantConfig.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise Invalid(reasons) from None


# --------------------------------------------------------------------------- audit


async def record_audit(
    *,
    edge: Edge,
    tenant_id: uuid.UUID,
    audit_type: AuditType,
    action: str,
    resource_type: str,
    resource_id: str,
    status: AuditStatus = AuditStatus.SUCCESS,
    actor: str | None = None,
    error: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    details: Mapping[str, str | int | float | bool | None] | None = None,
) -> None:
    """Publish an AuditRecorded; an unreachable broker is logged, never fails the caller."""
    event = AuditRecorded(
        tenant_id=tenant_id,
        audit_type=audit_type,
        source=SOURCE,
        actor=actor,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        status=status,
        error=error,
        ip_address=ip_address,
        user_agent=(user_agent or "")[:500] or None,
        details=dict(details or {}),
    )
    try:
        await edge.publish(AUDIT, event)
    except Exception as exc:
        log.error("audit publish failed", extra={"error_type": type(exc).__name__})


# --------------------------------------------------------------------------- tokens and clients


async def issue_token(*, edge: Edge, client_id: str, client_secret: str) -> tuple[str, int, Role]:
    """A signed access token for valid, unrevoked credentials of an active tenant."""
    if not client_id or len(client_id) > 100 or len(client_secret) > 200 or "\x00" in client_id:
        raise InvalidClient("invalid client credentials")
    tenant_id = tenant_of_client(client_id)
    async with edge.sessions() as session:
        client = await repo.get_client(session=session, tenant_id=tenant_id, client_id=client_id)
    valid = await edge.hasher.verify(client.secret_hash if client else None, client_secret)
    if client is None or not valid:
        raise InvalidClient("invalid client credentials")
    refusal = await edge.guard.refusal(tenant_id=tenant_id, client_id=client_id)
    if refusal is not None:
        raise InvalidClient(f"client may not obtain tokens: {refusal}")
    role = Role(client.role)
    token, ttl = edge.keys.issue(tenant_id=tenant_id, client_id=client_id, role=role)
    return token, ttl, role


async def create_client(
    *, edge: Edge, tenant_id: uuid.UUID, role: Role, name: str
) -> tuple[Client, str]:
    """New credentials for a tenant; the secret is returned once and stored hashed."""
    if role is Role.OPERATOR and tenant_id != PLATFORM_TENANT_ID:
        raise Forbidden("operator clients belong to the platform only")
    secret = new_client_secret()
    client = Client(
        tenant_id=tenant_id,
        client_id=new_client_id(tenant_id),
        name=name,
        role=role.value,
        secret_hash=await edge.hasher.hash(secret),
        created_at=utcnow(),
    )
    async with transaction(edge.sessions) as session:
        if await repo.get_tenant(session=session, tenant_id=tenant_id) is None:
            raise NotFound("no such tenant")
        session.add(client)
    return client, secret


async def revoke_client(*, edge: Edge, tenant_id: uuid.UUID, client_id: str, actor: str) -> None:
    """Revoke one client: its tokens are refused from now on, on every replica."""
    async with transaction(edge.sessions) as session:
        if not await repo.revoke_client(session=session, tenant_id=tenant_id, client_id=client_id):
            raise NotFound("no such active client")
        await _redis_write(edge.guard.revoke(tenant_id=tenant_id, client_ids=[client_id]))
    await record_audit(
        edge=edge,
        tenant_id=tenant_id,
        audit_type=AuditType.CONFIGURATION_CHANGE,
        action="revoke_client",
        resource_type="client",
        resource_id=client_id,
        actor=actor,
    )


async def _redis_write(write: Awaitable[None]) -> None:
    try:
        await write
    except RedisError as exc:
        raise Unavailable(
            "the revocation store (Redis) is unavailable; nothing was changed, try again"
        ) from exc


async def bootstrap_operator(*, edge: Edge, client_id: str, secret: str) -> None:
    """Make sure the platform tenant and the bootstrap operator client exist."""
    await ensure_platform_tenant(sessions=edge.sessions)
    secret_hash = await edge.hasher.hash(secret)
    async with transaction(edge.sessions) as session:
        await repo.upsert_client_secret(
            session=session,
            tenant_id=PLATFORM_TENANT_ID,
            client_id=client_id,
            role=Role.OPERATOR.value,
            secret_hash=secret_hash,
        )
    try:
        await edge.guard.unrevoke(tenant_id=PLATFORM_TENANT_ID, client_id=client_id)
    except RedisError:
        log.warning("could not clear a stale revocation of the bootstrap operator")


async def ensure_platform_tenant(*, sessions: async_sessionmaker[AsyncSession]) -> None:
    """The platform's own tenant row (operators' tokens carry its id); always active."""
    async with transaction(sessions) as session:
        if await repo.get_tenant(session=session, tenant_id=PLATFORM_TENANT_ID) is None:
            session.add(
                Tenant(
                    tenant_id=PLATFORM_TENANT_ID,
                    name="platform",
                    tier=Tier.ENTERPRISE.value,
                    admin_contact="",
                    status=TenantStatus.ACTIVE.value,
                    status_detail="",
                    config_version=0,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            try:
                await session.flush()
            except IntegrityError:
                await session.rollback()


# --------------------------------------------------------------------------- tenants


@dataclass(frozen=True)
class ProvisionedTenant:
    tenant: Tenant
    client_id: str
    client_secret: str
    config_version: int


async def provision_tenant(
    *, edge: Edge, name: str, tier: Tier, admin_contact: str, actor: str
) -> ProvisionedTenant:
    """Create a tenant (provisioning), its admin credentials and tier defaults, and ask the
    other services to provision it; it becomes active once they all acknowledge."""
    tenant_id = uuid.uuid4()
    config = default_config(name=name, tier=tier, settings=edge.settings)
    secret = new_client_secret()
    client_id = new_client_id(tenant_id)
    secret_hash = await edge.hasher.hash(secret)
    now = utcnow()
    tenant = Tenant(
        tenant_id=tenant_id,
        name=name,
        tier=tier.value,
        admin_contact=admin_contact,
        status=TenantStatus.PROVISIONING.value,
        status_detail="waiting for " + ", ".join(sorted(edge.settings.lifecycle_services)),
        config_version=0,
        created_at=now,
        updated_at=now,
    )
    async with transaction(edge.sessions) as session:
        session.add(tenant)
        session.add(
            Client(
                tenant_id=tenant_id,
                client_id=client_id,
                name="admin",
                role=Role.ADMIN.value,
                secret_hash=secret_hash,
                created_at=now,
            )
        )
        await session.flush()
        await repo.add_config_version(
            session=session,
            tenant_id=tenant_id,
            version=1,
            config=config.model_dump(mode="json"),
            changed_by=actor,
        )
    try:
        await edge.publish(
            TENANTS_CONFIG,
            TenantConfigChanged(tenant_id=tenant_id, version=1, config=config, changed_by=actor),
        )
        await edge.publish(
            TENANTS_LIFECYCLE,
            TenantProvisioned(
                tenant_id=tenant_id, tenant_name=name, tier=tier, config_version=1, config=config
            ),
        )
    except Exception as exc:
        await fail_onboarding(edge=edge, tenant_id=tenant_id, detail="could not publish events")
        raise Unavailable("the broker is unavailable; the onboarding was rolled back") from exc
    tenant.config_version = 1
    await record_audit(
        edge=edge,
        tenant_id=tenant_id,
        audit_type=AuditType.LIFECYCLE,
        action="provision",
        resource_type="tenant",
        resource_id=str(tenant_id),
        actor=actor,
        details={"tier": tier.value},
    )
    return ProvisionedTenant(tenant, client_id, secret, 1)


async def fail_onboarding(*, edge: Edge, tenant_id: uuid.UUID, detail: str) -> bool:
    """Roll a provisioning tenant back: mark it failed, refuse its credentials, and ask every
    service to clean up what it already created. True when this call did it."""
    async with transaction(edge.sessions) as session:
        moved = await repo.set_tenant_status(
            session=session,
            tenant_id=tenant_id,
            status=TenantStatus.FAILED.value,
            only_from=[TenantStatus.PROVISIONING.value],
            detail=detail[:1000],
        )
        if not moved:
            return False
        tenant = await repo.get_tenant(session=session, tenant_id=tenant_id)
        revoked = await repo.revoke_all_clients(session=session, tenant_id=tenant_id)
        try:
            await edge.guard.set_status(tenant_id=tenant_id, status=TenantStatus.FAILED.value)
            await edge.guard.revoke(tenant_id=tenant_id, client_ids=revoked)
        except RedisError:
            # Never activated, so Redis holds no "active" for it: Postgres's answer stands.
            log.warning(
                "could not mirror a failed onboarding to Redis", extra={"tenant_id": str(tenant_id)}
            )
    name = tenant.name if tenant else ""
    try:
        await edge.publish(
            TENANTS_LIFECYCLE,
            TenantOffboarded(
                tenant_id=tenant_id, tenant_name=name, reason=f"onboarding failed: {detail}"[:500]
            ),
        )
    except Exception as exc:
        log.error("cleanup request not published", extra={"error_type": type(exc).__name__})
    await record_audit(
        edge=edge,
        tenant_id=tenant_id,
        audit_type=AuditType.LIFECYCLE,
        action="provision",
        resource_type="tenant",
        resource_id=str(tenant_id),
        status=AuditStatus.FAILURE,
        error=detail[:500],
    )
    return True


async def on_lifecycle_ack(*, edge: Edge, ack: TenantLifecycleAcknowledged) -> None:
    """Record a service's acknowledgement; activate, roll back or finish offboarding."""
    required = set(edge.settings.lifecycle_services)
    async with transaction(edge.sessions) as session:
        await repo.record_ack(
            session=session,
            tenant_id=ack.tenant_id,
            action=ack.action.value,
            service=ack.service,
            succeeded=ack.succeeded,
            detail=ack.detail,
            event_id=ack.event_id,
        )
        tenant = await repo.get_tenant_for_update(session=session, tenant_id=ack.tenant_id)
        if tenant is None:
            return
        received = await repo.acks(
            session=session, tenant_id=ack.tenant_id, action=ack.action.value
        )
        succeeded = {a.service for a in received if a.succeeded}
        failed = [a for a in received if not a.succeeded and a.service in required]
        activate = False
        if ack.action is LifecycleAction.PROVISIONED and tenant.status == TenantStatus.PROVISIONING:
            if failed:
                pass  # rolled back below, outside this transaction
            elif required <= succeeded:
                tenant.status = TenantStatus.ACTIVE.value
                tenant.status_detail = ""
                tenant.updated_at = utcnow()
                activate = True
            else:
                tenant.status_detail = "waiting for " + ", ".join(sorted(required - succeeded))
        elif ack.action is LifecycleAction.OFFBOARDED and tenant.status == TenantStatus.OFFBOARDING:
            if required <= succeeded:
                tenant.status = TenantStatus.OFFBOARDED.value
                tenant.status_detail = ""
                tenant.updated_at = utcnow()
            else:
                tenant.status_detail = "waiting for " + ", ".join(sorted(required - succeeded))
    if activate:
        try:
            await edge.guard.set_status(tenant_id=ack.tenant_id, status=TenantStatus.ACTIVE.value)
        except RedisError:
            log.warning("activation not mirrored to Redis; Postgres answers until it is")
        await record_audit(
            edge=edge,
            tenant_id=ack.tenant_id,
            audit_type=AuditType.LIFECYCLE,
            action="activate",
            resource_type="tenant",
            resource_id=str(ack.tenant_id),
        )
    elif ack.action is LifecycleAction.PROVISIONED and failed:
        detail = "; ".join(f"{a.service}: {a.detail or 'failed'}" for a in failed)
        await fail_onboarding(edge=edge, tenant_id=ack.tenant_id, detail=detail)
    elif ack.action is LifecycleAction.OFFBOARDED and tenant.status == TenantStatus.OFFBOARDED:
        # On failure "offboarding" stays in Redis, which refuses just the same.
        with contextlib.suppress(RedisError):
            await edge.guard.set_status(
                tenant_id=ack.tenant_id, status=TenantStatus.OFFBOARDED.value
            )


async def sweep_stalled_onboardings(*, edge: Edge) -> int:
    """Roll back onboardings that did not complete in time; returns how many."""
    cutoff = utcnow() - timedelta(seconds=edge.settings.onboarding_timeout_s)
    async with edge.sessions() as session:
        stalled = await repo.stalled_onboardings(session=session, started_before=cutoff)
    done = 0
    for tenant_id in stalled:
        async with edge.sessions() as session:
            received = await repo.acks(
                session=session, tenant_id=tenant_id, action=LifecycleAction.PROVISIONED.value
            )
        missing = set(edge.settings.lifecycle_services) - {
            a.service for a in received if a.succeeded
        }
        detail = "timed out waiting for " + ", ".join(sorted(missing))
        done += await fail_onboarding(edge=edge, tenant_id=tenant_id, detail=detail)
    return done


async def offboard_tenant(*, edge: Edge, tenant_id: uuid.UUID, actor: str, reason: str) -> Tenant:
    """Offboard a tenant: from the commit on, every token and credential of it is refused on
    every replica; the services delete its data and acknowledge."""
    if tenant_id == PLATFORM_TENANT_ID:
        raise Forbidden("the platform tenant cannot be offboarded")
    async with transaction(edge.sessions) as session:
        tenant = await repo.get_tenant_for_update(session=session, tenant_id=tenant_id)
        if tenant is None:
            raise NotFound("no such tenant")
        if tenant.status in (TenantStatus.OFFBOARDING, TenantStatus.OFFBOARDED):
            return tenant
        tenant.status = TenantStatus.OFFBOARDING.value
        tenant.status_detail = "waiting for " + ", ".join(sorted(edge.settings.lifecycle_services))
        tenant.updated_at = utcnow()
        revoked = await repo.revoke_all_clients(session=session, tenant_id=tenant_id)
        await repo.delete_feedback(session=session, tenant_id=tenant_id)  # users' own words
        await session.flush()
        # Redis first, inside the transaction: if it cannot say "refused", nothing commits.
        await _redis_write(
            edge.guard.set_status(tenant_id=tenant_id, status=TenantStatus.OFFBOARDING.value)
        )
        await _redis_write(edge.guard.revoke(tenant_id=tenant_id, client_ids=revoked))
    edge.configs.forget(tenant_id)
    try:
        await edge.conversations.delete_tenant(tenant_id)
    except RedisError:
        log.error(
            "the tenant's conversations were not deleted; they expire on their own",
            extra={"tenant_id": str(tenant_id)},
        )
    try:
        await edge.publish(
            TENANTS_LIFECYCLE,
            TenantOffboarded(tenant_id=tenant_id, tenant_name=tenant.name, reason=reason[:500]),
        )
    except Exception as exc:
        log.error("offboarding not published", extra={"error_type": type(exc).__name__})
        raise Unavailable(
            "the tenant is refused from now on, but the offboarding event could not be "
            "published; repeat the request to retry"
        ) from exc
    await record_audit(
        edge=edge,
        tenant_id=tenant_id,
        audit_type=AuditType.LIFECYCLE,
        action="offboard",
        resource_type="tenant",
        resource_id=str(tenant_id),
        actor=actor,
    )
    return tenant


# --------------------------------------------------------------------------- configuration


async def load_config(*, edge: Edge, tenant_id: uuid.UUID) -> tuple[TenantConfig, int]:
    """A tenant's current configuration and its version, read from Postgres."""
    async with edge.sessions() as session:
        row = await repo.current_config(session=session, tenant_id=tenant_id)
    if row is None:
        raise NotFound("this tenant has no configuration")
    return TenantConfig.model_validate(row.config), row.version


def changed_fields(before: TenantConfig, after: TenantConfig) -> list[str]:
    """The names of the fields that differ between two configurations, sorted."""
    return sorted(
        name for name in TenantConfig.model_fields if getattr(after, name) != getattr(before, name)
    )


@dataclass(frozen=True)
class ConfigVersionRecord:
    """One stored version of a tenant's configuration."""

    version: int
    config: TenantConfig
    changed_by: str
    changed_at: datetime
    #: The fields that differ from the version before it (empty for the first version).
    changed: list[str]


async def config_versions(
    *, edge: Edge, tenant_id: uuid.UUID, limit: int, before: int | None = None
) -> list[ConfigVersionRecord]:
    """The tenant's configuration versions, newest first, each with what it changed."""
    async with edge.sessions() as session:
        # One more than asked: the version before the oldest shown says what that one changed.
        rows = await repo.config_history(
            session=session, tenant_id=tenant_id, limit=limit + 1, before=before
        )
    configs = [TenantConfig.model_validate(row.config) for row in rows]
    return [
        ConfigVersionRecord(
            version=row.version,
            config=config,
            changed_by=row.changed_by,
            changed_at=row.changed_at,
            changed=changed_fields(configs[i + 1], config) if i + 1 < len(configs) else [],
        )
        for i, (row, config) in enumerate(zip(rows[:limit], configs, strict=False))
    ]


async def config_version(*, edge: Edge, tenant_id: uuid.UUID, version: int) -> ConfigVersionRecord:
    """One of the tenant's configuration versions (NotFound if it has no such version)."""
    found = await config_versions(edge=edge, tenant_id=tenant_id, limit=1, before=version + 1)
    if not found or found[0].version != version:
        raise NotFound(f"this tenant has no configuration version {version}")
    return found[0]


async def restore_config(
    *,
    edge: Edge,
    tenant_id: uuid.UUID,
    version: int,
    actor: str,
    expected_version: int | None = None,
) -> tuple[TenantConfig, int]:
    """Make an earlier version's settings current again, as a new version.

    What a tenant admin may change is taken from that version; what only an operator sets
    (the tenant's name and tier) stays as it is now. The result is checked by today's rules
    (the catalogue, the tier's limits), like any change: a version naming a model since
    withdrawn is refused with the reason.
    """
    earlier = await config_version(edge=edge, tenant_id=tenant_id, version=version)
    settings = earlier.config.model_dump(include=set(ConfigUpdate.model_fields))
    try:
        update = ConfigUpdate.model_validate(settings | {"expected_version": expected_version})
    except ValidationError as exc:
        raise Invalid(f"version {version} cannot be restored: {exc.errors()[0]['msg']}") from None
    return await update_config(
        edge=edge, tenant_id=tenant_id, update=update, actor=actor, restored_from=version
    )


async def update_config(
    *,
    edge: Edge,
    tenant_id: uuid.UUID,
    update: ConfigUpdate,
    actor: str,
    restored_from: int | None = None,
) -> tuple[TenantConfig, int]:
    """A tenant admin's configuration change; ``restored_from`` names the earlier version a
    restore took it from."""
    committed = await _commit_config(
        edge=edge,
        tenant_id=tenant_id,
        actor=actor,
        expected_version=update.expected_version,
        change=lambda _tenant, current: merged_config(current, update),
        action="update_config" if restored_from is None else "restore_config",
        details={} if restored_from is None else {"restored_from": restored_from},
    )
    return committed.config, committed.version


class TenantChange(BaseModel):
    """What an operator may change of a tenant: its name and its plan (omitted fields stay)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    tier: Tier | None = None
    expected_version: int | None = Field(
        default=None, ge=1, description="Refuse (409) unless the config is at this version."
    )


def config_for_tier(
    config: TenantConfig, tier: Tier, settings: Settings, *, tenant_id: uuid.UUID
) -> TenantConfig:
    """A configuration carried over to another tier.

    A limit at the old tier's cap (the plan's own value) moves to the new tier's cap; a limit
    the tenant set lower stays, unless it is above the new cap, which it is lowered to. Models
    the new tier does not serve leave ``allowed_models``; if the default was one of them, the
    tier's default model replaces it. Fine-tuning (and with it the tenant's own models) is for
    the enterprise tier only.
    """
    old, new = TIER_LIMITS[config.tier], TIER_LIMITS[tier]

    def carried(value: int, old_cap: int, new_cap: int) -> int:
        return new_cap if value == old_cap else min(value, new_cap)

    rate = carried(config.rate_limit_per_minute, old.rate_per_minute, new.rate_per_minute)
    daily = carried(config.daily_token_budget, old.daily_tokens, new.daily_tokens)
    moved = config.model_copy(
        update={
            "tier": tier,
            "features": config.features.model_copy(
                update={"fine_tuning": config.features.fine_tuning and tier is Tier.ENTERPRISE}
            ),
            "rate_limit_per_minute": rate,
            "end_user_rate_limit_per_minute": min(config.end_user_rate_limit_per_minute, rate),
            "daily_token_budget": daily,
            "end_user_daily_token_budget": min(config.end_user_daily_token_budget, daily),
            "monthly_spend_budget_micros": carried(
                config.monthly_spend_budget_micros,
                old.monthly_spend_micros,
                new.monthly_spend_micros,
            ),
            "max_tokens_per_request": carried(
                config.max_tokens_per_request,
                old.max_tokens_per_request,
                new.max_tokens_per_request,
            ),
        }
    )
    served = [
        m
        for m in config.allowed_models
        if (spec := settings.models.get(m)) is not None and spec.serves(tenant_id, moved)
    ]
    model = config.model if config.model in served else default_model(settings, tier)
    allowed = served if model in served else [model, *served]
    return TenantConfig.model_validate(
        moved.model_dump() | {"model": model, "allowed_models": allowed}
    )


async def change_tenant(
    *, edge: Edge, tenant_id: uuid.UUID, change: TenantChange, actor: str
) -> CommittedConfig:
    """Rename a tenant or move it to another plan (operators): a new configuration version,
    published and audited like any change, with the tenant's row changed in the same commit."""
    if change.name is None and change.tier is None:
        raise Invalid("nothing to change: send name, tier or both")

    def apply(tenant: Tenant, current: TenantConfig) -> TenantConfig:
        if tenant.status != TenantStatus.ACTIVE.value:
            raise Conflict(f"the tenant is {tenant.status}; only an active tenant can be changed")
        config = current
        if change.tier is not None and change.tier is not current.tier:
            config = config_for_tier(config, change.tier, edge.settings, tenant_id=tenant_id)
        if change.name is not None:
            config = config.model_copy(update={"tenant_name": change.name})
        tenant.name, tenant.tier = config.tenant_name, config.tier.value
        tenant.updated_at = utcnow()
        return config

    return await _commit_config(
        edge=edge,
        tenant_id=tenant_id,
        actor=actor,
        expected_version=change.expected_version,
        change=apply,
        action="change_tenant",
    )


@dataclass(frozen=True)
class CommittedConfig:
    """A configuration change as committed: the tenant's row, the new config and version, and
    the names of the fields it changed."""

    tenant: Tenant
    config: TenantConfig
    version: int
    changed: list[str]


async def _commit_config(
    *,
    edge: Edge,
    tenant_id: uuid.UUID,
    actor: str,
    expected_version: int | None,
    change: Callable[[Tenant, TenantConfig], TenantConfig],
    action: str,
    details: Mapping[str, str | int] | None = None,
) -> CommittedConfig:
    """Validate, version, publish and audit a configuration change (one at a time per tenant).

    ``change`` makes the new configuration from the tenant's row (locked; it may change it) and
    its current configuration."""
    try:
        async with transaction(edge.sessions) as session:
            # One change at a time per tenant: a concurrent change waits for this lock, then
            # reads the version this one commits. Without it both read version N and published
            # N + 1 before one of them failed to commit, and a consumer that read the loser's
            # record last (inference lets the later record of a version win) kept a
            # configuration that never committed.
            tenant = await repo.get_tenant_for_update(session=session, tenant_id=tenant_id)
            if tenant is None:
                raise NotFound("this tenant has no configuration")
            row = await repo.current_config(session=session, tenant_id=tenant_id)
            if row is None:
                raise NotFound("this tenant has no configuration")
            current, version = TenantConfig.model_validate(row.config), row.version
            if expected_version is not None and expected_version != version:
                raise Conflict(f"the configuration is at version {version}, not {expected_version}")
            config = change(tenant, current)
            check_config(config, edge.settings, tenant_id=tenant_id)
            new_version = version + 1
            changed = changed_fields(current, config)
            await repo.add_config_version(
                session=session,
                tenant_id=tenant_id,
                version=new_version,
                config=config.model_dump(mode="json"),
                changed_by=actor,
            )
            # add_config_version's UPDATE wrote it: the object is told, with no second UPDATE.
            set_committed_value(tenant, "config_version", new_version)
            # Published before the commit: a broker failure leaves no unpublished version.
            await edge.publish(
                TENANTS_CONFIG,
                TenantConfigChanged(
                    tenant_id=tenant_id, version=new_version, config=config, changed_by=actor
                ),
            )
    except IntegrityError:
        raise Conflict("the configuration was changed concurrently; reload and retry") from None
    except (OSError, KafkaError) as exc:
        raise Unavailable("the change could not be published; nothing was changed") from exc
    # After the commit: from here on every replica's next request uses the new version.
    await edge.configs.committed(tenant_id=tenant_id, version=new_version, config=config)
    await record_audit(
        edge=edge,
        tenant_id=tenant_id,
        audit_type=AuditType.CONFIGURATION_CHANGE,
        action=action,
        resource_type="tenant_config",
        resource_id=str(tenant_id),
        actor=actor,
        details={"version": new_version, "changed": ",".join(changed)[:500], **(details or {})},
    )
    return CommittedConfig(tenant, config, new_version, changed)


# --------------------------------------------------------------------------- documents


async def submit_document(
    *, edge: Edge, principal: Principal, title: str, text: str, content_type: str
) -> Document:
    """Record and publish a document for ingestion (202: retrieval does the work)."""
    document = Document(
        tenant_id=principal.tenant_id,
        document_id=uuid.uuid4(),
        title=title,
        size_bytes=len(text.encode()),
        content_type=content_type,
        status=DocumentStatus.SUBMITTED.value,
        submitted_by=principal.subject,
        submitted_at=utcnow(),
    )
    try:
        async with transaction(edge.sessions) as session:
            await repo.add_document(session=session, document=document)
            await edge.publish(
                DOCUMENTS,
                DocumentSubmitted(
                    tenant_id=principal.tenant_id,
                    document_id=document.document_id,
                    title=title,
                    text=text,
                    content_type=content_type,
                    submitted_by=principal.subject,
                ),
            )
    except MessageSizeTooLargeError as exc:
        # Within max_document_bytes as text, but over the broker's message limit as JSON
        # (quotes, backslashes and control characters are escaped, up to 6 bytes each).
        raise TooLarge(
            "the document is too large to queue once JSON-encoded (it has many characters that "
            "need escaping); split it or remove them. Nothing was stored"
        ) from exc
    except Exception as exc:
        raise Unavailable("the document could not be queued; nothing was stored") from exc
    await record_audit(
        edge=edge,
        tenant_id=principal.tenant_id,
        audit_type=AuditType.DATA_ACCESS,
        action="submit_document",
        resource_type="document",
        resource_id=str(document.document_id),
        actor=principal.subject,
        details={"size_bytes": document.size_bytes},
    )
    return document


async def get_document(*, edge: Edge, principal: Principal, document_id: uuid.UUID) -> Document:
    async with edge.sessions() as session:
        document = await repo.get_document(
            session=session, tenant_id=principal.tenant_id, document_id=document_id
        )
    if document is None:
        raise NotFound("no such document")
    return document


async def on_document_indexed(*, edge: Edge, event: DocumentIndexed) -> None:
    """Retrieval stored a document: it shows as indexed, with its chunks (idempotent; a
    document deleted meanwhile stays deleted)."""
    async with transaction(edge.sessions) as session:
        changed = await repo.mark_document_indexed(
            session=session,
            tenant_id=event.tenant_id,
            document_id=event.document_id,
            chunks=event.chunks,
        )
    if changed:
        log.info(
            "document indexed",
            extra={"tenant_id": str(event.tenant_id), "document_id": str(event.document_id)},
        )


_DOCUMENT_EVENT: TypeAdapter[DocumentSubmitted | DocumentDeleted] = TypeAdapter(DocumentEvent)


async def on_document_dead_lettered(*, edge: Edge, raw: bytes) -> None:
    """Retrieval gave up on a document event (``documents.v1.dlq``): a submitted document shows
    as failed, so its tenant's admins learn it will not become searchable.

    Idempotent, scoped to the record's tenant, and never changes an indexed or deleted
    document: one that operators re-publish and retrieval then stores turns indexed. A failed
    DocumentDeleted changes nothing here (the document is already deleted for its tenant; the
    dead-letter alert tells operators its chunks remain). A record that cannot be read is
    left to operators, never dead-lettered again.
    """
    try:
        event = _DOCUMENT_EVENT.validate_json(raw)
    except ValidationError:
        log.warning("a dead-lettered document record could not be read; left to operators")
        return
    if not isinstance(event, DocumentSubmitted):
        return
    async with transaction(edge.sessions) as session:
        changed = await repo.mark_document_failed(
            session=session, tenant_id=event.tenant_id, document_id=event.document_id
        )
    if changed:
        log.warning(
            "document failed: retrieval could not store it",
            extra={"tenant_id": str(event.tenant_id), "document_id": str(event.document_id)},
        )


async def delete_document(*, edge: Edge, principal: Principal, document_id: uuid.UUID) -> None:
    """Mark a document deleted and ask retrieval to forget it."""
    async with transaction(edge.sessions) as session:
        found = await repo.mark_document_deleted(
            session=session, tenant_id=principal.tenant_id, document_id=document_id
        )
        if not found:
            raise NotFound("no such document")
        try:
            await edge.publish(
                DOCUMENTS,
                DocumentDeleted(
                    tenant_id=principal.tenant_id,
                    document_id=document_id,
                    deleted_by=principal.subject,
                ),
            )
        except Exception as exc:
            raise Unavailable("the deletion could not be queued; nothing was changed") from exc
    await record_audit(
        edge=edge,
        tenant_id=principal.tenant_id,
        audit_type=AuditType.DELETION,
        action="delete_document",
        resource_type="document",
        resource_id=str(document_id),
        actor=principal.subject,
    )


# --------------------------------------------------------------------------- chat admission


def estimate_prompt_tokens(
    *,
    config: TenantConfig,
    question: str,
    history: Sequence[ChatMessage],
    top_k: int,
    tools: ToolOptions | None = None,
) -> int:
    """A generous estimate of a request's prompt tokens (reserved before it is sent)."""
    chars = len(question) + sum(len(m.content) for m in history)
    chars += sum(len(c.function.arguments) + 40 for m in history for c in m.tool_calls or ())
    chars += len(config.system_prompt_template) + len(config.custom_instructions)
    if tools is not None:
        chars += len(tools.model_dump_json())
    context = top_k * 400 if config.features.rag else 0
    return math.ceil(chars / 3) + context + 64


@dataclass(frozen=True)
class AdmittedChat:
    request: ChatRequested | ContextRetrieved
    rate: RateDecision
    config: TenantConfig


def _next_month_s(now: datetime) -> int:
    first = (now.replace(day=1) + timedelta(days=32)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return max(1, int((first - now).total_seconds()))


async def _config_of(
    edge: Edge, tenant_id: uuid.UUID, recorded_version: int | None
) -> tuple[TenantConfig, int]:
    """The tenant's config and its version, as the request routes read it (see ``configs``)."""
    found = await edge.configs.get(tenant_id=tenant_id, recorded_version=recorded_version)
    if found is None:
        raise NotFound("this tenant has no configuration")
    return found


async def tenant_models(
    *, edge: Edge, tenant_id: uuid.UUID, recorded_config_version: int | None
) -> list[str]:
    """The models a tenant may use, its default first (the config the chat routes read): those
    of its config that the catalogue holds and serves it."""
    config, _ = await _config_of(edge, tenant_id, recorded_config_version)
    catalogue = edge.settings.models
    return [
        m
        for m in [config.model, *(m for m in config.allowed_models if m != config.model)]
        if m in catalogue and catalogue[m].serves(tenant_id, config)
    ]


async def admit_chat(
    *,
    edge: Edge,
    principal: Principal,
    request_id: uuid.UUID,
    question: str,
    history: list[ChatMessage],
    conversation_id: uuid.UUID | None,
    stream: bool,
    reply_partition: int,
    recorded_config_version: int | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stop: Sequence[str] = (),
    sampling: SamplingHints | None = None,
    response_format: ResponseFormat | None = None,
    end_user: str | None = None,
    tools: ToolOptions | None = None,
    tool_turns: Sequence[ChatMessage] = (),
    document_ids: Sequence[uuid.UUID] = (),
) -> AdmittedChat:
    """Check flags, rate and budget, then publish the request; release the hold if that fails.

    The request goes to retrieval (ChatRequested) when the tenant has RAG or the semantic
    cache on, and straight to inference (ContextRetrieved without passages) when both are off.
    The semantic cache is keyed by the question alone, so only a question asked on its own
    uses it: one that comes with earlier messages (a follow-up, a system message of the
    client's own) may mean something else entirely, and a request with its own stop sequences,
    sampling parameters or response format asks for an answer generated its way, which a
    cached one was not (nor may such an answer be served to others). A request offering tools
    (or carrying their results, ``tool_turns``: what followed the question) is never cached
    either: its answer may be a call of the client's own functions. Nor is one limited to some
    of the tenant's documents (``document_ids``, each checked to be the tenant's own): a cached
    answer was made from all of them.

    ``recorded_config_version`` is the tenant's config version the access check read from
    Redis: the config held in memory is used when it is that version (see ``configs``).
    """
    config, version = await _config_of(edge, principal.tenant_id, recorded_config_version)
    if stream and not config.features.streaming:
        raise Forbidden("streaming is disabled for this tenant")
    chosen = model or config.model
    if chosen not in config.allowed_models:
        raise ModelNotAllowed(
            f"model {chosen!r} is not allowed for this tenant; allowed: {config.allowed_models}"
        )
    spec = edge.settings.models.get(chosen)
    if spec is not None and not spec.serves(principal.tenant_id, config):
        # The config named it before the operator made it another tenant's own, or closed it
        # to the tenant's tier: refused (another tenant's model without naming its owner).
        raise ModelNotAllowed(f"model {chosen!r} is not allowed for this tenant")
    if spec is not None and not spec.takes(response_format):
        assert response_format is not None  # text is always taken
        raise FormatNotTaken(
            f"model {chosen!r} cannot answer in response_format {response_format.type!r}"
        )
    if spec is not None and tools is not None and not spec.tool_calls:
        raise ToolsNotTaken(f"model {chosen!r} cannot call tools")
    if document_ids and not config.features.rag:
        raise Invalid(
            "document_ids limits the documents a question is answered from, and RAG is off "
            "for this tenant"
        )
    scope = await own_documents(edge=edge, tenant_id=principal.tenant_id, ids=document_ids)
    limit = min(max_tokens or config.max_tokens_per_request, config.max_tokens_per_request)
    options = ChatOptions(
        model=chosen,
        max_tokens=limit,
        temperature=config.temperature if temperature is None else temperature,
        config_version=version,
        rag=config.features.rag,
        semantic_cache=config.features.semantic_cache
        and not stop
        and not history
        and sampling is None
        and response_format is None
        and tools is None
        and not tool_turns
        and not scope,
        cache_similarity_threshold=config.cache_similarity_threshold,
        stop=list(stop),
        sampling=sampling,
        response_format=response_format,
        tools=tools,
        document_ids=scope,
    )
    now = utcnow()
    estimate = estimate_prompt_tokens(
        config=config,
        question=question,
        history=[*history, *tool_turns],
        top_k=options.top_k,
        tools=tools,
    )
    # Inference fits prompt and answer into the model's window (dropping the oldest turns of a
    # long conversation first), so no request can use more than the window.
    worst_case = estimate + limit
    if spec is not None:
        worst_case = min(worst_case, spec.context_window)
    rate, held = await _admitted(
        edge=edge,
        config=config,
        tenant_id=principal.tenant_id,
        request_id=request_id,
        tokens=worst_case,
        day=now.date(),
        end_user=end_user,
    )
    if not held.granted:
        if held.refusal == RefusalReason.END_USER_DAILY_TOKENS:
            raise BudgetRefused(
                f"daily token budget of {held.limit} tokens per end user would be exceeded for "
                f"this request's user: {held.used + held.reserved} used or reserved, this "
                f"request may need up to {worst_case}",
                rate.headers() | {"Retry-After": str(seconds_until_next_day(now))},
            )
        if held.refusal == RefusalReason.MONTHLY_SPEND:
            raise BudgetRefused(
                "monthly spend budget exhausted",
                rate.headers() | {"Retry-After": str(_next_month_s(now))},
            )
        raise BudgetRefused(
            f"daily token budget would be exceeded: {held.used + held.reserved} of "
            f"{held.limit} tokens used or reserved, this request may need up to {worst_case}",
            rate.headers() | {"Retry-After": str(seconds_until_next_day(now))},
        )
    deadline = now + timedelta(seconds=edge.settings.chat_deadline_s)
    fields: dict[str, Any] = {
        "tenant_id": principal.tenant_id,
        "request_id": request_id,
        "user_id": principal.subject[:200],
        "end_user": end_user,
        "conversation_id": conversation_id,
        "question": question,
        "history": history,
        "tool_turns": list(tool_turns),
        "stream": stream,
        "reply_to": ReplyTo(topic=CHAT_RESPONSES.name, partition=reply_partition),
        "options": options,
        "reservation": Reservation(reserved_tokens=worst_case, period_day=now.date()),
        "deadline_at": deadline.astimezone(UTC),
    }
    request: ChatRequested | ContextRetrieved
    topic = CHAT_REQUESTS
    if options.rag or options.semantic_cache:
        request = ChatRequested(**fields)
    else:
        # Gateway mode: retrieval would neither embed, search nor look in the cache, so the
        # edge hands the request straight to inference as the context retrieval would have
        # sent (same derived event id, no passages). See docs/services.md.
        topic = CHAT_CONTEXT
        request = ContextRetrieved(
            **fields, event_id=derived_id(request_id, "context"), passages=[], corpus_version=0
        )
    try:
        await edge.publish(topic, request)
    except Exception as exc:
        try:
            await edge.budgets.release(
                tenant_id=principal.tenant_id,
                request_id=request_id,
                day=now.date(),
                end_user=end_user if config.end_user_daily_token_budget else None,
            )
        except RedisError:
            log.error("reservation not released; metering reconciliation will drop it")
        raise Unavailable("the request could not be queued; try again") from exc
    return AdmittedChat(request, rate, config)


async def _admitted(
    *,
    edge: Edge,
    config: TenantConfig,
    tenant_id: uuid.UUID,
    request_id: uuid.UUID,
    tokens: int,
    day: date,
    end_user: str | None = None,
) -> tuple[RateDecision, BudgetHold]:
    """Count a request against the tenant's rates and hold ``tokens`` of its budget (see
    ``admission``); ``RateLimited`` when a rate refuses it. The hold may still be refused."""
    try:
        admitted = await edge.admission.admit(
            tenant_id=tenant_id,
            per_minute=config.rate_limit_per_minute,
            request_id=request_id,
            tokens=tokens,
            day=day,
            daily_limit=config.daily_token_budget,
            monthly_spend_limit_micros=config.monthly_spend_budget_micros,
            end_user=end_user,
            end_user_per_minute=config.end_user_rate_limit_per_minute,
            end_user_daily_limit=config.end_user_daily_token_budget,
        )
    except RedisError as exc:
        raise Unavailable(
            "rate limits and budgets cannot be checked right now (Redis unavailable); "
            "the request is refused rather than run unmetered",
            {"Retry-After": str(edge.settings.redis_retry_after_s)},
        ) from exc
    rate, held = admitted.rate, admitted.held
    if held is None:
        if admitted.end_user_refused:
            raise RateLimited(
                f"rate limit of {config.end_user_rate_limit_per_minute} requests per minute "
                "per end user reached for this request's user",
                rate.headers(),
            )
        raise RateLimited(
            f"rate limit of {config.rate_limit_per_minute} requests per minute reached",
            rate.headers(),
        )
    return rate, held


async def own_documents(
    *, edge: Edge, tenant_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """``ids`` without repeats, once each is known to be one of the tenant's documents that is
    not deleted; ``NotFound`` naming those that are not (another tenant's ids included: they
    name nothing here)."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    async with edge.sessions() as session:
        found = await repo.live_document_ids(
            session=session, tenant_id=tenant_id, document_ids=wanted
        )
    missing = [str(d) for d in wanted if d not in found]
    if missing:
        raise NotFound(f"no such documents of this tenant: {', '.join(missing)}")
    return wanted


async def admit_search(
    *,
    edge: Edge,
    principal: Principal,
    request_id: uuid.UUID,
    query: str,
    top_k: int,
    reply_partition: int,
    recorded_config_version: int | None = None,
    document_ids: Sequence[uuid.UUID] = (),
) -> RateDecision:
    """Count a search against the tenant's request rate, then publish it to retrieval.

    A search asks no model, so it holds no budget and is not metered; retrieval audits it.
    """
    config, _ = await _config_of(edge, principal.tenant_id, recorded_config_version)
    scope = await own_documents(edge=edge, tenant_id=principal.tenant_id, ids=document_ids)
    now = utcnow()
    rate, _ = await _admitted(
        edge=edge,
        config=config,
        tenant_id=principal.tenant_id,
        request_id=request_id,
        tokens=0,
        day=now.date(),
    )
    search = SearchRequested(
        tenant_id=principal.tenant_id,
        request_id=request_id,
        user_id=principal.subject[:200],
        query=query,
        top_k=top_k,
        document_ids=scope,
        reply_to=ReplyTo(topic=CHAT_RESPONSES.name, partition=reply_partition),
        deadline_at=(now + timedelta(seconds=edge.settings.chat_deadline_s)).astimezone(UTC),
    )
    try:
        await edge.publish(CHAT_REQUESTS, search)
    except Exception as exc:
        raise Unavailable("the search could not be queued; try again") from exc
    return rate


# --------------------------------------------------------------------------- feedback


async def give_feedback(
    *,
    edge: Edge,
    principal: Principal,
    request_id: uuid.UUID,
    value: int,
    comment: str,
    end_user: str | None,
    recorded_config_version: int | None = None,
) -> Feedback:
    """Record a user's rating of one of the tenant's answers (replacing theirs before), and
    audit it (the value, never the comment). A rating counts against the tenant's request
    rate (and the end user's), as a search does: each may add a row."""
    config, _ = await _config_of(edge, principal.tenant_id, recorded_config_version)
    await _admitted(
        edge=edge,
        config=config,
        tenant_id=principal.tenant_id,
        request_id=uuid.uuid4(),
        tokens=0,
        day=utcnow().date(),
        end_user=end_user,
    )
    async with transaction(edge.sessions) as session:
        given = await repo.put_feedback(
            session=session,
            tenant_id=principal.tenant_id,
            request_id=request_id,
            subject=principal.subject[:200],
            value=value,
            comment=comment,
            end_user=end_user,
        )
    await record_audit(
        edge=edge,
        tenant_id=principal.tenant_id,
        audit_type=AuditType.API_CALL,
        action="feedback",
        resource_type="chat",
        resource_id=str(request_id),
        actor=principal.subject,
        details={"value": value, "end_user": end_user, "has_comment": bool(comment)},
    )
    return given


# --------------------------------------------------------------------------- conversations


def _conversations_down(exc: RedisError, edge: Edge) -> Unavailable:
    return Unavailable(
        "conversations cannot be read right now (Redis unavailable); try again",
        {"Retry-After": str(edge.settings.redis_retry_after_s)},
    )


async def conversation_history(
    *, edge: Edge, principal: Principal, conversation_id: uuid.UUID
) -> list[ChatMessage]:
    """The caller's conversation so far (none if it is new, expired or someone else's)."""
    try:
        return await edge.conversations.history(
            tenant_id=principal.tenant_id,
            subject=principal.subject,
            conversation_id=conversation_id,
        )
    except RedisError as exc:
        raise _conversations_down(exc, edge) from exc


async def remember_turn(
    *,
    edge: Edge,
    principal: Principal,
    conversation_id: uuid.UUID,
    question: str,
    answer: str,
) -> None:
    """Keep a question and its answer for the conversation's next question. The answer has
    been given either way: if Redis fails here, only the conversation misses this turn."""
    turn = [
        ChatMessage(role="user", content=question),
        ChatMessage(role="assistant", content=answer[:MAX_MESSAGE_CHARS]),
    ]
    try:
        await edge.conversations.append(
            tenant_id=principal.tenant_id,
            subject=principal.subject,
            conversation_id=conversation_id,
            messages=turn,
        )
    except RedisError as exc:
        log.warning(
            "conversation turn not kept (Redis unavailable)",
            extra={"error_type": type(exc).__name__},
        )


async def forget_conversation(
    *, edge: Edge, principal: Principal, conversation_id: uuid.UUID
) -> None:
    try:
        found = await edge.conversations.delete(
            tenant_id=principal.tenant_id,
            subject=principal.subject,
            conversation_id=conversation_id,
        )
    except RedisError as exc:
        raise _conversations_down(exc, edge) from exc
    if not found:
        raise NotFound("no such conversation (it may have expired)")


def usage_body(usage: TokenUsage) -> dict[str, int]:
    """An answer's usage as the chat routes answer it (OpenAI's three counts)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def citations_body(citations: Sequence[Citation]) -> list[dict[str, Any]]:
    """The passages an answer drew on, as both chat APIs give them."""
    return [c.model_dump(mode="json") for c in citations]


def answer_body(completed: Any, conversation_id: uuid.UUID | None = None) -> dict[str, Any]:
    """The JSON answer of ``POST /v1/chat`` from a ChatCompleted."""
    return {
        "request_id": str(completed.request_id),
        "conversation_id": None if conversation_id is None else str(conversation_id),
        "answer": completed.answer,
        "citations": citations_body(completed.citations),
        "cached": completed.cached,
        "usage": usage_body(completed.usage),
        "finish_reason": completed.finish_reason.value,
    }
