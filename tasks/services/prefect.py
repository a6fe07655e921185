"""The local Prefect server: `prefect server start`, its database under the services folder."""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.services.base import Service
from tasks.settings import LOCAL_HOST, Settings


def _command(settings: Settings, home: Path) -> list[str]:  # noqa: ARG001 - a recipe's command signature
    prefect = Path(sys.executable).with_name("prefect")
    return [str(prefect), "server", "start", "--host", LOCAL_HOST, "--port", str(settings.prefect_port)]


def _env(settings: Settings, home: Path) -> dict[str, str]:
    return {"PREFECT_HOME": str(home.resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": settings.local_prefect_url}


def _ready(settings: Settings) -> bool:
    import httpx

    try:
        return httpx.get(f"{settings.local_prefect_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _address(settings: Settings) -> str:
    return f"UI http://{LOCAL_HOST}:{settings.prefect_port}, API {settings.local_prefect_url}"


SERVICE = Service("prefect", _command, _ready, _address, env=_env)
