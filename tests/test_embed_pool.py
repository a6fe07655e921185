"""The embed stage on a work pool: two real process workers started here take the shards of a small
catalog from a real Prefect server; a worker killed in the middle of a shard loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from flows.embed import embed_flow, shard_workers
from tasks.embed.embeddings import encode_to_h5, read_h5
from tests.conftest import ROOT
from tests.test_embeddings import cosines, write_catalog

BIN = Path(sys.executable).parent
POOL = "local-process"


def catalog_texts(n: int, words: int, salt: str = "") -> list[str]:
    rng = np.random.default_rng(len(salt) + n)
    vocabulary = "river night robot garden storm letter city winter song engine mirror forest dream".split()
    return [f"{salt}Item {i}: " + " ".join(rng.choice(vocabulary, words)) for i in range(n)]


def shard_runs(client) -> list:
    deployment = client.read_deployment_by_name(f"embed-shard/{POOL}")
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


def reference(data: Path, model, tmp_path: Path) -> tuple[list[str], np.ndarray]:
    """The catalog's vectors embedded in one file in this process."""
    texts = pl.read_parquet(data / "synthetic" / "media_catalog.parquet").sort("id")
    encode_to_h5(texts.select("id", text="content_text"), tmp_path / "reference.h5", model, "all-MiniLM-L6-v2")
    return read_h5(tmp_path / "reference.h5")


@pytest.fixture()
def workers(prefect_server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    deployed = subprocess.run([sys.executable, "-m", "deployments.deploy"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    env["PREFECT_WORKER_QUERY_SECONDS"] = "2"  # a free worker asks for the next shard at once (README)
    started = {}
    for name in ("embed-worker-1", "embed-worker-2"):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        # Its own session: killing the group kills the worker and the flow run it started, as a lost host would.
        started[name] = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--work-queue", "embed", "--limit", "1",
             "--name", name], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield started
    for process in started.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_shards_spread_over_two_workers_rerun_nothing_and_survive_a_lost_worker(
        workers, prefect_server, tmp_path, monkeypatch):
    """Spread over both workers and equal to the in-process vectors; a rerun submits nothing; one changed
    text runs one shard; a shard still in flight is waited for; a corrupt part is rebuilt; a worker
    killed mid-shard loses nothing."""
    from tasks.embed.models import load_model
    from tasks.ingest.movielens import ingest_release
    from tests.test_ingest import write_release

    model = load_model("all-MiniLM-L6-v2", "cpu")
    data = tmp_path / "data"
    ingest_release(write_release(tmp_path / "rel"), data / "processed")
    write_catalog(data, catalog_texts(600, 8))
    monkeypatch.setenv("MG_EMBED_SHARD_ROWS", "150")  # the catalog in 4 shards, the 8 movies in 1

    written = embed_flow(str(data), pool=POOL)
    with get_client(sync_client=True) as client:
        runs = shard_runs(client)
    assert len(runs) == 5 and {r.state_name for r in runs} == {"Completed"}
    # Spread over both workers (the workers' own events say which started what).
    assert set(shard_workers([str(r.id) for r in runs]).values()) == set(workers)
    ids, vectors = read_h5(Path(written["catalog"]))
    expected_ids, expected = reference(data, model, tmp_path)
    assert ids == expected_ids and cosines(vectors, expected).min() >= 0.9999
    assert len(read_h5(Path(written["media"]))[0]) == 8 and Path(written["users"]).exists()

    # Unchanged inputs: no shard submitted.
    embed_flow(str(data), pool=POOL)
    with get_client(sync_client=True) as client:
        assert len(shard_runs(client)) == 5
    # One changed text: exactly its shard runs again.
    texts = catalog_texts(600, 8)
    texts[400] = "A changed text about lighthouses."
    write_catalog(data, texts)
    parts = data / "embeddings" / "catalog"
    stamps = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.h5")}
    embed_flow(str(data), pool=POOL)
    with get_client(sync_client=True) as client:
        assert len(shard_runs(client)) == 6
    assert [p for p in sorted(stamps) if (parts / p).stat().st_mtime_ns != stamps[p]] == ["part-00002.h5"]

    # A shard's run still in flight from an embed flow that was stopped (made here as that flow made
    # it, before this one starts) is waited for, not submitted twice.
    from prefect.deployments import run_deployment

    from tasks.embed.tasks import plan_set

    texts[500] = "Another changed text, about harbours."
    write_catalog(data, texts)
    (pending,) = plan_set(data, "catalog", "all-MiniLM-L6-v2", 150)[1]
    orphan = run_deployment(f"embed-shard/{POOL}", timeout=0, parameters={
        "shard": pending.__dict__, "model": "all-MiniLM-L6-v2", "data_dir": str(data)})
    embed_flow(str(data), pool=POOL)
    with get_client(sync_client=True) as client:
        runs = shard_runs(client)
    assert len(runs) == 7 and next(r for r in runs if r.id == orphan.id).state_name == "Completed"
    assert pending.index == 3

    # A corrupt part (cut short) is found by the next run and rebuilt on the pool: one run, no other.
    whole = (parts / "part-00001.h5").read_bytes()
    (parts / "part-00001.h5").write_bytes(whole[: len(whole) // 3])
    written = embed_flow(str(data), pool=POOL)
    with get_client(sync_client=True) as client:
        runs = shard_runs(client)
    catalog_shards = [r.parameters["shard"]["index"] for r in runs if r.parameters["shard"]["set"] == "catalog"]
    assert len(runs) == 8 and catalog_shards.count(1) == 2  # its first run, and the rebuild
    assert read_h5(Path(written["catalog"]))[0] == sorted(f"c{i:03d}" for i in range(600))

    # A worker lost in the middle of a shard: long texts make a shard last seconds; when a part is being
    # written, the worker whose flow run holds it is killed with that run. The run stops sending
    # heartbeats, the automation marks it Crashed, the embed flow submits the shard again, and the
    # other worker finishes it (resuming its partial part).
    write_catalog(data, catalog_texts(600, 160, salt="long "))
    with get_client(sync_client=True) as client:
        earlier = {r.id for r in shard_runs(client)}
    killed: dict[str, str] = {}

    def kill_the_worker_writing_a_part() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for name, worker in workers.items():
                try:
                    children = psutil.Process(worker.pid).children(recursive=True)
                    held = [f.path for child in children for f in child.open_files() if f.path.endswith(".partial")]
                except psutil.Error:
                    continue
                if held:
                    killed.update(worker=name, part=Path(held[0]).name)
                    os.killpg(worker.pid, signal.SIGKILL)
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_the_worker_writing_a_part)
    watcher.start()
    written = embed_flow(str(data), pool=POOL)
    watcher.join()
    assert killed, "no shard was seen being written"
    with get_client(sync_client=True) as client:
        latest = [r for r in shard_runs(client) if r.id not in earlier]
    crashed = [r for r in latest if r.state_name == "Crashed"]
    assert len(crashed) == 1, [(r.name, r.state_name) for r in latest]
    shard_tag = next(t for t in crashed[0].tags if "-shard-" in t)
    again = [r for r in latest if shard_tag in r.tags and r.state_name == "Completed"]
    assert again and shard_workers([str(again[-1].id)])[str(again[-1].id)] != killed["worker"]
    ids, vectors = read_h5(Path(written["catalog"]))
    expected_ids, expected = reference(data, model, tmp_path)
    assert ids == expected_ids and cosines(vectors, expected).min() >= 0.9999
    assert not list(parts.glob("*.partial"))  # every shard complete, once
