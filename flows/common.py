"""What every flow entry point shares: settings from CLI flags, which Prefect API to talk to, the
checks that can run before any stage, and one error path for every CLI."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tasks.errors import PipelineError
from tasks.settings import Settings

# Prefect, Polars and the services are imported where they are used: the search and explain CLIs
# import this module and use neither (Prefect alone is ~2 s of imports).


def load_settings(**flags: Any) -> Settings:
    """Settings with the CLI flags that were given (None = not given) on top."""
    return Settings(**{k: v for k, v in flags.items() if v is not None})


def cli_settings(**flags: Any) -> Settings:
    """A CLI's settings; a bad flag or setting (environment, .env) is one `error:` line naming the
    field, and exit 1, like every expected failure."""
    from pydantic import ValidationError

    from tasks.errors import bad_settings

    try:
        return load_settings(**flags)
    except ValidationError as exc:
        print(f"error: {bad_settings(exc)}", file=sys.stderr)
        raise SystemExit(1) from None


def preflight(settings: Settings, source: str | None = None, embed: bool = False) -> None:
    """What can be checked before the first stage starts, so a bad parameter fails in a second,
    not after the stages before the one that needs it."""
    from tasks.ingest.movielens import RELEASES

    if source is not None and source not in RELEASES and not Path(source).exists():
        raise PipelineError(f"--source {source}: no such file or folder (nor a release name: {', '.join(RELEASES)})")
    if embed:
        from tasks.embed.models import model_path

        model_path(settings.model, settings.model_dir)  # unknown, or not available offline: says how to fix it


class _OneLineErrors(logging.Formatter):
    """Formats as the wrapped formatter, without the traceback of a PipelineError: its message says
    it all, and Prefect logs it once per task and flow level. The UI's copy keeps the traceback."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info and isinstance(record.exc_info[1], PipelineError)):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _quiet_tracebacks() -> None:
    root = logging.getLogger()
    if not root.handlers:  # configure Prefect's logging as its engine would, once, to reach its console handler
        from prefect.logging.configuration import setup_logging

        setup_logging()
    for handler in root.handlers:
        if not isinstance(handler.formatter, _OneLineErrors):
            handler.setFormatter(_OneLineErrors(handler.formatter or logging.Formatter()))


@contextmanager
def prefect_api(settings: Settings) -> Iterator[str]:
    """Use PREFECT_API_URL if set, else the local server when `tasks.services` runs one, else a
    temporary in-process server (slower to start: ~15 s)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from tasks import services

    updates: dict = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    where = services.prefect_api_url(settings)
    if where is not None:
        updates[PREFECT_API_URL] = where
    else:
        where = "a temporary local Prefect server (run `python -m tasks.services start` for a lasting one)"
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 90
    with temporary_settings(updates=updates):
        _quiet_tracebacks()
        yield where


RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # what get_run_logger and log_prints write to


@contextmanager
def run_log_file(data_dir: Path, name: str) -> Iterator[Path]:
    """Every run log line of the block (its subflows' and tasks' too) also goes to
    DATA_DIR/logs/<name>-<UTC time>.log, beside the data it describes, whoever runs the flow (a
    worker, cron, the CLI)."""
    path = Path(data_dir) / "logs" / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_OneLineErrors(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")))
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def logs_to_data_dir(fn: Callable) -> Callable:
    """A flow function whose run also logs to a file under its data dir (run_log_file); its
    `data_dir` parameter, or the settings' when it is empty, says where."""
    signature = inspect.signature(fn, eval_str=True)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        data_dir = signature.bind(*args, **kwargs).arguments.get("data_dir")
        with run_log_file(load_settings(data_dir=data_dir).data_dir, fn.__name__.removesuffix("_flow")):
            return fn(*args, **kwargs)

    # Its parameters with their types resolved where the flow is written: Prefect validates them
    # against this module's globals otherwise.
    wrapper.__signature__ = signature
    return wrapper
