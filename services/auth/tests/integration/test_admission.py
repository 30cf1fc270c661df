"""The edge's admission against the real Redis: rate limit and budget reservation in one script."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from typing import Any

import pytest
from tenantry_auth.admission import Admission, Admitted, end_user_rate_key
from tenantry_common.budget import BudgetStore, RefusalReason

pytestmark = pytest.mark.integration

DAY = date(2026, 12, 6)


async def _admit(
    admission: Admission,
    tenant_id: uuid.UUID,
    *,
    per_minute: int = 100,
    tokens: int = 100,
    daily_limit: int = 1_000_000,
    monthly_spend_limit_micros: int | None = None,
    request_id: uuid.UUID | None = None,
    end_user: str | None = None,
    end_user_per_minute: int = 0,
    end_user_daily_limit: int = 0,
) -> Admitted:
    return await admission.admit(
        tenant_id=tenant_id,
        per_minute=per_minute,
        request_id=request_id or uuid.uuid4(),
        tokens=tokens,
        day=DAY,
        daily_limit=daily_limit,
        monthly_spend_limit_micros=monthly_spend_limit_micros,
        end_user=end_user,
        end_user_per_minute=end_user_per_minute,
        end_user_daily_limit=end_user_daily_limit,
    )


async def test_rate_limits_that_do_not_divide_a_minute_are_enforced(redis_client) -> None:
    # 60,000 ms / 7 has decimals; Redis's PX refused them, and chat answered 503 for the tenant.
    admission = Admission(redis_client)
    tenant_id = uuid.uuid4()
    decisions = [await _admit(admission, tenant_id, per_minute=7) for _ in range(8)]
    assert [d.rate.allowed for d in decisions] == [True] * 7 + [False]
    assert [d.rate.remaining for d in decisions[:7]] == [6, 5, 4, 3, 2, 1, 0]
    assert decisions[-1].rate.retry_after_s >= 1
    assert "Retry-After" in decisions[-1].rate.headers()


async def test_a_request_over_the_rate_holds_no_budget(redis_client) -> None:
    budgets = BudgetStore(redis_client)
    admission = Admission(redis_client)
    tenant_id = uuid.uuid4()
    admitted = [await _admit(admission, tenant_id, per_minute=2, tokens=40) for _ in range(3)]
    assert [a.held is not None and a.held.granted for a in admitted] == [True, True, False]
    assert admitted[-1].held is None
    snap = await budgets.snapshot(tenant_id=tenant_id, day=DAY)
    assert snap.tokens_reserved == 80


async def test_a_request_over_the_budget_still_counts_against_the_rate(redis_client) -> None:
    admission = Admission(redis_client)
    tenant_id = uuid.uuid4()
    refused = await _admit(admission, tenant_id, per_minute=2, tokens=500, daily_limit=100)
    assert refused.rate.allowed
    assert refused.held is not None
    assert not refused.held.granted
    assert refused.held.refusal == RefusalReason.DAILY_TOKENS
    granted = await _admit(admission, tenant_id, per_minute=2, tokens=50, daily_limit=100)
    assert granted.held is not None
    assert granted.held.granted
    over_rate = await _admit(admission, tenant_id, per_minute=2, tokens=50, daily_limit=100)
    assert not over_rate.rate.allowed


async def test_the_monthly_spend_refuses_as_the_budget_store_does(redis_client) -> None:
    admission = Admission(redis_client)
    tenant_id = uuid.uuid4()
    spent = await _admit(admission, tenant_id, monthly_spend_limit_micros=0)
    assert spent.held is not None
    assert not spent.held.granted
    assert spent.held.refusal == RefusalReason.MONTHLY_SPEND


async def test_admission_holds_what_the_budget_store_holds(redis_client) -> None:
    # The reservation half is the budget module's own Lua function: the same inputs give the
    # same answers and the same hold as BudgetStore.reserve, up to the limit exactly, one token
    # over it, and the same request id twice.
    budgets = BudgetStore(redis_client)
    admission = Admission(redis_client)
    ours, theirs = uuid.uuid4(), uuid.uuid4()
    first = uuid.uuid4()
    asks = [(first, 250), *((uuid.uuid4(), 250) for _ in range(3)), (uuid.uuid4(), 1), (first, 250)]
    answers = []
    for request_id, tokens in asks:
        admitted = await _admit(
            admission, ours, tokens=tokens, daily_limit=1_000, request_id=request_id
        )
        reserved = await budgets.reserve(
            tenant_id=theirs, request_id=request_id, tokens=tokens, day=DAY, daily_limit=1_000
        )
        assert admitted.held == reserved
        answers.append(reserved.granted)
    assert answers == [True, True, True, True, False, True]
    assert await budgets.snapshot(tenant_id=ours, day=DAY) == await budgets.snapshot(
        tenant_id=theirs, day=DAY
    )


async def test_concurrent_admissions_overshoot_neither_rate_nor_budget(redis_client) -> None:
    budgets = BudgetStore(redis_client)
    admission = Admission(redis_client)
    tenant_id = uuid.uuid4()
    results = await asyncio.gather(
        *(
            _admit(admission, tenant_id, per_minute=30, tokens=100, daily_limit=1_050)
            for _ in range(60)
        )
    )
    assert sum(r.rate.allowed for r in results) == 30
    assert sum(r.held is not None and r.held.granted for r in results) == 10
    snap = await budgets.snapshot(tenant_id=tenant_id, day=DAY)
    assert snap.tokens_reserved == 1_000


async def test_an_end_user_over_their_rate_is_refused_without_using_the_tenants(
    redis_client,
) -> None:
    """Each named end user has a rate of their own within the tenant's: one refused by theirs
    takes nothing of the tenant's rate or budget, the others go on, and requests naming no end
    user count only against the tenant's."""
    budgets = BudgetStore(redis_client)
    admission = Admission(redis_client)
    tenant_id = uuid.uuid4()

    def ask(end_user: str | None) -> Any:
        return _admit(
            admission,
            tenant_id,
            per_minute=5,
            tokens=10,
            end_user=end_user,
            end_user_per_minute=2,
        )

    first = [await ask("user-a") for _ in range(4)]
    assert [a.held is not None for a in first] == [True, True, False, False]
    refused = first[-1]
    assert (refused.end_user_refused, refused.rate.limit) == (True, 2)
    assert refused.rate.retry_after_s >= 1
    # The tenant's rate (5) was used twice, not four times: three more requests pass.
    others = [await ask(user) for user in ("user-b", None, "user-c")]
    assert all(a.held is not None and a.held.granted for a in others)
    over = await ask("user-d")
    assert (over.held, over.end_user_refused, over.rate.limit) == (None, False, 5)
    snap = await budgets.snapshot(tenant_id=tenant_id, day=DAY)
    assert snap.tokens_reserved == 5 * 10


async def test_an_end_user_refused_by_the_tenants_rate_is_not_counted_against_their_own(
    redis_client,
) -> None:
    admission = Admission(redis_client)
    tenant_id = uuid.uuid4()
    for _ in range(2):
        await _admit(admission, tenant_id, per_minute=2)
    refused = await _admit(
        admission, tenant_id, per_minute=2, end_user="user-a", end_user_per_minute=1
    )
    assert (refused.held, refused.end_user_refused) == (None, False)
    assert await redis_client.exists(end_user_rate_key(tenant_id, "user-a")) == 0


async def test_an_end_users_daily_budget_holds_their_share_and_refuses_only_them(
    redis_client,
) -> None:
    """With a daily budget per end user, a request holds its worst case of the end user's day
    as well as the tenant's; one the end user's budget refuses holds neither (the tenant's hold
    is given back in the same script), and the tenant's other users go on."""
    admission, budgets = Admission(redis_client), BudgetStore(redis_client)
    tenant_id = uuid.uuid4()

    def ask(end_user: str | None, tokens: int) -> Any:
        return _admit(
            admission, tenant_id, tokens=tokens, end_user=end_user, end_user_daily_limit=250
        )

    for _ in range(2):
        granted = await ask("user-a", 100)
        assert granted.held is not None
        assert granted.held.granted
    refused = await ask("user-a", 100)
    assert refused.held is not None
    assert (refused.held.granted, refused.held.refusal) == (
        False,
        RefusalReason.END_USER_DAILY_TOKENS,
    )
    assert (refused.held.limit, refused.held.used + refused.held.reserved) == (250, 200)
    assert refused.rate.allowed, "the rates allowed it; the end user's budget did not"
    # Another end user, and a request naming none (the tenant's budget only), go on.
    for end_user, tokens in (("user-b", 200), (None, 300)):
        granted = await ask(end_user, tokens)
        assert granted.held is not None
        assert granted.held.granted
    snap = await budgets.snapshot(tenant_id=tenant_id, day=DAY)
    assert snap.tokens_reserved == 100 + 100 + 200 + 300, "the refused request holds nothing"
    for end_user, reserved in (("user-a", 200), ("user-b", 200)):
        assert await budgets.end_user_snapshot(tenant_id=tenant_id, end_user=end_user, day=DAY) == (
            0,
            reserved,
        )


async def test_the_tenants_budget_refuses_before_the_end_users_is_touched(redis_client) -> None:
    admission, budgets = Admission(redis_client), BudgetStore(redis_client)
    tenant_id = uuid.uuid4()
    refused = await _admit(
        admission,
        tenant_id,
        tokens=100,
        daily_limit=50,
        end_user="user-a",
        end_user_daily_limit=1_000,
    )
    assert refused.held is not None
    assert (refused.held.refusal, refused.held.limit) == (RefusalReason.DAILY_TOKENS, 50)
    assert await budgets.end_user_snapshot(tenant_id=tenant_id, end_user="user-a", day=DAY) == (
        0,
        0,
    )
