"""Users rate answers (``POST /v1/feedback``) and tenant admins read the ratings
(``GET /v1/feedback``): one rating per answer and user, only the tenant's own, audited without
the comment, counted against the rate limit, deleted when the tenant is offboarded."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from auth_support import bearer
from tenantry_auth import repository as repo
from tenantry_common.events import AuditRecorded

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(onboard):
    return await onboard(tier="pro")


async def _ask(client, token: str) -> str:
    r = await client.post("/v1/chat", json={"question": "rate me"}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return str(r.json()["request_id"])


async def test_a_rating_is_kept_once_per_answer_and_user_and_summed_for_admins(
    client, tenant, responder, topics_seen
) -> None:
    member, admin = bearer(tenant.member_token), bearer(tenant.admin_token)
    first, second = await _ask(client, tenant.member_token), await _ask(client, tenant.member_token)
    r = await client.post(
        "/v1/feedback",
        json={"request_id": first, "value": -1, "comment": "Wrong refund window", "user": "u-7"},
        headers=member,
    )
    assert r.status_code == 201, r.text
    assert (r.json()["value"], r.json()["end_user"]) == (-1, "u-7")
    # The same user rating the same answer again replaces their rating.
    r = await client.post(
        "/v1/feedback", json={"request_id": first, "value": 8, "comment": "Fixed"}, headers=member
    )
    assert r.status_code == 201, r.text
    assert (r.json()["value"], r.json()["comment"], r.json()["end_user"]) == (8, "Fixed", None)
    r = await client.post(
        "/v1/feedback",
        json={"request_id": second, "value": -3, "comment": "=HYPERLINK(x)"},
        headers=admin,
    )
    assert r.status_code == 201, r.text

    listed = await client.get("/v1/feedback", headers=admin)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [(f["request_id"], f["value"]) for f in body["feedback"]] == [(second, -3), (first, 8)]
    assert (body["count"], body["positive"], body["negative"]) == (2, 1, 1)
    assert body["mean_value"] == pytest.approx(2.5)
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await client.get("/v1/feedback", params={"since": later}, headers=admin)).json()[
        "count"
    ] == 0
    naive = await client.get("/v1/feedback", params={"since": "2026-01-01T00:00:00"}, headers=admin)
    assert naive.status_code == 422, "a time without its zone is refused"
    assert (await client.get("/v1/feedback", headers=member)).status_code == 403
    exported = await client.get("/v1/feedback", params={"format": "csv"}, headers=admin)
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["request_id"], r["value"], r["comment"]) for r in rows] == [
        (second, "-3", "'=HYPERLINK(x)"),  # a number stays a number; a formula does not run
        (first, "8", "Fixed"),
    ]

    # Audited with the value, never the comment.
    audits = await topics_seen.wait_for(
        AuditRecorded, count=2, action="feedback", resource_id=first
    )
    assert audits[-1].tenant_id == tenant.tenant_id
    assert audits[-1].details["value"] in (-1, 8)
    assert all("refund window" not in a.model_dump_json() for a in audits)


async def test_ratings_stay_in_their_tenant_and_go_with_it(
    client, tenant, onboard, responder, operator_token, edge_app
) -> None:
    other = await onboard(tier="pro")
    answer = await _ask(client, tenant.member_token)
    canary = f"CANARY-{uuid.uuid4().hex[:8]}"
    # Both rate the same request id (another tenant may guess it): each keeps its own.
    for who, value in ((tenant, 5), (other, -5)):
        r = await client.post(
            "/v1/feedback",
            json={"request_id": answer, "value": value, "comment": f"{canary} {value}"},
            headers=bearer(who.member_token),
        )
        assert r.status_code == 201, r.text
    mine = (await client.get("/v1/feedback", headers=bearer(tenant.admin_token))).json()
    theirs = (await client.get("/v1/feedback", headers=bearer(other.admin_token))).json()
    assert [f["value"] for f in mine["feedback"]] == [5]
    assert [f["value"] for f in theirs["feedback"]] == [-5]
    assert f"{canary} -5" not in str(mine)

    r = await client.delete(f"/v1/tenants/{other.tenant_id}", headers=bearer(operator_token))
    assert r.status_code == 202, r.text
    async with edge_app.state.edge.sessions() as session:
        gone = await repo.list_feedback(
            session=session, tenant_id=other.tenant_id, since=None, before=None, limit=10
        )
        kept = await repo.list_feedback(
            session=session, tenant_id=tenant.tenant_id, since=None, before=None, limit=10
        )
    assert (len(gone), len(kept)) == (0, 1)


@pytest.mark.parametrize(
    "body",
    [
        {"value": 1},
        {"request_id": "not-a-uuid", "value": 1},
        {"request_id": str(uuid.uuid4()), "value": 11},
        {"request_id": str(uuid.uuid4()), "value": -11},
        {"request_id": str(uuid.uuid4()), "value": 1, "comment": "x" * 2_001},
        {"request_id": str(uuid.uuid4()), "value": 1, "tenant_id": str(uuid.uuid4())},
    ],
)
async def test_a_malformed_rating_is_a_422(client, tenant, body: dict[str, object]) -> None:
    r = await client.post("/v1/feedback", json=body, headers=bearer(tenant.member_token))
    assert r.status_code == 422, r.text


async def test_ratings_count_against_the_rate_limit(client, tenant) -> None:
    admin = bearer(tenant.admin_token)
    r = await client.put("/v1/config", json={"rate_limit_per_minute": 2}, headers=admin)
    assert r.status_code == 200, r.text
    codes = [
        (
            await client.post(
                "/v1/feedback", json={"request_id": str(uuid.uuid4()), "value": 1}, headers=admin
            )
        ).status_code
        for _ in range(3)
    ]
    assert codes == [201, 201, 429]
