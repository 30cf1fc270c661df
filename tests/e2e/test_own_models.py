"""A tenant's own (fine-tuned) model, end to end: the operator catalogues it for its owner (a
rolling restart of the services that read the catalogue, as a deployment would do it); the owner
turns fine-tuning on, chats with it through the OpenAI SDK and is billed for it; another tenant
can neither allow it nor call it nor learn that it exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.harness import System, client_token, onboard, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: The services that read the model catalogue (the edge, inference, metering for prices).
READERS = ("metering", "inference", "auth")
OWN_MODEL = "ft-smollm2-acme"


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _enterprise_tenant(http: httpx.Client, operator: str, name: str) -> dict[str, str]:
    tenant_id, admin = onboard(http, operator, name=name, tier="enterprise")
    return {"tenant_id": tenant_id, "admin": admin}


def _catalogue_for_owner(system: System, owner: str) -> None:
    """Add the owner's model (the local one under another name) and roll the readers."""
    for name in READERS:
        service = system.services[name]
        catalogue: dict[str, Any] = json.loads(service.env["TENANTRY_MODELS"])
        catalogue[OWN_MODEL] = catalogue["smollm2-135m"] | {"owner": owner}
        service.env["TENANTRY_MODELS"] = json.dumps(catalogue)
        service.stop()
        service.start(wait=False)
    for name in READERS:
        system.services[name].wait_ready()


def test_a_tenants_own_model_serves_it_alone(system: System, operator_secret_file: Path) -> None:
    http = httpx.Client(base_url=system.edge.url, timeout=120)
    operator = client_token(http, "operator", operator_secret_file.read_text())
    acme = _enterprise_tenant(http, operator, "Acme Fine-Tuned")
    globex = _enterprise_tenant(http, operator, "Globex Curious")
    _catalogue_for_owner(system, acme["tenant_id"])

    entries = http.get("/v1/catalogue", headers=_h(operator)).json()
    assert {e["id"]: e["owner"] for e in entries}[OWN_MODEL] == acme["tenant_id"]

    features = {"rag": False, "streaming": True, "semantic_cache": False, "fine_tuning": True}
    allow = {
        "model": OWN_MODEL,
        "allowed_models": ["smollm2-135m", OWN_MODEL],
        "max_tokens_per_request": 16,
        "features": features,
    }
    # Another tenant: not in its catalogue, and the refusal lists only what it may use.
    r = http.put("/v1/config", json=allow, headers=_h(globex["admin"]))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].count(OWN_MODEL) == 1  # the name it sent, nothing more
    assert acme["tenant_id"] not in r.text
    outsider = openai.OpenAI(
        base_url=f"{system.edge.url}/v1", api_key=globex["admin"], max_retries=0
    )
    assert OWN_MODEL not in {m.id for m in outsider.models.list()}
    with pytest.raises(openai.NotFoundError) as refused:
        outsider.chat.completions.create(
            model=OWN_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert refused.value.code == "model_not_found"

    # The owner: fine-tuning on, its own model as its default, answered by the model server.
    r = http.put("/v1/config", json=allow, headers=_h(acme["admin"]))
    assert r.status_code == 200, r.text
    owner = openai.OpenAI(base_url=f"{system.edge.url}/v1", api_key=acme["admin"], max_retries=0)
    assert [m.id for m in owner.models.list()] == [OWN_MODEL, "smollm2-135m"]
    answer = owner.chat.completions.create(
        model=OWN_MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert answer.model == OWN_MODEL
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0

    def billed() -> list[dict[str, Any]]:
        r = http.get("/v1/usage", params={"period": "day"}, headers=_h(acme["admin"]))
        assert r.status_code == 200, r.text
        return [line for line in r.json()["lines"] if line["model"] == OWN_MODEL]

    wait_until(billed, 60, "the owner's usage of its own model")
    [line] = billed()
    assert line["requests"] == 1
    assert line["cost_micros"] > 0
    assert line["unpriced_requests"] == 0
