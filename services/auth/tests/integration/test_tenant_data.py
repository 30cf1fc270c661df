"""Documents, configuration, clients and offboarding through the edge's API."""

from __future__ import annotations

import asyncio
import io
import uuid

import docx
import pytest
from auth_support import bearer, get_token
from pypdf import PdfReader, PdfWriter
from tenantry_auth.extract import DOCX, PDF
from tenantry_common.events import (
    AuditRecorded,
    AuditType,
    DocumentDeleted,
    DocumentSubmitted,
    TenantConfigChanged,
    TenantOffboarded,
)
from tenantry_common.testing.files import pdf_with_text

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="free")


async def test_document_json_submit_list_delete_publishes_events(
    client, tenant, topics_seen
) -> None:
    r = await client.post(
        "/v1/documents",
        json={"title": "Guide", "text": "hello world"},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 202, r.text
    doc_id = uuid.UUID(r.json()["document_id"])
    [event] = await topics_seen.wait_for(DocumentSubmitted, document_id=doc_id)
    assert event.tenant_id == tenant.tenant_id
    assert event.text == "hello world"
    listed = (await client.get("/v1/documents", headers=bearer(tenant.admin_token))).json()
    assert [d["document_id"] for d in listed["documents"]] == [str(doc_id)]
    assert listed["documents"][0]["size_bytes"] == 11
    r = await client.delete(f"/v1/documents/{doc_id}", headers=bearer(tenant.admin_token))
    assert r.status_code == 202
    await topics_seen.wait_for(DocumentDeleted, document_id=doc_id)
    assert (await client.get("/v1/documents", headers=bearer(tenant.admin_token))).json()[
        "total"
    ] == 0
    assert (
        await client.delete(f"/v1/documents/{doc_id}", headers=bearer(tenant.admin_token))
    ).status_code == 404


async def _submit(client, admin: dict[str, str], *titles: str) -> list[str]:
    """Submit one small document per title; their ids."""
    ids = []
    for title in titles:
        r = await client.post("/v1/documents", json={"title": title, "text": "hi"}, headers=admin)
        assert r.status_code == 202, r.text
        ids.append(r.json()["document_id"])
    return ids


async def test_a_document_shows_as_indexed_once_retrieval_says_so(
    client, onboard, producer
) -> None:
    """DocumentIndexed (from retrieval) turns a submitted document indexed, with its chunks;
    only the named tenant's document, never a deleted one, and a redelivery changes nothing."""
    from auth_support import send
    from tenantry_common.events import DocumentIndexed
    from tenantry_common.topics import DOCUMENT_STATUS

    owner, other = await onboard(tier="free"), await onboard(tier="free")
    admin = bearer(owner.admin_token)
    guide, gone = await _submit(client, admin, "Guide", "Gone")
    r = await client.get(f"/v1/documents/{guide}", headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["chunks"], r.json()["indexed_at"]) == (
        "submitted",
        None,
        None,
    )
    assert (await client.delete(f"/v1/documents/{gone}", headers=admin)).status_code == 202

    def indexed(tenant_id: uuid.UUID, document_id: str, chunks: int) -> DocumentIndexed:
        return DocumentIndexed(
            tenant_id=tenant_id, document_id=uuid.UUID(document_id), chunks=chunks, corpus_version=1
        )

    async def once_indexed(document_id: str, token: str) -> dict[str, object]:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            r = await client.get(f"/v1/documents/{document_id}", headers=bearer(token))
            if r.json()["status"] == "indexed":
                return dict(r.json())
            assert asyncio.get_running_loop().time() < deadline, r.text
            await asyncio.sleep(0.1)

    # Another tenant's event naming this document id is scoped to that tenant: once its later
    # event (same key, same partition, so handled after it) shows, this document is untouched.
    r = await client.post(
        "/v1/documents", json={"title": "Theirs", "text": "hi"}, headers=bearer(other.admin_token)
    )
    theirs = r.json()["document_id"]
    await send(producer, DOCUMENT_STATUS.name, indexed(other.tenant_id, guide, 9))
    await send(producer, DOCUMENT_STATUS.name, indexed(other.tenant_id, theirs, 1))
    await once_indexed(theirs, other.admin_token)
    assert (await client.get(f"/v1/documents/{guide}", headers=admin)).json()["status"] == (
        "submitted"
    )

    for event in (indexed(owner.tenant_id, gone, 1), indexed(owner.tenant_id, guide, 3)):
        await send(producer, DOCUMENT_STATUS.name, event)
        await send(producer, DOCUMENT_STATUS.name, event)  # redelivered
    body = await once_indexed(guide, owner.admin_token)
    assert body["chunks"] == 3
    assert body["indexed_at"] >= body["submitted_at"]
    listed = (await client.get("/v1/documents", headers=admin)).json()
    assert [(d["document_id"], d["status"]) for d in listed["documents"]] == [(guide, "indexed")]
    assert (await client.get(f"/v1/documents/{gone}", headers=admin)).status_code == 404


async def test_a_document_retrieval_gave_up_on_shows_as_failed_until_it_is_stored(
    client, onboard, producer, topics_seen
) -> None:
    """A DocumentSubmitted on documents.v1.dlq (retrieval dead-lettered it) turns its document
    failed: only the named tenant's, never from a record that cannot be read (which the edge
    leaves alone and goes on past), and a re-published document that retrieval then stores
    turns indexed, which a late copy of the dead letter does not undo."""
    from auth_support import send
    from tenantry_common.events import DocumentIndexed
    from tenantry_common.topics import DOCUMENT_STATUS, DOCUMENTS

    owner, other = await onboard(tier="free"), await onboard(tier="free")
    admin = bearer(owner.admin_token)
    broken, fine = map(uuid.UUID, await _submit(client, admin, "Broken", "Fine"))
    [submitted] = await topics_seen.wait_for(DocumentSubmitted, document_id=broken)

    async def dead_letter(raw: bytes, tenant_id: uuid.UUID) -> None:
        await producer.send_and_wait(
            DOCUMENTS.dlq,
            raw,
            key=str(tenant_id).encode(),
            headers=[("x-dlq-error-type", b"ValidationError")],
        )

    async def status_of(document_id: uuid.UUID, wanted: str) -> dict[str, object]:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            r = await client.get(f"/v1/documents/{document_id}", headers=admin)
            if r.json()["status"] == wanted:
                return dict(r.json())
            assert asyncio.get_running_loop().time() < deadline, r.text
            await asyncio.sleep(0.1)

    # Unreadable records, another tenant naming this document, a failed deletion: no change.
    await dead_letter(b"\x00 not json", owner.tenant_id)
    await dead_letter(b'{"event_type": "DocumentSubmitted"}', owner.tenant_id)
    foreign = submitted.model_copy(update={"tenant_id": other.tenant_id})
    await dead_letter(foreign.model_dump_json().encode(), other.tenant_id)
    deleted = DocumentDeleted(tenant_id=owner.tenant_id, document_id=fine, deleted_by="admin")
    await dead_letter(deleted.model_dump_json().encode(), owner.tenant_id)
    # Then this tenant's own (same key, same partition: handled after the ones above).
    await dead_letter(submitted.model_dump_json().encode(), owner.tenant_id)
    body = await status_of(broken, "failed")
    assert body["failed_at"] is not None
    assert (body["chunks"], body["indexed_at"]) == (None, None)
    assert (await client.get(f"/v1/documents/{fine}", headers=admin)).json()["status"] == (
        "submitted"
    )
    listed = (await client.get("/v1/documents", headers=admin)).json()
    assert {d["document_id"]: d["status"] for d in listed["documents"]} == {
        str(broken): "failed",
        str(fine): "submitted",
    }
    for status, expected in [
        ("failed", [str(broken)]),
        ("submitted", [str(fine)]),
        ("indexed", []),
    ]:
        r = await client.get("/v1/documents", params={"status": status}, headers=admin)
        assert r.status_code == 200, r.text
        assert [d["document_id"] for d in r.json()["documents"]] == expected, status
        assert r.json()["total"] == len(expected)
    r = await client.get("/v1/documents", params={"status": "deleted"}, headers=admin)
    assert r.status_code == 422, r.text

    # Operators re-publish it and retrieval stores it; a late copy of the dead letter after that.
    indexed = DocumentIndexed(
        tenant_id=owner.tenant_id, document_id=broken, chunks=2, corpus_version=1
    )
    await send(producer, DOCUMENT_STATUS.name, indexed)
    body = await status_of(broken, "indexed")
    assert (body["chunks"], body["failed_at"]) == (2, None)
    await dead_letter(submitted.model_dump_json().encode(), owner.tenant_id)
    marker = submitted.model_copy(update={"document_id": fine})
    await dead_letter(marker.model_dump_json().encode(), owner.tenant_id)
    await status_of(fine, "failed")  # handled after the late copy
    assert (await client.get(f"/v1/documents/{broken}", headers=admin)).json()["status"] == (
        "indexed"
    )


async def test_document_file_upload_is_accepted(client, tenant, topics_seen) -> None:
    r = await client.post(
        "/v1/documents",
        files={"file": ("notes.md", b"# Notes\nsome text", "text/markdown")},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 202, r.text
    [event] = await topics_seen.wait_for(
        DocumentSubmitted, document_id=uuid.UUID(r.json()["document_id"])
    )
    assert event.title == "notes.md"
    assert event.content_type == "text/markdown"


async def test_oversized_documents_are_413(client, tenant, edge_settings) -> None:
    big = "x" * (edge_settings.max_document_bytes + 1)
    r = await client.post(
        "/v1/documents",
        files={"file": ("big.txt", big.encode(), "text/plain")},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 413
    r = await client.post(
        "/v1/documents", json={"title": "t", "text": big}, headers=bearer(tenant.admin_token)
    )
    assert r.status_code == 413


async def test_a_document_too_large_once_json_encoded_is_413_and_nothing_is_stored(
    client, tenant, edge_settings
) -> None:
    """Within max_document_bytes as text, but quotes and control characters are escaped in the
    event's JSON (up to 6 bytes each), past the broker's message limit: 413, not a 503."""
    escaped = ('"\\\x01' * (edge_settings.max_document_bytes // 3))[
        : edge_settings.max_document_bytes
    ]
    r = await client.post(
        "/v1/documents",
        files={"file": ("escapes.txt", escaped.encode(), "text/plain")},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 413, r.text
    assert "JSON-encoded" in r.json()["detail"]
    listed = (await client.get("/v1/documents", headers=bearer(tenant.admin_token))).json()
    assert listed["documents"] == []


def _docx(*paragraphs: str) -> bytes:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


async def test_pdf_and_word_uploads_are_stored_as_their_text(client, tenant, topics_seen) -> None:
    """A PDF's or .docx file's text is read at the edge (in a child process) and submitted as
    the document's text; the file type comes from its first bytes, not its name."""
    files = [
        ("policy.pdf", pdf_with_text("Refund policy (Acme)", "Returns within 30 days."), PDF),
        ("shipping.docx", _docx("Shipping policy", "Orders ship in 3 days."), DOCX),
        # A PDF named and declared as text is still read as a PDF.
        ("notes.txt", pdf_with_text("Named like text"), PDF),
    ]
    for name, data, kind in files:
        r = await client.post(
            "/v1/documents",
            files={"file": (name, data, "text/plain")},
            headers=bearer(tenant.admin_token),
        )
        assert r.status_code == 202, r.text
        [event] = await topics_seen.wait_for(
            DocumentSubmitted, document_id=uuid.UUID(r.json()["document_id"])
        )
        assert (event.title, event.content_type) == (name, kind)
        if kind == PDF and name == "policy.pdf":
            assert event.text == "Refund policy (Acme)\nReturns within 30 days."
        elif kind == DOCX:
            assert event.text == "Shipping policy\nOrders ship in 3 days."
        else:
            assert event.text == "Named like text"
    listed = await client.get("/v1/documents", headers=bearer(tenant.admin_token))
    assert {d["content_type"] for d in listed.json()["documents"]} == {PDF, DOCX}


async def test_unreadable_pdf_and_word_files_are_422s_saying_why(
    client, tenant, edge_settings
) -> None:
    blank, encrypted = io.BytesIO(), io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.write(blank)
    locked = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_with_text("Secret terms"))))
    locked.encrypt("password")
    locked.write(encrypted)
    refused = [
        (blank.getvalue(), "no text could be read"),
        (encrypted.getvalue(), "encrypted"),
        (b"%PDF-1.7\nnot really a PDF", "could not be read as a PDF"),
        (b"PK\x03\x04not a zip", "could not be read as a Word document"),
    ]
    for data, reason in refused:
        r = await client.post(
            "/v1/documents",
            files={"file": ("upload", data, "application/octet-stream")},
            headers=bearer(tenant.admin_token),
        )
        assert r.status_code == 422, r.text
        assert reason in r.json()["detail"]
    padded = pdf_with_text("big") + b"%" * edge_settings.max_upload_bytes  # a comment, to size
    r = await client.post(
        "/v1/documents",
        files={"file": ("big.pdf", padded, "application/pdf")},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 413, r.text
    listed = await client.get("/v1/documents", headers=bearer(tenant.admin_token))
    assert listed.json()["documents"] == [], "nothing was stored"


async def test_binary_upload_is_415(client, tenant) -> None:
    r = await client.post(
        "/v1/documents",
        files={"file": ("a.bin", b"\xff\xfe\x00\x01", "application/octet-stream")},
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 415
    assert "PDF, Word (.docx) and UTF-8 text" in r.json()["detail"]


async def test_members_cannot_manage_documents_or_config(client, tenant) -> None:
    assert (
        await client.get("/v1/documents", headers=bearer(tenant.member_token))
    ).status_code == 403
    assert (await client.get("/v1/config", headers=bearer(tenant.member_token))).status_code == 403


async def test_config_update_is_versioned_published_and_audited(
    client, tenant, topics_seen
) -> None:
    r = await client.put(
        "/v1/config",
        json={
            "temperature": 0.5,
            "custom_instructions": "Be kind.",
            "system_prompt_template": "{{tenant_name}} on {{ tier }}: {{custom_instructions}}",
        },
        headers=bearer(tenant.admin_token),
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    [changed] = await topics_seen.wait_for(
        TenantConfigChanged, tenant_id=tenant.tenant_id, version=2
    )
    assert changed.config.temperature == 0.5
    audits = await topics_seen.wait_for(
        AuditRecorded, tenant_id=tenant.tenant_id, audit_type=AuditType.CONFIGURATION_CHANGE
    )
    assert audits[-1].details["version"] == 2
    assert "temperature" in str(audits[-1].details["changed"])
    stale = await client.put(
        "/v1/config",
        json={"temperature": 0.1, "expected_version": 1},
        headers=bearer(tenant.admin_token),
    )
    assert stale.status_code == 409


async def test_concurrent_config_changes_get_distinct_versions_in_commit_order(
    client, tenant, topics_seen
) -> None:
    temperatures = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    responses = await asyncio.gather(
        *(
            client.put("/v1/config", json={"temperature": t}, headers=bearer(tenant.admin_token))
            for t in temperatures
        )
    )
    assert [r.status_code for r in responses] == [200] * len(temperatures), [
        r.text for r in responses
    ]
    versions = sorted(r.json()["version"] for r in responses)
    assert versions == list(range(2, 2 + len(temperatures))), "one version each, none shared"
    published = await topics_seen.wait_for(
        TenantConfigChanged, tenant_id=tenant.tenant_id, count=1 + len(temperatures)
    )
    # Every version was published once, in order, and the last record is the current config.
    assert [e.version for e in published] == [1, *versions]
    current = (await client.get("/v1/config", headers=bearer(tenant.admin_token))).json()
    assert published[-1].config.temperature == current["config"]["temperature"]


async def test_config_versions_show_who_changed_what_and_an_earlier_one_can_be_restored(
    client, tenant, topics_seen
) -> None:
    admin = bearer(tenant.admin_token)
    first = (await client.get("/v1/config", headers=admin)).json()["config"]
    for change in ({"temperature": 0.5, "custom_instructions": "Be kind."}, {"temperature": 0.9}):
        assert (await client.put("/v1/config", json=change, headers=admin)).status_code == 200

    listed = (await client.get("/v1/config/versions", headers=admin)).json()
    assert [(v["version"], v["changed"]) for v in listed["versions"]] == [
        (3, ["temperature"]),
        (2, ["custom_instructions", "temperature"]),
        (1, []),
    ]
    assert listed["versions"][0]["changed_by"] == listed["versions"][1]["changed_by"]
    assert listed["next_before"] is None
    # Paged: what a version changed is known on a page that does not show the one before it.
    page = (await client.get("/v1/config/versions?limit=1&before=3", headers=admin)).json()
    assert [(v["version"], v["changed"]) for v in page["versions"]] == [
        (2, ["custom_instructions", "temperature"])
    ]
    assert page["next_before"] == 2

    second = (await client.get("/v1/config/versions/2", headers=admin)).json()
    assert (second["config"]["temperature"], second["config"]["custom_instructions"]) == (
        0.5,
        "Be kind.",
    )
    missing = await client.get("/v1/config/versions/9", headers=admin)
    assert missing.status_code == 404
    assert "no configuration version 9" in missing.json()["detail"]
    # Numbers past Postgres's integer are refused as input, not failed as a query.
    assert (await client.get("/v1/config/versions/2147483646", headers=admin)).status_code == 404
    for path in ("/v1/config/versions/2147483647", "/v1/config/versions?before=9999999999"):
        assert (await client.get(path, headers=admin)).status_code == 422, path

    stale = await client.post(
        "/v1/config/versions/1/restore", json={"expected_version": 2}, headers=admin
    )
    assert stale.status_code == 409, stale.text
    r = await client.post("/v1/config/versions/1/restore", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"version": 4, "config": first}
    assert (await client.get("/v1/config", headers=admin)).json() == r.json()
    [published] = await topics_seen.wait_for(
        TenantConfigChanged, tenant_id=tenant.tenant_id, version=4
    )
    assert published.config.temperature == first["temperature"]
    # Waited for by action: the config changes before it were audited (and seen) earlier.
    restored = await topics_seen.wait_for(
        AuditRecorded, tenant_id=tenant.tenant_id, action="restore_config"
    )
    assert {a.audit_type for a in restored} == {AuditType.CONFIGURATION_CHANGE}
    assert [(a.details["version"], a.details["restored_from"]) for a in restored] == [(4, 1)]
    assert restored[0].details["changed"] == "custom_instructions,temperature"


async def test_an_operator_moves_a_tenant_to_another_plan_and_renames_it(
    client, tenant, operator_token, topics_seen
) -> None:
    admin, operator = bearer(tenant.admin_token), bearer(operator_token)
    path = f"/v1/tenants/{tenant.tenant_id}"
    r = await client.put("/v1/config", json={"rate_limit_per_minute": 10}, headers=admin)
    assert r.status_code == 200, r.text
    r = await client.put("/v1/config", json={"daily_token_budget": 400_000}, headers=admin)
    assert r.status_code == 422  # above the free tier's cap
    assert (await client.patch(path, json={"tier": "pro"}, headers=admin)).status_code == 403

    r = await client.patch(path, json={"tier": "pro"}, headers=operator)
    assert r.status_code == 200, r.text
    moved = r.json()
    assert (moved["tier"], moved["config_version"]) == ("pro", 3)
    assert moved["changed"] == [
        "daily_token_budget",
        "max_tokens_per_request",
        "monthly_spend_budget_micros",
        "tier",
    ]
    config = (await client.get("/v1/config", headers=admin)).json()
    assert config["version"] == 3
    assert (config["config"]["tier"], config["config"]["daily_token_budget"]) == ("pro", 500_000)
    assert config["config"]["rate_limit_per_minute"] == 10  # the tenant's own, lower limit
    [published] = await topics_seen.wait_for(
        TenantConfigChanged, tenant_id=tenant.tenant_id, version=3
    )
    assert published.config.tier == "pro"
    # Waited for by action: the tenant's own config change before it was audited earlier.
    audits = await topics_seen.wait_for(
        AuditRecorded, tenant_id=tenant.tenant_id, action="change_tenant"
    )
    assert [(a.audit_type, a.details["version"]) for a in audits] == [
        (AuditType.CONFIGURATION_CHANGE, 3)
    ]
    r = await client.put("/v1/config", json={"daily_token_budget": 400_000}, headers=admin)
    assert r.status_code == 200, r.text

    stale = await client.patch(
        path, json={"name": "Renamed", "expected_version": 1}, headers=operator
    )
    assert stale.status_code == 409
    r = await client.patch(path, json={"name": "Renamed Co"}, headers=operator)
    assert (r.status_code, r.json()["changed"]) == (200, ["tenant_name"])
    assert (await client.get(path, headers=operator)).json()["name"] == "Renamed Co"
    config = (await client.get("/v1/config", headers=admin)).json()["config"]
    assert (config["tenant_name"], config["tier"]) == ("Renamed Co", "pro")

    nothing = await client.patch(path, json={}, headers=operator)
    assert nothing.status_code == 422
    assert "nothing to change" in nothing.json()["detail"]
    assert (
        await client.patch(path, json={"tier": "platinum"}, headers=operator)
    ).status_code == 422
    unknown = await client.patch(
        f"/v1/tenants/{uuid.uuid4()}", json={"tier": "pro"}, headers=operator
    )
    assert unknown.status_code == 404


async def test_an_offboarding_tenant_cannot_change_plan(client, onboard, operator_token) -> None:
    leaving = await onboard(tier="free")
    operator = bearer(operator_token)
    path = f"/v1/tenants/{leaving.tenant_id}"
    assert (await client.delete(path, headers=operator)).status_code == 202
    r = await client.patch(path, json={"tier": "enterprise"}, headers=operator)
    assert r.status_code == 409, r.text
    assert "only an active tenant" in r.json()["detail"]


async def test_members_cannot_read_or_restore_config_versions(client, tenant) -> None:
    member = bearer(tenant.member_token)
    for method, path in (
        ("GET", "/v1/config/versions"),
        ("GET", "/v1/config/versions/1"),
        ("POST", "/v1/config/versions/1/restore"),
    ):
        assert (await client.request(method, path, headers=member)).status_code == 403, path


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"system_prompt_template": "Hi {{secret_key}}"}, "unknown placeholder"),
        ({"system_prompt_template": "Hi {{tenant_name}"}, "unbalanced"),
        ({"cache_similarity_threshold": 0.5}, "floor"),
        ({"model": "not-a-model", "allowed_models": ["not-a-model"]}, "catalogue"),
        ({"model": "gpt-4o-mini"}, "allowed_models"),
        ({"daily_token_budget": 60_000}, "at most 50000"),
        ({"temperature": 3}, ""),
        ({"tenant_name": "renamed"}, ""),
    ],
)
async def test_invalid_config_is_refused_with_a_reason(client, tenant, change, reason) -> None:
    r = await client.put("/v1/config", json=change, headers=bearer(tenant.admin_token))
    assert r.status_code == 422, r.text
    assert reason in str(r.json()["detail"])
    assert (await client.get("/v1/config", headers=bearer(tenant.admin_token))).json()[
        "version"
    ] == 1


async def test_revoked_client_is_refused_at_once(client, tenant, topics_seen) -> None:
    made = (
        await client.post(
            "/v1/clients", json={"role": "member"}, headers=bearer(tenant.admin_token)
        )
    ).json()
    token = await get_token(client, made["client_id"], made["client_secret"])
    assert (
        await client.get(f"/v1/tenants/{tenant.tenant_id}", headers=bearer(token))
    ).status_code == 200
    r = await client.delete(f"/v1/clients/{made['client_id']}", headers=bearer(tenant.admin_token))
    assert r.status_code == 204
    agent = f"revoked-{uuid.uuid4().hex[:6]}"
    r = await client.get(
        f"/v1/tenants/{tenant.tenant_id}", headers=bearer(token) | {"User-Agent": agent}
    )
    assert r.status_code == 401
    [event] = await topics_seen.wait_for(AuditRecorded, user_agent=agent)
    assert event.tenant_id == tenant.tenant_id  # the token was verified, so its tenant is known
    r = await client.post(
        "/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": made["client_id"],
            "client_secret": made["client_secret"],
        },
    )
    assert r.status_code == 401
    # The admin's own token is untouched.
    assert (await client.get("/v1/config", headers=bearer(tenant.admin_token))).status_code == 200


async def test_offboarding_refuses_every_token_at_once_and_finishes_on_acks(
    client, tenant, operator_token, producer, topics_seen
) -> None:
    from auth_support import ack_all, wait_status
    from tenantry_common.events import LifecycleAction

    r = await client.delete(f"/v1/tenants/{tenant.tenant_id}", headers=bearer(operator_token))
    assert r.status_code == 202
    assert r.json()["status"] == "offboarding"
    for token in (tenant.admin_token, tenant.member_token):
        assert (
            await client.get(f"/v1/tenants/{tenant.tenant_id}", headers=bearer(token))
        ).status_code == 401
    r = await client.post(
        "/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": tenant.admin_client_id,
            "client_secret": tenant.admin_secret,
        },
    )
    assert r.status_code == 401
    await topics_seen.wait_for(TenantOffboarded, tenant_id=tenant.tenant_id)
    await ack_all(producer, tenant.tenant_id, LifecycleAction.OFFBOARDED)
    await wait_status(client, operator_token, tenant.tenant_id, "offboarded")


async def test_platform_tenant_cannot_be_offboarded(client, operator_token) -> None:
    r = await client.delete(
        "/v1/tenants/00000000-0000-0000-0000-000000000000", headers=bearer(operator_token)
    )
    assert r.status_code == 403


async def test_nul_characters_in_input_are_refused_not_500(client, operator_token) -> None:
    r = await client.post(
        "/v1/tenants",
        json={"name": "bad\u0000name", "tier": "free", "admin_contact": "a@b.test"},
        headers=bearer(operator_token),
    )
    assert r.status_code == 422
    r = await client.post(
        "/v1/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "x\u0000y", "client_secret": "z"},
    )
    assert r.status_code == 401
