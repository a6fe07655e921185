"""Search benchmark: `python -m flows.search` from the command line, as a user runs it, against the path it
replaced (sentence-transformers and Prefect imported for one query).

    python benchmarks/search.py [--scale 25m|small] [--runs 5]

Data: the movies of the generated release at --scale (benchmarks/common.py: ingested), their platforms,
and 384-d vectors (clustered, generated, filed as all-MiniLM-L6-v2's: latency does not depend on their
values), loaded into a PostgreSQL the benchmark starts (its own port) and a Milvus Lite file, by the
load stage's code.
- ours: each store, a text query and a `--like` query, each `python -m flows.search` a fresh process
  (`--runs` times; the median wall time, its CPU seconds, the process's peak RSS).
- baseline: a fresh process doing what the CLI did before: Prefect imported (flows.common did),
  the model loaded through sentence-transformers, the text encoded, the store searched.
Targets: a text query <= 3 s wall, `--like` <= 1 s, on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, ROOT, SCALES, cpu_model, ingested  # noqa: E402
from benchmarks.stores import clustered, write_h5  # noqa: E402

STORES = ("milvus", "postgres")
TEXT = "space adventure with robots"
BASELINE = """
import sys
import prefect  # imported by flows.common before
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.base import Query
from tasks.embed.models import encode, load_model
settings = Settings(data_dir=sys.argv[1])
vector = encode(load_model("all-MiniLM-L6-v2", "cpu"), [sys.argv[3]])[0].tolist()
store = STORES[sys.argv[2]].open(settings)
print(len(store.search(Query(vector=vector, k=10))))
store.close()
"""


def paths(scale: str) -> tuple[Path, Path]:
    return CACHE / f"search-data-{scale}", CACHE / f"search-services-{scale}"


def settings(scale: str):
    from tasks.settings import Settings

    data, services_dir = paths(scale)
    ports = json.loads((services_dir / "ports.json").read_text())
    return Settings(_env_file=None, data_dir=data, services_dir=services_dir, postgres_port=ports["postgres"],
                    milvus_port=ports["milvus"], milvus_http_port=ports["milvus_http"])


def prepare(scale: str) -> Path:
    """The data dir (once per scale) and the benchmark's PostgreSQL, both stores loaded."""
    import shutil

    import polars as pl

    from benchmarks.common import free_port
    from tasks import services
    from tasks.stores.loading import load_store
    from tasks.synthetic.datasets import availability, build_platforms

    data, services_dir = paths(scale)
    if not (data / "benchmark.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        (data / "processed").mkdir(parents=True)
        shutil.copy(ingested(scale) / "movies.parquet", data / "processed" / "movies.parquet")
        media = pl.read_parquet(data / "processed" / "movies.parquet", columns=["media_id"])["media_id"].to_list()
        build_platforms(data / "synthetic" / "platforms.parquet")
        availability(media).write_parquet(data / "synthetic" / "availability.parquet")
        write_h5(data / "embeddings" / "media.h5", media, clustered(len(media), 1), "all-MiniLM-L6-v2")
        (data / "benchmark.json").write_text(json.dumps({"movies": len(media)}))
    services_dir.mkdir(parents=True, exist_ok=True)
    services_dir.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
    ports = services_dir / "ports.json"
    if not ports.exists() or "milvus" not in json.loads(ports.read_text()):
        ports.write_text(json.dumps({"postgres": free_port(), "milvus": free_port(), "milvus_http": free_port()}))
    services.start(settings(scale), ["postgres", "milvus"])
    for store in STORES:
        load_store(settings(scale), store, lambda m: None)
    return data


def timed(command: list[str], env: dict) -> dict:
    """One fresh process: its wall and CPU seconds and its own peak RSS (from its rusage at exit)."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss // 1024}


def median_of(runs: list[dict]) -> dict:
    return {"wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="25m", choices=SCALES, help="small: the tests' smoke run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}", flush=True)
    data = prepare(args.scale)
    config = settings(args.scale)
    env = {**os.environ, "MG_SERVICES_DIR": str(config.services_dir), "MG_POSTGRES_PORT": str(config.postgres_port),
           "MG_MILVUS_PORT": str(config.milvus_port), "MG_MILVUS_HTTP_PORT": str(config.milvus_http_port)}
    cli = [sys.executable, "-m", "flows.search", "--data-dir", str(data), "-k", "10"]
    figures, baseline = {}, {}
    try:
        for store in STORES:
            for kind, query in (("text", [TEXT]), ("like", ["--like", "ml_1"])):
                runs = [timed([*cli, *query, "--store", store], env) for _ in range(args.runs)]
                figures[f"{store}_{kind}"] = median_of(runs)
                print(f"{store:8} {kind:4} {figures[f'{store}_{kind}']}", flush=True)
            runs = [timed([sys.executable, "-c", BASELINE, str(data), store, TEXT], env)
                    for _ in range(max(1, args.runs // 2))]
            baseline[store] = median_of(runs)
            print(f"{store:8} baseline text {baseline[store]}", flush=True)
    finally:
        from tasks import services

        services.stop(config, ["postgres", "milvus"])
    slowest_text = max(figures[f"{s}_text"]["wall_s"] for s in STORES)
    slowest_like = max(figures[f"{s}_like"]["wall_s"] for s in STORES)
    ours = max((figures[f"{s}_text"] for s in STORES), key=lambda f: f["wall_s"])
    base = max(baseline.values(), key=lambda f: f["wall_s"])
    print(json.dumps({
        "benchmark": "search", "cpu": cpu_model(), "scale": args.scale, "runs": args.runs,
        "wall_s": ours["wall_s"], "cpu_s": ours["cpu_s"], "peak_rss_mb": ours["peak_rss_mb"],
        "baseline": "the CLI's former path: Prefect imported, the model through sentence-transformers",
        "baseline_wall_s": base["wall_s"], "baseline_cpu_s": base["cpu_s"], "baseline_peak_rss_mb": base["peak_rss_mb"],
        "speedup": round(base["wall_s"] / ours["wall_s"], 2), "by_store": figures, "baseline_by_store": baseline,
        "targets": {"text_3s": slowest_text <= 3.0, "like_1s": slowest_like <= 1.0},
    }))


if __name__ == "__main__":
    main()
