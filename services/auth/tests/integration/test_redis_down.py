"""When Redis is down: chat fails closed (503 + Retry-After: limits and budgets cannot be
guaranteed), authentication and revocation fall back to Postgres, refusal-making changes are
refused (503) rather than left unenforced, and everything recovers when Redis returns."""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import pytest
from auth_support import bearer, get_token, start_replica, stop_replica
from tenantry_common.localstack import free_port

pytestmark = pytest.mark.integration


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("redis-server did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


async def _until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.3)
    raise AssertionError("condition not met in time")


async def test_redis_outage_fails_chat_closed_and_keeps_revocation_exact(
    edge_settings, onboard, client, operator_token, responder
) -> None:
    tenant = await onboard(tier="pro")
    port = free_port()
    redis_proc = _start_redis(port)
    replica = await start_replica(
        edge_settings, {"TENANTRY_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    )
    try:
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as edge:
            member = await get_token(edge, *(await _member(client, tenant)))
            assert (
                await edge.post("/v1/chat", json={"question": "up"}, headers=bearer(member))
            ).status_code == 200

            _stop(redis_proc)
            r = await edge.post("/v1/chat", json={"question": "down"}, headers=bearer(member))
            assert r.status_code == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert "Redis" in r.json()["detail"]
            r = await edge.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "down"}]},
                headers=bearer(member),
            )
            assert r.status_code == 503
            assert int(r.headers["Retry-After"]) >= 1
            error = r.json()["error"]  # OpenAI's shape on its route
            assert (error["type"], error["code"]) == ("server_error", "service_unavailable")
            assert "Redis" in error["message"]
            # A search counts against the rate limit, which cannot be checked: refused too.
            r = await edge.post(
                "/v1/search", json={"query": "down"}, headers=bearer(tenant.admin_token)
            )
            assert (r.status_code, "Redis" in r.json()["detail"]) == (503, True), r.text
            assert int(r.headers["Retry-After"]) >= 1
            # A conversation cannot be read either: 503, not a question sent without its turns.
            conversation = "0b6c8e9a-3f1d-4e2a-9c7b-5d4e3f2a1b0c"
            r = await edge.post(
                "/v1/chat",
                json={"question": "and then?", "conversation_id": conversation},
                headers=bearer(member),
            )
            assert (r.status_code, "Redis" in r.json()["detail"]) == (503, True), r.text
            assert int(r.headers["Retry-After"]) >= 1
            r = await edge.get(f"/v1/conversations/{conversation}", headers=bearer(member))
            assert r.status_code == 503, r.text
            assert (await edge.get("/readyz")).status_code == 503

            # Authentication still works, answered by Postgres.
            assert (
                await edge.get("/v1/config", headers=bearer(tenant.admin_token))
            ).status_code == 200
            # Offboarding needs the revocation store: refused, and nothing changed.
            r = await edge.delete(f"/v1/tenants/{tenant.tenant_id}", headers=bearer(operator_token))
            assert r.status_code == 503
            assert (
                await edge.get(f"/v1/tenants/{tenant.tenant_id}", headers=bearer(member))
            ).json()["status"] == "active"
            # A revocation made elsewhere (another replica, Redis up there) is refused here at once.
            client_id = _claims_client(member)
            assert (
                await client.delete(f"/v1/clients/{client_id}", headers=bearer(tenant.admin_token))
            ).status_code == 204
            assert (
                await edge.get(f"/v1/tenants/{tenant.tenant_id}", headers=bearer(member))
            ).status_code == 401

            # Redis returns (empty): the replica leases a partition again and chat resumes.
            redis_proc = _start_redis(port)
            admin_member = await get_token(edge, *(await _member(client, tenant)))

            async def chat_ok():
                r = await edge.post(
                    "/v1/chat", json={"question": "back"}, headers=bearer(admin_member)
                )
                return r.status_code == 200

            await _until(chat_ok)
            # The revocation still holds after Redis came back empty.
            assert (
                await edge.get(f"/v1/tenants/{tenant.tenant_id}", headers=bearer(member))
            ).status_code == 401
    finally:
        await stop_replica(replica)
        if redis_proc.poll() is None:
            _stop(redis_proc)


async def _member(client, tenant) -> tuple[str, str]:
    made = (
        await client.post(
            "/v1/clients", json={"role": "member"}, headers=bearer(tenant.admin_token)
        )
    ).json()
    return made["client_id"], made["client_secret"]


def _claims_client(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["client_id"])
