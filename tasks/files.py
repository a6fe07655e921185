"""Writing outputs so that a failure never leaves a partial file behind."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ZSTD = {"compression": "zstd", "statistics": True}  # how every Parquet output is written


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (a file or a folder the block makes): it replaces `path` when the
    block succeeds, and is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    _remove(tmp)  # left by a killed run
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            _remove(path)
        tmp.replace(path)
    finally:
        _remove(tmp)
