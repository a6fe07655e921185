"""MovieLens ingestion flow.

    python -m flows.ingest --source SOURCE --data-dir DIR [--on-bad-rows reject|fail]

SOURCE: an extracted release folder, a release .zip, or a GroupLens release name (ml-latest-small,
ml-25m, ml-32m, ml-latest), downloaded once into DIR/raw/ with its published MD5 checked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow

from flows.common import cli_settings, load_settings, prefect_api, preflight
from tasks.caching import result_storage
from tasks.ingest.movielens import GROUPLENS_URL, OnBadRows
from tasks.ingest.tasks import ingest_task, resolve_source_task
from tasks.errors import run_cli


@flow(name="ingest-movielens", log_prints=True)
def ingest_flow(source: str, data_dir: str | None = None, on_bad_rows: OnBadRows = "reject",
                max_reject_fraction: float = 0.01, base_url: str = GROUPLENS_URL) -> str:
    """Ingest a MovieLens release into DATA_DIR/processed/; returns the path of stats.json."""
    data = load_settings(data_dir=data_dir).data_dir
    release = resolve_source_task(source, str(data / "raw"), base_url)
    return ingest_task.with_options(result_storage=result_storage(data))(
        release, str(data / "processed"), on_bad_rows, max_reject_fraction)


def ingest_summary(stats: dict, source: str, out: Path) -> str:
    """One line: what was read, what was written, and the rejected rows by reason with where they are."""
    files = stats["files"]
    written = ", ".join(f"{c['rows_written']:,} {key}" for key, c in files.items()
                        if key in ("movies", "ratings", "tags"))
    line = f"{source} -> {out}: {written}"
    rejected = sum(c["rows_rejected"] for c in files.values())
    if rejected:
        reasons = "; ".join(f"{key}: " + ", ".join(f"{n:,} {reason}" for reason, n in by_reason.items())
                            for key, by_reason in stats["rejected"].items())
        line += f"; {rejected:,} {'row' if rejected == 1 else 'rows'} rejected ({reasons}) -> {out / 'rejected'}"
    for warning in stats.get("release", {}).get("warnings", []):
        line += f"; warning: {warning}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--on-bad-rows", choices=["reject", "fail"], default="reject",
                        help="reject: bad rows go to processed/rejected/ (default); fail: stop at the first")
    parser.add_argument("--max-reject-fraction", type=float, default=0.01,
                        help="stop when more than this share of a file's rows is rejected (default 0.01)")
    args = parser.parse_args(argv)
    if not 0 <= args.max_reject_fraction <= 1:
        parser.error("--max-reject-fraction must be between 0 and 1")
    settings = cli_settings(data_dir=args.data_dir)

    def run() -> int:
        preflight(settings, args.source)
        with prefect_api(settings):
            stats_path = ingest_flow(args.source, str(settings.data_dir), args.on_bad_rows, args.max_reject_fraction)
        stats = json.loads(Path(stats_path).read_text())
        for counts in stats["files"].values():
            print(f"{counts['source']:18} {counts['rows_written']:>12,} rows  {counts['rows_rejected']:>8,} rejected")
        print(ingest_summary(stats, args.source, Path(stats_path).parent))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
