"""The in-flight window's books: what may be committed while messages finish out of order; and
which subscribers `windowed` and `lingering` take over.

The broker-level behaviour (many in flight in one partition, DLQ, outages, kill -9, shutdown) is
in tests/integration/test_messaging.py against the real broker.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from faststream.kafka import KafkaBroker
from tenantry_common.batching import LingeringBatchSubscriber, lingering
from tenantry_common.inflight import Committer, OffsetLedger, WindowedSubscriber, windowed
from tenantry_common.messaging import MANUAL

pytestmark = pytest.mark.unit

TP = TopicPartition("chat.context.v1", 3)
OTHER = TopicPartition("chat.context.v1", 4)


def test_finishing_in_order_commits_each_message() -> None:
    ledger = OffsetLedger()
    for offset in (10, 11, 12):
        ledger.start(TP, offset)
    assert [ledger.finish(TP, o) for o in (10, 11, 12)] == [11, 12, 13]
    assert ledger.in_flight(TP) == 0


def test_a_message_finished_early_waits_behind_the_slower_one_before_it() -> None:
    ledger = OffsetLedger()
    for offset in range(5):
        ledger.start(TP, offset)
    assert ledger.finish(TP, 3) is None
    assert ledger.finish(TP, 1) is None
    assert ledger.finish(TP, 4) is None, "nothing past offset 0, still in flight, is committable"
    assert ledger.finish(TP, 0) == 2, "0 and 1 are done; 2 is not"
    assert ledger.finish(TP, 2) == 5, "2, then 3 and 4 that waited behind it"
    assert ledger.in_flight(TP) == 0


def test_partitions_are_committed_independently() -> None:
    ledger = OffsetLedger()
    ledger.start(TP, 0)
    ledger.start(OTHER, 7)
    assert ledger.finish(OTHER, 7) == 8
    assert ledger.in_flight(TP) == 1
    assert ledger.finish(TP, 0) == 1


def test_a_revoked_partition_commits_nothing_more() -> None:
    ledger = OffsetLedger()
    ledger.start(TP, 0)
    ledger.start(TP, 1)
    ledger.forget([TP])
    assert ledger.finish(TP, 0) is None
    # Assigned again: the consumer starts over from the committed position.
    ledger.start(TP, 0)
    assert ledger.finish(TP, 0) == 1


def test_an_offset_delivered_again_while_held_keeps_its_place() -> None:
    ledger = OffsetLedger()
    ledger.start(TP, 0)
    ledger.start(TP, 1)
    ledger.start(TP, 0)  # the consumer sought back to 0 and delivered it again
    ledger.start(TP, 1)
    assert ledger.in_flight(TP) == 2
    assert ledger.finish(TP, 1) is None
    assert ledger.finish(TP, 0) == 2
    assert ledger.finish(TP, 0) is None, "the second delivery's end changes nothing"


def test_windowed_takes_a_plain_manual_subscriber() -> None:
    broker = KafkaBroker()
    subscriber = windowed(broker.subscriber("t", group_id="g", ack_policy=MANUAL), window=8)
    assert isinstance(subscriber, WindowedSubscriber)
    assert subscriber.window == 8
    assert subscriber in broker.subscribers


@pytest.mark.parametrize(
    "options",
    [
        {"batch": True},
        {"max_workers": 4},  # FastStream's one-consumer-per-worker subscriber
    ],
)
def test_windowed_refuses_subscribers_it_cannot_take_over(options: dict[str, object]) -> None:
    broker = KafkaBroker()
    with pytest.raises(TypeError):
        windowed(broker.subscriber("t", group_id="g", ack_policy=MANUAL, **options), window=8)


class FakeConsumer:
    """Records commits; each commit waits until the test lets it through."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []
        self.gate = asyncio.Event()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        await self.gate.wait()


async def test_positions_due_during_a_commit_go_together_in_the_next_one() -> None:
    consumer = FakeConsumer({TP, OTHER})
    committer = Committer(lambda: consumer)  # type: ignore[arg-type, return-value]
    committer.due(TP, 1)
    await asyncio.sleep(0)
    committer.due(TP, 2)
    committer.due(TP, 5)
    committer.due(OTHER, 9)
    committer.due(TP, 4)  # positions only move forward
    consumer.gate.set()
    await committer.flush()
    assert consumer.commits == [{TP: 1}, {TP: 5, OTHER: 9}]


async def test_positions_of_partitions_no_longer_assigned_are_not_committed() -> None:
    consumer = FakeConsumer({TP})
    consumer.gate.set()
    committer = Committer(lambda: consumer)  # type: ignore[arg-type, return-value]
    committer.due(OTHER, 3)
    committer.due(TP, 2)
    await committer.flush()
    assert consumer.commits == [{TP: 2}]


def test_lingering_takes_only_a_batch_subscriber() -> None:
    broker = KafkaBroker()
    batch = lingering(
        broker.subscriber("t", group_id="g", ack_policy=MANUAL, batch=True),
        min_records=10,
        linger_ms=50,
    )
    assert isinstance(batch, LingeringBatchSubscriber)
    assert (batch.min_records, batch.linger_s) == (10, 0.05)
    with pytest.raises(TypeError):
        lingering(
            broker.subscriber("u", group_id="g", ack_policy=MANUAL), min_records=10, linger_ms=50
        )
