"""`python -m flows.full`: its options, a default run on a real Prefect server, and its cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.full import main
from tests.conftest import ROOT

OPTIONS = ["--data-dir", "--source", "--catalog-size", "--model", "--device", "--on-bad-rows",
           "--max-reject-fraction", "--embed-on", "--embed-shards", "--skip-ingest",
           "--skip-synthetic",
           "--skip-embed", "--skip-validate", "--no-milvus", "--no-postgres", "--no-neo4j", "--no-agentdb"]


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "flows.full", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout


def test_default_run_ingests_a_generated_release_and_reports(prefect_server, store_env, tmp_path, capsys):
    data = tmp_path / "data"
    # Embedding ~12k texts on 2 CPU cores takes minutes: tests/test_embeddings.py runs that stage.
    assert main(["--data-dir", str(data), "--catalog-size", "2000", "--skip-embed"]) == 0
    out = capsys.readouterr().out
    assert "ingest             completed" in out and "synthetic          completed" in out
    assert "validate:ingest    passed" in out and "validate:synthetic passed" in out
    assert (data / "reports" / "validation_ingest.json").exists()
    assert (data / "synthetic" / "users.parquet").exists() and (data / "synthetic" / "media_catalog.parquet").exists()
    assert "embed              skipped" in out
    assert f"{'postgres':18} loaded" in out and f"{'milvus':18} loaded" in out and f"{'neo4j':18} loaded" in out
    assert f"{'agentdb':18} loaded" in out
    [log_file] = (data / "logs").glob("full-*.log")  # the run's log lines beside its data
    log_text = log_file.read_text()
    assert "No source given: ingesting a generated small MovieLens-format release" in log_text
    assert "prefect.task_runs" in log_text and "neo4j" in log_text
    stats = json.loads((data / "processed" / "stats.json").read_text())
    assert stats["files"]["ratings"]["rows_written"] == pl.scan_parquet(
        data / "processed" / "ratings.parquet").select(pl.len()).collect().item() > 50_000
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["full-refresh-summary"])))
        [ours] = [a for a in artifacts if f"Data dir: `{data}`" in a.data]  # other tests' runs wrote theirs (random ids)
        assert "| ingest | completed |" in ours.data

    # A rerun takes every stage, validation included, from the cache under the data dir, and says so.
    written = (data / "processed" / "stats.json").stat().st_mtime_ns
    validated = (data / "reports" / "validation_ingest.json").stat().st_mtime_ns
    assert main(["--data-dir", str(data), "--catalog-size", "2000", "--skip-embed", "--no-milvus",
                 "--no-postgres", "--no-neo4j", "--no-agentdb"]) == 0
    assert (data / "processed" / "stats.json").stat().st_mtime_ns == written
    assert (data / "reports" / "validation_ingest.json").stat().st_mtime_ns == validated
    assert (data / ".prefect-results").is_dir()
    out = capsys.readouterr().out
    assert "ingest             cached" in out and "synthetic          cached" in out
    assert "validate:ingest    passed (cached)" in out and "validate:synthetic passed (cached)" in out


def test_bad_parameters_stop_before_the_first_stage(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "--source", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(data), "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "model 'no-such-model' is unknown" in err
    assert err.startswith("error: bad setting: model: ") and len(err.strip().splitlines()) == 1
    for size in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--data-dir", str(data), "--catalog-size", size])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.strip().splitlines() == [
            "error: bad setting: catalog_size: Input should be greater than or equal to 1"]
    assert not data.exists()  # nothing ran


def test_bad_rows_through_the_full_flow(prefect_server, tmp_path):
    """--on-bad-rows and --max-reject-fraction reach the ingest; a failure is one clear message,
    not a traceback per task and flow level; the summary names the rejects and their file."""
    from tests.test_ingest import RATINGS, write_release

    release = write_release(tmp_path / "rel", ratings=RATINGS + "1,1,9.0,964982703\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    common = [sys.executable, "-m", "flows.full", "--data-dir", str(tmp_path / "data"), "--source", str(release),
              "--skip-synthetic", "--skip-embed", "--skip-validate", "--no-milvus", "--no-postgres", "--no-neo4j",
              "--no-agentdb"]
    failed = subprocess.run([*common, "--on-bad-rows", "fail"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 1
    output = failed.stdout + failed.stderr
    assert "Traceback" not in output
    assert failed.stderr.strip().splitlines()[-1].startswith(
        f"error: {release / 'ratings.csv'}: row 5: rating off the 0.5-5.0 half-star grid")
    kept = subprocess.run([*common, "--max-reject-fraction", "0.5"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert (f"1 row rejected (ratings: 1 rating off the 0.5-5.0 half-star grid) -> "
            f"{tmp_path / 'data' / 'processed' / 'rejected'}") in kept.stdout


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
