"""What every flow entry point shares: settings from CLI flags, and which Prefect API to talk to."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from tasks import services
from tasks.settings import Settings


def load_settings(**flags: Any) -> Settings:
    """Settings with the CLI flags that were given (None = not given) on top."""
    return Settings(**{k: v for k, v in flags.items() if v is not None})


@contextmanager
def prefect_api(settings: Settings) -> Iterator[str]:
    """Use PREFECT_API_URL if set, else the local server when `tasks.services` runs one, else a
    temporary in-process server (slower to start: ~15 s)."""
    updates: dict = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    where = services.prefect_api_url(settings)
    if where is not None:
        updates[PREFECT_API_URL] = where
    else:
        where = "a temporary local Prefect server (run `python -m tasks.services start` for a lasting one)"
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 90
    with temporary_settings(updates=updates):
        yield where
