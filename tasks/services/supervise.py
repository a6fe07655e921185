"""Keeps the local servers' processes: start side by side and wait until each is ready, stop only
the process that was recorded, tell their status. The servers themselves are the modules beside
this one."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil

from tasks.services import milvus, neo4j, postgres, prefect
from tasks.services.base import Service, ServiceError, service_user
from tasks.settings import Settings

START_TIMEOUT_S = 90
SERVICES: dict[str, Service] = {s.name: s for s in (postgres.SERVICE, neo4j.SERVICE, milvus.SERVICE,
                                                    prefect.SERVICE)}


def prefect_api_url(settings: Settings) -> str | None:
    """The Prefect API in the settings (PREFECT_API_URL) when set, else the local server's while it
    runs, else None."""
    if settings.prefect_api_url:
        return settings.prefect_api_url
    if status(settings, ["prefect"])["prefect"] == "running":
        return settings.local_prefect_url
    return None


def wanted(settings: Settings) -> list[str]:
    """The local servers this configuration needs: external stores get none."""
    names = []
    if settings.local_postgres:
        names.append("postgres")
    if settings.local_neo4j:
        names.append("neo4j")
    if settings.local_milvus:
        names.append("milvus")
    if settings.prefect_api_url in (None, settings.local_prefect_url):
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
    owner = service_user() if service.as_service_user else None
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
    try:
        SERVICES[name].before_stop(settings)
    except Exception:  # noqa: BLE001 - stopping must not depend on the server answering
        pass
    proc.send_signal(SERVICES[name].stop_signal)
    if not _exited(proc, 30):
        proc.kill()
        if not _exited(proc, 10):
            raise ServiceError(f"{name} (pid {proc.pid}) did not stop")
    _record_path(settings, name).unlink(missing_ok=True)
    SERVICES[name].after_stop(settings)
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
    logs = {name: settings.services_dir / f"{name}.log" for name in names}
    offsets = {name: log.stat().st_size if log.exists() else 0 for name, log in logs.items()}
    launched = {name: _launch(settings, name) for name in names}
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for name, proc in launched.items():
            if proc is None:
                continue
            try:
                _await_ready(settings, name, proc, deadline)
            except ServiceError:
                # A server that picks its internal ports when it starts (Milvus) can lose one to another
                # server starting at the same moment: it is started once more, on ports chosen again.
                with open(logs[name], "rb") as log:
                    log.seek(offsets[name])
                    if b"bind: address already in use" not in log.read():
                        raise
                launched[name] = _launch(settings, name)
                _await_ready(settings, name, launched[name], time.monotonic() + START_TIMEOUT_S)
    except ServiceError:
        for name, proc in launched.items():
            if proc is not None:
                stop_one(settings, name)
        raise
    return {name: "running" if proc is None else "started" for name, proc in launched.items()}


def stop(settings: Settings, names: list[str] | None = None) -> dict[str, str]:
    return {name: stop_one(settings, name) for name in names or list(SERVICES)}
