"""PostgreSQL + pgvector: the datasets as tables, the vectors in embedding tables with HNSW indexes.

Tables: movies, users, platforms, availability and media_metadata (the guide seed's schema: tags
TEXT[], the type's own fields in type_specific_data JSONB without nulls, GIN indexes), plus
media_embeddings, catalog_embeddings and user_embeddings: id, the fields searches filter on, and
embedding vector(d), d read from the embeddings file.

Each table loads in one transaction: binary COPY (Arrow batches encoded by pgpq) into a staging
table, then INSERT ... ON CONFLICT DO UPDATE ... WHERE the row IS DISTINCT FROM the stored one, then
a DELETE of ids gone from the source; a first load into an empty table copies straight into it. A
rerun with unchanged data rewrites no row (xmin stays) and rebuilds no index; a load killed midway
leaves each table as its last commit had it.

HNSW (m 16, ef_construction 64, vector_cosine_ops) is built after the first bulk load. Not the seed's
ef_construction 200: on this 2-core machine that takes ~500-640 s at 250k rows (store-load-probes),
so ~40 min for the 1M catalog, past the 15-min load budget; 64 builds about twice as fast and the
recall it costs (~0.03 at 250k) is bought back at query time with hnsw.ef_search (see
benchmarks/stores.py for the measured trade-off). The index is built with
maintenance_work_mem sized to hold the graph (rows x (4 d + 300) bytes x 1.25, at least 64 MB, at
most the local server's own setting, an eighth of the machine's memory (tasks.services.postgres), or 2 GB
on a remote one: past that, pgvector's build spills and runs several times slower) and every core but one
as parallel workers, then read into shared buffers (pg_prewarm), as the local server does after a restart.
Searches use hnsw.ef_search EF_SEARCH and iterative scans, so a filter does not cut the answer short;
a value of a PARTITIONS field held by few rows (a catalog type) has a partial HNSW index of its own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from tasks.progress import Progress
from tasks.settings import Settings
from tasks.stores.base import Hit, Log, Query, TableLoad, ordered, safe_url, sample_ids, self_misses, unreachable
from tasks.stores.sources import VECTOR_SETS, Keys, h5_dim, h5_ids, h5_rows, vector_batches

M, EF_CONSTRUCTION, EF_SEARCH = 16, 64, 100
SQL_OPERATORS = {"==": "=", "contains": "@>", ">=": ">=", "<=": "<=", "!=": "<>"}
COPY_ROWS = 50_000  # rows read from a file per step
JSONB_VERSION = "\x01"  # jsonb's binary wire form: this version byte, then the JSON text


def _json_object(columns: list[str]) -> pl.Expr:
    """The columns as one JSON object without its null members: what jsonb_strip_nulls would leave of
    it (the fields are flat), computed here so that the rows can be copied straight into the table."""
    members = [pl.when(pl.col(c).is_not_null()).then(
        pl.struct(c).struct.json_encode().str.strip_prefix("{").str.strip_suffix("}")) for c in columns]
    return pl.concat_str(pl.lit("{"), pl.concat_str(members, separator=",", ignore_nulls=True), pl.lit("}"))


METADATA_SHARED = ("id", "type", "title", "description", "tags", "creator", "creation_date", "file_size",
                   "content_text")


def _metadata(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The guide seed's media_metadata: shared columns, and the type's own fields as JSON."""
    own = [c for c in frame.collect_schema() if c not in METADATA_SHARED]
    return frame.select(*METADATA_SHARED, type_specific_data=_json_object(own))


@dataclass(frozen=True)
class Table:
    name: str
    file: str  # under the data dir
    key: tuple[str, ...]
    shape: object = None  # LazyFrame -> LazyFrame: the table's columns from the file
    jsonb: tuple[str, ...] = ()  # JSON text columns stored as jsonb
    indexes: tuple[str, ...] = ()  # "USING gin (tags)", ...

    def frame(self, data: Path) -> pl.LazyFrame:
        frame = pl.scan_parquet(Path(data) / self.file)
        return self.shape(frame) if self.shape else frame


TABLES_RELATIONAL = [
    Table("movies", "processed/movies.parquet", ("media_id",), indexes=("USING gin (genres)",)),
    Table("users", "synthetic/users.parquet", ("user_id",), indexes=("(archetype)", "(country)")),
    Table("platforms", "synthetic/platforms.parquet", ("platform_id",)),
    Table("availability", "synthetic/availability.parquet", ("media_id", "platform_id"),
          indexes=("(platform_id)", "USING gin (regions)")),
    Table("media_metadata", "synthetic/media_catalog.parquet", ("id",), shape=_metadata, jsonb=("type_specific_data",),
          indexes=("(type)", "(creation_date)", "USING gin (tags)",
                   # Containment (@>) is the query a metadata filter makes; jsonb_path_ops answers it
                   # with an index half the size, built in half the time (2.2 s vs 4.0 s at 1M rows).
                   "USING gin (type_specific_data jsonb_path_ops)")),
]
EMBEDDINGS = {"media_embeddings": "media", "catalog_embeddings": "catalog", "user_embeddings": "users"}
# The searches' filter fields. A selective filter (a type in one year: 1% of the catalog) is then answered
# exactly: the planner reads its rows through the B-tree and sorts them by distance (1,000 rows of 200k:
# recall 1.0, p99 1.7 ms), where HNSW with an iterative scan returned 0.89 at 28-34 ms; a broad filter
# (a type: 10%) stays on HNSW. Measured in benchmarks/stores.py (search_targets).
FILTER_INDEXES = {"media_embeddings": ("(year)", "USING gin (genres)", "USING gin (platforms)"),
                  "catalog_embeddings": ("(type, year)", "USING gin (tags)"),
                  "user_embeddings": ("(archetype)", "(country)")}
# A filter on a value that a tenth of the rows hold cuts HNSW's recall: the graph's nearest
# candidates hold few matches, and the true ones lie past them (200k catalog: `type = document`
# best 0.81 at ef_search 400). Each value of these fields held by at most PARTIAL_SHARE of the rows
# gets a partial HNSW index of its own, which the planner uses for `field = value`; commoner values
# are found among the full index's candidates. The build costs at most another full one.
PARTITIONS = {"catalog_embeddings": "type"}
PARTIAL_SHARE = 0.25
TABLES = {**{t.name: Keys(t.file, t.key) for t in TABLES_RELATIONAL},
          **{name: Keys(VECTOR_SETS[s].h5) for name, s in EMBEDDINGS.items()}}
INPUTS = tuple(dict.fromkeys([t.file for t in TABLES_RELATIONAL] + [VECTOR_SETS[s].h5 for s in EMBEDDINGS.values()]))
FIELD_TYPES = {"str": "text", "int": "int4", "list": "text[]"}
# How the catalog (format_type) spells the short names this module uses.
CATALOG_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
                 "float8": "double precision", "bool": "boolean", "timestamptz": "timestamp with time zone",
                 "timestamp": "timestamp without time zone"}


def _catalog_name(short: str) -> str:
    base, array = short.removesuffix("[]"), short.endswith("[]")
    return CATALOG_NAMES.get(base, base) + ("[]" if array else "")


def pg_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return pg_type(dtype.inner) + "[]"
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    for polars_type, name in ((pl.Int16, "int2"), (pl.Int32, "int4"), (pl.Int64, "int8"), (pl.Float32, "float4"),
                              (pl.Float64, "float8"), (pl.Boolean, "bool"), (pl.String, "text"), (pl.Enum, "text"),
                              (pl.Categorical, "text"), (pl.Date, "date")):
        if isinstance(dtype, polars_type) or dtype == polars_type:
            return name
    raise TypeError(f"no PostgreSQL type for {dtype}")


def _as_copyable(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col(pl.Enum, pl.Categorical).cast(pl.String))


def _record_batch(frame: pl.DataFrame, columns: dict[str, str], **extra: pa.Array) -> pa.RecordBatch:
    """A frame (and extra columns) as one Arrow batch in the wire form of the COPY's column types."""
    frame = frame.with_columns(pl.concat_str(pl.lit(JSONB_VERSION), c).alias(c) for c, t in columns.items() if t == "jsonb")
    table = frame.to_arrow()
    return pa.RecordBatch.from_arrays([table[c].combine_chunks() for c in table.column_names] + list(extra.values()),
                                      names=table.column_names + list(extra))


def _vector_column(vectors: np.ndarray) -> pa.Array:
    """pgvector's binary form of each row (dimension, a zero, big-endian floats), built for the whole
    batch at once: the wire bytes COPY hands to vector_recv."""
    n, dim = vectors.shape
    width = 4 + 4 * dim
    body = np.empty((n, width), np.uint8)
    body[:, :4] = np.array([dim, 0], dtype=">u2").view(np.uint8)
    body[:, 4:] = np.ascontiguousarray(vectors, dtype=">f4").view(np.uint8).reshape(n, 4 * dim)
    offsets = np.arange(n + 1, dtype=np.int64) * width
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(body)])


class PostgresStore:
    name = "postgres"

    def __init__(self, settings: Settings):
        import psycopg
        from pgvector.psycopg import register_vector

        self.local = settings.local_postgres
        self.url = safe_url(settings.postgres_dsn())
        self.schema = settings.dataset_namespace  # one schema per dataset
        try:
            self.conn = psycopg.connect(settings.postgres_dsn(), connect_timeout=10, autocommit=True)
        except psycopg.OperationalError as exc:
            raise unreachable("postgres", self.url, exc, self.local, "MG_POSTGRES_URL") from exc
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # in public, shared by every dataset
        # Unqualified names are the dataset's own tables; pgvector's types come from public.
        self.conn.execute("SELECT set_config('search_path', %s, false)", (f'"{self.schema}", public',))
        register_vector(self.conn)

    def target(self) -> str:
        return f"{self.url} schema {self.schema}"

    # --- which dataset -----------------------------------------------------------------------------

    def holder(self) -> str | None:
        if self.conn.execute("SELECT to_regclass('mg_dataset')").fetchone()[0] is None:
            return None
        row = self.conn.execute("SELECT origin FROM mg_dataset").fetchone()
        return row[0] if row else None

    def claim(self, origin: str) -> None:
        from psycopg import sql

        with self.conn.transaction():
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            self.conn.execute("CREATE TABLE IF NOT EXISTS mg_dataset (origin text NOT NULL, host text, "
                              "claimed_at timestamptz NOT NULL DEFAULT now())")
            self.conn.execute("DELETE FROM mg_dataset")
            self.conn.execute("INSERT INTO mg_dataset (origin, host) VALUES (%s, %s)", (origin, socket.gethostname()))

    # --- schema ------------------------------------------------------------------------------------

    def _columns(self, table: str) -> dict[str, str]:
        """The table's columns and their SQL types (vector(d) included), {} when it does not exist."""
        rows = self.conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (table,)).fetchall()
        return dict(rows)

    def _ensure(self, table: str, columns: dict[str, str], key: tuple[str, ...]) -> None:
        from psycopg import sql

        existing = self._columns(table)
        if existing and existing != {c: _catalog_name(t) for c, t in columns.items()}:
            # Another dataset layout or another embedding model: the old rows cannot be compared.
            self.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        self.conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
            sql.Identifier(table),
            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns.items()),
            sql.SQL(", ").join(map(sql.Identifier, key))))

    def _secondary_indexes(self, table: str, specs: tuple[str, ...], load: TableLoad) -> None:
        """GIN and b-tree indexes, made after the table's first load: built in bulk from the rows, they
        cost a fraction of maintaining them row by row (1M media_metadata rows: ~30 s of the load). Then
        fresh statistics for a table that changed: the planner weighs a filter's B-tree against HNSW."""
        from psycopg import sql

        for i, spec in enumerate(specs):
            # Index definitions are constants of this module, never input.
            self.conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} " + spec).format(
                sql.Identifier(f"{table}_idx{i}"), sql.Identifier(table)))
        if load.written or load.deleted:
            self.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))

    def _relational_columns(self, table: Table, data: Path) -> dict[str, str]:
        schema = _as_copyable(table.frame(data).head(0).collect()).schema
        return {c: "jsonb" if c in table.jsonb else pg_type(t) for c, t in schema.items()}

    def _embedding_columns(self, set_name: str, data: Path) -> dict[str, str]:
        vector_set = VECTOR_SETS[set_name]
        return {"id": "text", **{f: FIELD_TYPES[t] for f, t in vector_set.fields.items()},
                "embedding": f"vector({h5_dim(vector_set.path(data))})"}

    def create_schema(self, data: Path) -> None:
        from psycopg import sql

        self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        for table in TABLES_RELATIONAL:
            if (Path(data) / table.file).exists():
                self._ensure(table.name, self._relational_columns(table, data), table.key)
        for name, set_name in EMBEDDINGS.items():
            if VECTOR_SETS[set_name].path(data).exists():
                self._ensure(name, self._embedding_columns(set_name, data), ("id",))

    # --- load --------------------------------------------------------------------------------------

    def _sync(self, table: str, columns: dict[str, str], key: tuple[str, ...], batches: Iterator[pa.RecordBatch],
              total: int, log: Log) -> TableLoad:
        """One transaction: COPY into staging, upsert what differs, delete what is gone."""
        from pgpq import ArrowToPostgresBinaryEncoder
        from psycopg import sql
        from psycopg.copy import QueuedLibpqWriter

        names = list(columns)
        ident = sql.Identifier(table)
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        rest = [c for c in names if c not in key]
        keys = sql.SQL(", ").join(map(sql.Identifier, key))
        progress = Progress(lambda m: log(f"postgres {table}: {m}"), "rows")
        result = TableLoad()
        with self.conn.transaction(), self.conn.cursor() as cur:
            # A first load into an empty table copies straight into it: nothing to compare or delete,
            # and every row is written once, not twice.
            direct = cur.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(ident)).fetchone()[0]
            if direct:
                # Emptied in this transaction: on a server with wal_level minimal (the local one) the
                # COPY then writes no WAL. The key's index is rebuilt from the rows after the COPY, a
                # sort instead of a million random inserts (a duplicate key fails the transaction).
                cur.execute(sql.SQL("TRUNCATE {}").format(ident))
                cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(ident, sql.Identifier(f"{table}_pkey")))
            else:
                cur.execute(sql.SQL("CREATE TEMP TABLE stage ({}) ON COMMIT DROP").format(sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in columns.items())))
            done, encoder = 0, None
            # pgpq encodes whole Arrow batches in Rust, and the queued writer sends one batch while the
            # next is read and encoded: per-row Python (polars rows(), psycopg's dumpers) was ~70% of
            # the load's time.
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    ident if direct else sql.Identifier("stage"), cols), writer=QueuedLibpqWriter(cur)) as copy:
                for batch in batches:
                    if encoder is None:
                        encoder = ArrowToPostgresBinaryEncoder(batch.schema)
                        copy.write(encoder.write_header())
                    copy.write(encoder.write_batch(batch))
                    done += batch.num_rows
                    progress(done, total)
                if encoder is not None:
                    copy.write(encoder.finish())
            if direct:
                cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(ident, keys))
                result.written = done
                result.rows = done
                return result
            cur.execute(sql.SQL(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM stage ON CONFLICT ({keys}) DO UPDATE SET {sets} "
                "WHERE ({old}) IS DISTINCT FROM ({new})").format(
                t=ident, cols=cols, keys=keys,
                sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in rest),
                old=sql.SQL(", ").join(sql.SQL("{}.{}").format(ident, sql.Identifier(c)) for c in rest),
                new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in rest)))
            result.written = cur.rowcount
            cur.execute(sql.SQL("DELETE FROM {t} WHERE NOT EXISTS (SELECT 1 FROM stage s WHERE ({sk}) = ({tk}))").format(
                t=ident, sk=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in key),
                tk=sql.SQL(", ").join(sql.SQL("{}.{}").format(ident, sql.Identifier(k)) for k in key)))
            result.deleted = cur.rowcount
        result.rows = self.count(table)
        return result

    def _maintenance_memory(self, rows: int, dim: int) -> str:
        from tasks.services.postgres import machine_memory, memory_settings

        need = int(rows * (4 * dim + 300) * 1.25)
        ceiling = memory_settings(machine_memory())["maintenance_work_mem"] * 1024**2 if self.local else 2 * 1024**3
        return f"{max(64 * 1024**2, min(need, ceiling)) // 1024**2}MB"

    def _prewarm(self, index: str, log: Log) -> None:
        """The new index read into shared buffers, so the first searches do not wait on disk; a server
        without pg_prewarm (it is a contrib module) is said so and left as it is."""
        import psycopg
        from psycopg import sql

        try:
            with self.conn.transaction():
                self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm SCHEMA public")
                blocks = self.conn.execute("SELECT public.pg_prewarm(%s::regclass)",
                                           (sql.Identifier(index).as_string(self.conn),)).fetchone()[0]
        except psycopg.Error as exc:
            log(f"postgres {index}: not prewarmed ({str(exc).splitlines()[0]})")
            return
        log(f"postgres {index}: {blocks * 8 // 1024:,} MB read into shared buffers")

    def _build_index(self, table: str, rows: int, dim: int, log: Log, where: tuple[str, str] | None = None) -> None:
        """The table's HNSW index, or with `where` (field, value) the partial one of the rows holding it."""
        import os

        from psycopg import sql

        index = f"{table}_hnsw" + (f"_{where[1]}" if where else "")
        quoted = sql.Identifier(index).as_string(self.conn)  # a value may need quoting as a name
        if self.conn.execute("SELECT to_regclass(%s)", (quoted,)).fetchone()[0]:
            return
        memory = self._maintenance_memory(rows, dim)
        scope = f"{where[0]} = {where[1]!r}: " if where else ""
        log(f"postgres {table}: building HNSW (m {M}, ef_construction {EF_CONSTRUCTION}) on {scope}{rows:,} rows "
            f"with maintenance_work_mem {memory}")
        started = time.perf_counter()
        with self.conn.transaction():
            self.conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (memory,))
            if self.local:
                self.conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, true)",
                                  (str(max(0, (os.cpu_count() or 1) - 1)),))
            # DDL takes no parameters: the value is quoted as a literal.
            self.conn.execute(sql.SQL(
                "CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {}) {}"
            ).format(sql.Identifier(index), sql.Identifier(table), sql.Literal(M), sql.Literal(EF_CONSTRUCTION),
                     sql.SQL("WHERE {} = {}").format(sql.Identifier(where[0]), sql.Literal(where[1])) if where
                     else sql.SQL("")))
        log(f"postgres {table}: HNSW built on {scope}{rows:,} rows in {time.perf_counter() - started:.1f} s")
        self._prewarm(index, log)

    def _build_partial_indexes(self, table: str, dim: int, log: Log) -> None:
        from psycopg import sql

        if table not in PARTITIONS:
            return
        field = PARTITIONS[table]
        shares = self.conn.execute(sql.SQL("SELECT {f}, count(*) FROM {t} WHERE {f} IS NOT NULL GROUP BY {f}").format(
            f=sql.Identifier(field), t=sql.Identifier(table))).fetchall()
        total = sum(n for _, n in shares)
        for value, n in sorted(shares):
            if len(shares) > 1 and n <= PARTIAL_SHARE * total:
                self._build_index(table, n, dim, log, where=(field, value))

    def load(self, data: Path, log: Log) -> dict[str, TableLoad]:
        self.create_schema(data)
        report = {}
        for table in TABLES_RELATIONAL:
            if not (Path(data) / table.file).exists():
                continue
            columns = self._relational_columns(table, data)
            frame = _as_copyable(table.frame(data).collect())
            batches = (_record_batch(frame.slice(s, COPY_ROWS), columns) for s in range(0, len(frame), COPY_ROWS))
            report[table.name] = self._sync(table.name, columns, table.key, batches, len(frame), log)
            self._secondary_indexes(table.name, table.indexes, report[table.name])
            del frame
        for name, set_name in EMBEDDINGS.items():
            vector_set = VECTOR_SETS[set_name]
            if not vector_set.path(data).exists():
                continue
            columns = self._embedding_columns(set_name, data)
            batches = (_record_batch(fields, columns, embedding=_vector_column(vectors))
                       for fields, vectors in vector_batches(data, vector_set, COPY_ROWS, digests=False))
            total = h5_rows(vector_set.path(data))  # a count, without reading every id
            report[name] = self._sync(name, columns, ("id",), batches, total, log)
            self._secondary_indexes(name, FILTER_INDEXES[name], report[name])
            self._build_index(name, report[name].rows, h5_dim(vector_set.path(data)), log)
            self._build_partial_indexes(name, h5_dim(vector_set.path(data)), log)
        return report

    # --- reads -------------------------------------------------------------------------------------

    def count(self, table: str) -> int:
        from psycopg import sql

        if self.conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
            return 0
        return self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]

    def counts(self) -> dict[str, int]:
        return {table: self.count(table) for table in TABLES}

    def ids(self, table: str) -> Iterator[str]:
        from psycopg import sql

        if self.count(table) == 0:
            return
        key = next((t.key for t in TABLES_RELATIONAL if t.name == table), ("id",))
        expr = sql.SQL(" || '/' || ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in key)
        with self.conn.transaction(), self.conn.cursor(name=f"ids_{table}") as cur:  # streamed, server-side
            cur.execute(sql.SQL("SELECT {} FROM {}").format(expr, sql.Identifier(table)))
            while rows := cur.fetchmany(50_000):
                yield from (r[0] for r in rows)

    def vector(self, vector_set: str, item: str) -> list[float] | None:
        from psycopg import sql

        table = next(name for name, s in EMBEDDINGS.items() if s == vector_set)
        row = self.conn.execute(sql.SQL("SELECT embedding FROM {} WHERE id = %s").format(sql.Identifier(table)),
                                (item,)).fetchone()
        return row[0].to_list() if row else None

    def _search_rows(self, query: Query, explain: bool = False) -> list[tuple]:
        """The query's rows (id, its set's fields, score), or with `explain` its plan's lines."""
        from psycopg import sql

        table = next(name for name, s in EMBEDDINGS.items() if s == query.vector_set)
        fields = list(VECTOR_SETS[query.vector_set].fields)
        where, params = [], {"q": np.asarray(query.vector, dtype=np.float32), "k": query.k + 1}
        for column, op, value in query.conditions():
            params[f"p{len(where)}"] = [value] if op == "contains" else value
            where.append(sql.SQL("{} " + SQL_OPERATORS[op] + " {}").format(sql.Identifier(column),
                                                                            sql.Placeholder(f"p{len(where)}")))
        statement = sql.SQL("{explain}SELECT id, {fields}, 1 - (embedding <=> %(q)s) FROM {t} {where} "
                            "ORDER BY embedding <=> %(q)s LIMIT %(k)s").format(
            explain=sql.SQL("EXPLAIN " if explain else ""),
            fields=sql.SQL(", ").join(map(sql.Identifier, fields)), t=sql.Identifier(table),
            where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
        with self.conn.transaction():
            # A custom plan for every query: a generic one cannot use a value's partial index.
            self.conn.execute("SELECT set_config('hnsw.ef_search', %s, true), "
                              "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                              "set_config('plan_cache_mode', 'force_custom_plan', true)",
                              (str(max(EF_SEARCH, query.k + 1)),))
            return self.conn.execute(statement, params).fetchall()

    def plan(self, query: Query) -> list[str]:
        """The planner's plan for the query's search (EXPLAIN): which index answers it."""
        return [row[0] for row in self._search_rows(query, explain=True)]

    def search(self, query: Query) -> list[Hit]:
        fields = list(VECTOR_SETS[query.vector_set].fields)
        hits = []
        for row in self._search_rows(query):
            values = dict(zip(fields, row[1:-1]))
            hits.append(Hit(row[0], float(row[-1]), values.pop("title", row[0]), values))
        return ordered(hits, query.k)  # relaxed_order may return neighbours slightly out of order

    def checks(self, data: Path, full: bool = True) -> dict:  # noqa: ARG002 - reads no more than its samples
        figures = {"dim_mismatch": 0, "missing_index": 0, "self_not_nearest": 0, "collections": {}}
        for name, set_name in EMBEDDINGS.items():
            path = VECTOR_SETS[set_name].path(data)
            columns = self._columns(name)
            if not path.exists() or not columns:
                continue
            dim = int(columns["embedding"].removeprefix("vector(").rstrip(")"))
            indexed = self.conn.execute("SELECT to_regclass(%s)", (f"{name}_hnsw",)).fetchone()[0] is not None
            misses = self_misses(self, set_name, sample_ids(h5_ids(path)))
            figures["dim_mismatch"] += int(dim != h5_dim(path))
            figures["missing_index"] += int(not indexed)
            figures["self_not_nearest"] += misses
            figures["collections"][name] = {"dim": dim, "index": f"hnsw m {M} ef_construction {EF_CONSTRUCTION}"
                                            if indexed else None, "self_not_nearest": misses}
        return figures

    def close(self) -> None:
        self.conn.close()


def open_store(settings: Settings) -> PostgresStore:
    return PostgresStore(settings)
