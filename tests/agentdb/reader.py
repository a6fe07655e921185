"""The real agentdb (npm agentdb@1.6.1) reading a shard: installed once into .tools/agentdb from
the lock file beside this module, then `read(...)` runs read_shard.mjs with node. Used by
tests/test_agentdb.py and benchmarks/agentdb.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTALL = HERE.parents[1] / ".tools" / "agentdb"  # the project's tool cache (ignored by git)


class ReaderUnavailable(RuntimeError):
    pass


def install() -> Path:
    """agentdb from the npm registry with `npm ci` (about a minute), unless the installed lock is this
    one; returns the reader script's path."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise ReaderUnavailable("node and npm are needed to run the real agentdb (Debian: apt install nodejs npm)")
    lock = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    marker = INSTALL / ".installed"
    if not marker.exists() or marker.read_text() != lock:
        shutil.rmtree(INSTALL, ignore_errors=True)
        INSTALL.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, INSTALL / name)
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=INSTALL, capture_output=True, text=True,
                              timeout=900, check=False)
        if done.returncode != 0:
            raise ReaderUnavailable(f"npm ci in {INSTALL} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        marker.write_text(lock)
    shutil.copy(HERE / "read_shard.mjs", INSTALL / "read_shard.mjs")
    return INSTALL / "read_shard.mjs"


def read(script: Path, shard: Path, session: str, state: str) -> dict:
    """What agentdb reads from the shard: {openMs, metrics, prediction, embedded} (read_shard.mjs)."""
    done = subprocess.run(["node", script.name, str(shard), session, state], cwd=script.parent, capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"agentdb could not read {shard}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
