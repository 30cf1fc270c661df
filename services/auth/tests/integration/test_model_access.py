"""Who may use a catalogue model. A tenant's own (fine-tuned) model: only its owner may allow,
list or call it, and only with its fine_tuning feature on (an enterprise feature); to every
other tenant it is not in the catalogue, by name or by error message. A model open to some
tiers: only their tenants.

The catalogue is the edge's settings, which an operator changes by a rolling restart; here
models are added to the running edge's catalogue (``monkeypatch``) once their owners exist.
"""

from __future__ import annotations

import uuid

import pytest
from auth_support import bearer
from tenantry_auth.config import Settings
from tenantry_common.events import Tier
from tenantry_common.settings import LOCAL_MODEL

pytestmark = pytest.mark.integration

FINE_TUNING_ON = {"rag": True, "streaming": True, "semantic_cache": True, "fine_tuning": True}


@pytest.fixture
async def owners(onboard, edge_settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """Two enterprise tenants, each with its own model in the catalogue: (acme, globex, acme's
    model, globex's model)."""
    acme, globex = await onboard(tier="enterprise"), await onboard(tier="enterprise")
    names = {}
    for tenant in (acme, globex):
        name = f"ft-{uuid.uuid4().hex[:8]}"
        spec = edge_settings.models[LOCAL_MODEL].model_copy(update={"owner": tenant.tenant_id})
        monkeypatch.setitem(edge_settings.models, name, spec)
        names[tenant.tenant_id] = name
    return acme, globex, names[acme.tenant_id], names[globex.tenant_id]


async def test_another_tenants_model_cannot_be_allowed_and_is_never_named(client, owners) -> None:
    acme, globex, acme_model, globex_model = owners
    r = await client.put(
        "/v1/config",
        json={"allowed_models": [LOCAL_MODEL, acme_model], "features": FINE_TUNING_ON},
        headers=bearer(globex.admin_token),
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f"['{acme_model}'] are not in the catalogue" in detail
    # The catalogue it lists is globex's: its own model, not acme's.
    listed = detail.partition("are not in the catalogue")[2]
    assert globex_model in listed
    assert acme_model not in listed

    r = await client.post(
        "/v1/chat/completions",
        json={"model": acme_model, "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(globex.member_token),
    )
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found"
    assert str(acme.tenant_id) not in r.text

    models = await client.get("/v1/models", headers=bearer(globex.member_token))
    assert acme_model not in {m["id"] for m in models.json()["data"]}
    r = await client.get(f"/v1/models/{acme_model}", headers=bearer(globex.member_token))
    assert r.status_code == 404


async def test_an_own_model_needs_fine_tuning_which_needs_the_enterprise_tier(
    client, owners, onboard
) -> None:
    acme, _, acme_model, _ = owners
    admin = bearer(acme.admin_token)
    r = await client.put(
        "/v1/config", json={"allowed_models": [LOCAL_MODEL, acme_model]}, headers=admin
    )
    assert r.status_code == 422, r.text
    assert "need features.fine_tuning on" in r.json()["detail"]

    pro = await onboard(tier="pro")
    r = await client.put(
        "/v1/config", json={"features": FINE_TUNING_ON}, headers=bearer(pro.admin_token)
    )
    assert r.status_code == 422, r.text
    assert "enterprise tier" in r.json()["detail"]


async def test_the_owner_lists_and_chats_with_its_own_model(client, owners, responder) -> None:
    acme, _, acme_model, _ = owners
    r = await client.put(
        "/v1/config",
        json={
            "model": acme_model,
            "allowed_models": [LOCAL_MODEL, acme_model],
            "features": FINE_TUNING_ON,
        },
        headers=bearer(acme.admin_token),
    )
    assert r.status_code == 200, r.text
    member = bearer(acme.member_token)
    models = (await client.get("/v1/models", headers=member)).json()["data"]
    assert [(m["id"], m["owned_by"]) for m in models] == [
        (acme_model, str(acme.tenant_id)),
        (LOCAL_MODEL, "tenantry"),
    ]
    r = await client.post("/v1/chat", json={"question": "own model"}, headers=member)
    assert r.status_code == 200, r.text
    [request] = [q for q in responder.for_tenant(acme.tenant_id) if q.question == "own model"]
    assert request.options.model == acme_model


async def test_a_model_given_to_another_tenant_stops_serving_the_config_that_names_it(
    client, owners, edge_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator moves a model into another tenant's hands: a config written before names it,
    and the edge refuses it from the next request, without naming its new owner."""
    acme, globex, _, _ = owners
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    monkeypatch.setitem(edge_settings.models, shared, edge_settings.models[LOCAL_MODEL])
    r = await client.put(
        "/v1/config",
        json={"model": shared, "allowed_models": [LOCAL_MODEL, shared]},
        headers=bearer(acme.admin_token),
    )
    assert r.status_code == 200, r.text
    member = bearer(acme.member_token)
    openai_body = {"model": shared, "messages": [{"role": "user", "content": "q"}]}
    r = await client.post("/v1/chat", json={"question": "q"}, headers=member)
    assert r.status_code == 200, r.text
    r = await client.post("/v1/chat/completions", json=openai_body, headers=member)
    assert r.status_code == 200, r.text

    given = edge_settings.models[LOCAL_MODEL].model_copy(update={"owner": globex.tenant_id})
    monkeypatch.setitem(edge_settings.models, shared, given)
    r = await client.post("/v1/chat", json={"question": "q"}, headers=member)
    assert r.status_code == 422, r.text
    assert "not allowed for this tenant" in r.json()["detail"]
    r = await client.post("/v1/chat/completions", json=openai_body, headers=member)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found"
    assert str(globex.tenant_id) not in r.text
    models = (await client.get("/v1/models", headers=member)).json()["data"]
    assert shared not in {m["id"] for m in models}


async def test_a_config_version_naming_a_withdrawn_model_is_not_restored(
    client, onboard, edge_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore is a change like any other: today's catalogue decides."""
    tenant = await onboard(tier="pro")
    admin = bearer(tenant.admin_token)
    retired = f"retired-{uuid.uuid4().hex[:8]}"
    monkeypatch.setitem(edge_settings.models, retired, edge_settings.models[LOCAL_MODEL])
    r = await client.put(
        "/v1/config", json={"model": retired, "allowed_models": [retired]}, headers=admin
    )
    assert r.json()["version"] == 2, r.text
    r = await client.put(
        "/v1/config", json={"model": LOCAL_MODEL, "allowed_models": [LOCAL_MODEL]}, headers=admin
    )
    assert r.json()["version"] == 3, r.text
    monkeypatch.delitem(edge_settings.models, retired)
    r = await client.post("/v1/config/versions/2/restore", headers=admin)
    assert r.status_code == 422, r.text
    assert retired in r.json()["detail"]
    assert (await client.get("/v1/config", headers=admin)).json()["version"] == 3


async def test_operators_see_each_models_owner_and_tiers(client, owners, operator_token) -> None:
    acme, _, acme_model, _ = owners
    entries = (await client.get("/v1/catalogue", headers=bearer(operator_token))).json()
    access = {entry["id"]: (entry["owner"], entry["tiers"]) for entry in entries}
    assert access[acme_model] == (str(acme.tenant_id), None)
    assert access[LOCAL_MODEL] == (None, None)


async def test_a_model_open_to_some_tiers_only_serves_their_tenants(
    client, onboard, operator_token, edge_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    costly = f"costly-{uuid.uuid4().hex[:8]}"
    spec = edge_settings.models[LOCAL_MODEL].model_copy(update={"tiers": [Tier.ENTERPRISE]})
    monkeypatch.setitem(edge_settings.models, costly, spec)
    allow = {"allowed_models": [LOCAL_MODEL, costly]}
    pro, enterprise = await onboard(tier="pro"), await onboard(tier="enterprise")
    r = await client.put("/v1/config", json=allow, headers=bearer(pro.admin_token))
    assert r.status_code == 422, r.text
    assert f"['{costly}'] are not available on the pro tier" in r.json()["detail"]
    r = await client.put("/v1/config", json=allow, headers=bearer(enterprise.admin_token))
    assert r.status_code == 200, r.text
    operator = bearer(operator_token)
    entries = (await client.get("/v1/catalogue", headers=operator)).json()
    assert {e["id"]: e["tiers"] for e in entries}[costly] == ["enterprise"]
    openai_body = {"model": costly, "messages": [{"role": "user", "content": "q"}]}
    member = bearer(enterprise.member_token)
    r = await client.post("/v1/chat/completions", json=openai_body, headers=member)
    assert r.status_code == 200, r.text

    # The operator closes it to the tenant's tier: refused from the next request.
    closed = spec.model_copy(update={"tiers": [Tier.PRO]})
    monkeypatch.setitem(edge_settings.models, costly, closed)
    r = await client.post("/v1/chat/completions", json=openai_body, headers=member)
    assert r.status_code == 404, r.text
    models = (await client.get("/v1/models", headers=member)).json()["data"]
    assert costly not in {m["id"] for m in models}
