"""bench_system.reuse_fill: new tenants get the filled collections, on a real embedded Chroma."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_system

pytestmark = pytest.mark.integration


def tenant(tenant_id: str) -> bench_system.tenantry.BenchTenant:
    return bench_system.tenantry.BenchTenant(
        tenant_id=tenant_id,
        admin_client_id="a",
        admin_client_secret="s",
        member_client_id="m",
        member_client_secret="s",
    )


def docs(tenant_id: str) -> str:
    return f"tenant-{uuid.UUID(tenant_id).hex}-docs"


def cache(tenant_id: str) -> str:
    return f"tenant-{uuid.UUID(tenant_id).hex}-cache"


def test_new_tenants_get_the_filled_collections_and_the_record_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chromadb

    monkeypatch.setattr(bench_system, "FILLED", tmp_path / "filled.json")
    old, new = [str(uuid.uuid4()) for _ in range(2)], [str(uuid.uuid4()) for _ in range(2)]
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    for i, tenant_id in enumerate(old):
        client.create_collection(docs(tenant_id)).add(
            ids=[f"{i}-{n}" for n in range(3)],
            embeddings=[[float(i), 1.0, float(n)] for n in range(3)],
        )
    client.create_collection(docs(new[0]))  # empty (its documents deleted): replaced
    client.create_collection(cache(new[1])).add(ids=["q"], embeddings=[[1.0, 1.0, 1.0]])
    bench_system.FILLED.write_text(json.dumps({"tenant_ids": old, "chunks": 3}))

    assert bench_system.reuse_fill([tenant(t) for t in new], 3, chroma=tmp_path / "chroma") == {
        "reused": 2,
        "dropped": 0,
    }
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    assert [client.get_collection(docs(t)).count() for t in new] == [3, 3]
    names = {c.name for c in client.list_collections()}
    assert not names & {docs(t) for t in old}
    assert cache(new[1]) in names  # the new tenants' own collections stay
    assert bench_system.chunks_filled(new, bench_system.read_filled(), 3)
    # Filled already: nothing to do.
    assert bench_system.reuse_fill([tenant(t) for t in new], 3, chroma=tmp_path / "chroma") == {
        "reused": 0,
        "dropped": 0,
    }


def test_the_collections_of_tenants_no_service_knows_are_dropped_and_the_unused_fill_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chromadb

    monkeypatch.setattr(bench_system, "FILLED", tmp_path / "filled.json")
    filled, new = [str(uuid.uuid4()) for _ in range(2)], str(uuid.uuid4())
    forgotten = [str(uuid.uuid4()) for _ in range(3)]  # earlier runs' tenants
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    for tenant_id in filled:
        client.create_collection(docs(tenant_id)).add(ids=["x"], embeddings=[[1.0, 0.0]])
    for tenant_id in forgotten:
        client.create_collection(docs(tenant_id))
        client.create_collection(cache(tenant_id)).add(ids=["q"], embeddings=[[0.0, 1.0]])
    client.create_collection("not-a-tenant-namespace")
    bench_system.FILLED.write_text(json.dumps({"tenant_ids": filled, "chunks": 1}))

    assert bench_system.reuse_fill([tenant(new)], 1, chroma=tmp_path / "chroma") == {
        "reused": 1,
        "dropped": 6,
    }
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    assert {c.name for c in client.list_collections()} == {
        docs(new),
        docs(filled[1]),  # the fill's spare, for a run with more tenants
        "not-a-tenant-namespace",
    }
    assert bench_system.read_filled() == {"tenant_ids": [new, filled[1]], "chunks": 1}


def test_a_fill_too_small_or_a_collection_in_use_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chromadb

    monkeypatch.setattr(bench_system, "FILLED", tmp_path / "filled.json")
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    client.create_collection(docs(old)).add(ids=["x"], embeddings=[[1.0, 0.0]])
    client.create_collection(docs(new)).add(ids=["y"], embeddings=[[0.0, 1.0]])
    bench_system.FILLED.write_text(json.dumps({"tenant_ids": [old], "chunks": 1}))
    with pytest.raises(RuntimeError, match="no fill"):
        bench_system.reuse_fill([tenant(new)], 2, chroma=tmp_path / "chroma")
    with pytest.raises(RuntimeError, match="holds records"):
        bench_system.reuse_fill([tenant(new)], 1, chroma=tmp_path / "chroma")
