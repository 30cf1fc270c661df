"""Operators' CLI: ``python -m tenantry_auth.cli <command>`` (same settings as the edge).

The first operator gets a token either by starting the edge with
``TENANTRY_BOOTSTRAP_OPERATOR_SECRET`` set (client id ``operator``), or with
``python -m tenantry_auth.cli bootstrap-operator``, which creates operator credentials directly
in the database and prints them once. Then: ``POST /v1/oauth/token`` with those credentials.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import typer
from tenantry_common.db import create_engine
from tenantry_common.events import Tier
from tenantry_common.messaging import build_broker
from tenantry_common.redis import create_redis

from tenantry_auth import repository as repo
from tenantry_auth import service
from tenantry_auth.app import build_edge, migrate
from tenantry_auth.config import Settings
from tenantry_auth.keys import rotate_signing_key
from tenantry_auth.security import new_client_secret

app = typer.Typer(help="Operate the Tenantry edge: operators, tenants, signing keys.")
T = TypeVar("T")


@asynccontextmanager
async def _edge(settings: Settings, *, with_broker: bool) -> AsyncIterator[service.Edge]:
    engine = create_engine(settings.postgres_dsn, pool_size=2)
    redis = create_redis(settings.redis_url)
    broker = build_broker(settings, client_id="edge-cli")
    try:
        if with_broker:
            await broker.connect()
        yield build_edge(settings, engine=engine, redis=redis, broker=broker)
    finally:
        if with_broker:
            await broker.stop()
        await redis.aclose()
        await engine.dispose()


def _run(job: Callable[[service.Edge], Awaitable[T]], *, with_broker: bool = False) -> T:
    settings = Settings()

    async def main() -> T:
        await migrate(settings)
        async with _edge(settings, with_broker=with_broker) as edge:
            return await job(edge)

    return asyncio.run(main())


@app.command("bootstrap-operator")
def bootstrap_operator(
    client_id: Annotated[str, typer.Option(help="Operator client id.")] = "operator",
) -> None:
    """Create (or reset) operator credentials and print them once."""
    secret = new_client_secret()

    async def job(edge: service.Edge) -> None:
        await service.bootstrap_operator(edge=edge, client_id=client_id, secret=secret)

    _run(job)
    typer.echo(json.dumps({"client_id": client_id, "client_secret": secret}))


@app.command("create-tenant")
def create_tenant(
    name: Annotated[str, typer.Option()],
    admin_contact: Annotated[str, typer.Option()],
    tier: Annotated[Tier, typer.Option()] = Tier.FREE,
) -> None:
    """Onboard a tenant; prints its id and admin credentials (shown once)."""

    async def job(edge: service.Edge) -> service.ProvisionedTenant:
        return await service.provision_tenant(
            edge=edge, name=name, tier=tier, admin_contact=admin_contact, actor="cli"
        )

    made = _run(job, with_broker=True)
    typer.echo(
        json.dumps(
            {
                "tenant_id": str(made.tenant.tenant_id),
                "status": made.tenant.status,
                "client_id": made.client_id,
                "client_secret": made.client_secret,
            }
        )
    )


@app.command("list-tenants")
def list_tenants() -> None:
    """Print every tenant as JSON lines."""

    async def job(edge: service.Edge) -> list[dict[str, str]]:
        async with edge.sessions() as session:
            tenants = await repo.list_all_tenants(session=session)
        return [
            {"tenant_id": str(t.tenant_id), "name": t.name, "tier": t.tier, "status": t.status}
            for t in tenants
        ]

    for row in _run(job):
        typer.echo(json.dumps(row))


@app.command("offboard")
def offboard(tenant_id: uuid.UUID, reason: str = "offboarded by operator (cli)") -> None:
    """Offboard a tenant: its tokens are refused at once; services delete its data."""

    async def job(edge: service.Edge) -> str:
        tenant = await service.offboard_tenant(
            edge=edge, tenant_id=tenant_id, actor="cli", reason=reason
        )
        return tenant.status

    typer.echo(json.dumps({"tenant_id": str(tenant_id), "status": _run(job, with_broker=True)}))


@app.command("change-tenant")
def change_tenant(
    tenant_id: uuid.UUID,
    tier: Annotated[Tier | None, typer.Option(help="Move the tenant to this tier.")] = None,
    name: Annotated[str | None, typer.Option(help="Rename the tenant.")] = None,
) -> None:
    """Move an active tenant to another tier, or rename it (a new config version; limits at the
    old tier's caps take the new tier's, as PATCH /v1/tenants/{id} does)."""

    async def job(edge: service.Edge) -> service.CommittedConfig:
        return await service.change_tenant(
            edge=edge,
            tenant_id=tenant_id,
            change=service.TenantChange(tier=tier, name=name),
            actor="cli",
        )

    committed = _run(job, with_broker=True)
    typer.echo(
        json.dumps(
            {
                "tenant_id": str(tenant_id),
                "name": committed.tenant.name,
                "tier": committed.tenant.tier,
                "config_version": committed.version,
                "changed": committed.changed,
            }
        )
    )


@app.command("rotate-key")
def rotate_key() -> None:
    """Make a new signing key current (old keys stay published until their tokens expire)."""

    async def job(edge: service.Edge) -> str:
        return await rotate_signing_key(sessions=edge.sessions, cipher=edge.keys.cipher)

    typer.echo(json.dumps({"kid": _run(job)}))


@app.command("migrate")
def migrate_db() -> None:
    """Create and upgrade the edge's database."""
    asyncio.run(migrate(Settings()))


if __name__ == "__main__":
    app()
