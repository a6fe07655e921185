"""Writing outputs so that a failure never leaves a partial file behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ZSTD = {"compression": "zstd", "statistics": True}  # how every Parquet output is written


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`: renamed onto it when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
