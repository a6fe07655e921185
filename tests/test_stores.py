"""The stores against real servers: PostgreSQL+pgvector and Milvus (the session's servers), and Milvus
Lite files where a test says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import psycopg
import pytest
from pgvector.psycopg import register_vector
from pymilvus.client import connection_manager

from flows.search import main as search_main
from tasks.ingest.movielens import natural_titles
from tasks.query.search import SEARCHABLE
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.base import Query, Store
from tasks.stores.loading import ReconciliationFailed, check_store, load_store, recheck_stores, reconcile
from tasks.stores.postgres import METADATA_SHARED, PARTIAL_SHARE
from tasks.stores.sources import VECTOR_SETS, h5_ids
from tests.conftest import ROOT, pg_connect


@pytest.fixture()
def pg_url(store_env: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database on the session's server for this test, given as a user gives a remote one."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    password = store_env.local_password.get_secret_value()
    admin = f"postgresql://mediagw:{password}@127.0.0.1:{store_env.postgres_port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not input
    url = f"postgresql://mediagw:{password}@127.0.0.1:{store_env.postgres_port}/{name}"
    monkeypatch.setenv("MG_POSTGRES_URL", url)
    return url


def settings_for(data: Path) -> Settings:
    return Settings(data_dir=data)


def opened(name: str, data: Path) -> Store:
    return STORES[name].open(settings_for(data))


def source_counts(data: Path, name: str) -> dict[str, int]:
    return {table: len(keys.read(data)) for table, keys in STORES[name].implementation().TABLES.items()}


def xmins(url: str, data: Path) -> dict[str, list]:
    with pg_connect(url, data) as conn:
        return {t: conn.execute(f"SELECT xmin::text FROM {t} ORDER BY 1").fetchall()  # noqa: S608 - fixed names
                for t in ("movies", "users", "media_metadata", "media_embeddings", "catalog_embeddings")}


def test_registry_names_each_store_once_with_its_module():
    assert list(STORES) == ["milvus", "postgres", "neo4j", "agentdb"]
    for spec in STORES.values():
        assert spec.flag == f"--no-{spec.name}"
        module = spec.implementation()
        assert module.__name__ == f"tasks.stores.{spec.name}"
        assert callable(module.open_store) and module.TABLES and module.INPUTS


def test_load_is_exact_idempotent_and_follows_changes(store_data, pg_url):
    data = store_data
    logs: list[str] = []
    # A value JSON and the binary COPY must both escape: quotes, a backslash, a newline, non-ASCII.
    catalog = data / "synthetic" / "media_catalog.parquet"
    awkward = 'Can"on \\ EOS\nÜ 📷'
    frame = pl.read_parquet(catalog)
    planted = frame.filter(pl.col("type") == "image")["id"][0]
    frame.with_columns(camera_model=pl.when(pl.col("id") == planted).then(pl.lit(awkward))
                       .otherwise("camera_model")).write_parquet(catalog)
    for name in ("milvus", "postgres"):
        summary = load_store(settings_for(data), name, logs.append)
        assert summary["status"] == "loaded"
        store = opened(name, data)
        try:
            assert store.counts() == source_counts(data, name)
            assert all(not r["missing"] and not r["extra"] for r in reconcile(store, data).values())
        finally:
            store.close()
    assert any("built HNSW M 16, efConstruction 200" in line for line in logs)  # the index it built, said
    assert any(line.startswith("postgres catalog_embeddings_hnsw: ") and "read into shared buffers" in line
               for line in logs)  # built, then prewarmed
    # Every value arrives intact: the type's own fields as JSON without nulls, timestamps, arrays, vectors.
    with pg_connect(pg_url, data) as conn:
        register_vector(conn)
        stored = {row[0]: row[1:] for row in conn.execute(
            "SELECT id, tags, creation_date, file_size, type_specific_data FROM media_metadata").fetchall()}
        stored_vectors = dict(conn.execute("SELECT id, embedding FROM catalog_embeddings").fetchall())
    for row in pl.read_parquet(catalog).iter_rows(named=True):
        own = {k: v for k, v in row.items() if k not in METADATA_SHARED and v is not None}
        assert stored[row["id"]] == (row["tags"], row["creation_date"], row["file_size"], own)
    assert stored[planted][3]["camera_model"] == awkward
    with h5py.File(VECTOR_SETS["catalog"].path(data), "r") as f:
        for item, vector in zip(f["ids"][:], f["embeddings"][:]):
            assert np.array_equal(stored_vectors[item.decode()].to_numpy(), vector)
    before = xmins(pg_url, data)
    with pg_connect(pg_url, data) as conn:
        index_oid = conn.execute("SELECT 'media_embeddings_hnsw'::regclass::oid").fetchone()[0]

    # Unchanged inputs: the load is skipped; forced (state removed), it still writes nothing.
    assert load_store(settings_for(data), "postgres", logs.append)["status"] == "unchanged"
    for name in ("milvus", "postgres"):
        (data / "stores" / f"{name}.state.json").unlink()
        summary = load_store(settings_for(data), name, logs.append)
        assert all(t["written"] == 0 and t["deleted"] == 0 for t in summary["tables"].values()), summary
    assert xmins(pg_url, data) == before
    with pg_connect(pg_url, data) as conn:
        assert conn.execute("SELECT 'media_embeddings_hnsw'::regclass::oid").fetchone()[0] == index_oid

    # One movie's vector changes, one catalog item is removed from the source.
    media = VECTOR_SETS["media"].path(data)
    changed = h5_ids(media)[3]
    with h5py.File(media, "r+") as f:
        new_vector = -f["embeddings"][3]
        f["embeddings"][3] = new_vector
    frame = pl.read_parquet(catalog)
    removed = frame["id"][7]
    frame.filter(pl.col("id") != removed).write_parquet(catalog)
    with h5py.File(VECTOR_SETS["catalog"].path(data), "r") as f:
        ids, vectors = f["ids"][:], f["embeddings"][:]
    keep = np.array([i.decode() != removed for i in ids])
    removed_vector = vectors[~keep][0]
    with h5py.File(VECTOR_SETS["catalog"].path(data), "w") as f:
        f.create_dataset("ids", data=ids[keep], dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=vectors[keep])
        f.attrs.update(model="all-MiniLM-L6-v2", dim=vectors.shape[1], normalized=True)

    for name, vector_table, catalog_tables in (("milvus", "media_vectors", ["catalog_vectors"]),
                                               ("postgres", "media_embeddings", ["catalog_embeddings", "media_metadata"])):
        summary = load_store(settings_for(data), name, logs.append)["tables"]
        assert summary[vector_table]["written"] == 1
        assert all(summary[t]["deleted"] == 1 for t in catalog_tables)
        store = opened(name, data)
        try:
            assert np.allclose(store.vector("media", changed), new_vector, atol=1e-6)
            assert store.vector("catalog", removed) is None
            hits = store.search(Query(vector=removed_vector.tolist(), vector_set="catalog", k=10))
            assert removed not in [h.id for h in hits]  # a dropped item is not searchable
            assert store.counts() == source_counts(data, name)
        finally:
            store.close()
    after = xmins(pg_url, data)
    assert after["movies"] == before["movies"] and after["users"] == before["users"]  # untouched tables stay


def test_a_load_killed_midway_ends_exact_on_rerun(store_data, pg_url):
    data = store_data
    script = ("import sys; from pathlib import Path; from tasks.settings import Settings; "
              "from tasks.stores.loading import load_store; "
              "load_store(Settings(data_dir=Path(sys.argv[1])), sys.argv[2], lambda m: print(m, flush=True))")
    for name, marker in (("postgres", "postgres availability"), ("milvus", "milvus media_vectors")):
        proc = subprocess.Popen([sys.executable, "-c", script, str(data), name], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, env=os.environ)
        for line in proc.stdout:
            if marker in line:
                break
        os.killpg(proc.pid, signal.SIGKILL)  # the loader and Milvus Lite's server with it
        proc.wait()
        time.sleep(0.5)
        assert not (data / "stores" / f"{name}.state.json").exists()
        assert load_store(settings_for(data), name, print)["status"] == "loaded"
        store = opened(name, data)
        try:
            assert store.counts() == source_counts(data, name)
            check_store(store, data)  # reconciles: raises on a missing or extra id
        finally:
            store.close()


def test_milvus_sends_the_diff_verifies_a_sample_and_repairs_drift(store_data, store_env, monkeypatch):
    """After its first load Milvus is diffed against its snapshot and verified by a sample: a row
    edited outside the pipeline (in the sample) and a row deleted outside are found and repaired; a
    difference outside the sample is found by --verify full."""
    from tasks.stores import snapshot

    monkeypatch.setattr(snapshot, "SAMPLE_ROWS", 30)
    data = store_data
    settings = settings_for(data)
    assert load_store(settings, "milvus", print)["verified"].startswith("sample")
    store = opened("milvus", data)
    try:
        client, collection = store.client, "catalog_vectors"
        expected = pl.read_parquet(data / "stores" / "milvus.snapshot" / f"{collection}.parquet")
        sampled = snapshot.sample(expected, ["id"])["id"].to_list()
        outside = expected.filter(~pl.col("id").is_in(sampled))["id"].to_list()

        def tamper(item: str) -> None:
            [row] = client.get(collection, ids=[item], output_fields=[*VECTOR_SETS["catalog"].fields, "digest", "vector"])
            row["vector"] = [-v for v in row["vector"]]
            client.upsert(collection, [row])

        tamper(sampled[0])
        client.delete(collection, ids=[outside[0]])
        # A row inserted twice (what a load killed before its flush and sent again left): one row after.
        client.insert(collection, client.get(collection, ids=[outside[2]],
                                             output_fields=[*VECTOR_SETS["catalog"].fields, "digest", "vector"]))
        client.flush(collection)
        figures = json.loads((data / "stores" / "milvus.json").read_text())
        assert figures["verification"] == "sample"
    finally:
        store.close()
    logs: list[str] = []
    repaired = load_store(settings, "milvus", logs.append)
    # Every row written again: which id is stored twice cannot be asked (a query returns one row per id).
    assert repaired["status"] == "loaded" and repaired["tables"][collection]["written"] == len(expected), repaired
    assert repaired["tables"][collection]["rows"] == len(expected)
    assert any("rows for" in line and "every row is written again" in line for line in logs)
    assert any("in full" in line for line in logs), logs
    json_figures = json.loads((data / "stores" / "milvus.json").read_text())
    assert json_figures["differing"] == 0
    assert json_figures["tables"][collection]["sampled"] <= 30 + repaired["tables"][collection]["written"]
    again = load_store(settings, "milvus", print)
    assert again["status"] == "unchanged" and again["verified"].startswith("sample")
    # A changed source after that: the diff against the snapshot, nothing read back but the sample.
    with h5py.File(VECTOR_SETS["users"].path(data), "r+") as f:
        f["embeddings"][0] = -f["embeddings"][0]
    logs.clear()
    changed = load_store(settings, "milvus", logs.append)["tables"]
    assert changed["user_vectors"]["written"] == 1 and changed[collection]["written"] == 0
    assert not [line for line in logs if "read back" in line or "in full" in line], logs

    store = opened("milvus", data)
    try:
        tamper = store.client.get(collection, ids=[outside[1]],
                                  output_fields=[*VECTOR_SETS["catalog"].fields, "digest", "vector"])[0]
        tamper["vector"] = [-v for v in tamper["vector"]]
        store.client.upsert(collection, [tamper])
        store.client.flush(collection)
    finally:
        store.close()
    assert load_store(settings, "milvus", print)["status"] == "unchanged"  # outside the sample: not seen
    full = load_store(settings, "milvus", print, verify="full")
    assert full["tables"][collection]["written"] == 1 and full["verified"].startswith("full")
    store = opened("milvus", data)
    try:
        with h5py.File(VECTOR_SETS["catalog"].path(data), "r") as f:
            row = h5_ids(VECTOR_SETS["catalog"].path(data)).index(outside[1])
            assert np.allclose(store.vector("catalog", outside[1]), f["embeddings"][row], atol=1e-6)
    finally:
        store.close()


def exact_top(data: Path, vector_set: str, query: np.ndarray, keep: np.ndarray, k: int) -> list[str]:
    with h5py.File(VECTOR_SETS[vector_set].path(data), "r") as f:
        ids, vectors = np.array(h5_ids(VECTOR_SETS[vector_set].path(data))), f["embeddings"][:]
    scores = np.where(keep, vectors @ query, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order if np.isfinite(scores[i])]


def test_filters_return_only_matching_items_with_recall_and_the_search_cli(store_data, pg_url, capsys, monkeypatch):
    data = store_data
    for name in SEARCHABLE:
        load_store(settings_for(data), name, print)
    movies = pl.read_parquet(data / "processed" / "movies.parquet")
    listings = pl.read_parquet(data / "synthetic" / "availability.parquet")
    catalog = pl.read_parquet(data / "synthetic" / "media_catalog.parquet")
    media_ids = h5_ids(VECTOR_SETS["media"].path(data))
    catalog_ids = h5_ids(VECTOR_SETS["catalog"].path(data))
    year = dict(zip(movies["media_id"], movies["year"]))
    genres = dict(zip(movies["media_id"], movies["genres"].to_list()))
    on_netflix = set(listings.filter(pl.col("platform_id") == "netflix")["media_id"])
    kind = dict(zip(catalog["id"], catalog["type"]))
    made = dict(zip(catalog["id"], catalog["creation_date"].dt.year()))
    documents = catalog.filter(pl.col("type") == "document")
    busiest = documents["creation_date"].dt.year().mode().sort()[0]  # a type in one year: 1% at scale
    with h5py.File(VECTOR_SETS["media"].path(data), "r") as f:
        probe = f["embeddings"][11]
    with h5py.File(VECTOR_SETS["catalog"].path(data), "r") as f:
        catalog_probe = f["embeddings"][5]
    cases = [
        (Query(vector=probe.tolist(), k=10, genre="Comedy"), lambda i: "Comedy" in genres[i],
         np.array(["Comedy" in genres[i] for i in media_ids])),
        (Query(vector=probe.tolist(), k=10, year_from=1990, year_to=1995),
         lambda i: year[i] is not None and 1990 <= year[i] <= 1995,
         np.array([year[i] is not None and 1990 <= year[i] <= 1995 for i in media_ids])),
        (Query(vector=probe.tolist(), k=10, platform="netflix"), lambda i: i in on_netflix,
         np.array([i in on_netflix for i in media_ids])),
        (Query(vector=catalog_probe.tolist(), vector_set="catalog", k=10, type="audio"),
         lambda i: kind[i] == "audio", np.array([kind[i] == "audio" for i in catalog_ids])),
        (Query(vector=catalog_probe.tolist(), vector_set="catalog", k=3, type="document", year_from=busiest,
               year_to=busiest), lambda i: kind[i] == "document" and made[i] == busiest,
         np.array([kind[i] == "document" and made[i] == busiest for i in catalog_ids])),
        (Query(vector=probe.tolist(), k=10), lambda i: True, np.ones(len(media_ids), bool)),
    ]
    answers = {}
    for name in SEARCHABLE:
        store = opened(name, data)
        try:
            for n, (query, matches, keep) in enumerate(cases):
                hits = store.search(query)
                assert len(hits) == query.k, (name, query)
                assert all(matches(h.id) for h in hits), (name, query)
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
                vector = np.asarray(query.vector, np.float32)
                truth = exact_top(data, query.vector_set, vector, keep, query.k)
                recall = len({h.id for h in hits} & set(truth)) / len(truth)
                assert recall >= 0.9, (name, query, recall)
                answers.setdefault(n, {})[name] = {h.id: h.score for h in hits}
        finally:
            store.close()
    # PostgreSQL: a partial HNSW per catalog type held by at most PARTIAL_SHARE of the items, which a
    # search on that type uses (sequential scans and sorts are off here: at 300 items the planner
    # would rightly read the table instead).
    shares = dict(catalog["type"].cast(pl.String).value_counts().iter_rows())
    rare = sorted(t for t, n in shares.items() if n <= PARTIAL_SHARE * len(catalog))
    assert rare and len(rare) < len(shares)
    with pg_connect(pg_url, data) as conn:
        partial = [r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'catalog_embeddings' AND indexdef LIKE %s "
            "ORDER BY indexname", ("%USING hnsw%WHERE%",))]
    assert partial == [f"catalog_embeddings_hnsw_{t}" for t in rare]
    store = opened("postgres", data)
    try:
        store.conn.execute("SET enable_seqscan = off")
        store.conn.execute("SET enable_sort = off")
        for value in shares:
            plan = "\n".join(store.plan(Query(vector=catalog_probe.tolist(), vector_set="catalog", k=5, type=value)))
            used = f"catalog_embeddings_hnsw_{value}" if value in rare else "catalog_embeddings_hnsw "
            assert f"Index Scan using {used}" in plan + " ", (value, plan)
    finally:
        store.close()

    # Both stores search approximately (HNSW; Milvus builds its graph in threads, so which near
    # neighbour a filtered search misses varies by build): an id both return scores alike in both.
    for n, by_store in answers.items():
        common = by_store["milvus"].keys() & by_store["postgres"].keys()
        assert len(common) >= 0.8 * cases[n][0].k, n
        assert all(abs(by_store["milvus"][i] - by_store["postgres"][i]) < 2e-3 for i in common), n

    # The CLI: a text embedded with the stored model's query prefix, filters, either store, one shape.
    def cli(*args: str) -> tuple[int, list[dict], str]:
        code = search_main([*args, "--data-dir", str(data), "--json"])
        out, err = capsys.readouterr()
        return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err

    shown = {}
    for name in SEARCHABLE:
        code, hits, err = cli("space adventure", "--store", name, "--genre", "Comedy", "--year-from", "1990", "-k", "5")
        assert code == 0, err
        assert len(hits) == 5 and set(hits[0]) == {"id", "score", "title", "fields"}
        assert all("Comedy" in h["fields"]["genres"] and h["fields"]["year"] >= 1990 for h in hits)
        stored = movies.filter(pl.col("media_id").is_in([h["id"] for h in hits]))
        assert {h["title"] for h in hits} == set(natural_titles(stored["title"].to_list()))  # "The ...", not ", The"
        shown[name] = [h["id"] for h in hits]
        code, hits, err = cli("--like", "ml_1", "--store", name, "--year-to", "2000")
        assert code == 0, err
        assert len(hits) == 10 and "ml_1" not in {h["id"] for h in hits}
        assert all(1 <= h["fields"]["year"] <= 2000 for h in hits)  # year 0 (unknown) is not "up to 2000"
        code, hits, err = cli("--like", "ml_999999", "--store", name)
        assert code == 1 and "--like ml_999999: no such item" in err
    assert len(set(shown["milvus"]) & set(shown["postgres"])) >= 4, shown
    code, _, err = cli("jazz", "--type", "audio", "--genre", "Comedy")
    assert code == 1 and "--type filters the media catalog" in err
    # Filter values in any case, a platform by its id or its name; a value the data lacks is named
    # with the valid ones, never "no results".
    code, lower, err = cli("space adventure", "--store", "postgres", "--genre", "comedy", "--on-platform", "NETFLIX")
    assert code == 0, err
    assert lower and all("Comedy" in h["fields"]["genres"] and "netflix" in h["fields"]["platforms"] for h in lower)
    assert cli("space adventure", "--store", "postgres", "--on-platform", "Netflix")[0] == 0
    for args, message in ((("--genre", "comdy"), "--genre 'comdy' is none of the values in"),
                          (("--on-platform", "hulu"), "--on-platform 'hulu' is none of the values in"),
                          (("--year-from", "2010", "--year-to", "1990"), "--year-from 2010 is after --year-to 1990")):
        code, hits, err = cli("space adventure", *args)
        assert code == 1 and message in err and not hits, (args, err)
    assert "Comedy" in cli("x", "--genre", "comdy")[2] and "netflix" in cli("x", "--on-platform", "hulu")[2]

    # Reopened in the same process once its connection has gone idle (a worker; a load, then a check),
    # the store is still reachable (pymilvus's shared connection to a Lite file was not: 30 s idle).
    monkeypatch.setattr(connection_manager, "IDLE_THRESHOLD_SECONDS", 0)
    first = opened("milvus", data)
    counts = first.counts()
    first.close()
    time.sleep(5)
    again = opened("milvus", data)
    try:
        assert again.counts() == counts
    finally:
        again.close()


def test_reconciliation_names_a_planted_missing_id_and_a_wiped_row_is_reloaded(store_data, pg_url):
    data = store_data
    load_store(settings_for(data), "postgres", print)
    victim = h5_ids(VECTOR_SETS["media"].path(data))[42]
    with pg_connect(pg_url, data) as conn:
        conn.execute("DELETE FROM media_embeddings WHERE id = %s", (victim,))
    with pytest.raises(ReconciliationFailed, match=f"postgres media_embeddings: 1 source ids missing \\(e.g. {victim}\\)"):
        recheck_stores(data)
    # The store's counts no longer match its last load: the next load is not skipped, and restores it.
    summary = load_store(settings_for(data), "postgres", print)
    assert summary["status"] == "loaded" and summary["tables"]["media_embeddings"]["written"] == 1
    assert recheck_stores(data) == ["postgres"]


def _embeddings_file(path: Path, ids: int, rows: int, width: int, dim: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array([f"c{i}" for i in range(ids)], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=np.ones((rows, width), np.float32))
        f.attrs.update(model="m", dim=dim)
    return path


def test_a_bad_embeddings_file_is_named_and_never_loaded(store_data, store_env, tmp_path):
    from tasks.stores.sources import StaleInputs, h5_dim, h5_rows, vector_batches

    short = _embeddings_file(tmp_path / "short.h5", ids=5, rows=4, width=8, dim=8)  # an id without its vector
    wide = _embeddings_file(tmp_path / "wide.h5", ids=5, rows=5, width=9, dim=8)  # an extra (zero) column
    truncated = _embeddings_file(tmp_path / "cut.h5", ids=5_000, rows=5_000, width=64, dim=64)
    os.truncate(truncated, truncated.stat().st_size // 2)
    for path, message in ((short, "5 ids but 4 vectors"), (wide, "9 wide, its dim attribute says 8"),
                          (truncated, "unreadable embeddings file")):
        for read in (h5_ids, h5_rows, h5_dim):
            with pytest.raises(StaleInputs, match=message) as raised:
                read(path)
            assert str(path) in str(raised.value)

    # Through a store: the load stops on the file, names it, and leaves no load state behind.
    catalog = VECTOR_SETS["catalog"].path(store_data)
    with h5py.File(catalog, "r") as f:
        ids, vectors = f["ids"][:], f["embeddings"][:]
    with h5py.File(catalog, "w") as f:
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=vectors[:-1])
        f.attrs.update(model="m", dim=vectors.shape[1])
    with pytest.raises(StaleInputs, match=f"{catalog}: {len(ids):,} ids but {len(ids) - 1:,} vectors"):
        list(vector_batches(store_data, VECTOR_SETS["catalog"], 100))
    with pytest.raises(StaleInputs, match=str(catalog)):
        load_store(settings_for(store_data), "milvus", print)
    assert not (store_data / "stores" / "milvus.state.json").exists()


def test_a_closed_milvus_lite_file_is_free_for_other_processes_and_read_fresh(tmp_path):
    """milvus-lite keeps a server per file for its process's life: the last store to close the file
    stops it, so another process can write the file and a store reopened here reads what it wrote."""
    settings = Settings(_env_file=None, data_dir=tmp_path, milvus_uri=str(tmp_path / "lite.db"))
    store = STORES["milvus"].open(settings)
    store.client.create_collection("probe", dimension=4, id_type="string", max_length=16, auto_id=False)
    store.client.insert("probe", [{"id": str(i), "vector": [float(i), 1.0, 2.0, 3.0]} for i in range(10)])
    again = STORES["milvus"].open(settings)  # a second store on the file in this process
    store.close()
    assert again.count("probe") == 10  # still served: one store is open
    again.close()
    other = subprocess.run([sys.executable, "-c", "import sys; from pymilvus import MilvusClient\n"
                            "c = MilvusClient(sys.argv[1]); c.delete('probe', ids=['3']); c.close()",
                            str(tmp_path / "lite.db")], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr[-2000:]
    reopened = STORES["milvus"].open(settings)
    try:
        assert reopened.count("probe") == 9
    finally:
        reopened.close()


def test_milvus_lite_reads_say_nothing_about_session_timestamps(tmp_path):
    """Lite answers no session timestamp, so pymilvus warned "failed to get mvccTs" on every query
    iterator (six lines a run); the store's reads fall back to the client's time silently."""
    import logging

    data = tmp_path / "data"
    path = _embeddings_file(data / VECTOR_SETS["catalog"].h5, 30, 30, 4, 4)
    pl.DataFrame({"id": [f"c{i}" for i in range(30)], "type": "video", "title": "t", "tags": [["a"]] * 30,
                  "creation_date": [datetime(2020, 1, 1, tzinfo=timezone.utc)] * 30}).write_parquet(data / "synthetic" / "media_catalog.parquet", mkdir=True)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("pymilvus").addHandler(handler)  # pymilvus's own logger does not propagate
    store = STORES["milvus"].open(Settings(_env_file=None, data_dir=data, milvus_uri=str(data / "milvus.db")))
    try:
        store.claim(str(data.resolve()))
        store.load(data, lambda m: None)
        assert len(list(store.ids("catalog_vectors"))) == 30 == len(h5_ids(path))
    finally:
        store.close()
        logging.getLogger("pymilvus").removeHandler(handler)
    assert not [r.getMessage() for r in records if "mvccTs" in r.getMessage()]
