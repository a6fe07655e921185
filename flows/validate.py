"""Validation flow: every Great Expectations suite in expectations/ against the data dir.

    python -m flows.validate --data-dir DIR [--stage ingest|synthetic|embed]

Writes DIR/reports/validation_report.json and a markdown artifact on the flow run; exits 1 when a
critical expectation fails, naming the suite, the expectation and sample offending values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow

from flows.common import load_settings, prefect_api
from tasks.validation import STAGE_DATASETS, ValidationFailed, validate_task


@flow(name="validate", log_prints=True)
def validate_flow(data_dir: str = "data", stage: str | None = None) -> str:
    return validate_task(data_dir, stage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.validate", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--stage", choices=list(STAGE_DATASETS), help="only the suites of this stage's datasets")
    args = parser.parse_args(argv)
    settings = load_settings(data_dir=args.data_dir)
    with prefect_api(settings):
        try:
            path = validate_flow(str(settings.data_dir), args.stage)
        except ValidationFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    report = json.loads(Path(path).read_text())
    for suite in report["suites"]:
        print(f"{suite['suite']:20} {suite['status']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
