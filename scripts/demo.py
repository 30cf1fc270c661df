"""The two-tenant demo, through the edge's HTTP API only, as an operator and frontends would.

Onboards two tenants whose documents overlap in topic (both have a refund policy, with
different terms; one document goes in as a PDF file), asks questions plain and streamed, searches
each tenant's documents with no model asked, repeats a paraphrase that the semantic cache
answers, asks a follow-up in a conversation, shows usage and cost, a budget refusal, and the
first lines of each tenant's audit CSV — and checks that neither tenant ever sees the other's
documents.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tenantry_common.testing.files import pdf_with_text

ROOT = Path(__file__).resolve().parent.parent
EDGE = os.environ.get("TENANTRY_EDGE_URL", "http://127.0.0.1:8000")
SECRET_FILE = Path(
    os.environ.get("TENANTRY_OPERATOR_SECRET_FILE", ROOT / "var" / "operator.secret")
)

TENANTS = {
    "Acme Outdoor": [
        (
            "Refund policy",
            "Acme Outdoor refund policy: you may return any item within 30 days of delivery for a "
            "full refund to the original payment method. Refunds are processed within 5 business "
            "days. Reference code ACME-REFUND-30.",
        ),
        (
            "Shipping",
            "Acme Outdoor ships tents, backpacks and stoves from Denver. Standard shipping is free "
            "above 50 dollars and takes 3 to 5 days.",
        ),
        (
            "Warranty",
            "Every Acme Outdoor tent carries a lifetime warranty against manufacturing defects.",
        ),
    ],
    "Globex Software": [
        (
            "Refund policy",
            "Globex Software refund policy: annual licences can be cancelled within 14 days. "
            "Globex gives store credit only, never cash refunds. Reference code GLOBEX-CREDIT-14.",
        ),
        (
            "Support hours",
            "Globex support answers tickets Monday to Friday, 9:00 to 17:00 Central European Time.",
        ),
        (
            "Licensing",
            "A Globex licence covers one named user on up to three devices.",
        ),
    ],
}
#: Documents the demo uploads as PDF files rather than as JSON text.
AS_PDF = {"Warranty"}
QUESTION = "What is the refund policy?"
PARAPHRASE = "What's the refund policy?"
FOLLOW_UP = "And how many days do I have for that?"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def fail(message: str) -> None:
    print(f"\033[31mdemo failed: {message}\033[0m", file=sys.stderr)
    sys.exit(1)


def token(http: httpx.Client, client_id: str, secret: str) -> str:
    r = http.post(
        "/v1/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    if r.status_code != 200:
        fail(f"token for {client_id}: {r.status_code} {r.text}")
    return str(r.json()["access_token"])


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@dataclass
class Tenant:
    name: str
    tenant_id: str
    admin_token: str
    document_ids: set[str] = field(default_factory=set)
    canary: str = ""


def onboard(http: httpx.Client, operator: str, name: str, tier: str = "pro") -> Tenant:
    r = http.post(
        "/v1/tenants",
        json={
            "name": name,
            "tier": tier,
            "admin_contact": f"admin@{name.split()[0].lower()}.example",
        },
        headers=auth(operator),
    )
    if r.status_code != 201:
        fail(f"onboarding {name}: {r.status_code} {r.text}")
    body = r.json()
    tenant_id = body["tenant_id"]
    deadline = time.monotonic() + 90
    status = body["status"]
    while status != "active":
        if time.monotonic() > deadline or status == "failed":
            fail(f"{name} did not become active (status {status})")
        time.sleep(0.5)
        status = http.get(f"/v1/tenants/{tenant_id}", headers=auth(operator)).json()["status"]
    print(f"  {name}: tenant {tenant_id} active (every service acknowledged)")
    tenant = Tenant(name, tenant_id, token(http, body["client_id"], body["client_secret"]))
    # Short answers: the local 135M model on two CPU cores writes ~20 tokens/s.
    r = http.put(
        "/v1/config",
        json={"max_tokens_per_request": 120, "custom_instructions": "Answer in two sentences."},
        headers=auth(tenant.admin_token),
    )
    if r.status_code != 200:
        fail(f"config of {name}: {r.status_code} {r.text}")
    return tenant


def wait_indexed(http: httpx.Client, tenant: Tenant, timeout_s: float = 180) -> None:
    """Wait until retrieval has indexed every document (its status in GET /v1/documents)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = http.get("/v1/documents", headers=auth(tenant.admin_token))
        documents = r.json()["documents"] if r.status_code == 200 else []
        indexed = {d["document_id"]: d["chunks"] for d in documents if d["status"] == "indexed"}
        if tenant.document_ids <= set(indexed):
            chunks = sum(indexed.values())
            print(f"  {tenant.name}: {len(indexed)} documents indexed ({chunks} chunks)")
            return
        if failed := [d["title"] for d in documents if d["status"] == "failed"]:
            fail(f"{tenant.name}: retrieval could not store {failed} (see var/log/retrieval.log)")
        if time.monotonic() > deadline:
            fail(f"{tenant.name}: documents not indexed within {timeout_s:.0f}s")
        time.sleep(1)


def ask(
    http: httpx.Client, tenant: Tenant, question: str, conversation_id: str | None = None
) -> dict[str, Any]:
    body = {"question": question, "conversation_id": conversation_id}
    r = http.post("/v1/chat", json=body, headers=auth(tenant.admin_token))
    if r.status_code != 200:
        fail(f"{tenant.name} chat: {r.status_code} {r.text}")
    return dict(r.json())


def ask_streamed(http: httpx.Client, tenant: Tenant, question: str) -> dict[str, Any]:
    final: dict[str, Any] = {}
    print("  streamed: ", end="", flush=True)
    with http.stream(
        "POST",
        "/v1/chat",
        json={"question": question, "stream": True},
        headers=auth(tenant.admin_token) | {"Accept": "text/event-stream"},
    ) as r:
        if r.status_code != 200:
            fail(f"{tenant.name} stream: {r.status_code} {r.read().decode()}")
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "delta":
                    print(data["delta"], end="", flush=True)
                elif event == "completed":
                    final = data
                elif event == "error":
                    fail(f"{tenant.name} stream error: {data}")
    print()
    return final


def show_answer(tenant: Tenant, label: str, body: dict[str, Any], others: list[Tenant]) -> None:
    cites = ", ".join(f"{c['title']} ({c['score']:.2f})" for c in body["citations"]) or "none"
    print(f"  {label}: {body['answer'].strip()[:300]!r}")
    print(f"    cached={body['cached']} usage={body['usage']} citations: {cites}")
    for c in body["citations"]:
        if c["document_id"] not in tenant.document_ids:
            fail(f"{tenant.name} was cited a document that is not its own: {c['document_id']}")
    for other in others:
        if other.canary in body["answer"]:
            fail(f"{tenant.name}'s answer carries {other.name}'s reference code")


def main() -> None:
    if not SECRET_FILE.exists():
        fail(f"{SECRET_FILE} is missing: run `make up` first")
    http = httpx.Client(base_url=EDGE, timeout=120)
    operator = token(http, "operator", SECRET_FILE.read_text().strip())

    banner("Onboarding two tenants as an operator (POST /v1/tenants)")
    tenants = [onboard(http, operator, name) for name in TENANTS]

    banner("Each tenant's admin ingests its documents (POST /v1/documents)")
    for tenant, docs in zip(tenants, TENANTS.values(), strict=True):
        for title, text in docs:
            if title in AS_PDF:  # uploaded as a file: the edge reads the PDF's text
                r = http.post(
                    "/v1/documents",
                    files={
                        "file": (f"{title.lower()}.pdf", pdf_with_text(text), "application/pdf")
                    },
                    data={"title": title},
                    headers=auth(tenant.admin_token),
                )
                print(f"  {tenant.name}: {title} uploaded as a PDF file → {r.status_code}")
            else:
                r = http.post(
                    "/v1/documents",
                    json={"title": title, "text": text},
                    headers=auth(tenant.admin_token),
                )
            if r.status_code != 202:
                fail(f"document {title}: {r.status_code} {r.text}")
            tenant.document_ids.add(r.json()["document_id"])
            if "Reference code" in text:
                tenant.canary = text.rsplit("Reference code ", 1)[1].rstrip(".")
        print(f"  {tenant.name}: {len(docs)} documents accepted")
    for tenant in tenants:
        wait_indexed(http, tenant)  # ingestion is asynchronous: chunk, embed, index

    for tenant in tenants:
        others = [t for t in tenants if t is not tenant]
        banner(f"{tenant.name}: questions through the edge (POST /v1/chat)")
        body = ask(http, tenant, QUESTION)
        show_answer(tenant, "plain", body, others)
        r = http.post(
            "/v1/feedback",
            json={"request_id": body["request_id"], "value": 1, "comment": "clear"},
            headers=auth(tenant.admin_token),
        )
        if r.status_code != 201:
            fail(f"{tenant.name}'s rating: {r.status_code} {r.text[:300]}")
        print("    → rated by the user (POST /v1/feedback)")
        streamed = ask_streamed(http, tenant, "What do you ship, and how long does it take?")
        if streamed:
            show_answer(tenant, "final", streamed, others)
        body = ask(http, tenant, PARAPHRASE)
        show_answer(tenant, "paraphrase", body, others)
        print(f"    → served from the semantic cache: {body['cached']}")
        conversation = str(uuid.uuid4())
        ask(http, tenant, QUESTION, conversation)
        body = ask(http, tenant, FOLLOW_UP, conversation)
        show_answer(tenant, "follow-up in a conversation", body, others)
        r = http.get(f"/v1/conversations/{conversation}", headers=auth(tenant.admin_token))
        if r.status_code != 200 or len(r.json()["messages"]) != 4:
            fail(f"{tenant.name}'s conversation was not kept: {r.status_code} {r.text[:300]}")
        print(
            "    → sent with the conversation's first turn; 4 messages kept (GET /v1/conversations)"
        )
        r = http.post(
            "/v1/search", json={"query": QUESTION, "top_k": 2}, headers=auth(tenant.admin_token)
        )
        if r.status_code != 200:
            fail(f"{tenant.name}'s search: {r.status_code} {r.text[:300]}")
        print("  search, no model asked (POST /v1/search):")
        for hit in r.json()["results"]:
            print(f"    {hit['title']} ({hit['score']:.2f}): {hit['text'][:90]!r}")
            if hit["document_id"] not in tenant.document_ids:
                fail(f"{tenant.name}'s search found a document that is not its own")

    time.sleep(2)  # usage and audit are consumed asynchronously
    for tenant in tenants:
        banner(f"{tenant.name}: usage and cost (GET /v1/usage)")
        r = http.get("/v1/usage", params={"period": "day"}, headers=auth(tenant.admin_token))
        print(f"  {r.status_code} {json.dumps(r.json(), indent=None)[:600]}")

    banner("A tenant on a tiny budget is refused (429)")
    tiny = onboard(http, operator, f"Tiny Budget {uuid.uuid4().hex[:4]}", tier="free")
    r = http.put("/v1/config", json={"daily_token_budget": 10}, headers=auth(tiny.admin_token))
    if r.status_code != 200:
        fail(f"config update: {r.status_code} {r.text}")
    r = http.post("/v1/chat", json={"question": QUESTION}, headers=auth(tiny.admin_token))
    print(f"  {r.status_code} Retry-After={r.headers.get('retry-after')} {r.text[:300]}")
    if r.status_code != 429:
        fail("the tiny budget was not enforced")

    for tenant in tenants:
        banner(f"{tenant.name}: first lines of its audit CSV (GET /v1/audit/export)")
        r = http.get("/v1/audit/export", params={"format": "csv"}, headers=auth(tenant.admin_token))
        lines = r.text.splitlines()
        for line in lines[:6]:
            print(f"  {line[:160]}")
        print(f"  … {len(lines) - 1} records, all of tenant {tenant.tenant_id}")
        if any(other.tenant_id in r.text for other in tenants if other is not tenant):
            fail(f"{tenant.name}'s audit export names another tenant")

    banner("Done: neither tenant saw the other's documents. The stack is still running.")
    print(f"  Try it: edge {EDGE} (docs at {EDGE}/docs). Operator secret: {SECRET_FILE}")
    print("  Stop everything with `make down`.")


if __name__ == "__main__":
    main()
