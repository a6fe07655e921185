"""The load stage's Prefect task: one store's load (tasks.stores.loading.load_store) under the global
concurrency limit named after the store."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency

from tasks.caching import retry_transient
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.base import Verify
from tasks.stores.loading import load_store


def ensure_concurrency_limits(names: list[str], limit: int = 1) -> None:
    """One global concurrency limit per store (a store takes one load at a time), created when missing;
    a limit someone changed in the UI is left as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_global_concurrency_limit_by_name(STORES[name].concurrency_limit())
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=STORES[name].concurrency_limit(), limit=limit))


@task(name="load-store", task_run_name="load-{name}", retries=3, retry_delay_seconds=[2, 4, 8],
      retry_condition_fn=retry_transient)
def load_store_task(data_dir: str, name: str, replace: bool = False, verify: Verify = "sample") -> dict:
    """Load, check and reconcile one store under its global concurrency limit. Settings (store URLs)
    come from the environment and .env, never from parameters: no secret reaches the API."""
    logger = get_run_logger()
    settings = Settings(data_dir=Path(data_dir))
    with concurrency(STORES[name].concurrency_limit(), occupy=1, strict=True):
        return load_store(settings, name, logger.info, replace, verify)
