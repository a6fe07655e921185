"""The graph store against the session's real Bolt server (ArcadeDB, the local default)."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from neo4j import GraphDatabase
from neo4j.exceptions import ConstraintError

from tasks.settings import Settings
from tasks.stores.neo4j import MIN_RELEVANCE, TOP_TAGS
from tasks.stores.loading import load_store, reconcile
from tasks.stores.sources import StaleInputs
from tests.test_stores import opened, settings_for, source_counts


def cypher(settings: Settings, statement: str, **params) -> list[dict]:
    url, auth, database = settings.neo4j_target()
    with GraphDatabase.driver(url, auth=auth) as driver:
        return [r.data() for r in driver.execute_query(statement, params, database_=database).records]


def plant_genome(data, movies: int = 40, tags: int = 25) -> int:
    """A genome for the first movies (the small release has none); returns the HAS_TAG edges expected:
    each movie's top TOP_TAGS tags with relevance over MIN_RELEVANCE."""
    media = pl.read_parquet(data / "processed" / "movies.parquet").head(movies)
    rng = np.random.default_rng(3)
    scores = pl.DataFrame({"media_id": np.repeat(media["media_id"].to_numpy(), tags),
                           "movie_id": np.repeat(media["movie_id"].to_numpy(), tags),
                           "tag_id": np.tile(np.arange(1, tags + 1, dtype=np.int32), movies),
                           "relevance": rng.random(movies * tags, dtype=np.float32)})
    scores = scores.with_columns(tag=pl.format("tag {}", "tag_id"), rank=pl.col("relevance").rank(
        "ordinal", descending=True).over("media_id").cast(pl.Int16))
    scores.write_parquet(data / "processed" / "genome_scores.parquet")
    pl.DataFrame({"tag_id": np.arange(1, tags + 1, dtype=np.int32)}).with_columns(tag=pl.format("tag {}", "tag_id"))\
        .write_parquet(data / "processed" / "genome_tags.parquet")
    return scores.filter((pl.col("rank") <= TOP_TAGS) & (pl.col("relevance") > MIN_RELEVANCE)).height


def graph_sample(settings: Settings) -> dict:
    """Counts per label and type, and a fixed sample of elements with every property."""
    sample = {"counts": {r["what"]: r["n"] for r in cypher(settings, "MATCH (n) RETURN labels(n)[0] AS what, count(n) AS n")}}
    sample["counts"].update({r["what"]: r["n"] for r in cypher(settings, "MATCH ()-[r]->() RETURN type(r) AS what, "
                                                                         "count(r) AS n")})
    for what in ("Media", "User", "Platform", "Tag"):
        sample[what] = cypher(settings, f"MATCH (n:{what}) RETURN properties(n) AS p ORDER BY n.id LIMIT 30")
    for what in ("RATED", "TAGGED", "HAS_GENRE", "HAS_TAG", "AVAILABLE_ON"):
        sample[what] = cypher(settings, f"MATCH (a)-[r:{what}]->(b) WITH a, r, b ORDER BY a.id, coalesce(b.id, b.name), "
                                        "r.tag LIMIT 50 RETURN a.id AS a, coalesce(b.id, b.name) AS b, properties(r) AS p")
    return sample


def test_graph_load_is_exact_idempotent_and_follows_changes(store_data, store_env, monkeypatch):
    from tasks.stores import neo4j as neo4j_store

    monkeypatch.setattr(neo4j_store, "COMPARE_ROWS", 25_000)  # RATED compared in chunks, the other types at once
    data = store_data
    settings = settings_for(data)
    has_tag = plant_genome(data)
    ratings_file = data / "processed" / "ratings.parquet"
    ratings = pl.read_parquet(ratings_file)

    # A rating of a movie the source lacks is named, and nothing of it is loaded.
    ratings.vstack(ratings.head(1).with_columns(movie_id=pl.lit(987654321, pl.Int32))).write_parquet(ratings_file)
    with pytest.raises(StaleInputs, match=r"ratings.parquet: 1 RATED ends are no Media"):
        load_store(settings, "neo4j", lambda m: None)
    assert cypher(settings, "MATCH ()-[r:RATED]->() RETURN count(r) AS n")[0]["n"] == 0
    ratings.write_parquet(ratings_file)

    logs: list[str] = []
    assert load_store(settings, "neo4j", logs.append)["status"] == "loaded"
    store = opened("neo4j", data)
    try:
        counts = store.counts()
        assert counts == source_counts(data, "neo4j")
        assert counts["HAS_TAG"] == has_tag and counts["RATED"] == len(ratings) and counts["Genre"] > 10
        assert all(not r["missing"] and not r["extra"] for r in reconcile(store, data).values())
        figures = store.checks(data)
        assert (figures["missing_index"], figures["orphan_edges"]) == (0, 0)
    finally:
        store.close()
    movie = pl.read_parquet(data / "processed" / "movies.parquet")["media_id"][0]
    with pytest.raises(ConstraintError):
        cypher(settings, "CREATE (:Media {id: $id})", id=movie)
    user, item, rating = ratings.row(0)[0], f"ml_{ratings.row(0)[1]}", float(ratings.row(0)[2])
    edge = cypher(settings, "MATCH (:User {id: $u})-[r:RATED]->(:Media {id: $m}) RETURN r.rating AS rating, "
                  "r.time_of_day AS context", u=user, m=item)
    assert edge == [{"rating": rating, "context": str(ratings["time_of_day"][0])}]

    # The bulk path (ArcadeDB's importer, the server stopped) gives the same graph.
    by_bolt = graph_sample(settings)
    cypher(settings, "MATCH (n) DETACH DELETE n")
    monkeypatch.setattr(neo4j_store, "BOLT_MAX_ROWS", 1_000)
    (data / "stores" / "neo4j.state.json").unlink()
    summary = load_store(settings, "neo4j", logs.append)
    assert any("bulk import with ArcadeDB's GraphImporter" in line for line in logs)
    assert summary["tables"]["RATED"]["written"] == len(ratings)
    assert graph_sample(settings) == by_bolt
    monkeypatch.setattr(neo4j_store, "BOLT_MAX_ROWS", 2_000_000)

    # Forced rerun (load state removed): every element compared, none written.
    (data / "stores" / "neo4j.state.json").unlink()
    summary = load_store(settings, "neo4j", logs.append)
    assert all(t["written"] == 0 and t["deleted"] == 0 for t in summary["tables"].values()), summary
    assert opened("neo4j", data).counts() == counts

    # One rating changes; one movie leaves the source with everything that points at it.
    new_rating = 0.5 if rating != 0.5 else 5.0
    ratings = ratings.with_columns(rating=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(new_rating, pl.Float32))
                                   .otherwise("rating"))
    gone = pl.read_parquet(data / "processed" / "movies.parquet").filter(pl.col("media_id") != item)["media_id"][5]
    gone_id = int(gone.removeprefix("ml_"))
    gone_ratings = ratings.filter(pl.col("movie_id") == gone_id).height
    ratings.filter(pl.col("movie_id") != gone_id).write_parquet(ratings_file)
    for file, column, value in (("processed/movies.parquet", "media_id", gone), ("processed/tags.parquet", "movie_id",
                                gone_id), ("synthetic/availability.parquet", "media_id", gone),
                                ("processed/genome_scores.parquet", "media_id", gone)):
        frame = pl.read_parquet(data / file)
        frame.filter(pl.col(column) != value).write_parquet(data / file)
    summary = load_store(settings, "neo4j", logs.append)["tables"]
    assert summary["RATED"]["written"] == 1 and summary["RATED"]["deleted"] == gone_ratings > 0
    assert summary["Media"]["deleted"] == 1
    assert cypher(settings, "MATCH (:User {id: $u})-[r:RATED]->(:Media {id: $m}) RETURN r.rating AS rating",
                  u=user, m=item) == [{"rating": new_rating}]
    assert cypher(settings, "MATCH (m:Media {id: $id}) RETURN count(m) AS n", id=gone) == [{"n": 0}]
    assert cypher(settings, "MATCH (m:Media {id: $id})-[r]-() RETURN count(r) AS n", id=gone) == [{"n": 0}]
    store = opened("neo4j", data)
    try:
        assert store.counts() == source_counts(data, "neo4j")
    finally:
        store.close()


def test_explain_returns_the_planted_reasons_and_connected_items(store_data, store_env, capsys):
    from flows.explain import main as explain_main
    from tasks.query.explain import LIKED, PEERS

    data = store_data
    settings = settings_for(data)
    plant_genome(data)
    movies = pl.read_parquet(data / "processed" / "movies.parquet")
    ratings_file = data / "processed" / "ratings.parquet"
    ratings = pl.read_parquet(ratings_file)
    users = pl.read_parquet(data / "synthetic" / "users.parquet")
    user, peer = int(users["user_id"][0]), int(users["user_id"][1])
    item = movies.head(40).filter(pl.col("genres").list.len() > 0)["media_id"][0]  # one with genome tags
    item_id = int(item.removeprefix("ml_"))
    # Planted: the peer loves the item and every item the user likes; the user has not rated the item.
    ratings = ratings.filter(~((pl.col("user_id") == user) & (pl.col("movie_id") == item_id)))
    liked = ratings.filter((pl.col("user_id") == user) & (pl.col("rating") >= LIKED))["movie_id"]
    template = ratings.filter(pl.col("user_id") == peer).head(1)
    planted = pl.concat([template.with_columns(movie_id=pl.lit(m, pl.Int32), rating=pl.lit(5.0, pl.Float32))
                         for m in [item_id, *liked.to_list()]])
    ratings = pl.concat([ratings.filter(~((pl.col("user_id") == peer) & pl.col("movie_id").is_in(planted["movie_id"]))),
                         planted])
    ratings.write_parquet(ratings_file)
    assert load_store(settings, "neo4j", lambda m: None)["status"] == "loaded"

    assert explain_main(["--data-dir", str(data), "--user", str(user), "--item", item, "--limit", "50", "--json"]) == 0
    reasons = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_kind = {}
    for r in reasons:
        by_kind.setdefault(r["kind"], []).append(r["evidence"])

    # The oracle: the same questions asked of the source files with polars.
    liked_media = movies.filter(pl.col("movie_id").is_in(liked) & (pl.col("media_id") != item))
    item_genres = set(movies.filter(pl.col("media_id") == item)["genres"][0])
    genres = liked_media.explode("genres").filter(pl.col("genres").is_in(list(item_genres)))["genres"].value_counts()
    assert {g["name"]: g["liked"] for g in by_kind["genre"]} == dict(genres.iter_rows())
    scores = pl.read_parquet(data / "processed" / "genome_scores.parquet").filter(
        (pl.col("rank") <= TOP_TAGS) & (pl.col("relevance") > MIN_RELEVANCE))
    item_tags = scores.filter(pl.col("media_id") == item)["tag"]
    tags = scores.filter(pl.col("media_id").is_in(liked_media["media_id"]) & pl.col("tag").is_in(item_tags))["tag"]
    assert {t["name"]: t["liked"] for t in by_kind.get("tag", [])} == dict(tags.value_counts().iter_rows())
    top_peer = by_kind["similar users"][0]
    assert (top_peer["peer"], top_peer["shared"]) == (peer, len(liked_media))
    country = users.filter(pl.col("user_id") == user)["country"][0]
    offered = pl.read_parquet(data / "synthetic" / "availability.parquet").filter(
        (pl.col("media_id") == item) & pl.col("regions").list.contains(country))["platform_id"]
    assert sorted(p["platform"] for p in by_kind.get("platform", [])) == sorted(offered)

    # The item alone: the items its likers (the first PEERS by id) liked most, never itself.
    assert explain_main(["--data-dir", str(data), "--item", item, "--json"]) == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    likers = ratings.filter((pl.col("movie_id") == item_id) & (pl.col("rating") >= LIKED))["user_id"].sort().head(PEERS)
    expected = ratings.filter(pl.col("user_id").is_in(likers) & (pl.col("rating") >= LIKED)
                              & (pl.col("movie_id") != item_id))["movie_id"].value_counts()["count"].sort(descending=True)
    assert items and item not in [i["id"] for i in items]
    assert [i["liked_by"] for i in items] == expected.head(len(items)).to_list()
    genres_of = dict(zip(movies["media_id"], movies["genres"].to_list()))
    assert [i["genres"] for i in items] == [len(set(genres_of[i["id"]]) & item_genres) for i in items]

    # Unknown ids are named.
    assert explain_main(["--data-dir", str(data), "--user", str(user), "--item", "ml_987654321"]) == 1
    assert "Media 'ml_987654321' is not in the graph" in capsys.readouterr().err


NAME = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_TYPES = "int|long|float|double|boolean|byte|short|char|string|point|date|localtime|time|localdatetime|" \
               "datetime|duration"
HEADER_FIELD = re.compile(rf"^(?:(?P<name>{NAME})?:(?P<special>ID|START_ID|END_ID)(?:\((?P<group>{NAME})\))?"
                          rf"|(?P<prop>{NAME}):(?P<type>{IMPORT_TYPES})(?P<array>\[\])?)$")


def check_admin_import(folder, counts: dict[str, int]) -> None:
    """neo4j-admin's header rules: `name:type` for properties (types from its list, `[]` for arrays),
    exactly one :ID(group) per node file, one :START_ID(group) and :END_ID(group) per relationship
    file whose groups are node files' groups; every row as wide as its header, node ids unique per
    group and every relationship end among them; and the command names every file."""
    command = shlex.split((folder / "IMPORT.txt").read_text())
    assert command[:4] == ["neo4j-admin", "database", "import", "full"] and "--array-delimiter=;" in command
    ids: dict[str, set[str]] = {}
    files = {}
    for option in command:
        if option.startswith(("--nodes=", "--relationships=")):
            kind, name, path = option.removeprefix("--").split("=", 1)[0], *option.split("=", 1)[1].split("=", 1)
            files[name] = (kind, Path(path))
    for kind in ("nodes", "relationships"):  # node groups first: relationships refer to them
        for name, (k, path) in files.items():
            if k != kind:
                continue
            with path.open(newline="") as f:
                reader = csv.reader(f)
                header = [HEADER_FIELD.match(field) for field in next(reader)]
                assert all(header), (path, header)
                special = {m["special"]: (i, m["group"]) for i, m in enumerate(header) if m["special"]}
                rows = list(reader)
            assert all(len(row) == len(header) for row in rows), path
            assert len(rows) == counts[name], (name, len(rows), counts[name])
            if kind == "nodes":
                assert list(special) == ["ID"] and special["ID"][1] == name
                keys = [row[special["ID"][0]] for row in rows]
                assert len(set(keys)) == len(keys)
                ids[name] = set(keys)
            else:
                assert sorted(special) == ["END_ID", "START_ID"]
                for end in ("START_ID", "END_ID"):
                    column, group = special[end]
                    assert group in ids and {row[column] for row in rows} <= ids[group], (path, end)


def test_a_large_first_load_into_a_remote_neo4j_writes_admin_import_files(store_data, store_env, monkeypatch):
    from tasks.stores import neo4j as neo4j_store

    data = store_data
    plant_genome(data)
    url, (_, password), _ = settings_for(data).neo4j_target()
    # The session's server given as a remote one, and a threshold the small release is over.
    monkeypatch.setenv("MG_NEO4J_URL", url)
    monkeypatch.setenv("MG_NEO4J_USER", "root")
    monkeypatch.setenv("MG_NEO4J_PASSWORD", password)
    monkeypatch.setenv("MG_NEO4J_DATABASE", "kg")
    remote = settings_for(data)
    cypher(remote, "MATCH (n) DETACH DELETE n")
    monkeypatch.setattr(neo4j_store, "BOLT_MAX_ROWS", 1_000)
    logs: list[str] = []
    with pytest.raises(neo4j_store.BulkImportRequired, match="neo4j-admin database import full") as failure:
        load_store(settings_for(data), "neo4j", logs.append)
    assert password not in str(failure.value) and not any(password in line for line in logs)
    assert any("import them with neo4j-admin" in line for line in logs)
    folder = data / neo4j_store.IMPORT_DIR
    check_admin_import(folder, source_counts(data, "neo4j"))
    # Nothing half-loaded over Bolt: only the record of which dataset the database holds.
    assert cypher(remote, "MATCH (n) RETURN labels(n) AS labels") == [{"labels": ["PipelineDataset"]}]


def test_a_bad_source_file_is_named_and_an_extra_column_is_ignored(store_data):
    from tasks.stores.neo4j import EDGES, MEDIA

    rated = next(e for e in EDGES if e.type == "RATED")
    ratings_file = store_data / "processed" / "ratings.parquet"
    good = ratings_file.read_bytes()
    expected = rated.frame(store_data)
    ratings_file.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(StaleInputs, match=r"ratings.parquet: unreadable"):
        rated.frame(store_data)
    ratings_file.write_bytes(good)
    source = pl.read_parquet(ratings_file)
    source.drop("time_of_day").write_parquet(ratings_file)  # a column short
    with pytest.raises(StaleInputs, match=r"ratings.parquet: .*time_of_day"):
        rated.frame(store_data)
    source.with_columns(extra=pl.lit("x")).write_parquet(ratings_file)  # an extra column: not loaded
    assert rated.frame(store_data).equals(expected)
    source.vstack(source.head(1)).write_parquet(ratings_file)  # one rating twice
    with pytest.raises(StaleInputs, match=r"RATED keys start, end repeat in 2 rows"):
        rated.frame(store_data)
    movies_file = store_data / "processed" / "movies.parquet"
    movies = pl.read_parquet(movies_file)
    movies.vstack(movies.head(1)).write_parquet(movies_file)
    with pytest.raises(StaleInputs, match=r"movies.parquet: Media keys id repeat"):
        MEDIA.frame(store_data)


def first_likers(ratings: pl.DataFrame) -> set[tuple[int, int]]:
    """The oracle of LIKED_BY: each movie's first PEERS + 1 likers by user id."""
    from tasks.query.explain import LIKED, PEERS

    likers = ratings.filter(pl.col("rating") >= LIKED).sort("user_id").group_by("movie_id").head(PEERS + 1)
    return set(likers.select("movie_id", "user_id").iter_rows())


def stored_rating(settings: Settings, user: int, item: str) -> list[float]:
    return [r["rating"] for r in cypher(settings, "MATCH (:User {id: $u})-[r:RATED]->(:Media {id: $m}) "
                                                  "RETURN r.rating AS rating", u=user, m=item)]


def test_graph_loads_send_the_diff_verify_a_sample_and_repair_drift(store_data, store_env, monkeypatch):
    """A refresh writes exactly what changed and reads back only its sample plus what it wrote; a graph
    changed outside the pipeline is found and repaired; --verify full finds what the sample cannot; a
    load killed midway is exact after its rerun."""
    from tasks.stores import neo4j as neo4j_store
    from tasks.stores import snapshot

    monkeypatch.setattr(snapshot, "SAMPLE_ROWS", 40)  # a small sample of a small release
    data = store_data
    settings = settings_for(data)
    plant_genome(data)
    ratings_file = data / "processed" / "ratings.parquet"
    ratings = pl.read_parquet(ratings_file)
    first = load_store(settings, "neo4j", lambda m: None)
    assert first["status"] == "loaded" and first["verified"].startswith("sample")

    def figures() -> dict:
        return json.loads((data / "stores" / "neo4j.json").read_text())

    # One change: a rating changed, 3 new ratings by one user, a title changed, a movie's genre dropped.
    movies_file = data / "processed" / "movies.parquet"
    movies = pl.read_parquet(movies_file)
    user = int(ratings["user_id"].min())  # first among every movie's likers
    unrated = movies.join(ratings.filter(pl.col("user_id") == user), on="movie_id", how="anti").head(3)
    template = ratings.filter(pl.col("user_id") == user).head(1)
    added = pl.concat([template.with_columns(movie_id=pl.lit(m, pl.Int32), rating=pl.lit(5.0, pl.Float32))
                       for m in unrated["movie_id"]])
    likers_before = first_likers(ratings)
    old = float(ratings["rating"][1])
    ratings = pl.concat([ratings.with_columns(rating=pl.when(pl.int_range(pl.len()) == 1)
                                              .then(pl.lit(5.5 - old, pl.Float32)).otherwise("rating")), added])
    ratings.write_parquet(ratings_file)
    with_genres = movies.filter(pl.col("genres").list.len() > 1)["media_id"][0]
    movies.with_columns(title=pl.when(pl.col("media_id") == movies["media_id"][2]).then(pl.lit("A New Title"))
                        .otherwise("title"),
                        genres=pl.when(pl.col("media_id") == with_genres).then(pl.col("genres").list.slice(1))
                        .otherwise("genres")).write_parquet(movies_file)
    logs: list[str] = []
    summary = load_store(settings, "neo4j", logs.append)
    assert not [line for line in logs if "comparing" in line]  # the snapshot's diff: nothing read back to compare
    written = {t: (r["written"], r["deleted"]) for t, r in summary["tables"].items() if r["written"] or r["deleted"]}
    likers_now = first_likers(ratings)
    liked_by = (len(likers_now - likers_before), len(likers_before - likers_now))
    assert liked_by != (0, 0)  # the user joined some movies' first likers
    assert written == {"RATED": (4, 0), "Media": (1, 0), "HAS_GENRE": (0, 1), "LIKED_BY": liked_by}, written
    assert stored_rating(settings, int(ratings['user_id'][1]), f"ml_{ratings['movie_id'][1]}") == [5.5 - old]
    # Read back: no more than each table's sample plus what the load wrote, counted per table.
    tables = figures()["tables"]
    assert figures()["verification"] == "sample"
    for table, r in tables.items():
        assert r["sampled"] <= min(40, r["source"]) + written.get(table, (0, 0))[0], (table, r)
    assert sum(r["sampled"] for r in tables.values()) == figures()["read_back"] < sum(r["source"] for r in tables.values()) / 2
    assert opened_counts(data) == source_counts(data, "neo4j")

    # Unchanged inputs: nothing written, the sample verified.
    again = load_store(settings, "neo4j", lambda m: None)
    assert again["status"] == "unchanged" and again["verified"].startswith("sample")

    # Edited outside the pipeline: a sampled rating changed, every HAS_TAG removed. Found and repaired.
    rated = pl.read_parquet(data / "stores" / "neo4j.snapshot" / "RATED.parquet")
    sampled = snapshot.sample(rated, ["start", "end"])
    u, m = sampled["start"][0], sampled["end"][0]
    truth = stored_rating(settings, u, m)
    cypher(settings, "MATCH (:User {id: $u})-[r:RATED]->(:Media {id: $m}) SET r.rating = -1.0", u=u, m=m)
    cypher(settings, "MATCH ()-[r:HAS_TAG]->() DELETE r")
    logs: list[str] = []
    repaired = load_store(settings, "neo4j", logs.append)
    assert repaired["status"] == "loaded"
    assert repaired["tables"]["RATED"]["written"] == 1 and repaired["tables"]["HAS_TAG"]["written"] > 0
    assert stored_rating(settings, u, m) == truth
    assert any("RATED" in line and "in full" in line for line in logs)
    assert opened_counts(data) == source_counts(data, "neo4j")

    # A difference outside the sample: the default verification cannot see it, --verify full can.
    outside = rated.join(sampled, on=["start", "end"], how="anti").row(0, named=True)
    truth = stored_rating(settings, outside["start"], outside["end"])
    cypher(settings, "MATCH (:User {id: $u})-[r:RATED]->(:Media {id: $m}) SET r.rating = -1.0",
           u=outside["start"], m=outside["end"])
    assert load_store(settings, "neo4j", lambda m: None)["status"] == "unchanged"
    assert stored_rating(settings, outside["start"], outside["end"]) == [-1.0]
    full = load_store(settings, "neo4j", lambda m: None, verify="full")
    assert full["verified"].startswith("full") and full["tables"]["RATED"]["written"] == 1
    assert stored_rating(settings, outside["start"], outside["end"]) == truth
    assert figures()["verification"] == "full" and figures()["missing_ids"] == figures()["extra_ids"] == 0

    # Killed midway: the relationships written, then the load dies before the next type. The rerun is exact.
    ratings = ratings.filter(pl.int_range(pl.len()) != 5).with_columns(
        rating=pl.when(pl.int_range(pl.len()) == 7).then(pl.lit(0.5, pl.Float32)).otherwise("rating"))
    ratings.write_parquet(ratings_file)
    pl.read_parquet(movies_file).with_columns(title=pl.col("title") + "!").write_parquet(movies_file)
    real = neo4j_store.Neo4jStore._write_edges

    def dies_after_rated(self, edge, *args):
        result = real(self, edge, *args)
        if edge.type == "RATED":
            raise KeyboardInterrupt("killed")
        return result

    monkeypatch.setattr(neo4j_store.Neo4jStore, "_write_edges", dies_after_rated)
    with pytest.raises(KeyboardInterrupt):
        load_store(settings, "neo4j", lambda m: None)
    monkeypatch.setattr(neo4j_store.Neo4jStore, "_write_edges", real)
    assert not (data / "stores" / "neo4j.snapshot" / "RATED.parquet").exists()
    rerun = load_store(settings, "neo4j", lambda m: None)
    assert rerun["tables"]["RATED"]["written"] == 0 and rerun["tables"]["RATED"]["deleted"] == 0  # done before
    assert opened_counts(data) == source_counts(data, "neo4j")
    assert stored_rating(settings, int(ratings["user_id"][7]), f"ml_{ratings['movie_id'][7]}") == [0.5]
    full = load_store(settings, "neo4j", lambda m: None, verify="full")
    assert all(t["written"] == 0 and t["deleted"] == 0 for t in full["tables"].values()), full


def opened_counts(data: Path) -> dict[str, int]:
    store = opened("neo4j", data)
    try:
        return store.counts()
    finally:
        store.close()
