"""The validate stage's Prefect task: the suites of tasks.validate.suites, cached by the digests of
the data they check."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.caching import stage_key
from tasks.validate.suites import (EXPECTATIONS_DIR, STAGE_DATASETS, ValidationFailed, first_failure, load_suites,
                                   markdown, report_name, validate)

VALIDATION_VERSION = "validate-1"


def _validation_key(context, parameters: dict) -> str:  # noqa: ARG001 - Prefect's cache_key_fn signature
    """Unchanged data and suites validate the same: the digests of the suites and of the folders of the
    stage and of the stages before it (suites check across them: users against ratings, say)."""
    data, stage = Path(parameters["data_dir"]), parameters.get("stage")
    stages = list(STAGE_DATASETS)
    upto = stages[:stages.index(stage) + 1] if stage else stages
    folders = [data / STAGE_DATASETS[s].rstrip("/") for s in upto]
    inputs = [EXPECTATIONS_DIR, *(f for f in folders if f.exists())]
    return f"validate-{stage_key(VALIDATION_VERSION, inputs, {**parameters, 'data_dir': str(data.resolve())})}"


@task(name="validate", cache_key_fn=_validation_key, persist_result=True)
def validate_task(data_dir: str, stage: str | None = None, missing_ok: bool = False) -> str:
    """Validate the suites of one stage's datasets (all when stage is None); publish a markdown
    artifact; raise ValidationFailed on a critical failure. Returns the report's path
    (reports/validation_<stage>.json, or validation_report.json for all). Unchanged data is not
    validated again: the result comes from the cache."""
    suites = [s for s in load_suites() if stage is None or s["meta"]["dataset"].startswith(STAGE_DATASETS[stage])]
    report = validate(Path(data_dir), suites, missing_ok, report_name(stage))
    create_markdown_artifact(key=f"validation-{stage or 'all'}", markdown=markdown(report),
                             description=f"Great Expectations results after {stage or 'every'} stage")
    logger = get_run_logger()
    for suite in report["suites"]:
        logger.info("suite %s: %s", suite["suite"], suite["status"])
    failure = first_failure(report)
    if failure:
        raise ValidationFailed(f"validation failed, nothing will be loaded: {failure}")
    return str(Path(data_dir) / "reports" / report_name(stage))


def validated(data_dir: Path, stage: str | None, missing_ok: bool, storage: str) -> dict:
    """The validation report of a stage (in a flow): from the cache when the data and suites are
    unchanged and its report is still on disk, else validated now."""
    task_ = validate_task.with_options(result_storage=storage)
    path = Path(task_(str(data_dir), stage, missing_ok))
    if not path.exists():  # reports/ was cleared since
        path = Path(task_.with_options(refresh_cache=True)(str(data_dir), stage, missing_ok))
    return json.loads(path.read_text())
