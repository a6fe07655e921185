"""Datasets have an identity: each data dir is its own namespace in every store, a store says which
dataset it holds, and another dataset never overwrites it silently (the shared local servers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from flows.full import main as full_main
from tasks.query.search import search
from tasks.settings import Settings
from tasks.stores.base import DatasetConflict, NoDataset
from tasks.stores.loading import StoresNotReady, check_store, load_store, reach_stores
from tests.conftest import free_port, pg_connect
from tests.test_neo4j import cypher
from tests.test_stores import opened

SHARED = ("postgres", "neo4j")  # the stores whose local server every data dir shares


def renamed_copy(data: Path, where: Path, title: str) -> Path:
    """Another dataset: a copy of `data` whose movie ml_1 has another title."""
    copy = where / "other" / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns(".prefect-results", "stores", "milvus.db"))
    movies = copy / "processed" / "movies.parquet"
    frame = pl.read_parquet(movies)
    frame.with_columns(title=pl.when(pl.col("media_id") == "ml_1").then(pl.lit(title)).otherwise("title")) \
        .write_parquet(movies)
    return copy


def stored_title(name: str, settings: Settings) -> str:
    if name == "postgres":
        with pg_connect(settings.postgres_dsn(), settings) as conn:
            return conn.execute("SELECT title FROM movies WHERE media_id = 'ml_1'").fetchone()[0]
    return cypher(settings, "MATCH (m:Media {id: 'ml_1'}) RETURN m.title AS t")[0]["t"]


def test_two_data_dirs_keep_their_own_rows_in_the_shared_local_servers(store_data, store_env, tmp_path):
    first, second = Settings(data_dir=store_data), Settings(data_dir=renamed_copy(store_data, tmp_path, "Other"))
    assert first.dataset_namespace != second.dataset_namespace
    assert first.dataset_namespace == Settings(data_dir=store_data).dataset_namespace  # stable for one dir
    original = pl.read_parquet(store_data / "processed" / "movies.parquet").filter(pl.col("media_id") == "ml_1")
    for settings in (first, second):
        for name in SHARED:
            summary = load_store(settings, name, lambda m: None)
            assert summary["status"] == "loaded"
            assert all(t["deleted"] == 0 for t in summary["tables"].values()), summary  # nothing of the other's
    for name in SHARED:
        assert stored_title(name, first) == original["title"][0]
        assert stored_title(name, second) == "Other"
        for settings in (first, second):
            store = opened(name, settings.data_dir)
            try:
                assert store.holder() == settings.dataset_origin  # says which dataset it holds
                assert settings.dataset_namespace in store.target()
                check_store(store, settings.data_dir, settings)  # every id of its own source, no other
            finally:
                store.close()
    # Search reads the data dir's own namespace.
    hits = search(first, like="ml_1", store="postgres", k=3)
    assert hits and "ml_1" not in {h.id for h in hits}
    with pytest.raises(NoDataset, match="does not exist"):
        search(Settings(data_dir=tmp_path / "nowhere"), like="ml_1", store="postgres")
    assert not (tmp_path / "nowhere").exists()


def test_a_shared_namespace_stops_another_dataset_and_replace_overwrites_it(store_data, store_env, tmp_path):
    first = Settings(data_dir=store_data, namespace="shared_ns")
    second = Settings(data_dir=renamed_copy(store_data, tmp_path, "Other"), namespace="shared_ns")
    assert load_store(first, "postgres", lambda m: None)["status"] == "loaded"
    # Found before any stage runs, naming both data dirs and the way out.
    with pytest.raises(StoresNotReady) as caught:
        reach_stores(second, ["postgres"])
    message = str(caught.value)
    assert str(store_data.resolve()) in message and str(second.data_dir.resolve()) in message
    assert "MG_NAMESPACE" in message and "--replace" in message
    with pytest.raises(DatasetConflict, match="holds the dataset of"):
        load_store(second, "postgres", lambda m: None)
    assert stored_title("postgres", first) != "Other"  # untouched
    logs = []
    summary = load_store(second, "postgres", logs.append, replace=True)
    assert summary["status"] == "loaded" and summary["tables"]["movies"]["written"] == 1
    assert any("--replace" in line for line in logs)
    assert stored_title("postgres", second) == "Other"
    # The first data dir's reads no longer answer from what is now another dataset.
    with pytest.raises(NoDataset, match="holds the dataset of"):
        search(first, like="ml_1", store="postgres")
    store = opened("postgres", first.data_dir)
    try:
        with pytest.raises(NoDataset):  # python -m flows.validate --stage load
            check_store(store, first.data_dir, first)
    finally:
        store.close()


def test_every_unreachable_store_is_named_before_the_first_stage(prefect_server, store_env, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.setenv("MG_POSTGRES_URL", f"postgresql://u:secret@127.0.0.1:{free_port()}/db")
    monkeypatch.setenv("MG_NEO4J_URL", f"bolt://127.0.0.1:{free_port()}")
    data = tmp_path / "data"
    assert full_main(["--data-dir", str(data), "--no-milvus", "--no-agentdb"]) == 1
    err = capsys.readouterr().err
    assert "2 of the stores to load cannot be loaded" in err
    assert "postgres at postgresql://u@127.0.0.1" in err and "check MG_POSTGRES_URL" in err
    assert "neo4j at bolt://127.0.0.1" in err and "check MG_NEO4J_URL" in err
    assert "secret" not in err
    assert not (data / "processed").exists()  # no stage ran
    # A local server that is not running: the command that starts it.
    local = Settings(data_dir=data, postgres_url=None, postgres_port=free_port())
    with pytest.raises(StoresNotReady, match="python -m tasks.services start postgres"):
        reach_stores(local, ["postgres"])
