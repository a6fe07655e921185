"""The run summary: one set of rows, as the CLI prints it and the UI's artifact shows it."""

from __future__ import annotations

import polars as pl
import pytest

from flows.summary import Summary, text


def test_a_stage_is_timed_counted_and_told_cached_when_it_wrote_nothing(tmp_path):
    summary = Summary(tmp_path)
    with summary.stage("ingest", "processed", "processed") as row:
        (tmp_path / "processed").mkdir()
        pl.DataFrame({"x": range(1234)}).write_parquet(tmp_path / "processed" / "x.parquet")
        row["detail"] = "wrote x"
    with summary.stage("ingest", "processed", "processed") as row:
        row["detail"] = "nothing new"
    with summary.stage("validate:load", "reports", None, ("passed", "passed (cached)")) as row:
        row["detail"] = "suites"
    summary.skipped("embed", "--skip-embed")
    summary.concurrent([{"stage": "postgres", "status": "loaded", "seconds": 1.5, "detail": "db", "rows": 9},
                        {"stage": "milvus", "status": "skipped", "seconds": None, "detail": "by flag"}])
    rows = summary.rows
    assert [(r["stage"], r["status"], r["rows"]) for r in rows] == [
        ("ingest", "completed", 1234), ("ingest", "cached", 1234), ("validate:load", "passed", None),
        ("embed", "skipped", None), ("postgres", "loaded", 9), ("milvus", "skipped", None)]
    assert all(r["seconds"] >= 0 for r in rows[:3]) and rows[3]["seconds"] is None
    assert rows[0]["peak_rss_mb"] > 0 and rows[4]["peak_rss_mb"] > 0  # Linux VmHWM: the process's peak
    assert rows[5]["peak_rss_mb"] is None  # a store that did not run has no figure

    lines = summary.text().splitlines()
    assert len(lines) == len(rows) and summary.text() == text(rows)
    assert lines[0].split()[:2] == ["ingest", "completed"] and "1,234" in lines[0] and lines[0].endswith("wrote x")
    table = summary.markdown("Full refresh").splitlines()
    assert table[0] == "# Full refresh" and f"Data dir: `{tmp_path}`" in table
    assert "| ingest | completed |" in table[6] and "| 1,234 |" in table[6] and table[6].endswith("| wrote x |")
    assert table[-1].startswith("| milvus | skipped |  |  |  | by flag |")


def test_a_failed_stage_adds_no_row(tmp_path):
    summary = Summary(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with summary.stage("embed", "embeddings", "embeddings"):
            raise RuntimeError("boom")
    assert summary.rows == []
