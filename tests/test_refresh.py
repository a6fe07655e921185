"""Refreshes touch only what changed: counted from the stores themselves (benchmarks/refresh.py
measures the same at 25m scale)."""

from __future__ import annotations

import json

import polars as pl

from benchmarks.refresh import expected_touches, make_change, removed_catalog_id, snapshot, still_holding, touched
from flows.full import main

CATALOG = 300


def test_refreshes_touch_only_what_changed(prefect_server, store_env, small_release, tmp_path, capsys):
    data = tmp_path / "data"
    settings = store_env.model_copy(update={"data_dir": data})

    def refresh(catalog_size: int = CATALOG) -> str:
        assert main(["--data-dir", str(data), "--source", str(small_release),
                     "--catalog-size", str(catalog_size)]) == 0
        return capsys.readouterr().out

    refresh()
    before = snapshot(settings)
    out = refresh()
    for stage in ("ingest", "synthetic", "embed"):
        assert f"{stage:18} cached" in out
    for store in ("milvus", "postgres", "neo4j", "agentdb"):
        assert f"{store:18} unchanged" in out
    unchanged = snapshot(settings)
    assert touched(before, unchanged) == {}  # not a row, record or file written

    removed = removed_catalog_id(data, CATALOG)
    change = make_change(small_release, data)
    refresh(CATALOG - 1)
    one = touched(unchanged, snapshot(settings))
    stats = json.loads((data / "embeddings" / "stats.json").read_text())
    assert stats["media"]["encoded"] == 1 and stats["catalog"]["encoded"] == 0
    assert stats["catalog"]["carried_over"] == CATALOG - 1
    assert stats["users"]["computed"] == len(change["affected_users"]) > 1
    expected = expected_touches(change)
    assert one["postgres"] == expected["postgres"]
    assert one["milvus"] == expected["milvus"]
    # The graph: one write for the title, one for the new ratings, one for the item's new first likers
    # (and one for the likers they displace, if any); no node created or deleted.
    assert {k: one["neo4j"].get(k, 0) for k in expected["neo4j"]} == expected["neo4j"]
    assert "records_created" not in one["neo4j"]
    assert set(one["neo4j"]) - set(expected["neo4j"]) <= {"records_updated", "records_deleted"}
    # AgentDB: the user's session replaced whole (its steps, in order), its policy, and the state
    # embedding of every affected user; in the buffers at most the user's transitions; nothing else.
    agent = one["agentdb"]
    assert {t: agent[t] for t in expected["agentdb"]} == expected["agentdb"]
    of_user = pl.col("user_id") == change["user_id"]
    user_steps = pl.scan_parquet(data / "agentdb" / "episodes.parquet").filter(of_user).select(pl.len()).collect().item()
    buffered = pl.scan_parquet(data / "agentdb" / "buffers.parquet").filter(of_user).select(pl.len()).collect().item()
    assert user_steps < agent["learning_experiences"]["written"] <= user_steps + buffered
    assert 1 <= agent["learning_sessions"]["written"] <= 2  # the user's, and its buffer's span
    assert still_holding(settings, removed) == []
