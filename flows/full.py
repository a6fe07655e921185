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
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import StagePeak, load_settings, logs_to_data_dir, output_rows, prefect_api, preflight, run_cli
from flows.embed import embed_flow
from flows.ingest import ingest_flow, ingest_summary
from flows.load import StoreName, add_store_flags, print_rows, raise_on_failed, run_loads, skipped_stores, \
    summary_markdown
from flows.synthetic import synthetic_flow
from tasks.caching import result_storage
from tasks.errors import PipelineError
from tasks.movielens import OnBadRows
from tasks.movielens_sample import sample_release_task
from tasks.settings import CatalogSize, RejectFraction
from tasks.validation import validated

# The folder each stage writes and its validation reads: the rows in the summary.
STAGE_FOLDERS = {"ingest": "processed", "synthetic": "synthetic", "embed": "embeddings"}

# Work pool -> the embed deployment that runs there (prefect.yaml).
EMBED_DEPLOYMENTS = {"a100-gpu": "embed/embed-gpu"}


def _stamps(*folders: Path) -> dict[str, int]:
    """Modification times of the files under the folders: unchanged after a stage = taken from the cache."""
    return {str(f): f.stat().st_mtime_ns for folder in folders if folder.exists() for f in folder.rglob("*")
            if f.is_file() and ".prefect-results" not in f.parts}


@flow(name="full-refresh", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=4))
@logs_to_data_dir
def full_flow(
    data_dir: str | None = None,
    source: str | None = None,
    catalog_size: CatalogSize | None = None,
    model: str | None = None,
    device: Literal["auto", "cpu", "cuda"] | None = None,
    on_bad_rows: OnBadRows = "reject",
    max_reject_fraction: RejectFraction = 0.01,
    skip_ingest: bool = False,
    skip_synthetic: bool = False,
    skip_embed: bool = False,
    skip_validate: bool = False,
    skip_stores: list[StoreName] | None = None,
    embed_on: str | None = None,
) -> list[dict]:
    """Run every stage that is asked for; returns one summary row per stage. Empty parameters take
    the pipeline's settings (environment or .env).

    Args:
        data_dir: root of every pipeline file (raw/, processed/, synthetic/, embeddings/, reports/).
        source: MovieLens release folder, .zip or name (ml-latest-small, ml-25m, ml-32m, ml-latest);
            empty: a generated small release.
        catalog_size: items in the synthetic media catalog (1 to 100,000,000; 1,000,000 at full scale).
        model: embedding model name (all-MiniLM-L6-v2, BAAI/bge-base-en-v1.5, ...) or a local model folder.
        device: where to embed: auto (a GPU when there is one), cpu or cuda.
        on_bad_rows: reject: bad rows go to processed/rejected/ with their reason; fail: stop at the first.
        max_reject_fraction: stop the ingest when more than this share of a file's rows is rejected (0 to 1).
        skip_ingest: reuse the processed data already in the data dir.
        skip_synthetic: reuse the synthetic data already in the data dir.
        skip_embed: reuse the embeddings already in the data dir.
        skip_validate: do not run the Great Expectations suites (not recommended before loads).
        skip_stores: stores not to load (milvus, postgres, neo4j, agentdb); the others load at once.
        embed_on: run the embed stage on this GPU work pool's deployment (a100-gpu) instead of in this process.
    """
    settings = load_settings(data_dir=data_dir, catalog_size=catalog_size, model=model, device=device)
    peak = StagePeak()
    peak.reset()
    if embed_on and embed_on not in EMBED_DEPLOYMENTS:
        raise PipelineError(f"embed_on {embed_on!r}: no embed deployment on that pool; "
                            f"choose one of {', '.join(EMBED_DEPLOYMENTS)}")
    preflight(settings, None if skip_ingest else source, embed=not skip_embed and not embed_on)
    logger = get_run_logger()
    data = settings.data_dir
    storage = result_storage(data)
    rows: list[dict] = []

    def record(stage: str, status: str, detail: str, started: float | None = None, folder: str | None = None) -> None:
        seconds = round(time.perf_counter() - started, 1) if started else None
        rows.append({"stage": stage, "status": status, "seconds": seconds, "detail": detail,
                     "rows": output_rows(data / folder) if folder else None,
                     "peak_rss_mb": peak.mb() if started else None})
        peak.reset()

    def ran(before: dict[str, int], *folders: Path) -> str:
        return "cached" if before and _stamps(*folders) == before else "completed"

    def gate(stage: str, missing_ok: bool = False) -> None:
        """Validate the stage's datasets; a critical failure stops the flow here, before any load."""
        if skip_validate:
            return
        started, before = time.perf_counter(), _stamps(data / "reports")
        report = validated(data, stage, missing_ok, storage)
        counts = {status: sum(s["status"] == status for s in report["suites"]) for status in ("pass", "warn")}
        status = "passed (cached)" if _stamps(data / "reports") == before else "passed"
        record(f"validate:{stage}", status, f"suites: {counts['pass']} pass, {counts['warn']} with warnings "
                                            f"-> {data / 'reports'}", started, STAGE_FOLDERS.get(stage))

    if skip_ingest:
        record("ingest", "skipped", "--skip-ingest")
    else:
        started, before = time.perf_counter(), _stamps(data / "processed")
        if source is None:
            release = data / "raw" / "sample-small"
            logger.info("No source given: ingesting a generated small MovieLens-format release at %s "
                        "(pass --source for a real one)", release)
            source = sample_release_task.with_options(result_storage=storage)(
                "small", str(release), settings.seed)
        stats_path = ingest_flow(source=source, data_dir=str(data), on_bad_rows=on_bad_rows,
                                 max_reject_fraction=max_reject_fraction)
        stats = json.loads(Path(stats_path).read_text())
        record("ingest", ran(before, data / "processed"), ingest_summary(stats, source, Path(stats_path).parent),
               started, STAGE_FOLDERS["ingest"])
        gate("ingest")

    if skip_synthetic:
        record("synthetic", "skipped", "--skip-synthetic")
    else:
        started, before = time.perf_counter(), _stamps(data / "synthetic")
        written = synthetic_flow(data_dir=str(data), catalog_size=settings.catalog_size, seed=settings.seed)
        record("synthetic", ran(before, data / "synthetic"),
               f"users, platforms, availability, {settings.catalog_size:,}-item catalog "
               f"-> {Path(written['users'][0]).parent}", started, STAGE_FOLDERS["synthetic"])
        gate("synthetic")

    if skip_embed:
        record("embed", "skipped", "--skip-embed")
    else:
        started, before = time.perf_counter(), _stamps(data / "embeddings")
        if embed_on:
            # The GPU pool's deployment; it reads and writes the same data dir through its volume.
            from prefect.deployments import run_deployment

            run = run_deployment(EMBED_DEPLOYMENTS[embed_on], parameters={"model": settings.model, "device": "cuda"},
                                 as_subflow=True)
            if not run.state or not run.state.is_completed():
                raise RuntimeError(f"embedding on {embed_on} ended {run.state.name if run.state else 'without a state'}")
            record("embed", "completed", f"on the {embed_on} work pool (flow run {run.name})", started,
                   STAGE_FOLDERS["embed"])
        else:
            written = embed_flow(data_dir=str(data), model=settings.model, device=settings.device)
            record("embed", ran(before, data / "embeddings"),
                   f"{', '.join(sorted(written))} ({settings.model}) -> {Path(written['media']).parent}", started,
                   STAGE_FOLDERS["embed"])
        gate("embed")

    if skip_validate:
        record("validate", "skipped", "--skip-validate")
    # Before any load: the data of skipped stages is validated too, where it exists.
    for stage, skipped in (("ingest", skip_ingest), ("synthetic", skip_synthetic), ("embed", skip_embed)):
        if skipped:
            gate(stage, missing_ok=True)
    peak.reset()
    loads = run_loads(data, skip_stores)
    for row in loads:  # concurrent loads: one peak for all of them
        row["peak_rss_mb"] = peak.mb() if row["seconds"] is not None else None
    peak.reset()
    rows += loads
    try:
        if any(r["status"] in ("loaded", "unchanged") for r in loads) and not any(r["status"] == "failed" for r in loads):
            gate("load", missing_ok=True)
    finally:  # the summary of what ran, also when the last gate stops the run
        create_markdown_artifact(key="full-refresh-summary", markdown=summary_markdown("Full refresh", data, rows),
                                 description="What ran in this full refresh")
    raise_on_failed(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.full", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="root of all pipeline files (default: data, or MG_DATA_DIR)")
    parser.add_argument("--source", help="MovieLens release folder, .zip or name (ml-latest-small, ml-25m, ...); "
                                         "default: a generated small release")
    parser.add_argument("--catalog-size", type=int, help="items in the synthetic media catalog (at least 1)")
    parser.add_argument("--model", help="embedding model name (default all-MiniLM-L6-v2) or a local model folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="embedding device")
    parser.add_argument("--on-bad-rows", choices=["reject", "fail"], default="reject",
                        help="reject: bad rows go to processed/rejected/ (default); fail: stop at the first")
    parser.add_argument("--max-reject-fraction", type=float, default=0.01,
                        help="stop when more than this share of a file's rows is rejected (default 0.01)")
    parser.add_argument("--embed-on", metavar="POOL",
                        help="run the embed stage on a GPU work pool's deployment (e.g. a100-gpu) "
                             "instead of in this process")
    for stage in ("ingest", "synthetic", "embed", "validate"):
        parser.add_argument(f"--skip-{stage}", action="store_true", help=f"do not run the {stage} stage")
    add_store_flags(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.max_reject_fraction <= 1:
        parser.error("--max-reject-fraction must be between 0 and 1")
    # Every check that needs no stage runs before Prefect starts: a bad value is an error here, not mid-run.
    try:
        settings = load_settings(data_dir=args.data_dir, catalog_size=args.catalog_size, model=args.model,
                                 device=args.device)
    except ValueError as exc:
        parser.error(str(exc))

    def run() -> int:
        preflight(settings, None if args.skip_ingest else args.source,
                  embed=not args.skip_embed and not args.embed_on)
        started = time.perf_counter()
        with prefect_api(settings) as where:
            print(f"Prefect API: {where}")
            rows = full_flow(
                data_dir=str(settings.data_dir), source=args.source, catalog_size=args.catalog_size,
                model=args.model, device=args.device, on_bad_rows=args.on_bad_rows,
                max_reject_fraction=args.max_reject_fraction, skip_ingest=args.skip_ingest,
                skip_synthetic=args.skip_synthetic, skip_embed=args.skip_embed, skip_validate=args.skip_validate,
                skip_stores=skipped_stores(args), embed_on=args.embed_on)
        print(f"\nFull refresh finished in {time.perf_counter() - started:.0f} s (data dir {settings.data_dir}):")
        print_rows(rows)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
