"""What every benchmark shares: each measured path runs in its own process and reports its own figures.

Peak RSS is the child's own VmHWM, read by the child at its end: Linux carries `ru_maxrss` across
fork and exec, so a child of a parent that grew first (say, after generating a release in-process)
would report the parent's peak. CPU seconds (user + sys) stand beside wall seconds: on a shared
2-core machine wall-time ratios swing with load, CPU-second ratios much less.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"


SCALES = ("25m", "small")  # small: the smoke runs of the tests, the same code paths in seconds


def ingest_25m() -> Path | None:
    """What benchmarks/ingest.py left in .cache/out-ours, when it is the 25m release's ingest (its
    stats name the release it read)."""
    stats = CACHE / "out-ours" / "stats.json"
    if not stats.exists() or "ml-25m" not in Path(json.loads(stats.read_text())["source"]).name:
        return None
    return stats.parent


def ingested(scale: str) -> Path:
    """processed/ of a generated release: at 25m what benchmarks/ingest.py leaves in .cache/out-ours;
    small (100,836 ratings, 610 users) generated and ingested here in seconds."""
    if scale == "25m":
        out = ingest_25m()
        if out is None:
            raise SystemExit(f"{CACHE / 'out-ours'}: no 25m-scale ingest; run benchmarks/ingest.py first")
        return out
    from tasks.ingest.movielens import ingest_release
    from tasks.ingest.sample import generate

    out, release = CACHE / "out-ours-small", CACHE / "ml-small-seed42"
    if not (out / "stats.json").exists():
        if not (release / "README.txt").exists():
            generate("small", release, seed=42)
        ingest_release(release, out)
    return out


def own_peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), which exec resets, unlike ru_maxrss."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def cpu_seconds() -> float:
    """User + system seconds of this process and of the children it waited for."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def measure(fn: Callable[[], dict | None]) -> None:
    """Child side: run fn, print one JSON line with its wall and CPU seconds, its own peak RSS and
    what it returned."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    extra = fn() or {}
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    print(json.dumps({"seconds": round(seconds, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(own_peak_rss_mb()),
                      **extra}))


def run_child(script: str, path: str, *args: str) -> dict:
    """Parent side: run `script --child PATH ARGS...` and return its figures."""
    result = subprocess.run([sys.executable, script, "--child", path, *args], capture_output=True, text=True,
                            check=False, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{path} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{path:22} {figures['seconds']:8.1f} s  {figures['cpu_s']:8.1f} CPU s  "
          f"peak RSS {figures['peak_rss_mb']:6d} MB", flush=True)
    return figures


def compare(ours: dict, baseline: dict) -> dict:
    """The figures every benchmark's last line carries for our path against its baseline."""
    return {"wall_s": ours["seconds"], "cpu_s": ours["cpu_s"], "peak_rss_mb": ours["peak_rss_mb"],
            "baseline_wall_s": baseline["seconds"], "baseline_cpu_s": baseline["cpu_s"],
            "baseline_peak_rss_mb": baseline["peak_rss_mb"],
            "speedup": round(baseline["seconds"] / ours["seconds"], 2),
            "cpu_speedup": round(baseline["cpu_s"] / ours["cpu_s"], 2) if ours["cpu_s"] else None}


def child_or_prepare(child: str | None, children: dict[str, Callable[[], dict | None]],
                     prepare: Callable[[], Path]) -> bool:
    """A benchmark script's two sides. Child: run the named child's measurement; returns True. Parent:
    print the CPU, prepare the data dir; returns False."""
    if child:
        measure(children[child])
        return True
    print(f"CPU: {cpu_model()}", flush=True)
    started = time.perf_counter()
    data = prepare()
    print(f"data dir {data} ready in {time.perf_counter() - started:.0f} s", flush=True)
    return False


def timed_load(settings, store: str) -> tuple[dict, list[tuple[float, str]], float]:
    """One store's load stage (tasks.stores.loading.load_store), its log lines echoed to stderr and
    timed: (summary, [(seconds since the start, line)], seconds)."""
    from tasks.stores.loading import load_store

    started, events = time.perf_counter(), []

    def log(message: str) -> None:
        events.append((time.perf_counter() - started, message))
        print(message, file=sys.stderr, flush=True)

    summary = load_store(settings, store, log)
    return summary, events, time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_model() -> str:
    """Which CPU a figure came from, and whether it multiplies bf16 natively (AMX / AVX512-BF16)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"{name} ({', '.join(wanted) or 'no AVX2'})"
