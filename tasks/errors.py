"""The pipeline's one error base and the one error path of every CLI.

A PipelineError's message already names the file, row, field, setting or store, so a CLI prints it
as one line and the terminal log shows it without a traceback (the Prefect UI keeps the full one).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """An expected failure whose message says what is wrong and where."""


class MissingInput(PipelineError, FileNotFoundError):
    """A stage's input is absent: the message names it and the stage that makes it."""


class StaleInputs(PipelineError, ValueError):
    """Inputs that disagree with each other or with what made them (embeddings and their datasets, an
    index and its parts); the message names the file and how to fix it."""


def bad_settings(exc) -> str:
    """A pydantic ValidationError as one line: each field with what is wrong (never the value, which
    may be a secret; never pydantic's link)."""
    return "bad setting: " + "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                                       for e in exc.errors())


def run_cli(main: Callable[[], int | None]) -> int:
    """Every CLI's error path: a PipelineError or a bad setting is one line on stderr and exit 1."""
    from pydantic import ValidationError

    try:
        return main() or 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ValidationError as exc:  # settings from the environment or .env: names the field, never the value
        print(f"error: {bad_settings(exc)}", file=sys.stderr)
    return 1
