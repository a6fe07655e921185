"""Validation flow: every Great Expectations suite in expectations/ against the data dir.

    python -m flows.validate --data-dir DIR [--stage ingest|synthetic|embed|load]

Without --stage: every dataset present, and the absent ones listed as absent (after an ingest-only
run, say); with --stage: that stage's datasets, each required. Writes DIR/reports/validation_*.json
and a markdown artifact on the flow run; exits 1 when a critical expectation fails, naming the
suite, the expectation and sample offending values. --stage load checks each loaded store again
(counts, dimensions, indexes, self-nearest neighbours) and reconciles its ids with the sources.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow

from flows.common import cli_settings, load_settings, prefect_api
from tasks.caching import result_storage
from tasks.stores.loading import recheck_stores
from tasks.validate.suites import STAGE_DATASETS, report_name
from tasks.validate.tasks import validated
from tasks.errors import run_cli


@flow(name="validate", log_prints=True)
def validate_flow(data_dir: str | None = None, stage: str | None = None) -> str:
    """Validate one stage's datasets (each required), or without a stage every dataset present;
    returns the report's path."""
    data = load_settings(data_dir=data_dir).data_dir
    if stage == "load":
        recheck_stores(data)
    # The load stage's suites cover the stores that were loaded; the others are absent, not failures.
    validated(data, stage, stage in (None, "load"), result_storage(data))
    return str(data / "reports" / report_name(stage))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.validate", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--stage", choices=list(STAGE_DATASETS), help="only the suites of this stage's datasets")
    args = parser.parse_args(argv)
    settings = cli_settings(data_dir=args.data_dir)

    def run() -> int:
        with prefect_api(settings):
            path = validate_flow(str(settings.data_dir), args.stage)
        report = json.loads(Path(path).read_text())
        for suite in report["suites"]:
            status = "absent" if suite["status"].startswith("skipped") else suite["status"]
            print(f"{suite['suite']:20} {status:6} {suite['dataset']}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
