"""The Prefect pattern every stage follows.

A stage is a plain function on paths. Its Prefect task:
- is keyed by the digests of its input files plus its parameters (never by pickled frames, whose
  hashes are unstable: Prefect issues #17547, #16185), and by a version string bumped when the
  stage's output format changes;
- returns paths, never frames (Prefect keeps task results in memory: #10952);
- persists its result under the data dir, so a rerun after a failure skips the stages that finished,
  and deleting the data dir forgets the cache with the data;
- retries only on transient errors (a store or the network unavailable), never on bad input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, sorted)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(str(child.relative_to(path)).encode() + b"\0" + file_digest(child).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stage_key(version: str, inputs: Iterable[Path], params: dict[str, Any]) -> str:
    h = hashlib.sha256(version.encode())
    for path in inputs:
        h.update(file_digest(path).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()


def key_from_inputs(version: str, path_params: tuple[str, ...]):
    """A cache_key_fn: digests of the path-valued parameters named, plus every other parameter."""

    def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        inputs = [Path(parameters[name]) for name in path_params if parameters.get(name) is not None]
        params = {k: v for k, v in parameters.items() if k not in path_params}
        return f"{context.task.name}-{stage_key(version, inputs, params)}"

    return cache_key


def result_storage(data_dir: Path) -> str:
    """A storage block for task results under DATA_DIR/.prefect-results, saved on the Prefect server
    (Prefect requires that), named after the folder so each data dir keeps its own cache."""
    basepath = (Path(data_dir) / ".prefect-results").resolve()
    name = "mg-results-" + hashlib.sha256(str(basepath).encode()).hexdigest()[:12]
    LocalFileSystem(basepath=str(basepath)).save(name, overwrite=True)
    return f"local-file-system/{name}"


def retry_transient(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry_condition_fn signature
    """Retry network and store outages; fail at once on everything else (bad input never heals)."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - the state may hold an unreadable result
        error = exc
    return isinstance(error, TRANSIENT_ERRORS)
