"""Load flow: every store at once from the data dir, each checked and reconciled after its load.

    python -m flows.load --data-dir DIR [--no-milvus] [--no-postgres] ... [--replace] [--verify full]

Stores are read from the registry in tasks/stores/. Store URLs come from the settings (MG_*
environment or .env): an unset URL is the local server or file. Loads run concurrently, each under
the global concurrency limit named after its store; one store that stays down fails its own load,
the others finish, then the flow fails naming it. After each load the store is verified: by default its
counts and a fixed sample of elements (plus what the load wrote); `--verify full` reads every element
back and compares it (the weekly schedule of the full-refresh deployment).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import cli_settings, load_settings, prefect_api
from flows.summary import Summary, text
from tasks.caching import result_storage
from tasks.errors import PipelineError, run_cli
from tasks.stores import STORES
from tasks.stores.base import Verify
from tasks.stores.tasks import ensure_concurrency_limits, load_store_task
from tasks.validate.tasks import validated

StoreName = Literal[tuple(STORES)]  # type: ignore[valid-type] - the registry's names, for the deployment form


class LoadFailed(PipelineError, RuntimeError):
    pass


def _detail(result: dict) -> str:
    tables = ", ".join(f"{t} {r['rows']:,} ({r['written']:,} written, {r['deleted']:,} deleted)"
                       for t, r in result["tables"].items())
    return f"{result['target']}: {tables}; verified: {result['verified']}"


def wanted_stores(skip: list[str] | None) -> list[str]:
    return [name for name in STORES if name not in set(skip or [])]


def run_loads(data_dir: Path, skip: list[str] | None = None, replace: bool = False,
              verify: Verify = "sample") -> list[dict]:
    """In a flow: submit every asked-for store's load at once and wait for all; one summary row per
    store (stage, status, seconds, detail), failures included."""
    skip = set(skip or [])
    rows, futures = [], {}
    wanted = wanted_stores(list(skip))
    if wanted:
        ensure_concurrency_limits(wanted)
    started = time.perf_counter()
    for name in STORES:
        if name in skip:
            rows.append({"stage": name, "status": "skipped", "seconds": None, "detail": "by flag"})
        else:
            futures[name] = load_store_task.submit(str(data_dir), name, replace, verify)
    for name, future in futures.items():
        future.wait()
        seconds = round(time.perf_counter() - started, 1)
        row = {"stage": name, "seconds": seconds}
        if future.state.is_completed():
            result = future.result()
            row.update(status=result["status"], detail=_detail(result),
                       rows=sum(r["rows"] for r in result["tables"].values()))
        else:
            error = future.result(raise_on_failure=False)
            row.update(status="failed", detail=" ".join(str(error).split()))  # one line per store
        rows.append(row)
    order = list(STORES)
    return sorted(rows, key=lambda r: order.index(r["stage"]))


def raise_on_failed(rows: list[dict]) -> None:
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        raise LoadFailed("\n".join(f"{r['stage']} load failed: {r['detail']}" for r in failed))


@flow(name="load", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=len(STORES)))
def load_flow(data_dir: str | None = None, skip_stores: list[StoreName] | None = None,
              replace: bool = False, verify: Verify = "sample") -> list[dict]:
    """Load every store from the data dir at once; returns one summary row per store.

    Args:
        data_dir: root of the pipeline's files (processed/, synthetic/, embeddings/).
        skip_stores: stores not to load.
        replace: overwrite a store namespace that holds another data dir's dataset (else the load stops).
        verify: after each load, check counts and a fixed sample of elements (sample), or read every
            element back and compare it (full).
    """
    data = load_settings(data_dir=data_dir).data_dir
    summary = Summary(data)
    summary.concurrent(run_loads(data, skip_stores, replace, verify))
    create_markdown_artifact(key="load-summary", markdown=summary.markdown("Loads"),
                             description="What each store's load did")
    raise_on_failed(summary.rows)
    validated(data, "load", True, result_storage(data))
    return summary.rows


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    for spec in STORES.values():
        parser.add_argument(spec.flag, action="store_true",
                            help=f"do not load {spec.name}: {spec.loads}")
    parser.add_argument("--replace", action="store_true",
                        help="overwrite a store namespace that holds another data dir's dataset (else the load stops)")
    parser.add_argument("--verify", choices=["sample", "full"], default="sample",
                        help="after each load: counts and a fixed sample of elements (default), or every "
                             "element read back and compared (full)")


def skipped_stores(args: argparse.Namespace) -> list[str]:
    return [name for name, spec in STORES.items() if getattr(args, spec.parameter)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.load", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="root of all pipeline files (default: data, or MG_DATA_DIR)")
    add_store_flags(parser)
    args = parser.parse_args(argv)
    settings = cli_settings(data_dir=args.data_dir)

    def run() -> int:
        with prefect_api(settings):
            rows = load_flow(str(settings.data_dir), skipped_stores(args), args.replace, args.verify)
        print(text(rows))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
