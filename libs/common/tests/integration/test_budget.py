"""The shared budget module against the real Redis: atomic reservations, exactly-once settlement."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import date

import pytest
from tenantry_common.budget import BudgetStore, RefusalReason, Settlement
from tenantry_common.tenancy import tenant_key

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 23)


async def test_concurrent_reservations_never_overshoot_the_limit(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant = uuid.uuid4()
    results = await asyncio.gather(
        *(
            store.reserve(
                tenant_id=tenant, request_id=uuid.uuid4(), tokens=100, day=DAY, daily_limit=1_050
            )
            for _ in range(50)
        )
    )
    granted = [r for r in results if r.granted]
    assert len(granted) == 10
    assert all(r.refusal == RefusalReason.DAILY_TOKENS for r in results if not r.granted)
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert snap.tokens_reserved == 1_000


async def test_settlement_is_applied_once_per_event_and_releases_the_hold(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant, request, event = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.reserve(
        tenant_id=tenant, request_id=request, tokens=300, day=DAY, daily_limit=10_000
    )
    for _ in range(3):
        await store.settle(
            tenant_id=tenant,
            event_id=event,
            request_id=request,
            reserved_day=DAY,
            usage_day=DAY,
            tokens=120,
            cost_micros=7,
        )
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert (snap.tokens_used, snap.tokens_reserved, snap.spend_used_micros) == (120, 0, 7)


async def test_exhausted_monthly_spend_refuses_reservations(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant = uuid.uuid4()
    await store.settle(
        tenant_id=tenant,
        event_id=uuid.uuid4(),
        request_id=uuid.uuid4(),
        reserved_day=DAY,
        usage_day=DAY,
        tokens=1,
        cost_micros=500,
    )
    result = await store.reserve(
        tenant_id=tenant,
        request_id=uuid.uuid4(),
        tokens=1,
        day=DAY,
        daily_limit=10,
        monthly_spend_limit_micros=500,
    )
    assert not result.granted
    assert result.refusal == RefusalReason.MONTHLY_SPEND


async def test_tenants_have_separate_budgets(redis_client) -> None:
    store = BudgetStore(redis_client)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert (
        await store.reserve(
            tenant_id=a, request_id=uuid.uuid4(), tokens=10, day=DAY, daily_limit=10
        )
    ).granted
    assert (
        await store.reserve(
            tenant_id=b, request_id=uuid.uuid4(), tokens=10, day=DAY, daily_limit=10
        )
    ).granted
    assert not (
        await store.reserve(tenant_id=a, request_id=uuid.uuid4(), tokens=1, day=DAY, daily_limit=10)
    ).granted


async def test_reconcile_sets_settled_totals_to_the_ledger_and_recounts_holds(redis_client) -> None:
    store = BudgetStore(redis_client)
    tenant, request = uuid.uuid4(), uuid.uuid4()
    await store.reserve(tenant_id=tenant, request_id=request, tokens=50, day=DAY, daily_limit=1_000)
    await redis_client.hset(store._tokens(tenant, DAY), mapping={"used": 999, "reserved": 7})
    await store.reconcile(tenant_id=tenant, day=DAY, ledger_tokens=120, ledger_spend_micros=33)
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert (snap.tokens_used, snap.tokens_reserved, snap.spend_used_micros) == (120, 50, 33)


END_USERS = ("alice", "bob", "carol@example.com")


async def _hold_for_end_user(
    store: BudgetStore, tenant: uuid.UUID, end_user: str, request: uuid.UUID, tokens: int, day: date
) -> None:
    tokens_key, holds_key = store.end_user_keys(tenant_id=tenant, end_user=end_user, day=day)
    await store.redis.hset(holds_key, str(request), tokens)
    await store.redis.hincrby(tokens_key, "reserved", tokens)


async def _scenario(store: BudgetStore, tenants: list[uuid.UUID], batched: bool) -> list[bool]:
    """Reservations, then settlements in two rounds (with redeliveries) the given way."""
    day2 = date(2026, 12, 1)  # a new day and a new month for some of the usage
    rng = random.Random(11)
    settlements: list[Settlement] = []
    for t, tenant in enumerate(tenants):
        for i in range(25):
            request = uuid.UUID(int=(t << 64) + i)
            reserved_day = DAY if i % 5 else day2
            end_user = END_USERS[i % 3] if i % 2 else None
            if i % 4:  # some usage was never reserved (e.g. a cached answer)
                await store.reserve(
                    tenant_id=tenant,
                    request_id=request,
                    tokens=300 + i,
                    day=reserved_day,
                    daily_limit=10**9,
                )
                if end_user is not None:  # as the edge's admission holds it
                    await _hold_for_end_user(
                        store, tenant, end_user, request, 300 + i, reserved_day
                    )
            settlements.append(
                Settlement(
                    tenant_id=tenant,
                    event_id=uuid.UUID(int=(t << 64) + 1000 + i),
                    request_id=request,
                    reserved_day=reserved_day,
                    usage_day=day2 if i % 3 == 0 else DAY,
                    tokens=rng.randint(0, 900),
                    cost_micros=rng.randint(0, 10**6),
                    end_user=end_user,
                )
            )
        # A request still in flight (its hold stays), and a counter a reconciliation lowered
        # below the holds (releasing them must stop at zero).
        await store.reserve(
            tenant_id=tenant, request_id=uuid.uuid4(), tokens=77, day=DAY, daily_limit=10**9
        )
        await store.redis.hset(store._tokens(tenant, day2), "reserved", 100 * t)
    order = settlements[:]
    rng.shuffle(order)
    first, second = order[:60], order[40:] + order[:10]  # overlapping: redeliveries
    settle = store.settle_batch if batched else store.settle_many
    return [*await settle(first), *await settle(second), *await settle([])]


async def _state(redis_client, store: BudgetStore, tenant: uuid.UUID) -> dict:
    day2 = date(2026, 12, 1)
    keys = [
        store._tokens(tenant, DAY),
        store._tokens(tenant, day2),
        store._holds(tenant, DAY),
        store._holds(tenant, day2),
        store._spend(tenant, "2026-11"),
        store._spend(tenant, "2026-12"),
    ]
    state = {}
    for n, key in enumerate(keys):
        fields = await redis_client.hgetall(key)
        if n == 2:  # the in-flight request's id is random: compare what it holds
            fields = sorted(fields.values())
        state[n] = (fields, await redis_client.ttl(key) > 0)
    settled = {}
    for day in (DAY, day2):
        key = tenant_key(tenant, "budget", "settled", day.isoformat())
        settled[day] = (
            sorted(uuid.UUID(bytes=raw) for raw in await redis_client.hkeys(key)),
            await redis_client.ttl(key) > 0,
        )
    state["settled"] = settled
    for end_user in END_USERS:
        for day in (DAY, day2):
            for key in store.end_user_keys(tenant_id=tenant, end_user=end_user, day=day):
                state[(end_user, day, key.split(":")[-2][:14])] = (
                    await redis_client.hgetall(key),
                    await redis_client.ttl(key) > 0,
                )
    return state


async def test_batched_settlement_gives_the_same_redis_state_as_per_event_settlement(
    redis_client,
) -> None:
    store = BudgetStore(redis_client)
    per_event = [uuid.uuid4() for _ in range(3)]
    batched = [uuid.uuid4() for _ in range(3)]
    assert await _scenario(store, per_event, batched=False) == await _scenario(
        store, batched, batched=True
    )
    for a, b in zip(per_event, batched, strict=True):
        state = await _state(redis_client, store, b)
        assert await _state(redis_client, store, a) == state
        assert sum(len(ids) for ids, _ in state["settled"].values()) == 25, "each event once"
    snap = await store.snapshot(tenant_id=batched[0], day=DAY)
    assert snap.tokens_reserved == 77, "only the request still in flight holds tokens"
    assert snap.tokens_used > 0
    for end_user in END_USERS:
        used_on_both_days = 0
        for day in (DAY, date(2026, 12, 1)):
            used, reserved = await store.end_user_snapshot(
                tenant_id=batched[0], end_user=end_user, day=day
            )
            assert reserved == 0, "every end user's hold was settled"
            used_on_both_days += used
        assert used_on_both_days > 0, end_user


async def test_an_end_users_usage_is_settled_into_their_own_day_and_reconciled(
    redis_client,
) -> None:
    store = BudgetStore(redis_client)
    tenant, request = uuid.uuid4(), uuid.uuid4()
    await store.reserve(
        tenant_id=tenant, request_id=request, tokens=300, day=DAY, daily_limit=10**6
    )
    await _hold_for_end_user(store, tenant, "alice", request, 300, DAY)
    other = uuid.uuid4()
    await _hold_for_end_user(store, tenant, "alice", other, 50, DAY)  # still in flight
    for settle in (store.settle_batch, store.settle_many):  # the second is a redelivery
        applied = await settle(
            [Settlement(tenant, uuid.UUID(int=7), request, DAY, DAY, 120, 9, "alice")]
        )
        assert applied == [settle == store.settle_batch]
    assert await store.end_user_snapshot(tenant_id=tenant, end_user="alice", day=DAY) == (120, 50)
    assert await store.end_user_snapshot(tenant_id=tenant, end_user="bob", day=DAY) == (0, 0)
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert (snap.tokens_used, snap.tokens_reserved) == (120, 0)
    # Released when it will never be settled; reconciled to the ledger's figure.
    await store.release(tenant_id=tenant, request_id=other, day=DAY, end_user="alice")
    assert await store.end_user_snapshot(tenant_id=tenant, end_user="alice", day=DAY) == (120, 0)
    await store.reconcile_end_user(tenant_id=tenant, end_user="alice", day=DAY, ledger_tokens=99)
    assert await store.end_user_snapshot(tenant_id=tenant, end_user="alice", day=DAY) == (99, 0)


async def test_batched_settlement_applies_each_event_once_and_releases_its_hold(
    redis_client,
) -> None:
    store = BudgetStore(redis_client)
    tenant, request, event = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.reserve(
        tenant_id=tenant, request_id=request, tokens=300, day=DAY, daily_limit=10_000
    )
    once = Settlement(tenant, event, request, DAY, DAY, 120, 7)
    assert await store.settle_batch([once, once]) == [True, False]
    assert await store.settle_batch([once]) == [False]
    snap = await store.snapshot(tenant_id=tenant, day=DAY)
    assert (snap.tokens_used, snap.tokens_reserved, snap.spend_used_micros) == (120, 0, 7)
