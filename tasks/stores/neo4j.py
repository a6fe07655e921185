"""The knowledge graph over Bolt: standard Neo4j 5 Cypher through the official driver, so a real Neo4j
is a URL change (MG_NEO4J_URL); the local default is the ArcadeDB Bolt server tasks.services starts.

Nodes (key first): Media (id 'ml_M', title, year, imdb_id, tmdb_id), User (id, archetype, age_band,
country, city, languages), Genre (name), Tag (id, name: the genome tags), Platform (id, name,
business_model, monthly_price_usd). Relationships: RATED User->Media (rating, timestamp and the
rating's context, time_of_day and day_of_week), TAGGED User->Media (one per free-text tag: tag,
timestamp), HAS_GENRE Media->Genre, HAS_TAG Media->Tag (relevance; a movie's top 10 genome tags over
0.5), LIKED_BY Media->User (the item's first PEERS + 1 likers by user id: explain's peers, derived
from the ratings), AVAILABLE_ON Media->Platform (offer_type, price_usd, regions, quality_options,
subtitle_languages, audio_languages, hdr, dolby_atmos). No map-valued property (Neo4j rejects them:
the seed's `location` map is flattened into country and city); lists hold strings only.

Idempotent by comparison, like the other stores: a load reads what the graph holds for each node
label and relationship type, CREATEs what is new, SETs what differs (UNWIND batches, matched on the
keys), deletes what is gone from the source, and a rerun with unchanged data writes nothing. A
relationship whose end is not a node of the source is an error naming the file and ids, never a
silent drop (a MATCH that finds no node would create nothing). Uniqueness constraints on every
label's key, and indexes for the explainability queries, are made with IF NOT EXISTS before the
first write (writes look nodes up by them). A first load of more than BOLT_MAX_ROWS relationships is
a bulk import (see _import_local and write_admin_import).
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tasks.errors import PipelineError
from tasks.progress import Progress
from tasks.settings import Settings
from tasks.stores.base import Hit, Log, Query, TableLoad, safe_url, unreachable
from tasks.stores.snapshot import DIGEST, NoSnapshots, Snapshots, diff, rows_of, verify_tables, with_digest
from tasks.stores.sources import StaleInputs

BATCH = 10_000  # rows per UNWIND: larger batches were not faster over Bolt (store-load-probes)
ARRAY_DELIMITER = ";"
# A first load of more relationships than this is a bulk import (ArcadeDB's GraphImporter on the
# local server, neo4j-admin's files for a remote Neo4j): over Bolt, CREATE reaches ~8k relationships/s
# here (~4 min for 2M; 25M would take about an hour).
BOLT_MAX_ROWS = 2_000_000
IMPORT_DIR = "exports/neo4j-import"  # under the data dir
LOCAL_IMPORT_DIR = "exports/arcadedb-import"  # ArcadeDB's importer's files, under the data dir
IMPORT_HEAP = "3g"  # the importer held 4.3 GB RSS at -Xmx4g for 25M RATED (store-load-probes)
IMPORTER = "com.arcadedb.integration.importer.graph.GraphImporter"
IMPORTER_TYPES = {pl.Int64: "long:", pl.Float64: "double:", pl.Boolean: "bool:", pl.String: ""}  # its prefixes
IMPORT_TYPES = {pl.Int64: "long", pl.Float64: "double", pl.Boolean: "boolean", pl.String: "string"}  # neo4j-admin's
COMPARE_ROWS = 1_000_000  # relationships read back from the graph and compared at a time (memory)

MOVIES, USERS, PLATFORMS = "processed/movies.parquet", "synthetic/users.parquet", "synthetic/platforms.parquet"
RATINGS, TAGS = "processed/ratings.parquet", "processed/tags.parquet"
GENOME_SCORES, GENOME_TAGS = "processed/genome_scores.parquet", "processed/genome_tags.parquet"
AVAILABILITY = "synthetic/availability.parquet"
TOP_TAGS, MIN_RELEVANCE = 10, 0.5
LIKED = 4.0  # a rating at or above this is a like
# Explain's peers of an item are its PEERS likers with the lowest user ids. A popular movie has ~80k
# raters at 25m scale: LIKED_BY holds each item's first PEERS + 1 likers (one more: the asking user
# is left out), so that a query reads 51 relationships, not every rating of the item.
PEERS = 50


def _read(data: Path, file: str, columns: list[str]) -> pl.LazyFrame:
    return pl.scan_parquet(Path(data) / file).select(columns)


def _media_ids(data: Path) -> pl.LazyFrame:
    """movie_id -> the Media node's key."""
    return _read(data, MOVIES, ["movie_id", "media_id"])


def _strings(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(pl.col(pl.Enum, pl.Categorical).cast(pl.String),
                              pl.col(pl.Float32).cast(pl.Float64), pl.col(pl.Int16, pl.Int32).cast(pl.Int64))


class BulkImportFailed(PipelineError, RuntimeError):
    """The local bulk import stopped; the message has the importer's last lines."""


class BulkImportRequired(PipelineError, RuntimeError):
    """A first load too large for Bolt: neo4j-admin's files are written; the message gives the command."""


def _collect(frame: pl.LazyFrame, path: Path, engine: str = "auto") -> pl.DataFrame:
    """The source rows, or an error naming the file (polars' own does not, for a truncated file)."""
    try:
        return _strings(frame).collect(engine=engine)
    except (pl.exceptions.PolarsError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise StaleInputs(f"{path}: unreadable or without the columns the graph needs ({reason}); "
                          "rerun the stage that writes it") from exc


def _unique(frame: pl.DataFrame, keys: list[str], path: Path, name: str) -> pl.DataFrame:
    """The frame, when its keys are unique: two rows for one node or edge would leave the graph with
    whichever came last. The keys' hashes are sorted and neighbours compared, and only rows whose
    hash repeats are compared exactly (is_duplicated on the keys held 3 GB more and took 12 s for
    25M RATED; this, 0.35 GB and 2 s)."""
    hashed = frame.select(pl.struct(keys).hash(seed=0)).to_series()
    ordered = hashed.sort()
    repeated = ordered.filter(ordered == ordered.shift(1))
    if not len(repeated):
        return frame
    suspects = frame.filter(hashed.is_in(repeated.implode()))
    twice = suspects.select(keys).filter(pl.struct(keys).is_duplicated())
    if len(twice):
        raise StaleInputs(f"{path}: {name} keys {', '.join(keys)} repeat in {len(twice):,} rows "
                          f"(e.g. {twice.row(0)})")
    return frame


@dataclass(frozen=True)
class NodeSet:
    label: str
    key: str
    file: str  # the source file (reconciliation and "does the source exist")
    rows: Callable[[Path], pl.LazyFrame]  # the key, then the properties

    @property
    def name(self) -> str:
        return self.label

    @property
    def keys(self) -> list[str]:
        return [self.key]

    def lazy(self, data: Path) -> pl.LazyFrame:
        return _strings(self.rows(data))

    def frame(self, data: Path) -> pl.DataFrame:
        return _unique(_collect(self.rows(data), Path(data) / self.file), self.keys, Path(data) / self.file,
                       self.name)

    def digests(self, data: Path) -> pl.DataFrame:
        """The keys and a digest of each row (what the snapshot keeps), keys checked unique."""
        path = Path(data) / self.file
        return _unique(_collect(with_digest(self.lazy(data), self.keys), path, "streaming"), self.keys, path,
                       self.name)

    def read(self, data: Path) -> pl.Series:
        """The source keys, as ids() writes them."""
        return self.digests(data).select(pl.concat_str([pl.col(c).cast(pl.String) for c in self.keys], separator="/"))\
            .to_series().alias("id")


@dataclass(frozen=True)
class EdgeSet:
    type: str
    start: NodeSet
    end: NodeSet
    file: str
    rows: Callable[[Path], pl.LazyFrame]  # start, end, the discriminator (if any), then the properties
    discriminator: str | None = None  # a property that tells apart several edges between one pair

    @property
    def name(self) -> str:
        return self.type

    @property
    def keys(self) -> list[str]:
        return ["start", "end"] + ([self.discriminator] if self.discriminator else [])

    lazy, frame, digests, read = NodeSet.lazy, NodeSet.frame, NodeSet.digests, NodeSet.read


MEDIA = NodeSet("Media", "id", MOVIES, lambda d: _read(d, MOVIES, ["media_id", "title", "year", "imdb_id", "tmdb_id"])
                .rename({"media_id": "id"}))
USER = NodeSet("User", "id", USERS, lambda d: _read(
    d, USERS, ["user_id", "archetype", "age_band", "country", "city", "languages"]).rename({"user_id": "id"}))
GENRE = NodeSet("Genre", "name", MOVIES, lambda d: _read(d, MOVIES, ["genres"]).explode("genres")
                .drop_nulls().select(name="genres").unique().sort("name"))
TAG = NodeSet("Tag", "id", GENOME_TAGS, lambda d: _read(d, GENOME_TAGS, ["tag_id", "tag"]).select(id="tag_id", name="tag"))
PLATFORM = NodeSet("Platform", "id", PLATFORMS, lambda d: _read(
    d, PLATFORMS, ["platform_id", "name", "business_model", "monthly_price_usd"]).rename({"platform_id": "id"}))
NODES = [MEDIA, USER, GENRE, TAG, PLATFORM]


def _by_movie(data: Path, file: str, columns: list[str]) -> pl.LazyFrame:
    """A MovieLens file keyed by movie_id, with the Media key as `end` (an unknown movie stays null:
    the orphan check names it)."""
    return _read(data, file, ["movie_id", *columns]).join(_media_ids(data), on="movie_id", how="left",
                                                          maintain_order="left")\
        .rename({"media_id": "end"})


EDGES = [
    EdgeSet("RATED", USER, MEDIA, RATINGS, lambda d: _by_movie(
        d, RATINGS, ["user_id", "rating", "timestamp", "time_of_day", "day_of_week"]).select(
        start="user_id", end="end", rating="rating", timestamp="timestamp", time_of_day="time_of_day",
        day_of_week="day_of_week")),
    EdgeSet("TAGGED", USER, MEDIA, TAGS, lambda d: _by_movie(d, TAGS, ["user_id", "tag", "timestamp"]).select(
        start="user_id", end="end", tag="tag", timestamp="timestamp"), discriminator="tag"),
    EdgeSet("HAS_GENRE", MEDIA, GENRE, MOVIES, lambda d: _read(d, MOVIES, ["media_id", "genres"]).explode("genres")
            .drop_nulls("genres").select(start="media_id", end="genres")),
    EdgeSet("HAS_TAG", MEDIA, TAG, GENOME_SCORES, lambda d: _read(d, GENOME_SCORES, ["media_id", "tag_id", "relevance",
                                                                                    "rank"])
            .filter((pl.col("rank") <= TOP_TAGS) & (pl.col("relevance") > MIN_RELEVANCE))
            .select(start="media_id", end="tag_id", relevance="relevance")),
    EdgeSet("LIKED_BY", MEDIA, USER, RATINGS, lambda d: _by_movie(d, RATINGS, ["user_id", "rating"])
            .filter(pl.col("rating") >= LIKED).group_by("end").agg(pl.col("user_id").bottom_k(PEERS + 1))
            .explode("user_id").select(start="end", end="user_id")),
    EdgeSet("AVAILABLE_ON", MEDIA, PLATFORM, AVAILABILITY, lambda d: _read(d, AVAILABILITY, [
        "media_id", "platform_id", "offer_type", "price_usd", "regions", "quality_options", "subtitle_languages",
        "audio_languages", "hdr", "dolby_atmos"]).rename({"media_id": "start", "platform_id": "end"})),
]
TABLES = {s.name: s for s in NODES + EDGES}  # reconciliation: each has .file and .read(data)
INPUTS = tuple(dict.fromkeys(s.file for s in NODES + EDGES))
# The explainability queries look items up by title, users by archetype and tags by name.
INDEXES = [("Media", "title"), ("User", "archetype"), ("Tag", "name")]


def _import_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return _import_type(dtype.inner) + "[]"
    return next(name for polars_type, name in IMPORT_TYPES.items() if dtype == polars_type)


def _import_frame(frame: pl.LazyFrame, ids: dict[str, str], path: Path) -> pl.LazyFrame:
    """A node or relationship frame under neo4j-admin's typed header: the id columns (`ids`: column ->
    header, the node key kept as a typed property too, so both paths give the same property types),
    `name:type` for the rest, arrays joined by ARRAY_DELIMITER."""
    schema = frame.collect_schema()
    for column, dtype in schema.items():
        if isinstance(dtype, pl.List):
            bad = frame.filter(pl.col(column).list.eval(pl.element().str.contains(ARRAY_DELIMITER, literal=True))
                               .list.any()).select(column).head(1).collect()
            if len(bad):
                raise StaleInputs(f"{path}: {column} holds the array delimiter {ARRAY_DELIMITER!r} "
                                  f"(e.g. {bad[column][0].to_list()})")
    columns = [pl.col(c).cast(pl.String).alias(header) for c, header in ids.items()]
    columns += [(pl.col(c).list.join(ARRAY_DELIMITER) if isinstance(t, pl.List) else pl.col(c))
                .alias(f"{c}:{_import_type(t)}") for c, t in schema.items() if c not in ("start", "end")]
    return frame.select(columns)


def write_admin_import(data: Path, nodes: dict[str, pl.LazyFrame], edges: dict[str, pl.LazyFrame], out: Path,
                       database: str = "neo4j") -> list[str]:
    """neo4j-admin's import files for the graph's sources (by label and type; streamed, never held
    whole), one CSV per label and relationship type, and the command that imports them into an empty
    database (returned as argv, also in out/IMPORT.txt). Written to a temporary folder and renamed: a
    failed write leaves no partial set."""
    from tasks.files import atomic_output

    data, out = Path(data), Path(out)
    command = ["neo4j-admin", "database", "import", "full", "--overwrite-destination",
               f"--array-delimiter={ARRAY_DELIMITER}", "--multiline-fields=true"]
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True)
        for node in NODES:
            if node.label in nodes:
                frame = _import_frame(nodes[node.label].lazy(), {node.key: f":ID({node.label})"}, data / node.file)
                frame.sink_csv(tmp / f"{node.label}.csv")
                command.append(f"--nodes={node.label}={out / f'{node.label}.csv'}")
        for edge in EDGES:
            if edge.type in edges:
                frame = _import_frame(edges[edge.type].lazy(), {"start": f":START_ID({edge.start.label})",
                                                                "end": f":END_ID({edge.end.label})"}, data / edge.file)
                frame.sink_csv(tmp / f"{edge.type}.csv")
                command.append(f"--relationships={edge.type}={out / f'{edge.type}.csv'}")
        command.append(database)
        (tmp / "IMPORT.txt").write_text(shlex.join(command) + "\n")
    return command


def _importer_property(column: str, dtype: pl.DataType) -> str:
    return ("list:" if isinstance(dtype, pl.List) else IMPORTER_TYPES[dtype]) + column


def write_local_import(nodes: dict[str, pl.LazyFrame], edges: dict[str, pl.LazyFrame], out: Path) -> Path:
    """ArcadeDB GraphImporter's input: one JSONL file per label and type (streamed from the sources),
    and its config (returned). Its numbers without a value become 0: the load sets the properties of
    the rows that have nulls over Bolt afterwards (_set_nulls)."""
    from tasks.files import atomic_output

    config = {"vertices": [], "edgeSources": []}
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True)
        for node in NODES:
            if node.label in nodes:
                frame = nodes[node.label].lazy()
                frame.sink_ndjson(tmp / f"{node.label}.jsonl")
                config["vertices"].append({"type": node.label, "file": f"{node.label}.jsonl", "id": node.key,
                                           "properties": {c: _importer_property(c, t)
                                                          for c, t in frame.collect_schema().items()}})
        for edge in EDGES:
            if edge.type in edges:
                frame = edges[edge.type].lazy()
                frame.sink_ndjson(tmp / f"{edge.type}.jsonl")
                config["edgeSources"].append({
                    "edge": edge.type, "file": f"{edge.type}.jsonl", "from": f"start:{edge.start.label}",
                    "to": f"end:{edge.end.label}",
                    "properties": {c: _importer_property(c, t) for c, t in frame.collect_schema().items()
                                   if c not in ("start", "end")}})
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
    return out / "config.json"


DATASET_LABEL = "PipelineDataset"  # one node: the data dir whose dataset this database holds


def _constraint(node: NodeSet) -> str:
    return f"{node.label.lower()}_{node.key}"


class Neo4jStore:
    name = "neo4j"

    def __init__(self, settings: Settings):
        self.settings = settings
        url, self.auth, self.database = settings.neo4j_target()
        self.local = settings.local_neo4j
        self.written: dict[str, pl.DataFrame] = {}  # per label and type, the keys the last load wrote (verified)
        self.url = safe_url(url)
        self._connect(url)

    def _connect(self, url: str) -> None:
        from neo4j import GraphDatabase
        from neo4j.exceptions import AuthError, ServiceUnavailable

        self.driver = GraphDatabase.driver(url, auth=self.auth, connection_timeout=10)
        try:
            self.driver.verify_connectivity()
        except (ServiceUnavailable, AuthError, OSError) as exc:
            self.driver.close()
            raise unreachable("neo4j", self.url, exc, self.local, "MG_NEO4J_URL") from exc

    def target(self) -> str:
        return f"{self.url} database {self.database}"

    # --- which dataset -----------------------------------------------------------------------------

    def holder(self) -> str | None:
        from neo4j.exceptions import ClientError

        try:
            rows = self.query(f"MATCH (d:{DATASET_LABEL}) RETURN d.origin AS origin")
        except ClientError as exc:
            if exc.code and exc.code.endswith("DatabaseNotFound"):  # the local server: not loaded yet
                return None
            raise
        return rows[0]["origin"] if rows else None

    def claim(self, origin: str) -> None:
        if self.local:  # the local server keeps each dataset in its own database
            from tasks.services import neo4j as neo4j_server

            neo4j_server.create_database(self.settings)
        self.query(f"MERGE (d:{DATASET_LABEL} {{key: 'dataset'}}) SET d.origin = $origin, d.host = $host",
                   origin=origin, host=socket.gethostname())

    def query(self, cypher: str, **params) -> list[dict]:
        # Labels, types and property names in the statements are this module's constants; values
        # are always parameters.
        records, _, _ = self.driver.execute_query(cypher, params, database_=self.database)
        return [r.data() for r in records]

    # --- schema ------------------------------------------------------------------------------------

    def create_schema(self, data: Path) -> None:
        for node in NODES:
            self.query(f"CREATE CONSTRAINT {_constraint(node)} IF NOT EXISTS "
                      f"FOR (n:{node.label}) REQUIRE n.{node.key} IS UNIQUE")
        for label, prop in INDEXES:
            self.query(f"CREATE INDEX {label.lower()}_{prop} IF NOT EXISTS FOR (n:{label}) ON (n.{prop})")

    def schema_missing(self) -> list[str]:
        """Constraints and indexes this module makes that the server does not have."""
        constraints = {(tuple(c["labelsOrTypes"]), tuple(c["properties"])) for c in self.query("SHOW CONSTRAINTS")
                       if c.get("type") == "UNIQUENESS"}
        indexes = {(tuple(i["labelsOrTypes"] or ()), tuple(i["properties"] or ())) for i in self.query("SHOW INDEXES")}
        missing = [f"unique {n.label}.{n.key}" for n in NODES if ((n.label,), (n.key,)) not in constraints]
        return missing + [f"index {label}.{prop}" for label, prop in INDEXES if ((label,), (prop,)) not in indexes]

    # --- load --------------------------------------------------------------------------------------

    def _stored(self, spec: NodeSet | EdgeSet, schema: pl.Schema, starts: list | None = None,
                keys: pl.DataFrame | None = None) -> pl.DataFrame:
        """What the graph holds for a label or type, in the source's columns and types: every element,
        those leaving `starts` (relationships), or those with `keys`."""
        columns = list(schema)
        if isinstance(spec, NodeSet):
            match = f"MATCH (n:{spec.label}) " if keys is None else \
                f"UNWIND $keys AS k MATCH (n:{spec.label} {{{spec.key}: k.{spec.key}}}) "
            cypher = match + "RETURN " + ", ".join(f"n.{c} AS {c}" for c in columns)
        else:
            pattern = f"(a:{spec.start.label})-[r:{spec.type}]->(b:{spec.end.label})"
            if keys is not None:  # both ends looked up first: 8x faster on ArcadeDB than expanding from one
                pattern = (f"UNWIND $keys AS k MATCH (a:{spec.start.label} {{{spec.start.key}: k.start}}) "
                           f"MATCH (b:{spec.end.label} {{{spec.end.key}: k.end}}) MATCH (a)-[r:{spec.type}]->(b)"
                           + (f" WHERE r.{spec.discriminator} = k.{spec.discriminator}" if spec.discriminator else ""))
            else:
                pattern = "MATCH " + pattern + (f" WHERE a.{spec.start.key} IN $starts" if starts is not None else "")
            cypher = (f"{pattern} RETURN a.{spec.start.key} AS start, b.{spec.end.key} AS end"
                      + "".join(f", r.{c} AS {c}" for c in columns[2:]))
        rows = []
        with self.driver.session(database=self.database) as session:
            if keys is None:
                rows = [tuple(r.values()) for r in session.run(cypher, starts=starts)]
            else:
                for first in range(0, len(keys), BATCH):
                    batch = keys.slice(first, BATCH).to_dicts()
                    rows += [tuple(r.values()) for r in session.run(cypher, keys=batch)]
        return pl.DataFrame(rows, schema=schema, orient="row")

    def _write(self, cypher: str, rows: pl.DataFrame, label: str, log: Log) -> int:
        """UNWIND the rows in batches; returns how many the statement reports written."""
        progress = Progress(lambda m: log(f"neo4j {label}: {m}"), "rows")
        written = 0
        for start in range(0, len(rows), BATCH):
            batch = rows.slice(start, BATCH).to_dicts()
            written += self.query(cypher, rows=batch)[0]["written"]
            progress(start + len(batch), len(rows))
        return written

    def _diff(self, spec: NodeSet | EdgeSet, source: pl.DataFrame,
              starts: list | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """The full comparison with the graph: (new, updated, gone), source rows the graph lacks,
        source rows that differ from the graph's, and the keys of the graph's elements the source lacks."""
        stored = self._stored(spec, source.schema, starts)
        digest = pl.struct(pl.all()).hash().alias("_digest")
        changed = source.with_columns(digest).join(stored.with_columns(digest).select([*spec.keys, "_digest"]),
                                                   on=[*spec.keys, "_digest"], how="anti", nulls_equal=True)\
            .drop("_digest")
        stored_keys = stored.select(spec.keys)
        return (changed.join(stored_keys, on=spec.keys, how="anti", nulls_equal=True),
                changed.join(stored_keys, on=spec.keys, how="semi", nulls_equal=True),
                stored_keys.join(source.select(spec.keys), on=spec.keys, how="anti", nulls_equal=True))

    # New elements are CREATEd, not MERGEd: the comparison or the snapshot has just shown they are
    # absent, and one load runs per store at a time (its concurrency limit); CREATE is ~2-4x faster
    # over Bolt (store-load-probes). A load killed midway leaves no snapshot of the table it wrote, so
    # the next one compares that table in full instead of creating twice.

    def _write_nodes(self, node: NodeSet, new: pl.DataFrame, updated: pl.DataFrame, log: Log) -> int:
        """Create what is new, SET what differs (gone nodes are deleted last, once no relationship of
        the source points at them)."""
        match = f"(n:{node.label} {{{node.key}: row.{node.key}}})"
        sets = "".join(f"{', ' if i else ' SET '}n.{p} = row.{p}"
                       for i, p in enumerate(c for c in new.columns if c not in node.keys))
        written = self._write(f"UNWIND $rows AS row CREATE {match}{sets} RETURN count(n) AS written", new,
                              node.label, log)
        if sets:
            written += self._write(f"UNWIND $rows AS row MATCH {match}{sets} RETURN count(n) AS written",
                                   updated, node.label, log)
        return written

    def _write_edges(self, edge: EdgeSet, new: pl.DataFrame, updated: pl.DataFrame, gone: pl.DataFrame,
                     log: Log) -> TableLoad:
        """Delete gone relationships, create what is new, SET what differs."""
        ends = (f"(a:{edge.start.label} {{{edge.start.key}: row.start}})",
                f"(b:{edge.end.label} {{{edge.end.key}: row.end}})")
        rel = f"[r:{edge.type}" + (f" {{{edge.discriminator}: row.{edge.discriminator}}}]" if edge.discriminator
                                   else "]")
        result = TableLoad(deleted=len(gone))
        if len(gone):
            self._write(f"UNWIND $rows AS row MATCH {ends[0]}-{rel}->{ends[1]} DELETE r RETURN count(*) AS written",
                        gone, edge.type, log)
        sets = "".join(f"{', ' if i else ' SET '}r.{p} = row.{p}"
                       for i, p in enumerate(c for c in new.columns if c not in edge.keys))
        result.written = self._write(f"UNWIND $rows AS row MATCH {ends[0]} MATCH {ends[1]} CREATE (a)-{rel}->(b)"
                                     f"{sets} RETURN count(r) AS written", new, edge.type, log)
        if sets:
            result.written += self._write(f"UNWIND $rows AS row MATCH {ends[0]}-{rel}->{ends[1]}{sets} "
                                          "RETURN count(r) AS written", updated, edge.type, log)
        if result.written != len(new) + len(updated):  # an end node deleted meanwhile: never a silent drop
            missing = len(new) + len(updated) - result.written
            raise StaleInputs(f"neo4j {edge.type}: {missing:,} of {len(new) + len(updated):,} "
                              "relationships found no end node; rerun the load")
        return result

    def _compare_edges(self, edge: EdgeSet, source: pl.DataFrame, starts: pl.Series, log: Log) -> TableLoad:
        """The full comparison of a relationship type, in chunks of start nodes holding about
        COMPARE_ROWS relationships, so that what is read back from the graph stays bounded (25M RATED
        at 25m scale). Relationships of start nodes gone from the source go with their node's DETACH
        DELETE."""
        if len(source) <= COMPARE_ROWS:
            return self._write_edges(edge, *self._diff(edge, source), log)
        starts = starts.sort()
        per_chunk = max(1, len(starts) * COMPARE_ROWS // len(source))
        total, progress = TableLoad(), Progress(lambda m: log(f"neo4j {edge.type}: compared {m}"), "relationships")
        done = 0
        for first in range(0, len(starts), per_chunk):
            keys = starts.slice(first, per_chunk)
            part = source.filter(pl.col("start").is_in(keys.implode()))  # one chunk at a time: no second copy of all
            result = self._write_edges(edge, *self._diff(edge, part, keys.to_list()), log)
            total.written += result.written
            total.deleted += result.deleted
            done += len(part)
            progress(done, len(source))
        return total

    def _import_local(self, data: Path, nodes: dict[str, pl.DataFrame], edges: dict[str, pl.LazyFrame],
                      log: Log) -> None:
        """The local server's bulk path: ArcadeDB's GraphImporter writes the database from files with
        the server stopped (it ignores a running server's lock), into a staging folder swapped in
        after; then the server starts again, and the rows with null properties are set over Bolt."""
        from tasks import services
        from tasks.services import neo4j as neo4j_server

        config = write_local_import({k: v.lazy() for k, v in nodes.items()}, edges, data / LOCAL_IMPORT_DIR)
        target = neo4j_server.database_dir(self.settings)
        staging = target.with_name(f".{target.name}.import")
        log(f"neo4j: {sum(len(f) for f in nodes.values()):,} nodes for an empty local graph: bulk import with "
            f"ArcadeDB's GraphImporter from {config.parent} (the server is stopped meanwhile)")
        started = time.perf_counter()
        self.driver.close()
        services.stop(self.settings, ["neo4j"])
        try:
            # Run beside the server: ArcadeDB writes its log/ folder into the working directory.
            done = subprocess.run([*neo4j_server.java(IMPORT_HEAP), IMPORTER, str(config), str(staging),
                                   str(config.parent)], capture_output=True, text=True, check=False,
                                  cwd=neo4j_server.home(self.settings))
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
                raise BulkImportFailed(f"graph bulk import from {config} failed (exit {done.returncode}):\n{tail}")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(config.parent, ignore_errors=True)  # as large as the sources: not kept
            services.start(self.settings, ["neo4j"])
            self._connect(self.settings.neo4j_target()[0])
        log(f"neo4j: bulk import done in {time.perf_counter() - started:.1f} s")
        self.claim(self.settings.dataset_origin)  # the imported database replaced the claimed one
        self.create_schema(data)
        for spec in [*NODES, *EDGES]:  # the importer wrote 0 for a number without a value
            if spec.name in nodes or spec.name in edges:
                source = nodes[spec.name].lazy() if spec.name in nodes else edges[spec.name]
                rest = [c for c in source.collect_schema() if c not in spec.keys]
                if rest:
                    nulls = source.filter(pl.any_horizontal(pl.col(c).is_null() for c in rest)).collect()
                    if isinstance(spec, NodeSet):
                        self._write_nodes(spec, nulls.clear(), nulls, log)
                    else:
                        self._write_edges(spec, nulls.clear(), nulls, nulls.clear().select(spec.keys), log)

    def _check_ends(self, edge: EdgeSet, frame: pl.DataFrame, nodes: dict[str, pl.DataFrame], data: Path) -> None:
        """Every relationship's ends are nodes of the source: else name the file and the ids."""
        for side, node in (("start", edge.start), ("end", edge.end)):
            known = nodes[node.label].select(pl.col(node.key).alias(side))
            orphans = frame.select(side).unique().join(known, on=side, how="anti")
            if len(orphans):
                sample_ = ", ".join(str(v) for v in orphans[side].head(3).to_list())
                raise StaleInputs(f"{Path(data) / edge.file}: {len(orphans):,} {edge.type} {side}s are no "
                                  f"{node.label} of the source (e.g. {sample_}; None: a movie missing from {MOVIES})")

    def load(self, data: Path, log: Log, snapshots: Snapshots | None = None) -> dict[str, TableLoad]:
        """Diff each label and type against its snapshot and write only that; a table without a usable
        snapshot (first load, killed load, drift, --verify full) is compared with the graph in full.
        Relationship sources are streamed: only their keys and digests, and the changed rows, are held."""
        data, snapshots = Path(data), snapshots or NoSnapshots()
        self.create_schema(data)
        present = lambda spec: (data / spec.file).exists()  # noqa: E731
        nodes = {n.label: n.frame(data) for n in NODES if present(n)}
        current = {label: with_digest(frame.lazy(), TABLES[label].keys).collect() for label, frame in nodes.items()}
        edges: dict[str, pl.LazyFrame] = {}
        for edge in EDGES:
            if present(edge) and edge.start.label in nodes and edge.end.label in nodes:
                current[edge.type] = edge.digests(data)
                self._check_ends(edge, current[edge.type], nodes, data)
                edges[edge.type] = edge.lazy(data)
        self.written = {}
        rows = sum(len(current[e]) for e in edges)
        if rows > BOLT_MAX_ROWS and not any(self.count(e) for e in edges):  # a large first load
            if not self.local:
                command = shlex.join(write_admin_import(data, nodes, edges, data / IMPORT_DIR, self.database))
                log(f"neo4j: {rows:,} relationships for an empty graph: import them with neo4j-admin, on the "
                    f"Neo4j server with the database stopped: {command}")
                raise BulkImportRequired(
                    f"neo4j at {self.url}: a first load of {rows:,} relationships is a bulk import (over "
                    f"{BOLT_MAX_ROWS:,}); files written to {data / IMPORT_DIR}; run on the server: {command}; then "
                    "start the database and rerun this load, which adds the constraints and verifies the graph")
            snapshots.forget(current)
            self._import_local(data, nodes, edges, log)
            for name, frame in current.items():
                snapshots.save(name, frame)
            return {name: TableLoad(rows=self.count(name), written=len(frame)) for name, frame in current.items()}

        previous = {name: snapshots.read(name) for name in current}
        report: dict[str, TableLoad] = {}
        gone_nodes = {}
        for node in NODES:  # nodes first: relationships MATCH their ends
            if node.label not in nodes:
                continue
            snapshots.forget([node.label])
            if previous[node.label] is None:
                new, updated, gone_nodes[node.label] = self._diff(node, nodes[node.label])
            else:
                changes = diff(current[node.label], previous[node.label], node.keys)
                new, updated = (nodes[node.label].join(k, on=node.keys, how="semi")
                                for k in (changes.new, changes.updated))
                gone_nodes[node.label] = changes.gone
            report[node.label] = TableLoad(written=self._write_nodes(node, new, updated, log))
            self.written[node.label] = pl.concat([new.select(node.keys), updated.select(node.keys)])
        for edge in EDGES:
            if edge.type not in edges:
                continue
            started = time.perf_counter()
            snapshots.forget([edge.type])
            if previous[edge.type] is None:
                log(f"neo4j {edge.type}: comparing every relationship with the graph")
                report[edge.type] = self._compare_edges(edge, edge.frame(data), nodes[edge.start.label][edge.start.key],
                                                        log)
            else:
                changes = diff(current[edge.type], previous[edge.type], edge.keys)
                new, updated = (rows_of(edges[edge.type], k, edge.keys) for k in (changes.new, changes.updated))
                report[edge.type] = self._write_edges(edge, new, updated, changes.gone, log)
                self.written[edge.type] = changes.written
            snapshots.save(edge.type, current[edge.type])
            if report[edge.type].written or report[edge.type].deleted:
                log(f"neo4j {edge.type}: {report[edge.type].written:,} written, {report[edge.type].deleted:,} "
                    f"deleted in {time.perf_counter() - started:.1f} s")
        for node in NODES:  # last: DETACH removes what is left of their edges
            gone = gone_nodes.get(node.label)
            if gone is not None and len(gone):
                self._write(f"UNWIND $rows AS row MATCH (n:{node.label} {{{node.key}: row.{node.key}}}) "
                            "DETACH DELETE n RETURN count(*) AS written", gone, node.label, log)
                report[node.label].deleted = len(gone)
            if node.label in nodes:
                snapshots.save(node.label, current[node.label])
        for name, table in report.items():
            table.rows = self.count(name)
        return report

    def verify(self, data: Path, snapshots: Snapshots, log: Log, counts: dict[str, int] | None = None) -> dict[str, dict]:
        """The default verification: per label and type, the count against the snapshot, and a fixed
        sample of elements (plus every element the last load wrote) read back and compared field by
        field. One entry per table, in reconcile()'s form plus `sampled` (elements read back) and
        `differ` (sampled elements whose properties differ); a table without a snapshot is reported as
        such (`snapshot` False): it needs a full comparison."""
        def read_back(name: str, checked: pl.DataFrame) -> pl.DataFrame:
            spec = TABLES[name]
            stored = self._stored(spec, spec.lazy(data).collect_schema(), keys=checked.select(spec.keys))
            return with_digest(stored.lazy(), spec.keys).rename({DIGEST: "stored"}).collect()

        present = {name: spec.keys for name, spec in TABLES.items() if (Path(data) / spec.file).exists()}
        return verify_tables(present, snapshots, self.written,
                             lambda name: self.count(name) if counts is None else counts[name], read_back)

    # --- reads -------------------------------------------------------------------------------------

    def count(self, name: str) -> int:
        spec = TABLES[name]
        pattern = f"(n:{spec.label})" if isinstance(spec, NodeSet) else f"()-[n:{spec.type}]->()"
        return self.query(f"MATCH {pattern} RETURN count(n) AS n")[0]["n"]

    def counts(self) -> dict[str, int]:
        return {name: self.count(name) for name in TABLES}

    def ids(self, table: str) -> Iterator[str]:
        spec = TABLES[table]
        if isinstance(spec, NodeSet):
            cypher = f"MATCH (n:{spec.label}) RETURN n.{spec.key} AS id"
        else:
            parts = [f"a.{spec.start.key}", f"b.{spec.end.key}"] + ([f"r.{spec.discriminator}"]
                                                                    if spec.discriminator else [])
            cypher = (f"MATCH (a:{spec.start.label})-[r:{spec.type}]->(b:{spec.end.label}) RETURN "
                      + " + '/' + ".join(f"toString({p})" for p in parts) + " AS id")
        with self.driver.session(database=self.database) as session:
            yield from (str(r["id"]) for r in session.run(cypher))

    def checks(self, data: Path, full: bool = True) -> dict:
        """Schema present, and (full) relationships whose ends are not the labels they join: a scan of
        every relationship (14 s for 25M RATED). After a sampled verification it is left out: the
        sample's relationships were read through their labelled ends, so an orphan among them counts
        as missing."""
        orphans = {}
        for edge in EDGES if full else []:
            orphans[edge.type] = self.query(
                f"MATCH (a)-[r:{edge.type}]->(b) WHERE NOT a:{edge.start.label} OR NOT b:{edge.end.label} "
                "RETURN count(r) AS n")[0]["n"]
        missing = self.schema_missing()
        return {"missing_index": len(missing), "missing_schema": missing, "orphan_edges": sum(orphans.values()),
                "orphans": orphans}

    def vector(self, vector_set: str, item: str) -> list[float] | None:
        return None  # the graph holds no vectors

    def search(self, query: Query) -> list[Hit]:
        raise NotImplementedError("the graph answers explainability queries, not vector searches")

    def close(self) -> None:
        self.driver.close()


def open_store(settings: Settings) -> Neo4jStore:
    return Neo4jStore(settings)
