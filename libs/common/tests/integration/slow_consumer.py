"""A consumer for the kill test: `hang` blocks inside the handler, `finish` completes."""

import asyncio
import os
import sys
from pathlib import Path

from tenantry_common.events import AuditRecorded
from tenantry_common.messaging import build_broker, subscriber_options
from tenantry_common.settings import CommonSettings


async def main(mode: str) -> None:
    settings = CommonSettings(
        service_name="slow", kafka_bootstrap_servers=os.environ["TEST_BOOTSTRAP"]
    )
    markers = Path(os.environ["TEST_MARKERS"])
    broker = build_broker(settings)

    @broker.subscriber(
        os.environ["TEST_TOPIC"], **subscriber_options(settings, os.environ["TEST_GROUP"])
    )
    async def on_audit(event: AuditRecorded) -> None:
        (markers / "started").write_text(event.resource_id)
        if mode == "hang":
            await asyncio.sleep(3600)
        (markers / "finished").write_text(event.resource_id)

    async with broker:
        await broker.start()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
