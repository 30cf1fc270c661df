"""Isolation through every read surface: many tenants with near-identical documents, each with
a unique canary; every tenant probes every surface (conversations under one shared id among
them); no canary or id of another tenant crosses."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import System, client_token, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

N_TENANTS = 4


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tenants(system: System, operator_secret_file: Path) -> list[dict[str, str]]:
    http = httpx.Client(base_url=system.edge.url, timeout=120)
    operator = client_token(http, "operator", operator_secret_file.read_text())
    made = []
    for i in range(N_TENANTS):
        canary = f"CANARY-{uuid.uuid4().hex[:12].upper()}"
        r = http.post(
            "/v1/tenants",
            json={"name": f"Iso {i} {canary[-4:]}", "tier": "pro", "admin_contact": "a@iso.test"},
            headers=_h(operator),
        )
        assert r.status_code == 201, r.text
        body = r.json()
        made.append(
            {
                "tenant_id": body["tenant_id"],
                "client_id": body["client_id"],
                "client_secret": body["client_secret"],
                "canary": canary,
            }
        )
    deadline = time.monotonic() + 120
    for t in made:
        while (
            http.get(f"/v1/tenants/{t['tenant_id']}", headers=_h(operator)).json()["status"]
            != "active"
        ):
            assert time.monotonic() < deadline, "tenant not active in time"
            time.sleep(0.5)
        t["token"] = client_token(http, t.pop("client_id"), t.pop("client_secret"))
    for t in made:
        # Near-identical documents: only the canary differs.
        text = (
            "Refund policy. Items may be returned within 30 days for a full refund. "
            f"The secret refund approval code is {t['canary']}."
        )
        r = http.post(
            "/v1/documents", json={"title": "Refund policy", "text": text}, headers=_h(t["token"])
        )
        assert r.status_code == 202, r.text
        t["document_id"] = r.json()["document_id"]
        # Its config's version 2 carries the canary too (what the config versions show).
        r = http.put(
            "/v1/config",
            json={"custom_instructions": f"Our reference is {t['canary']}."},
            headers=_h(t["token"]),
        )
        assert r.json()["version"] == 2, r.text
    return made


def _ask(http: httpx.Client, token: str, question: str) -> httpx.Response:
    return http.post("/v1/chat", json={"question": question}, headers=_h(token))


def test_no_canary_crosses_any_read_surface(system: System, tenants: list[dict[str, str]]) -> None:
    http = httpx.Client(base_url=system.edge.url, timeout=180)
    question = "What is the secret refund approval code?"
    # Warm: wait until each tenant's own document is retrievable (its own citation appears).
    for t in tenants:
        deadline = time.monotonic() + 90
        while True:
            r = _ask(http, t["token"], question)
            assert r.status_code == 200, r.text
            if any(c["document_id"] == t["document_id"] for c in r.json()["citations"]):
                break
            assert time.monotonic() < deadline, "own document never retrieved"
            time.sleep(2)
    # Every tenant talks in a conversation with the same id, and tells it its canary.
    conversation = str(uuid.uuid4())
    for t in tenants:
        r = http.post(
            "/v1/chat",
            json={
                "question": f"My reference is {t['canary']}. How long is the refund window?",
                "conversation_id": conversation,
            },
            headers=_h(t["token"]),
        )
        assert r.status_code == 200, r.text
        # And rates the answer, with its canary in the comment.
        rated = http.post(
            "/v1/feedback",
            json={"request_id": r.json()["request_id"], "value": 7, "comment": t["canary"]},
            headers=_h(t["token"]),
        )
        assert rated.status_code == 201, rated.text
    for t in tenants:
        others = [o for o in tenants if o is not t]
        # Answers and citations (asked twice: the second may come from the cache).
        for _ in range(2):
            body = _ask(http, t["token"], question).json()
            for c in body["citations"]:
                assert c["document_id"] == t["document_id"]
            for o in others:
                assert o["canary"] not in body["answer"]
        surfaces = {
            "documents": http.get("/v1/documents", headers=_h(t["token"])),
            "config": http.get("/v1/config", headers=_h(t["token"])),
            "config versions": http.get("/v1/config/versions", headers=_h(t["token"])),
            "config version 2": http.get("/v1/config/versions/2", headers=_h(t["token"])),
            "search": http.post(
                "/v1/search", json={"query": question, "top_k": 10}, headers=_h(t["token"])
            ),
            "search in its document": http.post(
                "/v1/search",
                json={"query": question, "document_ids": [t["document_id"]]},
                headers=_h(t["token"]),
            ),
            "usage": http.get("/v1/usage", params={"period": "day"}, headers=_h(t["token"])),
            "audit": http.get(
                "/v1/audit/export", params={"format": "jsonl"}, headers=_h(t["token"])
            ),
            "conversation": http.get(f"/v1/conversations/{conversation}", headers=_h(t["token"])),
            "feedback": http.get("/v1/feedback", headers=_h(t["token"])),
        }
        assert t["canary"] in surfaces["conversation"].text  # its own turn is there
        assert t["canary"] in surfaces["config version 2"].text  # its own change is there
        assert t["canary"] in surfaces["search"].text  # its own document is found
        assert t["canary"] in surfaces["search in its document"].text
        assert t["canary"] in surfaces["feedback"].text  # its own rating is there
        for name, response in surfaces.items():
            assert response.status_code == 200, (name, response.text)
            for o in others:
                assert o["canary"] not in response.text, name
                assert o["tenant_id"] not in response.text, name
                assert o["document_id"] not in response.text, name
        # Direct access to another tenant's resources is refused.
        for o in others:
            assert http.get(
                f"/v1/tenants/{o['tenant_id']}", headers=_h(t["token"])
            ).status_code in (403, 404)
            assert http.delete(
                f"/v1/documents/{o['document_id']}", headers=_h(t["token"])
            ).status_code in (403, 404)
            # Another tenant's document names nothing to limit a question or a search to.
            for path, body in (
                ("/v1/chat", {"question": question, "document_ids": [o["document_id"]]}),
                ("/v1/search", {"query": question, "document_ids": [o["document_id"]]}),
            ):
                limited = http.post(path, json=body, headers=_h(t["token"]))
                assert limited.status_code == 404, limited.text
                assert o["canary"] not in limited.text
            forwarded = http.get(f"/v1/tenants/{o['tenant_id']}/usage", headers=_h(t["token"]))
            assert forwarded.status_code == 403
            exported = http.get(
                f"/v1/tenants/{o['tenant_id']}/audit/export", headers=_h(t["token"])
            )
            assert exported.status_code == 403
    # The other tenants' documents are still there (nobody could delete them).
    for t in tenants:
        listed = http.get("/v1/documents", headers=_h(t["token"])).json()
        assert t["document_id"] in {d["document_id"] for d in listed["documents"]}


def test_operators_see_every_tenants_usage_and_tenants_do_not(
    system: System, tenants: list[dict[str, str]], operator_secret_file: Path
) -> None:
    """The operators' usage report (metering's, through the edge) lists each tenant that used
    the platform, by name; a tenant admin's token is refused it."""
    http = httpx.Client(base_url=system.edge.url, timeout=180)
    for t in tenants:
        assert _ask(http, t["token"], "How long is the refund window?").status_code == 200
        assert http.get("/v1/usage/tenants", headers=_h(t["token"])).status_code == 403
    operator = client_token(http, "operator", operator_secret_file.read_text())

    def report() -> dict[str, dict[str, Any]]:
        r = http.get("/v1/usage/tenants", params={"limit": 10_000}, headers=_h(operator))
        assert r.status_code == 200, r.text
        return {line["tenant_id"]: line for line in r.json()["tenants"]}

    wait_until(lambda: all(t["tenant_id"] in report() for t in tenants), 60, "every tenant listed")
    listed = report()
    for t in tenants:
        line = listed[t["tenant_id"]]
        assert line["tenant_name"].endswith(t["canary"][-4:])
        assert line["tier"] == "pro"
        assert line["requests"] >= 1
