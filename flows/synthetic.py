"""Synthetic data flow: user profiles, platforms and availability, and the media catalog.

    python -m flows.synthetic --data-dir DIR [--catalog-size N] [--export jsonl,csv]

Reads DIR/processed/ (run the ingest first) and writes DIR/synthetic/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from flows.common import cli_settings, load_settings, prefect_api
from tasks.caching import result_storage
from tasks.errors import MissingInput, run_cli
from tasks.settings import CatalogSize
from tasks.synthetic.datasets import CATALOG_TEMPLATE
from tasks.synthetic.tasks import availability_task, catalog_task, users_task


@flow(name="synthetic-data", log_prints=True)
def synthetic_flow(data_dir: str | None = None, catalog_size: CatalogSize | None = None, seed: int | None = None,
                   exports: list[str] | None = None, catalog_template: str | None = None) -> dict[str, list[str]]:
    """Returns the written files by dataset. Empty parameters take the settings (environment or .env)."""
    settings = load_settings(data_dir=data_dir, catalog_size=catalog_size, seed=seed)
    data, catalog_size, seed = settings.data_dir, settings.catalog_size, settings.seed
    processed, out = data / "processed", data / "synthetic"
    for needed in ("ratings.parquet", "movies.parquet"):
        if not (processed / needed).exists():
            raise MissingInput(f"{processed / needed} is missing: run the ingest stage first")
    storage = result_storage(data)
    formats = tuple(exports or ())
    users = users_task.with_options(result_storage=storage).submit(
        str(processed / "ratings.parquet"), str(processed / "movies.parquet"), str(out / "users.parquet"), seed, formats)
    listings = availability_task.with_options(result_storage=storage).submit(
        str(processed / "movies.parquet"), str(out), formats)
    catalog = catalog_task.with_options(result_storage=storage).submit(
        catalog_template or str(CATALOG_TEMPLATE), catalog_size, str(out / "media_catalog.parquet"), seed, formats)
    return {"users": [users.result()], "availability": listings.result(), "catalog": [catalog.result()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--catalog-size", type=int)
    parser.add_argument("--export", default="", help="comma-separated extra formats beside the Parquet: jsonl,csv")
    parser.add_argument("--template", help="catalog schema template (default: tasks/synthetic/schemas/media_catalog.yaml)")
    args = parser.parse_args(argv)
    settings = cli_settings(data_dir=args.data_dir, catalog_size=args.catalog_size)
    exports = [f for f in args.export.split(",") if f]
    unknown = set(exports) - {"jsonl", "csv"}
    if unknown:
        parser.error(f"--export: unknown format(s) {', '.join(sorted(unknown))}; choose jsonl, csv")

    def run() -> int:
        with prefect_api(settings):
            written = synthetic_flow(str(settings.data_dir), settings.catalog_size, settings.seed, exports,
                                     args.template)
        for dataset, paths in written.items():
            print(f"{dataset:13} {', '.join(paths)}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
