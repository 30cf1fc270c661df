"""The batch path's pure parts: decoding, one row per event id, splitting by tenant, the gate;
what a rollup flush keeps when publishes fail."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from tenantry_common.events import Reservation, UsageRecorded
from tenantry_common.messaging import PermanentError
from tenantry_common.settings import LOCAL_MODEL, default_catalogue
from tenantry_metering.config import Settings
from tenantry_metering.handlers import decode_usage_batch
from tenantry_metering.metrics import MeteringMetrics
from tenantry_metering.repository import AggregateRow
from tenantry_metering.runtime import Runtime, SettleGate
from tenantry_metering.service import fingerprint, ledger_columns, split_by_tenant

pytestmark = pytest.mark.unit


def _usage(tenant: uuid.UUID, **changes: Any) -> UsageRecorded:
    request_id = uuid.uuid4()
    event = UsageRecorded(
        event_id=uuid.uuid5(request_id, "usage"),
        tenant_id=tenant,
        occurred_at=datetime(2025, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        request_id=request_id,
        user_id='ü-ser "quoted" </script>',
        model=LOCAL_MODEL,
        prompt_tokens=1_000,
        completion_tokens=3,
        reservation=Reservation(reserved_tokens=10, period_day=date(2025, 1, 31)),
        source="test",
    )
    return event.model_copy(update=changes)


def test_fingerprint_is_the_hash_of_model_dump_json_as_ledgers_already_hold_it() -> None:
    event = _usage(uuid.uuid4())
    assert fingerprint(event) == hashlib.sha256(event.model_dump_json().encode()).digest()


async def test_decoder_validates_every_record_and_refuses_a_bad_one() -> None:
    events = [_usage(uuid.uuid4()) for _ in range(3)]
    message = SimpleNamespace(body=[e.model_dump_json().encode() for e in events])
    assert await decode_usage_batch(message) == events  # type: ignore[arg-type]
    message.body.append(b'{"event_type": "UsageRecorded"}')
    with pytest.raises(ValidationError):
        await decode_usage_batch(message)  # type: ignore[arg-type]
    message.body[-1] = b"not json"
    with pytest.raises(ValidationError):
        await decode_usage_batch(message)  # type: ignore[arg-type]


def test_ledger_columns_keep_one_row_per_event_id_and_settle_each_id_once() -> None:
    tenant = uuid.uuid4()
    first, second = _usage(tenant), _usage(tenant, model="not-in-the-catalogue")
    rows, settlements = ledger_columns([first, second, first], default_catalogue())
    assert rows.keys() == [(tenant, first.event_id), (tenant, second.event_id)]
    assert rows.day == [date(2025, 1, 31)] * 2
    assert rows.priced == [True, False]
    assert rows.cost_micros == [51, 0]
    assert rows.payload_sha256 == [fingerprint(first), fingerprint(second)]
    assert [(s.event_id, s.tokens, s.cost_micros) for s in settlements] == [
        (first.event_id, 1_003, 51),
        (second.event_id, 1_003, 0),
    ]


def test_ledger_columns_refuse_one_event_id_with_two_payloads() -> None:
    event = _usage(uuid.uuid4())
    forged = event.model_copy(update={"completion_tokens": 9_999})
    with pytest.raises(PermanentError, match="different payloads"):
        ledger_columns([event, forged], default_catalogue())


def test_split_by_tenant_keeps_each_tenants_events_together_and_in_order() -> None:
    tenants = [uuid.uuid4() for _ in range(7)]
    events = [_usage(tenants[i % 7], prompt_tokens=i) for i in range(70)]
    parts = split_by_tenant(events, parts=3)
    assert 1 <= len(parts) <= 3
    assert sorted(e.prompt_tokens for part in parts for e in part) == list(range(70))
    for part in parts:
        assert [e.prompt_tokens for e in part] == sorted(e.prompt_tokens for e in part)
    owners = {e.tenant_id: n for n, part in enumerate(parts) for e in part}
    assert all(owners[e.tenant_id] == n for n, part in enumerate(parts) for e in part)
    assert split_by_tenant(events, parts=1) == [events]


async def test_settle_gate_lets_batches_overlap_but_never_with_a_reconciliation() -> None:
    gate = SettleGate()
    log: list[str] = []
    release = asyncio.Event()

    async def batch(name: str) -> None:
        async with gate.shared():
            log.append(f"{name} in")
            await release.wait()
            log.append(f"{name} out")

    async def reconcile() -> None:
        async with gate.exclusive():
            log.append("reconcile")

    first = asyncio.create_task(batch("a"))
    second = asyncio.create_task(batch("b"))
    await asyncio.sleep(0)
    assert log == ["a in", "b in"], "batches overlap"
    reconciling = asyncio.create_task(reconcile())
    await asyncio.sleep(0)
    late = asyncio.create_task(batch("c"))  # arrives while the reconciliation waits
    await asyncio.sleep(0)
    assert log == ["a in", "b in"], "the reconciliation waits, and holds new batches back"
    release.set()
    await asyncio.gather(first, second, reconciling, late)
    assert log.index("reconcile") > max(log.index("a out"), log.index("b out"))
    assert log.index("c in") > log.index("reconcile")


async def test_a_batch_whose_parts_fail_waits_for_every_part_and_prefers_an_outage() -> None:
    from prometheus_client import CollectorRegistry
    from tenantry_metering.config import Settings
    from tenantry_metering.metrics import MeteringMetrics
    from tenantry_metering.runtime import Runtime

    runtime = Runtime(
        settings=Settings(environment="test", usage_batch_parts=4),
        broker=None,  # type: ignore[arg-type]  # not reached: no alerts are recorded
        metrics=MeteringMetrics(CollectorRegistry()),
    )
    events = [_usage(uuid.uuid4()) for _ in range(40)]
    started: list[int] = []
    ended: list[int] = []

    async def part(events_of_part: list[UsageRecorded]) -> int:
        n = len(started)
        started.append(n)
        await asyncio.sleep(0.01 * (n % 2))
        ended.append(n)
        if n == 0:
            raise PermanentError("a bad record")
        if n == 1:
            raise ConnectionError("Postgres went away")
        return 0

    runtime._ingest_part = part  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await runtime.ingest(events)
    assert sorted(ended) == [0, 1, 2, 3], "every part ended before the batch failed"


def _row(tenant: uuid.UUID, requests: int = 1) -> AggregateRow:
    return AggregateRow(
        tenant_id=tenant,
        period=date(2025, 1, 31),
        model=LOCAL_MODEL,
        requests=requests,
        cached_requests=0,
        prompt_tokens=10,
        completion_tokens=2,
        cost_micros=5,
        unpriced_requests=0,
    )


async def test_a_flush_keeps_failed_rows_unless_a_newer_row_came_stand_in_broker() -> None:
    """A stand-in broker fails two chosen rows (the real broker's flush is in integration)."""
    day = date(2025, 1, 31)
    rows = {(t, day, LOCAL_MODEL): _row(t) for t in (uuid.uuid4() for _ in range(1_100))}
    keys = list(rows)
    failing, overtaken = keys[3], keys[1_050]  # in the first and the last chunk
    unreachable = {failing[0], overtaken[0]}
    published: list[bytes] = []

    class Broker:
        async def publish(self, message: Any, *, key: bytes, **_: Any) -> None:
            await asyncio.sleep(0)
            tenant = uuid.UUID(key.decode()[:36])
            if tenant == overtaken[0] and tenant in unreachable:
                # A batch recorded a newer row for this key while the flush was publishing.
                runtime.dirty_rollups[overtaken] = _row(tenant, requests=2)
            if tenant in unreachable:
                raise ConnectionError("broker away")
            published.append(key)

    runtime = Runtime(
        settings=Settings(environment="test"),
        broker=Broker(),  # type: ignore[arg-type]
        metrics=MeteringMetrics(CollectorRegistry()),
    )
    runtime.dirty_rollups = dict(rows)
    with pytest.raises(ConnectionError):
        await runtime.flush_rollups()
    assert len(published) == len(set(published)) == 1_098, "every other row, across the chunks"
    assert runtime.dirty_rollups == {failing: rows[failing], overtaken: _row(overtaken[0], 2)}

    unreachable.clear()
    published.clear()
    assert await runtime.flush_rollups() == 2
    assert runtime.dirty_rollups == {}
    assert len(published) == 2


async def test_a_cancelled_flush_keeps_every_unconfirmed_row_stand_in_broker() -> None:
    """Shutdown cancels the flush loop mid-publish; its final flush must still find the rows.

    A stand-in broker whose publishes never finish (the real broker's flush is in integration).
    """
    rows = {(t, date(2025, 1, 31), LOCAL_MODEL): _row(t) for t in (uuid.uuid4() for _ in range(3))}
    started = asyncio.Event()

    class Broker:
        async def publish(self, message: Any, **_: Any) -> None:
            started.set()
            await asyncio.Event().wait()

    runtime = Runtime(
        settings=Settings(environment="test"),
        broker=Broker(),  # type: ignore[arg-type]
        metrics=MeteringMetrics(CollectorRegistry()),
    )
    runtime.dirty_rollups = dict(rows)
    flush = asyncio.create_task(runtime.flush_rollups())
    await started.wait()
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    assert runtime.dirty_rollups == rows
