"""`python -m flows.full`: its options, a default run on a real Prefect server, and its cache."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.full import main
from tests.conftest import ROOT

OPTIONS = ["--data-dir", "--source", "--catalog-size", "--model", "--device", "--embed-on", "--skip-ingest",
           "--skip-synthetic",
           "--skip-embed", "--skip-validate", "--no-milvus", "--no-postgres", "--no-neo4j", "--no-agentdb"]


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "flows.full", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout


def test_default_run_ingests_a_generated_release_and_reports(prefect_server, tmp_path, capsys):
    data = tmp_path / "data"
    # Embedding ~12k texts on 2 CPU cores takes minutes: tests/test_embeddings.py runs that stage.
    assert main(["--data-dir", str(data), "--catalog-size", "2000", "--skip-embed"]) == 0
    out = capsys.readouterr().out
    assert "ingest             completed" in out and "synthetic          completed" in out
    assert "validate:ingest    passed" in out and "validate:synthetic passed" in out
    assert (data / "reports" / "validation_report.json").exists()
    assert (data / "synthetic" / "users.parquet").exists() and (data / "synthetic" / "media_catalog.parquet").exists()
    assert "embed              skipped" in out
    for stage in ("milvus", "postgres", "neo4j", "agentdb"):
        assert f"{stage:18} not built yet" in out
    stats = json.loads((data / "processed" / "stats.json").read_text())
    assert stats["files"]["ratings"]["rows_written"] == pl.scan_parquet(
        data / "processed" / "ratings.parquet").select(pl.len()).collect().item() > 50_000
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["full-refresh-summary"])))
        assert artifacts and "| ingest | completed |" in artifacts[0].data

    # A rerun takes the ingest result from the cache under the data dir: the files are not rewritten.
    written = (data / "processed" / "stats.json").stat().st_mtime_ns
    assert main(["--data-dir", str(data), "--skip-synthetic", "--skip-embed", "--skip-validate", "--no-milvus",
                 "--no-postgres", "--no-neo4j", "--no-agentdb"]) == 0
    assert (data / "processed" / "stats.json").stat().st_mtime_ns == written
    assert (data / ".prefect-results").is_dir()
    assert "skipped" in capsys.readouterr().out


def test_changed_input_misses_the_cache(prefect_server, small_release, tmp_path):
    from flows.ingest import ingest_flow

    data = tmp_path / "data"
    ingest_flow(str(small_release), str(data))
    first = (data / "processed" / "stats.json").stat().st_mtime_ns
    ingest_flow(str(small_release), str(data))
    assert (data / "processed" / "stats.json").stat().st_mtime_ns == first  # cache hit
    ratings = small_release / "ratings.csv"
    lines = ratings.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:2] + ["0.5"] + lines[1].split(",")[3:])
    ratings.write_text("\n".join(lines) + "\n")
    ingest_flow(str(small_release), str(data))
    assert (data / "processed" / "stats.json").stat().st_mtime_ns != first  # new digest, new run
