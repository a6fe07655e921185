"""Every benchmark, run at tiny scale through its own command line: the code paths of the full-scale
runs, in seconds, so a refactor that breaks one fails here (the figures themselves are not checked:
targets live in the benchmarks, never in timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from tests.conftest import ROOT

SMOKE = {
    "ingest": ["--scale", "small"],
    "synthetic": ["--users", "500", "--movies", "200", "--catalog", "1000", "--sample", "100"],
    "validate": ["--scale", "small", "--baseline-rows", "20000"],
    "embed": ["--texts", "200", "--users-scale", "small"],
    "stores": ["--catalog", "2000", "--movies", "500", "--users", "300", "--queries", "20", "--baseline-rows", "500"],
    "neo4j_store": ["--scale", "small", "--slice", "2000", "--queries", "5"],
    "agentdb": ["--scale", "small", "--slice-users", "50"],
    "refresh": ["--scale", "small", "--catalog-size", "100", "--skip-validate"],
    "search": ["--scale", "small", "--runs", "1"],
    "embed_scale": ["--texts", "200", "--shards", "2"],
}


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__", "common"}
    assert scripts == set(SMOKE)


def servers_of_benchmarks() -> set[int]:
    """Processes started from this checkout's benchmark cache (the servers a benchmark starts)."""
    cache = str(ROOT / "benchmarks" / ".cache")
    found = set()
    for process in psutil.process_iter():
        try:
            if any(cache in part for part in [*process.cmdline(), *process.environ().values()]):
                found.add(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.parametrize("name", SMOKE)
def test_a_benchmark_runs_at_tiny_scale_and_reports_its_figures(name):
    before = servers_of_benchmarks()
    done = subprocess.run([sys.executable, f"benchmarks/{name}.py", *SMOKE[name]], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    left = servers_of_benchmarks() - before  # a server left running outlives the checkout it came from
    assert not left, [" ".join(psutil.Process(pid).cmdline()) for pid in left if psutil.pid_exists(pid)]
    figures = json.loads(done.stdout.strip().splitlines()[-1])  # the last line: one JSON object
    assert {"wall_s", "cpu_s", "peak_rss_mb", "speedup", "cpu"} <= set(figures), sorted(figures)
    assert figures["wall_s"] > 0 and figures["speedup"] > 0
    if name == "stores":  # one search target per store x vector set x filter, each a measured setting
        targets = {(t["store"], t["vectors"], t["filter"]): t for t in figures["search_targets"]}
        assert set(targets) == {(store, vectors, kept) for store in ("milvus", "postgres")
                                for vectors in ("real", "real-movies", "generated") for kept in ("none", "10%", "1%")}
        assert all(0 < t["recall_at_10"] <= 1 and 0 < t["p50_ms"] <= t["p99_ms"] for t in targets.values())
        assert all(figures["server_rss_mb"][store] > 0 for store in ("milvus", "postgres"))
