"""``python -m tenantry_audit.cli``: migrate, verify a chain, run retention, publish anchors."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import typer
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine
from tenantry_common.db import create_engine
from tenantry_common.messaging import build_broker

from tenantry_audit import jobs, service
from tenantry_audit.anchors import AnchorsUnavailable, anchors_for
from tenantry_audit.app import migrate as migrate_database
from tenantry_audit.config import AuditSettings

cli = typer.Typer(help="Tenantry audit log administration.", no_args_is_help=True)


@asynccontextmanager
async def _engine(settings: AuditSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.writer_dsn, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def _broker(settings: AuditSettings) -> AsyncIterator[KafkaBroker]:
    broker = build_broker(settings, client_id="audit-cli")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


@cli.command()
def migrate() -> None:
    """Create the database and upgrade it to the newest schema (as the owner)."""
    asyncio.run(migrate_database(AuditSettings()))
    typer.echo("migrated")


@cli.command()
def verify(
    tenant: Annotated[uuid.UUID, typer.Option(help="The tenant whose chain to walk.")],
    against_anchors: Annotated[
        bool,
        typer.Option(
            "--against-anchors",
            help="Also check the chain against the heads published on the anchors topic "
            "(TENANTRY_ANCHORS_TOPIC / TENANTRY_ANCHORS_BOOTSTRAP_SERVERS).",
        ),
    ] = False,
) -> None:
    """Walk a tenant's chain and report the first broken link (exit status 1 if broken,
    2 if the anchors cannot be read)."""

    async def run() -> service.VerifyReport:
        settings = AuditSettings()
        # Anchors first: every anchor read is then in the chain's (later) snapshot.
        anchors = (
            await anchors_for(settings=settings, tenant_id=tenant) if against_anchors else None
        )
        async with _engine(settings) as engine:
            return await service.verify_chain(
                engine=engine,
                tenant_id=tenant,
                batch_rows=settings.verify_batch_rows,
                anchors=anchors,
            )

    try:
        report = asyncio.run(run())
    except AnchorsUnavailable as exc:
        typer.echo(json.dumps({"tenant_id": str(tenant), "ok": None, "error": str(exc)}))
        raise typer.Exit(2) from None
    broken = report.first_break
    typer.echo(
        json.dumps(
            {
                "tenant_id": str(report.tenant_id),
                "ok": report.ok,
                "records_checked": report.checked,
                "checkpoint_sequence": report.start_sequence,
                "head_sequence": report.head_sequence,
                "head_hash": report.head_hash,
                "first_broken_link": {"sequence": broken.sequence, "reason": broken.reason}
                if broken
                else None,
                "anchors_checked": report.anchors_checked,
            }
        )
    )
    raise typer.Exit(0 if report.ok else 1)


@cli.command()
def retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
    retention_days: Annotated[
        int | None, typer.Option(help="Override the configured retention period (days).")
    ] = None,
) -> None:
    """Remove records older than the retention period and publish what was removed."""

    async def run() -> service.RetentionRun:
        settings = AuditSettings()
        if retention_days is not None:
            settings = settings.model_copy(update={"retention_days": retention_days})
        async with _engine(settings) as engine:
            if dry_run:
                return await jobs.run_retention(
                    engine=engine, settings=settings, broker=None, dry_run=True
                )
            async with _broker(settings) as broker:
                return await jobs.run_retention(engine=engine, settings=settings, broker=broker)

    result = asyncio.run(run())
    typer.echo(
        json.dumps(
            {
                "cutoff": result.cutoff.isoformat(),
                "dry_run": dry_run,
                "tenants": [
                    {
                        "tenant_id": str(r.tenant_id),
                        "expired": r.expired,
                        "removed": r.removed,
                        "tombstoned": r.tombstoned,
                        "checkpoint_sequence": r.checkpoint_sequence,
                        "refused": None
                        if r.refused is None
                        else {"sequence": r.refused.sequence, "reason": r.refused.reason},
                    }
                    for r in result.results
                ],
            }
        )
    )
    if any(r.refused for r in result.results):
        raise typer.Exit(1)


@cli.command()
def anchor() -> None:
    """Publish every tenant's chain head on ``audit.anchors.v1`` once."""

    async def run() -> int:
        settings = AuditSettings()
        async with _engine(settings) as engine, _broker(settings) as broker:
            return await jobs.AnchorPublisher(engine=engine, broker=broker).publish()

    typer.echo(json.dumps({"published": asyncio.run(run())}))


if __name__ == "__main__":
    cli()
