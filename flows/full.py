"""The whole pipeline: ingest, synthetic data, embeddings, validation, loads.

    python -m flows.full [--data-dir DIR] [--source SOURCE] [--skip-STAGE ...] [--no-STORE ...] [--replace]

Without --source it ingests a small generated MovieLens-format release (and says so). Every store it
will load is reached before the first stage (the CLI starts the local servers they need first).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import cli_settings, load_settings, logs_to_data_dir, prefect_api, preflight
from flows.embed import ShardCount, check_pool, embed_flow
from flows.ingest import ingest_flow, ingest_summary
from tasks.stores.base import Verify
from flows.load import StoreName, add_store_flags, raise_on_failed, run_loads, skipped_stores, wanted_stores
from flows.summary import Summary, text
from flows.synthetic import synthetic_flow
from tasks.caching import result_storage
from tasks.errors import run_cli
from tasks.ingest.movielens import OnBadRows
from tasks.ingest.tasks import sample_release_task
from tasks.settings import CatalogSize, RejectFraction, Settings
from tasks.stores.loading import reach_stores
from tasks.validate.tasks import validated

@dataclass(frozen=True)
class Run:
    """What the stages of one full refresh read: its settings and parameters."""
    settings: Settings
    source: str | None
    on_bad_rows: OnBadRows
    max_reject_fraction: float
    embed_on: str | None
    embed_shards: int | None

    @property
    def data(self) -> Path:
        return self.settings.data_dir

    @property
    def storage(self) -> str:
        return result_storage(self.data)


def _ingest(run: Run) -> str:
    source = run.source
    if source is None:
        release = run.data / "raw" / "sample-small"
        get_run_logger().info("No source given: ingesting a generated small MovieLens-format release at %s "
                              "(pass --source for a real one)", release)
        source = sample_release_task.with_options(result_storage=run.storage)("small", str(release), run.settings.seed)
    stats_path = ingest_flow(source=source, data_dir=str(run.data), on_bad_rows=run.on_bad_rows,
                             max_reject_fraction=run.max_reject_fraction)
    return ingest_summary(json.loads(Path(stats_path).read_text()), source, Path(stats_path).parent)


def _synthetic(run: Run) -> str:
    size = run.settings.catalog_size
    written = synthetic_flow(data_dir=str(run.data), catalog_size=size, seed=run.settings.seed)
    return f"users, platforms, availability, {size:,}-item catalog -> {Path(written['users'][0]).parent}"


def _embed(run: Run) -> str:
    model = run.settings.model
    written = embed_flow(data_dir=str(run.data), model=model, device=run.settings.device, pool=run.embed_on,
                         shards=run.embed_shards)
    where = f", shards on the {run.embed_on} work pool" if run.embed_on else ""
    return f"{', '.join(sorted(written))} ({model}{where}) -> {Path(written['media']).parent}"


@dataclass(frozen=True)
class Stage:
    name: str
    writes: str  # its folder under the data dir: what its validation gate checks
    run: Callable[[Run], str]  # runs the stage; returns the summary's detail


# In order; the validation gate of each runs after it, and the loads (the store registry) after all.
STAGES = [Stage("ingest", "processed", _ingest), Stage("synthetic", "synthetic", _synthetic),
          Stage("embed", "embeddings", _embed)]


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
    embed_shards: ShardCount | None = None,
    replace: bool = False,
    verify: Verify = "sample",
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
        embed_on: embed on this work pool (a100-gpu, local-process): one flow run of its embed-shard deployment
            per shard, spread over the pool's workers; empty: in this process.
        embed_shards: split each embedding set into this many shards (empty: shards of MG_EMBED_SHARD_ROWS texts).
        replace: overwrite a store namespace that holds another data dir's dataset (else the run stops
            before its first stage).
        verify: after each load, check counts and a fixed sample of elements (sample), or read every
            element back and compare it (full: the weekly schedule).
    """
    settings = load_settings(data_dir=data_dir, catalog_size=catalog_size, model=model, device=device)
    if embed_on and not skip_embed:
        check_pool(embed_on)
    preflight(settings, None if skip_ingest else source, embed=not skip_embed and not embed_on)
    reach_stores(settings, wanted_stores(skip_stores), replace)
    run = Run(settings, source, on_bad_rows, max_reject_fraction, embed_on, embed_shards)
    summary = Summary(run.data)
    skipped = {"ingest": skip_ingest, "synthetic": skip_synthetic, "embed": skip_embed}
    writes = {stage.name: stage.writes for stage in STAGES}

    def gate(stage: str, missing_ok: bool = False) -> None:
        """Validate the stage's datasets; a critical failure stops the flow here, before any load."""
        if skip_validate:
            return
        with summary.stage(f"validate:{stage}", "reports", writes.get(stage), ("passed", "passed (cached)")) as row:
            report = validated(run.data, stage, missing_ok, run.storage)
            counts = {status: sum(s["status"] == status for s in report["suites"]) for status in ("pass", "warn")}
            row["detail"] = f"suites: {counts['pass']} pass, {counts['warn']} with warnings -> {run.data / 'reports'}"

    for stage in STAGES:
        if skipped[stage.name]:
            summary.skipped(stage.name, f"--skip-{stage.name}")
            continue
        with summary.stage(stage.name, stage.writes, stage.writes) as row:
            row["detail"] = stage.run(run)
        gate(stage.name)
    if skip_validate:
        summary.skipped("validate", "--skip-validate")
    for stage in STAGES:  # before any load, the data of skipped stages is validated too, where it exists
        if skipped[stage.name]:
            gate(stage.name, missing_ok=True)
    loads = run_loads(run.data, skip_stores, replace, verify)
    summary.concurrent(loads)
    statuses = {row["status"] for row in loads}
    try:
        if statuses & {"loaded", "unchanged"} and "failed" not in statuses:
            gate("load", missing_ok=True)
    finally:  # the summary of what ran, also when the last gate stops the run
        create_markdown_artifact(key="full-refresh-summary", markdown=summary.markdown("Full refresh"),
                                 description="What ran in this full refresh")
    raise_on_failed(summary.rows)
    return summary.rows


def start_local_servers(settings: Settings, stores: list[str]) -> None:
    """The local servers of the stores this run loads (a no-op for a running one; an external store's
    URL starts nothing)."""
    from tasks import services

    names = [name for name in services.wanted(settings) if name in stores]
    if names:
        for name, state in services.start(settings, names).items():
            if state == "started":
                print(f"started the local {name} server")


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
                        help="embed on a work pool (e.g. a100-gpu): one flow run of its embed-shard deployment per "
                             "shard, spread over its workers")
    parser.add_argument("--embed-shards", type=int, metavar="N",
                        help="split each embedding set into N shards (default: MG_EMBED_SHARD_ROWS texts each)")
    for stage in [*(s.name for s in STAGES), "validate"]:
        parser.add_argument(f"--skip-{stage}", action="store_true", help=f"do not run the {stage} stage")
    add_store_flags(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.max_reject_fraction <= 1:
        parser.error("--max-reject-fraction must be between 0 and 1")
    if args.embed_shards is not None and args.embed_shards < 1:
        parser.error("--embed-shards must be at least 1")
    # Every check that needs no stage runs before Prefect starts: a bad value is an error here, not mid-run.
    settings = cli_settings(data_dir=args.data_dir, catalog_size=args.catalog_size, model=args.model,
                            device=args.device)

    def run() -> int:
        preflight(settings, None if args.skip_ingest else args.source,
                  embed=not args.skip_embed and not args.embed_on)
        start_local_servers(settings, wanted_stores(skipped_stores(args)))
        started = time.perf_counter()
        with prefect_api(settings) as where:
            print(f"Prefect API: {where}")
            rows = full_flow(
                data_dir=str(settings.data_dir), source=args.source, catalog_size=args.catalog_size,
                model=args.model, device=args.device, on_bad_rows=args.on_bad_rows,
                max_reject_fraction=args.max_reject_fraction, skip_ingest=args.skip_ingest,
                skip_synthetic=args.skip_synthetic, skip_embed=args.skip_embed, skip_validate=args.skip_validate,
                skip_stores=skipped_stores(args), embed_on=args.embed_on, embed_shards=args.embed_shards,
                replace=args.replace,
                verify=args.verify)
        print(f"\nFull refresh finished in {time.perf_counter() - started:.0f} s (data dir {settings.data_dir}):")
        print(text(rows))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
