"""Milvus: one collection per vector set, COSINE, with the fields searches filter on.

- Local default: the Milvus server of `python -m tasks.services` (the `milvus` wheel's standalone
  2.3.5), a database per dataset; any Milvus server is a URL (MG_MILVUS_URI=http://host:19530).
  A server gets HNSW M 16 / efConstruction 200, searched with ef 100 (200 under a filter). Collections are made with Strong
  consistency: a load checks what it just wrote (under the default Bounded, a query right after an
  upsert returned the old row). Searches and item lookups read with Session consistency instead:
  Strong waits for the server's next time tick (50 ms, every read), Session sees this process's own
  writes and, in another process, all but the last tick's (p50 4 ms against 50 ms, measured here).
- Milvus Lite (MG_MILVUS_URI=path.db) still works, for development only: Lite 2.5 takes FLAT,
  IVF_FLAT and AUTOINDEX: IVF_FLAT, nlist ~ 4 sqrt(rows), nprobe NPROBE, but it answers from an
  interim IVF_FLAT_CC index (nlist 100) it builds when it loads, whatever is asked (its log:
  VecIndexConfig): recall@10 ~0.5 at the 1M catalog (benchmarks/stores.py).
- Idempotent: every row carries a digest of its fields and vector. A load diffs the source's (id,
  digest) pairs against its snapshot of the last load (tasks.stores.snapshot; without one, against
  the pairs read back from the collection), inserts new ids, upserts changed ones, deletes ids gone
  from the source; unchanged rows are not sent. Verified after: counts, and a fixed sample of rows
  plus every row written, read back with their vectors and digested again. Inserts go in INSERT_ROWS-row batches on Lite: measured here, Lite's server
  time per row grows with the batch (250 rows: 17-20k rows/s; 1,000: 6.5k; 5,000: 0.4k).
- Filter values are written into the expression as JSON literals (strings) or ints: expression
  templates (filter_params) came with Milvus 2.5; the local 2.3 server and Lite reject them.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
from pymilvus import DataType, MilvusClient
from pymilvus.client.utils import SciPyHelper
from pymilvus.exceptions import MilvusException

from tasks.errors import PipelineError
from tasks.progress import Progress
from tasks.settings import Settings
from tasks.stores.base import Hit, Log, Query, TableLoad, ordered, sample_ids, self_misses, unreachable
from tasks.stores.snapshot import DIGEST, NoSnapshots, Snapshots, verify_tables
from tasks.stores.sources import VECTOR_SETS, Keys, h5_dim, h5_ids, h5_rows, row_digests, vector_batches

COLLECTIONS = {"media_vectors": "media", "user_vectors": "users", "catalog_vectors": "catalog"}
TABLES = {name: Keys(VECTOR_SETS[s].h5) for name, s in COLLECTIONS.items()}
INPUTS = ("embeddings/media.h5", "embeddings/catalog.h5", "embeddings/users.h5", "processed/movies.parquet",
          "synthetic/media_catalog.parquet", "synthetic/users.parquet", "synthetic/availability.parquet")

HNSW = {"index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
EF = 100  # HNSW's search breadth on a server
# A filter skips the nodes it rejects, so the same breadth finds fewer matches: at ef 100 one filtered
# search in ~60 lost a top-5 neighbour on the small release (8% filter; at 200: one in ~300 over
# 5 index builds), and the 1M catalog's 10% filter needed ef 200 for recall 0.95 (README, stores benchmark).
FILTERED_BREADTH = 2  # a filtered search's ef, in EFs
NPROBE = 64
READS = "Session"  # searches and item lookups: see the module docstring
# Our vectors are dense lists: pymilvus would import scipy.sparse (0.14 s, a third of a one-query
# CLI's own work) on the first search only to ask whether they are sparse matrices.
SciPyHelper._checked = True
READ_ROWS = 20_000  # rows read from the files per step
DUPLICATE = -1  # a digest no row has (row digests are 63-bit, never negative): the row is upserted
INSERT_ROWS = {"lite": 250, "server": 5_000}
MAX_LIST = 64  # array capacity of genres, platforms and tags
SCALAR = {"str": "VARCHAR", "int": "INT32", "list": "ARRAY"}


# Noise on every run, said once here instead: milvus-lite 2.5.1 imports pkg_resources (setuptools
# warns), and Lite answers no session timestamp, so each query iterator warns that it uses the
# client's time instead, which reads what the load flushed.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
logging.getLogger("pymilvus.orm.iterator").addFilter(
    lambda record: not str(record.msg).startswith("failed to get mvccTs"))

DATASET_COLLECTION = "mg_dataset"  # which data dir's dataset the database holds


def _collection(vector_set: str) -> str:
    return next(name for name, s in COLLECTIONS.items() if s == vector_set)


def _literal(value: str | int) -> str:
    return str(int(value)) if isinstance(value, int) else json.dumps(str(value))


def _content_digests(rows: list[dict], vector_set) -> pl.DataFrame:
    """(id, stored): the digest of each stored row's fields and vector, computed as the load computes
    the source's (sources.row_digests over the same columns and types)."""
    types = {"str": pl.String, "int": pl.Int32, "list": pl.List(pl.String)}
    schema = {"id": pl.String, **{f: types[t] for f, t in vector_set.fields.items()}}
    if not rows:
        return pl.DataFrame(schema={"id": pl.String, "stored": pl.Int64})
    fields = pl.DataFrame([{f: (list(r[f]) if t == pl.List(pl.String) else r[f]) for f, t in schema.items()}
                           for r in rows], schema=schema)
    vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    return fields.select("id").with_columns(stored=pl.Series(row_digests(fields, vectors), dtype=pl.Int64))


def filter_expression(query: Query) -> str:
    """The Milvus boolean expression of a query's filters ("" for none)."""
    return " and ".join(f"array_contains({name}, {_literal(value)})" if op == "contains"
                        else f"{name} {op} {_literal(value)}" for name, op, value in query.conditions())


# Open stores per Milvus Lite file in this process. milvus-lite runs one server per file and process
# and keeps it to the process's end, holding the file: another process could not open it, and a
# store reopened here after another process wrote read the old state (at 25m scale, the refresh
# benchmark saw a deleted catalog item). The last store to close a file stops its server.
_LITE_OPEN: Counter[str] = Counter()
_LITE_LOCK = threading.Lock()


class MilvusStore:
    name = "milvus"

    def __init__(self, settings: Settings):
        self.uri = settings.milvus_target()
        self.lite = "://" not in self.uri
        if self.lite:
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        # A Lite file is the data dir's own; a server keeps each dataset in its own database.
        self.database = None if self.lite else settings.dataset_namespace
        self.local = settings.local_milvus
        self.token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        if not self.lite:
            _reachable(self.uri, self.target(), self.local)
        self.client = self._connect(None)
        self.loaded: set[str] = set()  # collections this store has loaded for reads
        self.written: dict[str, pl.DataFrame] = {}  # per collection, the ids the last load wrote (verified)
        if self.lite:
            with _LITE_LOCK:
                _LITE_OPEN[self.uri] += 1
        elif self.database in self.client.list_databases():
            self._use_database()

    def _connect(self, database: str | None) -> MilvusClient:
        try:
            # Its own connection: pymilvus shares one per URI and, once idle 30 s, "recovers" it by
            # reconnecting to a Milvus Lite server that closed with the last client: a store reopened
            # in the same process (a worker, a load then a check) failed as unreachable.
            return MilvusClient(uri=self.uri, token=self.token, timeout=30, dedicated=True, db_name=database or "")
        except (MilvusException, OSError) as exc:
            raise unreachable("milvus", self.target(), exc, self.local, "MG_MILVUS_URI") from exc

    def _use_database(self) -> None:
        """A connection to the dataset's database (a new one: pymilvus's use_database asks the server
        to describe it, which a 2.3 server cannot)."""
        self.client.close()
        self.client = self._connect(self.database)

    def target(self) -> str:
        where = f"Milvus Lite file {self.uri}" if self.lite else self.uri  # the token is never part of the URI
        return f"{where} database {self.database}" if self.database else where

    # --- which dataset -----------------------------------------------------------------------------

    def _in_database(self) -> bool:
        return self.database is None or self.database in self.client.list_databases()

    def holder(self) -> str | None:
        if not self._in_database() or not self.client.has_collection(DATASET_COLLECTION):
            return None
        self._load_once(DATASET_COLLECTION)
        rows = self.client.get(DATASET_COLLECTION, ids=["dataset"], output_fields=["origin"], consistency_level=READS)
        return rows[0]["origin"] if rows else None

    def claim(self, origin: str) -> None:
        """One row in a small collection (Milvus Lite keeps neither descriptions nor properties)."""
        if not self._in_database():
            self.client.create_database(self.database)
            self._use_database()
        if not self.client.has_collection(DATASET_COLLECTION):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=16)
            schema.add_field("origin", DataType.VARCHAR, max_length=4_096)
            schema.add_field("host", DataType.VARCHAR, max_length=256)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants one in every collection
            params = self.client.prepare_index_params()
            params.add_index("vector", index_type="FLAT", metric_type="L2")
            self.client.create_collection(DATASET_COLLECTION, schema=schema, index_params=params,
                                          consistency_level="Strong")  # read back at once
        self.client.upsert(DATASET_COLLECTION, [{"id": "dataset", "origin": origin, "host": socket.gethostname(),
                                                 "vector": [0.0, 0.0]}])
        self.client.flush(DATASET_COLLECTION)

    # --- schema ------------------------------------------------------------------------------------

    def _index_params(self, rows: int):
        params = self.client.prepare_index_params()
        if self.lite:
            nlist = int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(max(rows, 1)))))))
            params.add_index("vector", index_type="IVF_FLAT", metric_type="COSINE", params={"nlist": nlist})
        else:
            params.add_index("vector", metric_type="COSINE", **HNSW)
        return params

    def index_description(self, collection: str) -> str:
        index = self.client.describe_index(collection, "vector")
        keys = ("nlist",) if index["index_type"] == "IVF_FLAT" else ("M", "efConstruction")
        return f"{index['index_type']} " + ", ".join(f"{k} {index[k]}" for k in keys if k in index)

    def create_schema(self, data: Path) -> None:
        for collection, set_name in COLLECTIONS.items():
            vector_set = VECTOR_SETS[set_name]
            if not vector_set.path(data).exists():
                continue
            dim = h5_dim(vector_set.path(data))
            if self.client.has_collection(collection):
                fields = {f["name"]: f for f in self.client.describe_collection(collection)["fields"]}
                if int(fields["vector"]["params"]["dim"]) == dim:
                    continue
                self.client.drop_collection(collection)  # another model: the old vectors are meaningless
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            for name, kind in vector_set.fields.items():
                if kind == "list":
                    schema.add_field(name, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_LIST,
                                     max_length=256)
                elif kind == "str":
                    schema.add_field(name, DataType.VARCHAR, max_length=65_535)
                else:
                    schema.add_field(name, DataType.INT32)
            schema.add_field("digest", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            self.client.create_collection(collection, schema=schema,  # indexed after its first load
                                          consistency_level="Strong")

    # --- load --------------------------------------------------------------------------------------

    def _ready(self, collection: str, rows: int, log: Log) -> None:
        """Indexed (built after the first load, on the rows it brought) and loaded: queryable."""
        if not self.client.list_indexes(collection):
            started = time.perf_counter()
            self.client.create_index(collection, self._index_params(rows))
            self.client.load_collection(collection)  # the index is built as the collection loads
            log(f"milvus {collection}: built {self.index_description(collection)} (COSINE) on {rows:,} rows "
                f"in {time.perf_counter() - started:.1f} s"
                + (" (Milvus Lite takes FLAT, IVF_FLAT and AUTOINDEX only, and searches its own interim"
                   " IVF_FLAT_CC index: recall@10 falls to ~0.5 at 1M rows; a Milvus server gets HNSW)"
                   if self.lite else ""))
        else:
            self.client.load_collection(collection)  # a no-op when loaded

    def _stored_digests(self, collection: str, log: Log) -> dict[str, int]:
        """The full comparison: every stored row read back with its fields and vector and digested
        again (not its stored digest field, which a row edited outside the pipeline keeps)."""
        rows = self.count(collection)
        if rows == 0:
            return {}
        self._ready(collection, rows, log)  # rows from a load killed before its index was built
        vector_set = VECTOR_SETS[COLLECTIONS[collection]]
        stored: dict[str, int] = {}
        progress = Progress(lambda m: log(f"milvus {collection}: read back {m}"), "rows")
        iterator = self.client.query_iterator(collection, batch_size=4_096, filter="",
                                              output_fields=[*vector_set.fields, "vector"])
        seen = 0
        try:
            while batch := iterator.next():
                digests = _content_digests(batch, vector_set)
                stored.update(zip(digests["id"].to_list(), digests["stored"].to_list()))
                seen += len(batch)
                progress(seen, rows)
        finally:
            iterator.close()
        if rows > len(stored):
            # Ids stored twice (inserts of a load killed before its flush, sent again): a query returns
            # one row per id, so which ones is not known. Every row is upserted: Milvus then keeps one.
            log(f"milvus {collection}: {rows:,} rows for {len(stored):,} ids: every row is written again")
            stored = dict.fromkeys(stored, DUPLICATE)
        return stored

    def _send(self, collection: str, rows: list[dict], upsert: bool) -> None:
        step = INSERT_ROWS["lite" if self.lite else "server"]
        write = self.client.upsert if upsert else self.client.insert
        for start in range(0, len(rows), step):
            write(collection, rows[start:start + step])

    def load(self, data: Path, log: Log, snapshots: Snapshots | None = None) -> dict[str, TableLoad]:
        snapshots = snapshots or NoSnapshots()
        self.create_schema(data)
        report = {}
        self.written = {}
        for collection, set_name in COLLECTIONS.items():
            vector_set = VECTOR_SETS[set_name]
            if not vector_set.path(data).exists():
                continue
            before = snapshots.read(collection)
            stored = self._stored_digests(collection, log) if before is None else \
                dict(zip(before["id"].to_list(), before[DIGEST].to_list()))
            snapshots.forget([collection])
            current, written = [], []
            result = TableLoad()
            total = h5_rows(vector_set.path(data))
            progress = Progress(lambda m, c=collection: log(f"milvus {c}: {m}"), "rows")
            done = 0
            for fields, vectors in vector_batches(data, vector_set, READ_ROWS):
                _check_lists(fields, vector_set.fields, collection)
                current.append(fields.select("id", pl.col("digest").alias(DIGEST)))
                rows = fields.to_dicts()
                new, changed = [], []
                for row, vector in zip(rows, vectors):
                    before = stored.pop(row["id"], None)
                    if before == row["digest"]:
                        continue
                    row["vector"] = vector
                    (new if before is None else changed).append(row)
                self._send(collection, new, upsert=False)
                self._send(collection, changed, upsert=True)
                written += [row["id"] for row in new + changed]
                result.written += len(new) + len(changed)
                done += len(rows)
                progress(done, total)
            gone = list(stored)  # stored ids the source no longer has
            for start in range(0, len(gone), 1_000):
                self.client.delete(collection, ids=gone[start:start + 1_000])
            result.deleted = len(gone)
            self.client.flush(collection)
            self._ready(collection, done, log)
            result.rows = self.count(collection)
            report[collection] = result
            snapshots.save(collection, pl.concat(current) if current else pl.DataFrame(
                schema={"id": pl.String, DIGEST: pl.Int64}))
            self.written[collection] = pl.DataFrame({"id": written}, schema={"id": pl.String})
        return report

    def verify(self, data: Path, snapshots: Snapshots, log: Log, counts: dict[str, int] | None = None) -> dict[str, dict]:
        """Per collection: the count against the snapshot, and a fixed sample of rows plus every row
        the last load wrote, read back with their fields and vectors and digested again."""
        present = {c: ["id"] for c, s in COLLECTIONS.items() if VECTOR_SETS[s].path(data).exists()}
        return verify_tables(present, snapshots, self.written,
                             lambda c: self.count(c) if counts is None else counts[c],
                             lambda c, checked: self._digests_of(c, VECTOR_SETS[COLLECTIONS[c]], checked["id"].to_list()))

    def _digests_of(self, collection: str, vector_set, ids: list[str]) -> pl.DataFrame:
        """(id, stored) of some rows: see _content_digests."""
        self._load_once(collection)
        rows = []
        for start in range(0, len(ids), 1_000):
            rows += self.client.get(collection, ids=ids[start:start + 1_000],
                                    output_fields=[*vector_set.fields, "vector"])
        return _content_digests(rows, vector_set)

    # --- reads -------------------------------------------------------------------------------------

    def count(self, collection: str) -> int:
        if not self.client.has_collection(collection):
            return 0
        if not self.client.list_indexes(collection):  # a collection must be indexed and loaded to be queried
            # Its statistics count sealed segments only: rows a killed load inserted are sealed first.
            self.client.flush(collection)
            return int(self.client.get_collection_stats(collection)["row_count"])
        self.client.load_collection(collection)  # a no-op when loaded
        return int(self.client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def counts(self) -> dict[str, int]:
        return {collection: self.count(collection) for collection in COLLECTIONS}

    def ids(self, table: str) -> Iterator[str]:
        if self.count(table) == 0:
            return
        iterator = self.client.query_iterator(table, batch_size=16_384, filter="", output_fields=["id"])
        try:
            while batch := iterator.next():
                yield from (row["id"] for row in batch)
        finally:
            iterator.close()

    def _load_once(self, collection: str) -> None:
        """A server releases its collections when it restarts; loading one that is loaded is a no-op,
        but still a round trip (~4 ms): once per store."""
        if collection not in self.loaded:
            self.client.load_collection(collection)
            self.loaded.add(collection)

    def vector(self, vector_set: str, item: str) -> list[float] | None:
        if not self.client.has_collection(_collection(vector_set)):
            return None
        self._load_once(_collection(vector_set))
        rows = self.client.get(_collection(vector_set), ids=[item], output_fields=["vector"],
                               consistency_level=READS)
        return list(rows[0]["vector"]) if rows else None

    def search(self, query: Query) -> list[Hit]:
        collection = _collection(query.vector_set)
        self._load_once(collection)
        fields = list(VECTOR_SETS[query.vector_set].fields)
        expression = filter_expression(query)
        ef = max(EF * (FILTERED_BREADTH if expression else 1), query.k + 1)
        params = {"metric_type": "COSINE", "params": {"nprobe": NPROBE} if self.lite else {"ef": ef}}
        # One extra row: ties at the k-th score are broken by id, like PostgreSQL's answer.
        found = self.client.search(collection, [query.vector], limit=query.k + 1, filter=expression,
                                   output_fields=fields, search_params=params, consistency_level=READS)[0]
        return ordered((Hit(h["id"], float(h["distance"]), h["entity"].get("title", h["id"]),
                            {f: h["entity"][f] for f in fields if f != "title"}) for h in found), query.k)

    def checks(self, data: Path, full: bool = True) -> dict:  # noqa: ARG002 - reads no more than its samples
        """Per collection: the vector dimension against the embeddings file, the index, and whether
        sampled items find themselves first."""
        figures = {"dim_mismatch": 0, "missing_index": 0, "self_not_nearest": 0, "collections": {}}
        for collection, set_name in COLLECTIONS.items():
            path = VECTOR_SETS[set_name].path(data)
            if not path.exists() or not self.client.has_collection(collection):
                continue
            fields = {f["name"]: f for f in self.client.describe_collection(collection)["fields"]}
            dim = int(fields["vector"]["params"]["dim"])
            indexed = bool(self.client.list_indexes(collection))
            misses = self_misses(self, set_name, sample_ids(h5_ids(path))) if indexed else 0
            figures["dim_mismatch"] += int(dim != h5_dim(path))
            figures["missing_index"] += int(not indexed)
            figures["self_not_nearest"] += misses
            figures["collections"][collection] = {"dim": dim, "index": self.index_description(collection)
                                                  if indexed else None, "self_not_nearest": misses}
        return figures

    def close(self) -> None:
        self.client.close()
        if self.lite and self.uri in _LITE_OPEN:
            with _LITE_LOCK:
                _LITE_OPEN[self.uri] -= 1
                if _LITE_OPEN[self.uri] == 0:
                    from milvus_lite.server_manager import server_manager_instance

                    del _LITE_OPEN[self.uri]
                    server_manager_instance.release_server(self.uri)


def _reachable(uri: str, where: str, local: bool) -> None:
    """A refused connection fails in milliseconds, not after the client's 30 s of retries."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    try:
        socket.create_connection((parts.hostname, parts.port or 19530), timeout=10).close()
    except OSError as exc:
        raise unreachable("milvus", where, exc, local, "MG_MILVUS_URI") from exc


def _check_lists(fields, types: dict[str, str], collection: str) -> None:
    import polars as pl

    for name in (n for n, t in types.items() if t == "list"):
        too_long = fields.filter(pl.col(name).list.len() > MAX_LIST)
        if len(too_long):
            raise PipelineError(f"milvus {collection}: {name} of {too_long['id'][0]} has "
                             f"{too_long[name].list.len()[0]} entries, more than the collection's {MAX_LIST}")


def open_store(settings: Settings) -> MilvusStore:
    return MilvusStore(settings)
