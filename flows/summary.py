"""A run's summary: one row per stage (status, seconds, rows, peak RSS, detail), built here once and
rendered for the CLI (`text`), the Prefect UI's artifact (`markdown`) and the tests (`rows`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class StagePeak:
    """This process's peak resident memory since the last reset, in MB (Linux's VmHWM, reset through
    /proc/self/clear_refs); None where the system does not tell."""

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def mb(self) -> int | None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return None
        return next((int(line.split()[1]) // 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None)


def output_rows(folder: Path) -> int:
    """Rows in the folder's Parquet files and vectors in its embedding files (from their metadata:
    nothing else is read)."""
    import h5py
    import pyarrow.parquet as pq

    rows = 0
    for f in sorted(folder.glob("*")):
        if f.suffix == ".parquet":
            rows += pq.read_metadata(f).num_rows
        elif f.suffix == ".h5":
            with h5py.File(f, "r") as h5:
                rows += len(h5["ids"])
    return rows


def stamps(folder: Path) -> dict[str, int]:
    """Modification times of the files under a folder: unchanged after a stage = taken from the cache."""
    if not folder.exists():
        return {}
    return {str(f): f.stat().st_mtime_ns for f in folder.rglob("*")
            if f.is_file() and ".prefect-results" not in f.parts}


@dataclass
class Summary:
    data_dir: Path
    rows: list[dict] = field(default_factory=list)
    peak: StagePeak = field(default_factory=StagePeak)

    def __post_init__(self) -> None:
        self.peak.reset()

    def skipped(self, stage: str, why: str) -> None:
        self.rows.append({"stage": stage, "status": "skipped", "seconds": None, "detail": why, "rows": None,
                          "peak_rss_mb": None})

    @contextmanager
    def stage(self, stage: str, writes: str, counts: str | None,
              statuses: tuple[str, str] = ("completed", "cached")) -> Iterator[dict]:
        """Time the block as one stage; it fills row["detail"] (and may set row["status"]). The status
        is statuses[1] when no file under DATA_DIR/<writes> changed (taken from the cache), else
        statuses[0]; the rows are those of the files in DATA_DIR/<counts> (None: no rows)."""
        started, before = time.perf_counter(), stamps(self.data_dir / writes)
        row: dict = {"stage": stage}
        yield row
        if "status" not in row:
            row["status"] = statuses[1] if before and stamps(self.data_dir / writes) == before else statuses[0]
        self.rows.append({**row, "seconds": round(time.perf_counter() - started, 1),
                          "rows": output_rows(self.data_dir / counts) if counts else None,
                          "peak_rss_mb": self.peak.mb()})
        self.peak.reset()

    def concurrent(self, rows: list[dict]) -> None:
        """Rows of stages that ran at once (the loads): one peak for all of them."""
        peak = self.peak.mb()
        self.rows += [{"rows": None, **row, "peak_rss_mb": peak if row["seconds"] is not None else None}
                      for row in rows]
        self.peak.reset()

    def markdown(self, title: str) -> str:
        table = "\n".join(f"| {r['stage']} | {r['status']} | {_figure(r, 'seconds')} | {_figure(r, 'rows')} "
                          f"| {_figure(r, 'peak_rss_mb')} | {r['detail']} |" for r in self.rows)
        return (f"# {title}\n\nData dir: `{self.data_dir}`\n\n| stage | status | s | rows | peak RSS MB | detail |\n"
                f"|---|---|---|---|---|---|\n{table}\n")

    def text(self) -> str:
        return text(self.rows)


def _figure(row: dict, key: str) -> str:
    value = row.get(key)
    return "" if value is None else f"{value:,}"


def text(rows: list[dict]) -> str:
    """The rows as the CLI prints them, one aligned line each."""
    lines = []
    for row in rows:
        seconds = f"{row['seconds']:>6.1f} s" if row.get("seconds") is not None else " " * 8
        count = f"{row['rows']:>12,}" if row.get("rows") is not None else " " * 12
        peak = f"{row['peak_rss_mb']:>6,} MB" if row.get("peak_rss_mb") is not None else " " * 9
        lines.append(f"  {row['stage']:18} {row['status']:15} {seconds} {count} {peak}  {row['detail']}")
    return "\n".join(lines)
