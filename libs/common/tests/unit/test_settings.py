"""The model catalogue's settings: fallbacks name other catalogue models; a tenant's own model
serves only that tenant, and a model open to some tiers only their tenants; response formats go
to each model's server as it takes them."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError
from tenantry_common.events import FeatureFlags, ResponseFormat, TenantConfig, Tier
from tenantry_common.settings import LOCAL_MODEL, CommonSettings, ModelSpec, default_catalogue

pytestmark = pytest.mark.unit


def _spec(**extra: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "base_url": "http://127.0.0.1:1/v1",
            "input_price_micros_per_mtok": 1,
            "output_price_micros_per_mtok": 1,
            "context_window": 1024,
        }
        | extra
    )


def test_a_fallback_to_another_catalogue_model_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    models = default_catalogue() | {"primary": _spec(fallbacks=[LOCAL_MODEL])}
    monkeypatch.setenv(
        "TENANTRY_MODELS", json.dumps({k: v.model_dump() for k, v in models.items()})
    )
    assert CommonSettings().models["primary"].fallbacks == [LOCAL_MODEL]


@pytest.mark.parametrize("fallback", ["primary", "nowhere"])
def test_a_fallback_to_itself_or_outside_the_catalogue_is_refused(fallback: str) -> None:
    with pytest.raises(ValidationError, match=f"fallback '{fallback}' must be another"):
        CommonSettings(models={"primary": _spec(fallbacks=[fallback])})


ACME, GLOBEX = uuid.uuid4(), uuid.uuid4()


def _config(tier: Tier = Tier.ENTERPRISE, *, fine_tuning: bool = False) -> TenantConfig:
    return TenantConfig(
        tenant_name="t",
        tier=tier,
        model="m",
        allowed_models=["m"],
        temperature=0.0,
        max_tokens_per_request=16,
        system_prompt_template="",
        features=FeatureFlags(fine_tuning=fine_tuning),
        rate_limit_per_minute=1,
        daily_token_budget=1,
        monthly_spend_budget_micros=1,
        cache_similarity_threshold=0.9,
    )


def test_a_tenants_own_model_serves_only_it_and_only_with_fine_tuning_on() -> None:
    own, shared = _spec(owner=str(ACME)), _spec()
    assert own.visible_to(ACME)
    assert not own.visible_to(GLOBEX)
    assert own.serves(ACME, _config(fine_tuning=True))
    assert not own.serves(ACME, _config(fine_tuning=False))
    assert not own.serves(GLOBEX, _config(fine_tuning=True))
    assert shared.visible_to(GLOBEX)
    assert shared.serves(GLOBEX, _config(fine_tuning=False))


def test_a_model_open_to_some_tiers_serves_only_their_tenants() -> None:
    costly = _spec(tiers=["pro", "enterprise"])
    assert costly.serves(ACME, _config(Tier.PRO))
    assert not costly.serves(ACME, _config(Tier.FREE))
    # Both rules hold for a tenant's own model: its owner's tier must be open too.
    own = _spec(owner=str(ACME), tiers=["pro"])
    assert not own.serves(ACME, _config(Tier.ENTERPRISE, fine_tuning=True))


def test_every_tier_needs_a_shared_model_open_to_it() -> None:
    with pytest.raises(ValidationError, match=r"none is open to \['free'\]"):
        CommonSettings(
            models={"costly": _spec(tiers=["pro", "enterprise"]), "acme": _spec(owner=str(ACME))}
        )


def test_a_fallback_may_be_shared_or_the_same_tenants_own() -> None:
    models = {
        "shared": _spec(),
        "acme-1": _spec(owner=str(ACME), fallbacks=["acme-2", "shared"]),
        "acme-2": _spec(owner=str(ACME)),
    }
    assert CommonSettings(models=models).models["acme-1"].fallbacks == ["acme-2", "shared"]


@pytest.mark.parametrize("owner", [None, GLOBEX])
def test_a_fallback_to_another_tenants_own_model_is_refused(owner: uuid.UUID | None) -> None:
    # It would answer other tenants, and be named to them.
    models = {
        "shared": _spec(),
        "primary": _spec(owner=owner, fallbacks=["acme"]),
        "acme": _spec(owner=str(ACME)),
    }
    with pytest.raises(ValidationError, match="fallback 'acme' is one tenant's own model"):
        CommonSettings(models=models)


def test_a_catalogue_of_tenants_own_models_only_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs a shared model"):
        CommonSettings(models={"acme": _spec(owner=str(ACME))})


def test_at_most_three_fallbacks() -> None:
    with pytest.raises(ValidationError, match="fallbacks"):
        _spec(fallbacks=["a", "b", "c", "d"])


JSON_MODE = ResponseFormat(type="json_object")
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}
STRUCTURED = ResponseFormat.model_validate(
    {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
)


@pytest.mark.parametrize(
    ("formats", "json_mode", "structured"),
    [
        ("json_schema", True, True),
        ("json_object_schema", True, True),
        ("json_object", True, False),
        ("text", False, False),
    ],
)
def test_which_response_formats_a_model_takes(
    formats: str, json_mode: bool, structured: bool
) -> None:
    spec = _spec(response_formats=formats)
    assert (spec.takes(None), spec.takes(JSON_MODE), spec.takes(STRUCTURED)) == (
        True,
        json_mode,
        structured,
    )


def test_a_response_format_goes_to_each_server_as_it_takes_it() -> None:
    openai_like = _spec()  # the default: OpenAI's own form
    assert openai_like.response_format_body(STRUCTURED) == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
    }
    assert openai_like.response_format_body(JSON_MODE) == {"type": "json_object"}
    llama_cpp_python = _spec(response_formats="json_object_schema")
    assert llama_cpp_python.response_format_body(STRUCTURED) == {
        "type": "json_object",
        "schema": SCHEMA,
    }
    assert llama_cpp_python.response_format_body(JSON_MODE) == {"type": "json_object"}
    assert default_catalogue()[LOCAL_MODEL].response_formats == "json_object_schema"
