"""The embed stage over a work pool: the same catalog texts in-process, then through the local process
pool with 1 and with 2 workers (one torch thread each on this 2-core machine).

    python benchmarks/embed_scale.py [--texts 20000] [--shards 4] [--gpu-rate TEXTS_PER_S]

Each path runs in its own child (which starts and stops the workers it uses, so its CPU seconds
count theirs) against this benchmark's own Prefect server, with embed-shard/local-process registered
by deployments/deploy.py. From the Prefect API, each shard's flow run: time queued (Scheduled -> Pending:
waiting for a free worker, then its poll), overhead (Pending -> Completed less the shard's own encode seconds: process start,
imports, model load) and encode rate. Texts/s count the shards' phase: from the first submission to
the last shard done. The last line: scaling_efficiency (2-worker texts/s over twice the 1-worker
texts/s), shard_overhead_fraction (overhead over overhead + a default-size shard's encode
time at one worker's rate), min_cosine_vs_in_process, and projected_100m_8gpu_s (100M texts in
default-size shards over 8 GPUs at --gpu-rate, the 30,000 texts/s target unless a GPU measured one,
each shard paying the overhead measured here), beside the usual fields (speedup: in-process wall
over the 2-worker pool's wall).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, ROOT, compare, cpu_model, free_port, run_child  # noqa: E402

WORK = CACHE / "embed-scale"
MODEL = "all-MiniLM-L6-v2"
POOL = "local-process"
GPU_TARGET = 30_000  # texts/s per GPU: the design's target, used unless a GPU measured a rate
PROJECTED_TEXTS, PROJECTED_GPUS = 100_000_000, 8


def catalog(n: int) -> Path:
    """n items of the project's catalog template (seed 42): the texts every path embeds."""
    from flows.synthetic import CATALOG_TEMPLATE
    from tasks.synthetic.templates import load_template, write_dataset

    path = WORK / f"catalog-{n}.parquet"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        write_dataset(load_template(CATALOG_TEMPLATE), n, path, seed=42)
    return path


def fresh_data(name: str, n: int) -> Path:
    data = WORK / name
    shutil.rmtree(data, ignore_errors=True)
    (data / "synthetic").mkdir(parents=True)
    shutil.copy(catalog(n), data / "synthetic" / "media_catalog.parquet")
    return data


def server_settings():
    """This benchmark's Prefect server (its port saved beside it)."""
    from tasks.settings import Settings

    folder = WORK / "services"
    ports = folder / "ports.json"
    if not ports.exists():
        folder.mkdir(parents=True, exist_ok=True)
        ports.write_text(json.dumps({"prefect": free_port()}))
    return Settings(_env_file=None, services_dir=folder, prefect_port=json.loads(ports.read_text())["prefect"])


def server_env() -> dict[str, str]:
    """This benchmark's Prefect server started, with the deployments (main() stops it at the end)."""
    from tasks import services

    settings = server_settings()
    services.start(settings, ["prefect"])
    env = {**os.environ, "PREFECT_API_URL": settings.local_prefect_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    deployed = subprocess.run([sys.executable, "-m", "deployments.deploy"], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=False)
    if deployed.returncode:
        raise SystemExit(f"deployments.deploy failed:\n{deployed.stdout[-2000:]}{deployed.stderr[-2000:]}")
    return env


def embed(data: Path, shard_rows: int, pool: str | None) -> float:
    """The embed stage's own tasks on the catalog set: plan, shards (here or on the pool), index.
    Returns the seconds of the shards alone (submission to the last one done)."""
    from prefect import flow

    from flows.embed import run_on_pool
    from tasks.embed.shards import Shard
    from tasks.embed.tasks import embed_shards_task, index_set_task, plan_set_task

    @flow(name="embed-scale-benchmark")
    def catalog_set() -> float:
        started = time.perf_counter()
        shards, todo = plan_set_task(str(data), "catalog", MODEL, shard_rows)
        began = time.perf_counter()
        if pool:
            run_on_pool(pool, [Shard.of(s) for s in todo], str(data), MODEL)
        else:
            embed_shards_task(str(data), todo, MODEL, "cpu", 256)
        seconds = time.perf_counter() - began
        index_set_task(str(data), "catalog", shards, todo, MODEL, time.perf_counter() - started)
        return seconds

    return catalog_set()


def shard_figures(since: float) -> list[dict]:
    """Each shard flow run of the pool deployment that started after `since`: its timings."""
    import h5py
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    figures = []
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"embed-shard/{POOL}")
        for run in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))):
            states = {s.type.value: s.timestamp.timestamp() for s in client.read_flow_run_states(run.id)}
            if run.state_name != "Completed" or states.get("SCHEDULED", 0) < since:
                continue
            shard = run.parameters["shard"]
            part = Path(run.parameters["data_dir"]) / "embeddings" / shard["set"] / f"part-{shard['index']:05d}.h5"
            with h5py.File(part, "r") as f:
                encode_s = json.loads(f.attrs["counts"])["seconds"]
            figures.append({"rows": shard["stop"] - shard["start"], "encode_s": encode_s,
                            "queued_s": states["PENDING"] - states["SCHEDULED"],
                            "overhead_s": states["COMPLETED"] - states["PENDING"] - encode_s})
    return figures


def pool_child(workers: int) -> dict:
    """Start `workers` process workers on the embed queue (one shard each at a time), embed, stop them."""
    import psutil

    data, args = fresh_data(f"pool-{workers}", ARGS.texts), ARGS
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"}  # a free worker asks for the next shard at once
    started_workers = [subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", POOL, "--work-queue", "embed",
         "--limit", "1", "--name", f"bench-worker-{i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True) for i in range(workers)]
    peak, stop = [0], threading.Event()

    def sample() -> None:  # the workers and their flow runs together, resident
        while not stop.wait(0.5):
            total = 0
            for worker in started_workers:
                try:
                    tree = psutil.Process(worker.pid)
                    total += sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)

    threading.Thread(target=sample, daemon=True).start()
    since = time.time()
    try:
        seconds = embed(data, math.ceil(args.texts / args.shards), POOL)
    finally:
        stop.set()
        for worker in started_workers:
            os.killpg(worker.pid, signal.SIGINT)
        for worker in started_workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    return {"texts_per_s": round(args.texts / seconds, 1), "embed_s": round(seconds, 2),
            "workers_peak_rss_mb": round(peak[0] / 2**20), "shards": shard_figures(since)}


def in_process_child() -> dict:
    data = fresh_data("in-process", ARGS.texts)
    seconds = embed(data, math.ceil(ARGS.texts / ARGS.shards), None)
    return {"texts_per_s": round(ARGS.texts / seconds, 1), "embed_s": round(seconds, 2)}


def min_cosine(a: Path, b: Path) -> float:
    import numpy as np

    from tasks.embed.embeddings import read_h5

    ids_a, x = read_h5(a)
    ids_b, y = read_h5(b)
    if ids_a != ids_b:
        raise SystemExit(f"{a} and {b} hold other ids or another order")
    return float(((x * y).sum(axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min())


ARGS: argparse.Namespace


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4, help="shards the texts are split into (default 4)")
    parser.add_argument("--gpu-rate", type=float, help="texts/s of one GPU, measured (default: the 30,000 target)")
    parser.add_argument("--child")
    ARGS = parser.parse_args()
    children = {"in-process": in_process_child, "pool-1": lambda: pool_child(1), "pool-2": lambda: pool_child(2)}
    if ARGS.child:
        from benchmarks.common import measure

        measure(children[ARGS.child])
        return
    print(f"CPU: {cpu_model()}", flush=True)
    from tasks import services

    try:
        env = server_env()
        os.environ.update(PREFECT_API_URL=env["PREFECT_API_URL"], PREFECT_SERVER_ANALYTICS_ENABLED="false")
        catalog(ARGS.texts)
        args = ["--texts", str(ARGS.texts), "--shards", str(ARGS.shards)]
        baseline = run_child(__file__, "in-process", *args)
        one = run_child(__file__, "pool-1", *args)
        two = run_child(__file__, "pool-2", *args)
    finally:  # a server left behind outlives the checkout (and the test run) it came from
        services.stop(server_settings(), ["prefect"])

    from tasks.settings import Settings

    default_rows = Settings(_env_file=None).embed_shard_rows
    shards = one["shards"] + two["shards"]
    overhead = sum(s["overhead_s"] for s in shards) / len(shards)
    worker_rate = sum(s["rows"] for s in one["shards"]) / sum(s["encode_s"] for s in one["shards"])
    gpu_rate = ARGS.gpu_rate or GPU_TARGET
    per_gpu_shards = math.ceil(PROJECTED_TEXTS / default_rows / PROJECTED_GPUS)
    index = Path("embeddings") / "catalog.h5"
    figures = {
        "benchmark": "embed_scale", "cpu": cpu_model(), "model": MODEL, "texts": ARGS.texts, "shards": ARGS.shards,
        **compare(two, baseline),
        "in_process_texts_per_s": baseline["texts_per_s"], "pool_1_texts_per_s": one["texts_per_s"],
        "pool_2_texts_per_s": two["texts_per_s"], "pool_1_wall_s": one["seconds"],
        "workers_peak_rss_mb": {"pool-1": one["workers_peak_rss_mb"], "pool-2": two["workers_peak_rss_mb"]},
        "scaling_efficiency": round(two["texts_per_s"] / (2 * one["texts_per_s"]), 3),
        "shard_overhead_s": round(overhead, 2),
        "shard_queued_s": round(sum(s["queued_s"] for s in shards) / len(shards), 2),
        "worker_encode_texts_per_s": round(worker_rate, 1), "default_shard_rows": default_rows,
        "shard_overhead_fraction": round(overhead / (overhead + default_rows / worker_rate), 4),
        "min_cosine_vs_in_process": round(min(min_cosine(WORK / "in-process" / index, WORK / f"pool-{n}" / index)
                                              for n in (1, 2)), 6),
        "gpu_rate_texts_per_s": gpu_rate, "gpu_rate_source": "measured" if ARGS.gpu_rate else "target",
        "projected_100m_8gpu_s": round(per_gpu_shards * (overhead + default_rows / gpu_rate)),
        "gpu_shard_rows_for_5pct_overhead": math.ceil(19 * overhead * gpu_rate),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
