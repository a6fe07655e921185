"""What a local server recipe is, and the helpers the recipes share."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import PipelineError
from tasks.settings import LOCAL_HOST, Settings

SERVICE_USER = "mediagw"  # PostgreSQL refuses to run as root


class ServiceError(PipelineError, RuntimeError):
    pass


def nothing(*_: object) -> None:
    return None


def no_env(*_: object) -> dict[str, str]:
    return {}


def make_home(settings: Settings, home: Path) -> None:  # noqa: ARG001 - a recipe's prepare signature
    home.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Service:
    """How to run one local server: prepare its folder, its command line, when it is ready, what to do
    once it is, and its environment. Each runs in its own folder, services_dir/<name>."""
    name: str
    command: Callable[[Settings, Path], list[str]]
    ready: Callable[[Settings], bool]
    address: Callable[[Settings], str]  # where clients reach it and as whom (never a password)
    prepare: Callable[[Settings, Path], None] = make_home
    after_start: Callable[[Settings], None] = nothing
    before_stop: Callable[[Settings], None] = nothing  # best effort: a server that does not answer is stopped anyway
    after_stop: Callable[[Settings], None] = nothing
    env: Callable[[Settings, Path], dict[str, str]] = no_env
    stop_signal: int = signal.SIGTERM
    as_service_user: bool = False


def free_port() -> int:
    """A loopback port nothing listens on now (the servers', the tests' and the benchmarks')."""
    with socket.socket() as sock:
        sock.bind((LOCAL_HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOCAL_HOST, port)) == 0


def service_user() -> tuple[int, int] | None:
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
