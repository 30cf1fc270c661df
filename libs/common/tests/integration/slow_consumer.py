"""A consumer for the kill tests: `hang` blocks inside the handler, `finish` completes.

With ``TEST_WINDOW`` set the subscriber is windowed and only message "0" hangs: the others
finish (markers ``finished-<id>``) while it is in flight.
"""

import asyncio
import os
import sys
from pathlib import Path

from tenantry_common.events import AuditRecorded
from tenantry_common.inflight import windowed
from tenantry_common.messaging import build_broker, subscriber_options
from tenantry_common.settings import CommonSettings


async def main(mode: str) -> None:
    settings = CommonSettings(
        service_name="slow", kafka_bootstrap_servers=os.environ["TEST_BOOTSTRAP"]
    )
    markers = Path(os.environ["TEST_MARKERS"])
    window = int(os.environ.get("TEST_WINDOW", "0"))
    broker = build_broker(settings)
    subscriber = broker.subscriber(
        os.environ["TEST_TOPIC"], **subscriber_options(settings, os.environ["TEST_GROUP"])
    )
    if window:
        subscriber = windowed(subscriber, window=window)

    @subscriber
    async def on_audit(event: AuditRecorded) -> None:
        (markers / "started").write_text(event.resource_id)
        if mode == "hang" and (not window or event.resource_id == "0"):
            await asyncio.sleep(3600)
        (markers / "finished").write_text(event.resource_id)
        (markers / f"finished-{event.resource_id}").write_text(mode)

    async with broker:
        await broker.start()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
