"""What every benchmark shares: each measured path runs in its own process, so each peak RSS is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"


def measure(fn: Callable[[], dict | None]) -> None:
    """Child side: run fn, print one JSON line with its wall seconds, peak RSS and what it returned."""
    started = time.perf_counter()
    extra = fn() or {}
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(rss_mb), **extra}))


def run_child(script: str, path: str, *args: str) -> dict:
    """Parent side: run `script --child PATH ARGS...` and return its figures."""
    result = subprocess.run([sys.executable, script, "--child", path, *args], capture_output=True, text=True,
                            check=False, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{path} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{path:22} {figures['seconds']:8.1f} s  peak RSS {figures['peak_rss_mb']:6d} MB", flush=True)
    return figures
