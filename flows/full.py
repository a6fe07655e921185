"""The whole pipeline: ingest, synthetic data, embeddings, validation, loads.

    python -m flows.full [--data-dir DIR] [--source SOURCE] [--skip-STAGE ...] [--no-STORE ...]

Without --source it ingests a small generated MovieLens-format release (and says so).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import load_settings, prefect_api
from flows.embed import embed_flow
from flows.ingest import ingest_flow
from flows.synthetic import synthetic_flow
from tasks.caching import result_storage
from tasks.movielens_sample import sample_release_task
from tasks.validation import validate_task

# Stages that later issues build; asked for, they report that instead of pretending to run.
NOT_BUILT = {
    "milvus": "a later issue (Milvus loader)",
    "postgres": "a later issue (PostgreSQL+pgvector loader)",
    "neo4j": "a later issue (Neo4j loader)",
    "agentdb": "a later issue (AgentDB loader)",
}


# Work pool -> the embed deployment that runs there (prefect.yaml).
EMBED_DEPLOYMENTS = {"a100-gpu": "embed/embed-gpu"}


@flow(name="full-refresh", log_prints=True)
def full_flow(
    data_dir: str | None = None,
    source: str | None = None,
    catalog_size: int | None = None,
    model: str | None = None,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    skip_ingest: bool = False,
    skip_synthetic: bool = False,
    skip_embed: bool = False,
    skip_validate: bool = False,
    no_milvus: bool = False,
    no_postgres: bool = False,
    no_neo4j: bool = False,
    no_agentdb: bool = False,
    embed_on: str | None = None,
) -> list[dict]:
    """Run every stage that is asked for; returns one summary row per stage. Empty parameters take
    the pipeline's settings (environment or .env)."""
    settings = load_settings(data_dir=data_dir, catalog_size=catalog_size, model=model, device=device)
    logger = get_run_logger()
    data = settings.data_dir
    rows: list[dict] = []

    def record(stage: str, status: str, detail: str, started: float | None = None) -> None:
        seconds = round(time.perf_counter() - started, 1) if started else None
        rows.append({"stage": stage, "status": status, "seconds": seconds, "detail": detail})

    def gate(stage: str, missing_ok: bool = False) -> None:
        """Validate the stage's datasets; a critical failure stops the flow here, before any load."""
        if skip_validate:
            return
        started = time.perf_counter()
        report = json.loads(Path(validate_task(str(data), stage, missing_ok)).read_text())
        counts = {status: sum(s["status"] == status for s in report["suites"]) for status in ("pass", "warn")}
        record(f"validate:{stage}", "passed", f"suites: {counts['pass']} pass, {counts['warn']} with warnings "
                                              f"-> {data / 'reports'}", started)

    if skip_ingest:
        record("ingest", "skipped", "--skip-ingest")
    else:
        started = time.perf_counter()
        if source is None:
            release = data / "raw" / "sample-small"
            logger.info("No source given: ingesting a generated small MovieLens-format release at %s "
                        "(pass --source for a real one)", release)
            source = sample_release_task.with_options(result_storage=result_storage(data))(
                "small", str(release), settings.seed)
        stats_path = ingest_flow(source=source, data_dir=str(data))
        record("ingest", "completed", f"{source} -> {Path(stats_path).parent}", started)
        gate("ingest")

    if skip_synthetic:
        record("synthetic", "skipped", "--skip-synthetic")
    else:
        started = time.perf_counter()
        written = synthetic_flow(data_dir=str(data), catalog_size=settings.catalog_size, seed=settings.seed)
        record("synthetic", "completed", f"users, platforms, availability, {settings.catalog_size:,}-item catalog "
                                         f"-> {Path(written['users'][0]).parent}", started)
        gate("synthetic")

    if skip_embed:
        record("embed", "skipped", "--skip-embed")
    else:
        started = time.perf_counter()
        if embed_on:
            # The GPU pool's deployment; it reads and writes the same data dir through its volume.
            from prefect.deployments import run_deployment

            if embed_on not in EMBED_DEPLOYMENTS:
                raise ValueError(f"--embed-on {embed_on!r}: no embed deployment on that pool; "
                                 f"choose one of {', '.join(EMBED_DEPLOYMENTS)}")
            run = run_deployment(EMBED_DEPLOYMENTS[embed_on], parameters={"model": settings.model, "device": "cuda"},
                                 as_subflow=True)
            if not run.state or not run.state.is_completed():
                raise RuntimeError(f"embedding on {embed_on} ended {run.state.name if run.state else 'without a state'}")
            record("embed", "completed", f"on the {embed_on} work pool (flow run {run.name})", started)
        else:
            written = embed_flow(data_dir=str(data), model=settings.model, device=settings.device)
            record("embed", "completed", f"{', '.join(sorted(written))} ({settings.model}) "
                                         f"-> {Path(written['media']).parent}", started)
        gate("embed")

    if skip_validate:
        record("validate", "skipped", "--skip-validate")
    # Before any load: the data of skipped stages is validated too, where it exists.
    for stage, skipped in (("ingest", skip_ingest), ("synthetic", skip_synthetic), ("embed", skip_embed)):
        if skipped:
            gate(stage, missing_ok=True)
    asked = {"milvus": not no_milvus, "postgres": not no_postgres, "neo4j": not no_neo4j,
             "agentdb": not no_agentdb}
    for stage, wanted in asked.items():
        if not wanted:
            record(stage, "skipped", "by flag")
        else:
            logger.warning("Stage %r is not built yet: %s. Nothing was run for it.", stage, NOT_BUILT[stage])
            record(stage, "not built yet", NOT_BUILT[stage])

    table = "\n".join(f"| {r['stage']} | {r['status']} | {r['seconds'] if r['seconds'] is not None else ''} "
                      f"| {r['detail']} |" for r in rows)
    create_markdown_artifact(
        key="full-refresh-summary",
        markdown=f"# Full refresh\n\nData dir: `{data}`\n\n| stage | status | s | detail |\n|---|---|---|---|\n{table}\n",
        description="What ran in this full refresh",
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.full", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="root of all pipeline files (default: data, or MG_DATA_DIR)")
    parser.add_argument("--source", help="MovieLens release folder, .zip or name (ml-latest-small, ml-25m, ...); "
                                         "default: a generated small release")
    parser.add_argument("--catalog-size", type=int, help="items in the synthetic media catalog")
    parser.add_argument("--model", help="embedding model name (default all-MiniLM-L6-v2)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="embedding device")
    parser.add_argument("--embed-on", metavar="POOL",
                        help="run the embed stage on a GPU work pool's deployment (e.g. a100-gpu) "
                             "instead of in this process")
    for stage in ("ingest", "synthetic", "embed", "validate"):
        parser.add_argument(f"--skip-{stage}", action="store_true", help=f"do not run the {stage} stage")
    for store in ("milvus", "postgres", "neo4j", "agentdb"):
        parser.add_argument(f"--no-{store}", action="store_true", help=f"do not load {store}")
    args = parser.parse_args(argv)
    # Validate the settings before starting anything: a bad value is an error here, not mid-run.
    try:
        settings = load_settings(data_dir=args.data_dir, catalog_size=args.catalog_size, model=args.model,
                                 device=args.device)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.perf_counter()
    with prefect_api(settings) as where:
        print(f"Prefect API: {where}")
        rows = full_flow(
            data_dir=str(settings.data_dir), source=args.source, catalog_size=args.catalog_size, model=args.model,
            device=args.device, skip_ingest=args.skip_ingest, skip_synthetic=args.skip_synthetic,
            skip_embed=args.skip_embed, skip_validate=args.skip_validate, no_milvus=args.no_milvus,
            no_postgres=args.no_postgres, no_neo4j=args.no_neo4j, no_agentdb=args.no_agentdb,
            embed_on=args.embed_on)
    print(f"\nFull refresh finished in {time.perf_counter() - started:.0f} s (data dir {settings.data_dir}):")
    for row in rows:
        seconds = f"{row['seconds']:>6.1f} s" if row["seconds"] is not None else " " * 8
        print(f"  {row['stage']:18} {row['status']:14} {seconds}  {row['detail']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
