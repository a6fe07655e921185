"""Load flow: every store at once from the data dir, each checked and reconciled after its load.

    python -m flows.load --data-dir DIR [--no-milvus] [--no-postgres] ...

Stores are read from the registry in tasks/stores/. Store URLs come from the settings (MG_*
environment or .env): an unset URL is the local server or file. Loads run concurrently, each under
the global concurrency limit named after its store; one store that stays down fails its own load,
the others finish, then the flow fails naming it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import load_settings, prefect_api, run_cli
from tasks.caching import result_storage
from tasks.errors import PipelineError
from tasks.stores import STORES
from tasks.stores.loading import ensure_concurrency_limits, load_store_task
from tasks.validation import validated

StoreName = Literal[tuple(STORES)]  # type: ignore[valid-type] - the registry's names, for the deployment form


class LoadFailed(PipelineError, RuntimeError):
    pass


def _detail(result: dict) -> str:
    tables = ", ".join(f"{t} {r['rows']:,} ({r['written']:,} written, {r['deleted']:,} deleted)"
                       for t, r in result["tables"].items())
    return f"{result['target']}: {tables}"


def run_loads(data_dir: Path, skip: list[str] | None = None) -> list[dict]:
    """In a flow: submit every asked-for, built store's load at once and wait for all; one summary row
    per store (stage, status, seconds, detail), failures included."""
    skip = set(skip or [])
    logger = get_run_logger()
    rows, futures = [], {}
    wanted = [name for name, spec in STORES.items() if name not in skip and spec.built]
    if wanted:
        ensure_concurrency_limits(wanted)
    started = time.perf_counter()
    for name, spec in STORES.items():
        if name in skip:
            rows.append({"stage": name, "status": "skipped", "seconds": None, "detail": "by flag"})
        elif not spec.built:
            logger.warning("Store %r is not built yet: %s. Nothing was loaded into it.", name, spec.issue)
            rows.append({"stage": name, "status": "not built yet", "seconds": None, "detail": spec.issue})
        else:
            futures[name] = load_store_task.submit(str(data_dir), name)
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
            row.update(status="failed", detail=str(error))
        rows.append(row)
    order = list(STORES)
    return sorted(rows, key=lambda r: order.index(r["stage"]))


def _figure(row: dict, key: str) -> str:
    value = row.get(key)
    return "" if value is None else f"{value:,}"


def summary_markdown(title: str, data_dir: Path, rows: list[dict]) -> str:
    """The summary table of a run (the UI's artifact); rows and peak RSS where the flow measured them."""
    table = "\n".join(f"| {r['stage']} | {r['status']} | {_figure(r, 'seconds')} | {_figure(r, 'rows')} "
                      f"| {_figure(r, 'peak_rss_mb')} | {r['detail']} |" for r in rows)
    return (f"# {title}\n\nData dir: `{data_dir}`\n\n| stage | status | s | rows | peak RSS MB | detail |\n"
            f"|---|---|---|---|---|---|\n{table}\n")


def raise_on_failed(rows: list[dict]) -> None:
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        raise LoadFailed("; ".join(f"{r['stage']} load failed: {r['detail']}" for r in failed))


@flow(name="load", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=len(STORES)))
def load_flow(data_dir: str = "data", skip_stores: list[StoreName] | None = None) -> list[dict]:
    """Load every store from the data dir at once; returns one summary row per store.

    Args:
        data_dir: root of the pipeline's files (processed/, synthetic/, embeddings/).
        skip_stores: stores not to load.
    """
    data = Path(data_dir)
    rows = run_loads(data, skip_stores)
    create_markdown_artifact(key="load-summary", markdown=summary_markdown("Loads", data, rows),
                             description="What each store's load did")
    raise_on_failed(rows)
    validated(data, "load", True, result_storage(data))
    return rows


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    for spec in STORES.values():
        parser.add_argument(spec.flag, action="store_true",
                            help=f"do not load {spec.name}: {spec.loads}" + ("" if spec.built else " (not built yet)"))


def skipped_stores(args: argparse.Namespace) -> list[str]:
    return [name for name, spec in STORES.items() if getattr(args, spec.parameter)]


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        seconds = f"{row['seconds']:>6.1f} s" if row["seconds"] is not None else " " * 8
        count = f"{row['rows']:>12,}" if row.get("rows") is not None else " " * 12
        peak = f"{row['peak_rss_mb']:>6,} MB" if row.get("peak_rss_mb") is not None else " " * 9
        print(f"  {row['stage']:18} {row['status']:15} {seconds} {count} {peak}  {row['detail']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.load", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="root of all pipeline files (default: data, or MG_DATA_DIR)")
    add_store_flags(parser)
    args = parser.parse_args(argv)
    settings = load_settings(data_dir=args.data_dir)

    def run() -> int:
        with prefect_api(settings):
            rows = load_flow(str(settings.data_dir), skipped_stores(args))
        print_rows(rows)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
