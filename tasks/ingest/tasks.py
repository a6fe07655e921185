"""The ingest stage's Prefect tasks: thin wrappers over tasks.ingest.movielens and tasks.ingest.sample."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.caching import key_from_inputs, retry_transient
from tasks.ingest.movielens import GROUPLENS_URL, INGEST_VERSION, OnBadRows, ingest_release, resolve_source
from tasks.ingest.sample import SAMPLE_VERSION, generate

@task(name="resolve-movielens-source", retries=3, retry_delay_seconds=[5, 30, 120],
      retry_condition_fn=retry_transient)
def resolve_source_task(source: str, cache_dir: str, base_url: str = GROUPLENS_URL) -> str:
    return str(resolve_source(source, Path(cache_dir), base_url))


@task(name="ingest-movielens", cache_key_fn=key_from_inputs(INGEST_VERSION, ("release",)), persist_result=True)
def ingest_task(release: str, out_dir: str, on_bad_rows: OnBadRows = "reject",
                max_reject_fraction: float = 0.01) -> str:
    """Returns the path of stats.json; the Parquet files lie beside it."""
    stats = ingest_release(Path(release), Path(out_dir), on_bad_rows, max_reject_fraction)
    logger = get_run_logger()
    known = stats["release"]
    if known["known"] and known["matches_published"]:
        logger.info("%s: every file has the published row count", known["name"])
    for warning in known.get("warnings", []):
        logger.warning("%s (a copy that differs from the GroupLens release)", warning)
    for counts in stats["files"].values():
        logger.info("%s: %s rows written, %s rejected", counts["source"], f"{counts['rows_written']:,}",
                    f"{counts['rows_rejected']:,}")
    return str(Path(out_dir) / "stats.json")


@task(name="generate-sample-release", cache_key_fn=key_from_inputs(SAMPLE_VERSION, ()), persist_result=True)
def sample_release_task(scale: str, out: str, seed: int = 42) -> str:
    """Generate the release unless this folder already holds the one for (scale, seed)."""
    marker = Path(out) / "README.txt"
    if not (marker.exists() and f"({scale} scale, seed {seed})" in marker.read_text()):
        generate(scale, Path(out), seed)
    return out
