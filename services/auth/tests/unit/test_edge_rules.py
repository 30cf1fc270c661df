"""Pure rules of the edge: templates, config caps, client ids, estimates, reply ordering."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from tenantry_auth.config import Settings
from tenantry_auth.keys import KeyCipher
from tenantry_auth.ratelimit import RateDecision
from tenantry_auth.replies import PendingReply, ReplyRouter
from tenantry_auth.security import new_client_id, tenant_of_client
from tenantry_auth.service import (
    TIER_LIMITS,
    ConfigUpdate,
    Invalid,
    check_config,
    check_template,
    config_for_tier,
    default_config,
    estimate_prompt_tokens,
    merged_config,
)
from tenantry_common.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    FailureReason,
    FeatureFlags,
    TenantConfig,
    Tier,
    TokenUsage,
)
from tenantry_common.ids import PLATFORM_TENANT_ID

pytestmark = pytest.mark.unit

SETTINGS = Settings(environment="test")


@pytest.mark.parametrize(
    "template",
    ["", "plain", "{{tenant_name}}", "{{ tier }} and {{custom_instructions}}", "{ single } braces"],
)
def test_templates_with_known_placeholders_pass(template: str) -> None:
    check_template(template)


@pytest.mark.parametrize(
    "template", ["{{other_tenant}}", "{{tenant_name}", "}} {{", "{{ tenant_name.__class__ }}"]
)
def test_templates_with_unknown_placeholders_or_stray_braces_fail(template: str) -> None:
    with pytest.raises(Invalid):
        check_template(template)


@pytest.mark.parametrize(
    ("tier", "tokens"), [(Tier.FREE, 50_000), (Tier.PRO, 500_000), (Tier.ENTERPRISE, 5_000_000)]
)
def test_tier_defaults_match_the_seeds(tier: Tier, tokens: int) -> None:
    config = default_config(name="x", tier=tier, settings=SETTINGS)
    assert config.daily_token_budget == tokens == TIER_LIMITS[tier].daily_tokens
    check_config(config, SETTINGS, tenant_id=uuid.uuid4())
    assert config.cache_similarity_threshold >= SETTINGS.cache_similarity_floor


def test_config_update_above_the_tier_cap_is_refused() -> None:
    config = default_config(name="x", tier=Tier.FREE, settings=SETTINGS)
    with pytest.raises(Invalid, match="rate_limit_per_minute"):
        check_config(
            merged_config(config, ConfigUpdate(rate_limit_per_minute=10_000)),
            SETTINGS,
            tenant_id=uuid.uuid4(),
        )


ACME, GLOBEX = uuid.uuid4(), uuid.uuid4()
#: The default catalogue plus each tenant's own fine-tuned model.
OWNED = Settings(
    environment="test",
    models={
        **SETTINGS.models,
        "ft-acme": SETTINGS.models["smollm2-135m"].model_copy(update={"owner": ACME}),
        "ft-globex": SETTINGS.models["smollm2-135m"].model_copy(update={"owner": GLOBEX}),
    },
)


def _enterprise(**changes: Any) -> TenantConfig:
    config = default_config(name="acme", tier=Tier.ENTERPRISE, settings=OWNED)
    return merged_config(config, ConfigUpdate.model_validate(changes))


def test_a_tenant_may_use_its_own_model_with_fine_tuning_on() -> None:
    config = _enterprise(
        allowed_models=["smollm2-135m", "ft-acme"], model="ft-acme", features={"fine_tuning": True}
    )
    check_config(config, OWNED, tenant_id=ACME)


def test_another_tenants_model_is_not_in_its_catalogue_nor_named() -> None:
    config = _enterprise(
        allowed_models=["smollm2-135m", "ft-globex"], features={"fine_tuning": True}
    )
    with pytest.raises(Invalid, match=r"\['ft-globex'\] are not in the catalogue") as refused:
        check_config(config, OWNED, tenant_id=ACME)
    # The catalogue the refusal lists is this tenant's: the other tenant's model is not in it.
    assert "ft-acme" in str(refused.value)
    assert "ft-globex" not in str(refused.value).partition("catalogue")[2]


def test_own_models_need_fine_tuning_and_fine_tuning_the_enterprise_tier() -> None:
    without_flag = _enterprise(allowed_models=["smollm2-135m", "ft-acme"])
    with pytest.raises(Invalid, match=r"need features\.fine_tuning on"):
        check_config(without_flag, OWNED, tenant_id=ACME)
    pro = merged_config(
        default_config(name="acme", tier=Tier.PRO, settings=OWNED),
        ConfigUpdate(features=FeatureFlags(fine_tuning=True)),
    )
    with pytest.raises(Invalid, match="enterprise tier"):
        check_config(pro, OWNED, tenant_id=ACME)


def test_new_tenants_start_on_a_shared_model_open_to_their_tier() -> None:
    local = OWNED.models["smollm2-135m"]
    settings = Settings(
        environment="test",
        models={
            "ft-acme": OWNED.models["ft-acme"],
            "smollm2-135m": local.model_copy(update={"tiers": [Tier.PRO, Tier.ENTERPRISE]}),
            "gpt-4o-mini": OWNED.models["gpt-4o-mini"],
        },
    )
    assert default_config(name="x", tier=Tier.FREE, settings=settings).model == "gpt-4o-mini"
    assert default_config(name="x", tier=Tier.PRO, settings=settings).model == "smollm2-135m"


def test_a_model_closed_to_the_tenants_tier_cannot_be_allowed() -> None:
    settings = Settings(
        environment="test",
        models={
            **SETTINGS.models,
            "costly": SETTINGS.models["gpt-4o-mini"].model_copy(
                update={"tiers": [Tier.ENTERPRISE]}
            ),
        },
    )
    config = merged_config(
        default_config(name="x", tier=Tier.PRO, settings=settings),
        ConfigUpdate(allowed_models=["smollm2-135m", "costly"]),
    )
    with pytest.raises(Invalid, match=r"\['costly'\] are not available on the pro tier"):
        check_config(config, settings, tenant_id=ACME)


def test_a_plan_change_carries_the_plans_own_limits_and_keeps_the_tenants_lower_ones() -> None:
    free = merged_config(
        default_config(name="x", tier=Tier.FREE, settings=SETTINGS),
        ConfigUpdate(
            rate_limit_per_minute=10,
            end_user_rate_limit_per_minute=5,
            end_user_daily_token_budget=1_000,
        ),
    )
    pro = config_for_tier(free, Tier.PRO, SETTINGS, tenant_id=ACME)
    limits = TIER_LIMITS[Tier.PRO]
    assert (pro.tier, pro.daily_token_budget, pro.monthly_spend_budget_micros) == (
        Tier.PRO,
        limits.daily_tokens,
        limits.monthly_spend_micros,
    )
    assert pro.max_tokens_per_request == limits.max_tokens_per_request
    assert (pro.rate_limit_per_minute, pro.end_user_rate_limit_per_minute) == (10, 5)
    assert pro.end_user_daily_token_budget == 1_000
    check_config(pro, SETTINGS, tenant_id=ACME)
    # And back: the plan's values follow the plan.
    assert config_for_tier(pro, Tier.FREE, SETTINGS, tenant_id=ACME) == free


def test_a_downgrade_lowers_limits_above_the_new_caps_and_drops_what_the_tier_lacks() -> None:
    settings = Settings(
        environment="test",
        models={
            **OWNED.models,
            "costly": OWNED.models["gpt-4o-mini"].model_copy(update={"tiers": [Tier.ENTERPRISE]}),
        },
    )
    enterprise = _enterprise(
        model="costly",
        allowed_models=["costly", "ft-acme", "gpt-4o-mini"],
        features={"fine_tuning": True},
        daily_token_budget=3_000_000,
        rate_limit_per_minute=100,
        end_user_rate_limit_per_minute=50,
        end_user_daily_token_budget=2_000_000,
    )
    check_config(enterprise, settings, tenant_id=ACME)
    free = config_for_tier(enterprise, Tier.FREE, settings, tenant_id=ACME)
    limits = TIER_LIMITS[Tier.FREE]
    assert free.daily_token_budget == limits.daily_tokens  # 3M was above the free cap
    assert free.end_user_daily_token_budget == limits.daily_tokens  # so was 2M per end user
    assert (free.rate_limit_per_minute, free.end_user_rate_limit_per_minute) == (
        limits.rate_per_minute,
        limits.rate_per_minute,
    )
    assert not free.features.fine_tuning
    assert (free.model, free.allowed_models) == ("smollm2-135m", ["smollm2-135m", "gpt-4o-mini"])
    assert free.system_prompt_template == enterprise.system_prompt_template
    check_config(free, settings, tenant_id=ACME)


def test_config_update_keeps_omitted_fields() -> None:
    config = default_config(name="x", tier=Tier.PRO, settings=SETTINGS)
    updated = merged_config(config, ConfigUpdate(temperature=1.0))
    assert updated.temperature == 1.0
    assert updated.model_dump(exclude={"temperature"}) == config.model_dump(exclude={"temperature"})


def test_a_features_update_changes_only_the_flags_it_sends() -> None:
    config = default_config(name="x", tier=Tier.PRO, settings=SETTINGS)
    no_rag = merged_config(config, ConfigUpdate.model_validate({"features": {"rag": False}}))
    no_stream = merged_config(
        no_rag, ConfigUpdate.model_validate({"features": {"streaming": False}})
    )
    assert no_stream.features == FeatureFlags(rag=False, streaming=False)


def test_client_ids_carry_their_tenant_and_others_are_platform() -> None:
    tenant = uuid.uuid4()
    assert tenant_of_client(new_client_id(tenant)) == tenant
    assert tenant_of_client("operator") == PLATFORM_TENANT_ID
    assert tenant_of_client("not-a-uuid.abc") == PLATFORM_TENANT_ID


def test_prompt_estimate_grows_with_the_question() -> None:
    config = default_config(name="x", tier=Tier.PRO, settings=SETTINGS)
    short = estimate_prompt_tokens(config=config, question="a", history=[], top_k=4)
    long = estimate_prompt_tokens(config=config, question="a" * 3000, history=[], top_k=4)
    assert long - short >= 999


def test_key_cipher_round_trips_and_binds_the_kid() -> None:
    cipher = KeyCipher("secret")
    blob = cipher.encrypt("kid-1", b"private")
    assert cipher.decrypt("kid-1", blob) == b"private"
    with pytest.raises(Exception):  # noqa: B017, PT011 (any authentication failure)
        cipher.decrypt("kid-2", blob)


def test_refused_rate_decision_has_retry_after_and_ratelimit_headers() -> None:
    headers = RateDecision(
        allowed=False, limit=5, remaining=0, retry_after_s=12, reset_s=60
    ).headers()
    assert headers["Retry-After"] == "12"
    assert headers["RateLimit-Limit"] == "5"
    assert headers["RateLimit-Remaining"] == "0"


async def test_pending_reply_releases_deltas_in_seq_order_then_the_final() -> None:
    tenant, request = uuid.uuid4(), uuid.uuid4()
    pending = PendingReply(request)
    for seq in (2, 0, 1, 1):
        pending.offer(ChatDelta(tenant_id=tenant, request_id=request, seq=seq, delta=str(seq)))
    pending.offer(
        ChatCompleted(
            tenant_id=tenant,
            request_id=request,
            user_id="u",
            question="q",
            answer="012",
            model="m",
            usage=TokenUsage(prompt_tokens=1, completion_tokens=1),
            config_version=1,
            corpus_version=0,
        )
    )
    seen = [e async for e in pending.events(timeout_s=1)]
    assert [getattr(e, "delta", "final") for e in seen] == ["0", "1", "2", "final"]


async def test_pending_reply_times_out() -> None:
    pending = PendingReply(uuid.uuid4())
    with pytest.raises(TimeoutError):
        async for _ in pending.events(timeout_s=0.05):
            pass
    await asyncio.sleep(0)


class _NoRedis:
    """What ReplyRouter's constructor asks of Redis (the scripts), and nothing more."""

    def register_script(self, script: str) -> object:
        return object()


def _router() -> ReplyRouter:
    """A reply router that is never started (no broker, no Redis)."""
    return ReplyRouter(
        redis=_NoRedis(),
        bootstrap_servers="unused:9092",
        namespace="test",
        lease_ttl_s=10,
        fetch_max_wait_ms=3,
        idle_fetch_max_wait_ms=50,
    )


def test_reply_reader_keeps_short_fetches_while_a_request_awaits_its_answer() -> None:
    router = _router()
    assert router.fetch_wait.adaptive
    assert not router.fetch_wait.busy()
    router.fetch_wait.idle = True  # as after a quiet spell
    request = uuid.uuid4()
    router.register(request)
    assert not router.fetch_wait.idle, "a request is waiting: short fetches from the next on"
    assert router.fetch_wait.busy(), "and they stay short until it is answered or given up"
    router.forget(request)
    assert not router.fetch_wait.busy()


async def test_reply_reader_fails_a_waiting_request_whose_answer_it_cannot_read() -> None:
    """Records it cannot read are skipped without stopping the reader (garbage, nesting past
    the parser's depth, ids that are not UUIDs); one that names a waiting request ends it."""
    router = _router()
    request, tenant = uuid.uuid4(), uuid.uuid4()
    pending = router.register(request)
    for raw in (b"\xff not json", b"[" * 100_000, b"[1]", b'{"request_id": 7}'):
        router._dispatch(raw)
    assert pending.queue.empty()
    future = {"event_type": "ChatFailed", "schema_version": 99}
    router._dispatch(
        json.dumps(future | {"request_id": str(request), "tenant_id": str(tenant)}).encode()
    )
    (final,) = [e async for e in pending.events(timeout_s=1)]
    assert isinstance(final, ChatFailed)
    assert (final.request_id, final.tenant_id) == (request, tenant)
    assert final.reason is FailureReason.INTERNAL
