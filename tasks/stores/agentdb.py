"""AgentDB: the npm package `agentdb` (SQLite through sql.js), written as its own LearningSystem
tables with Python's sqlite3, in shard files of users (agentdb-notes.md).

- Tables, as agentdb 1.6.1 creates them: learning_sessions (one per user, and one per replay
  buffer), learning_experiences (one per episode step), learning_policies (one per user session:
  the "state|action" maps agentdb predicts from) and learning_state_embeddings (the user's vector as
  the embedding of their latest state).
- Shards: users user_id // users_per_shard go to shard-NNNNN.sqlite; the replay buffers to
  buffers.sqlite. agentdb reads a whole file into memory: with the 200-step cap a shard of 10,000
  users holds at most 2M experiences, and the check fails any file over MAX_SHARD_BYTES.
- Idempotent by shard, incremental by row: a shard is touched only when the digest of what it would
  hold changed. A new shard is written whole; a changed one gets only what changed: every row of a
  session whose rows differ is replaced (its experiences stay in step order), and in the buffers
  each transition on its own. Either way the file is prepared under a temporary name (a copy of the
  shard, for a change) and renamed, so agentdb never opens a half-written file. The manifest
  (manifest.json) lists every shard with its users, digest, size, sha256 and counts; files it does
  not list are removed.
- Deterministic: no wall-clock time is written (times come from the ratings), so the same inputs
  written from nothing give the same bytes (a shard changed row by row holds the same rows).
- Writer rules: times in ms, camelCase config keys, status 'active' (agentdb predicts only for
  active sessions), no '|' in states or actions, a terminal step has next_state NULL and
  {"terminal": true} in its metadata, journal_mode DELETE at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from adbc_driver_sqlite import dbapi as sqlite_dbapi

from tasks.stores import episodes
from tasks.caching import file_digest
from tasks.errors import PipelineError
from tasks.files import ZSTD, atomic_output
from tasks.progress import Progress
from tasks.settings import Settings
from tasks.stores.base import Hit, Log, Query, TableLoad
from tasks.embed.embeddings import open_vectors
from tasks.stores.sources import check_parquet, h5_ids

FORMAT = "agentdb-2"  # bump when what a shard holds changes: every shard is then rewritten
MAX_SHARD_BYTES = 1 << 30
MANIFEST = "manifest.json"
DATASET_FILE = "dataset.json"  # which data dir's dataset the folder holds
BUFFER_FILE = "buffers.sqlite"
BUFFER_USER = "replay-buffer"
USER_VECTORS = "embeddings/users.h5"
DIGITS = 6  # decimals of the values in policies and metadata
WORKERS = max(1, min(os.cpu_count() or 1, 4))  # shard writers; each holds one shard's rows (~1 GB at most)

# agentdb 1.6.1's LearningSystem schema (its initializeSchema); the indexes are built after the rows.
TABLES_DDL = """
CREATE TABLE learning_sessions (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, session_type TEXT NOT NULL,
  config TEXT NOT NULL, start_time INTEGER NOT NULL, end_time INTEGER, status TEXT NOT NULL, metadata TEXT);
CREATE TABLE learning_experiences (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
  state TEXT NOT NULL, action TEXT NOT NULL, reward REAL NOT NULL, next_state TEXT, success INTEGER NOT NULL,
  timestamp INTEGER NOT NULL, metadata TEXT,
  FOREIGN KEY (session_id) REFERENCES learning_sessions(id) ON DELETE CASCADE);
CREATE TABLE learning_policies (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
  state_action_pairs TEXT NOT NULL, q_values TEXT NOT NULL, visit_counts TEXT NOT NULL, avg_rewards TEXT NOT NULL,
  version INTEGER NOT NULL, created_at INTEGER DEFAULT (strftime('%s', 'now')),
  FOREIGN KEY (session_id) REFERENCES learning_sessions(id) ON DELETE CASCADE);
CREATE TABLE learning_state_embeddings (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
  state TEXT NOT NULL, embedding BLOB NOT NULL,
  FOREIGN KEY (session_id) REFERENCES learning_sessions(id) ON DELETE CASCADE);
"""
INDEXES_DDL = """
CREATE INDEX idx_learning_sessions_user ON learning_sessions(user_id);
CREATE INDEX idx_learning_sessions_status ON learning_sessions(status);
CREATE INDEX idx_learning_experiences_session ON learning_experiences(session_id);
CREATE INDEX idx_learning_experiences_reward ON learning_experiences(reward);
CREATE INDEX idx_learning_policies_session ON learning_policies(session_id);
CREATE INDEX idx_learning_state_embeddings_session ON learning_state_embeddings(session_id);
"""
COLUMNS = {
    "learning_sessions": ["id", "user_id", "session_type", "config", "start_time", "end_time", "status", "metadata"],
    "learning_experiences": ["session_id", "state", "action", "reward", "next_state", "success", "timestamp",
                             "metadata"],
    "learning_policies": ["session_id", "state_action_pairs", "q_values", "visit_counts", "avg_rewards", "version",
                          "created_at"],
    "learning_state_embeddings": ["session_id", "state", "embedding"],
}
# Each table's key as ids() reads it back; an experience is its session and step (a buffer's: the
# buffer, the user session it came from and its step there).
ID_SQL = {
    "learning_sessions": "SELECT id FROM learning_sessions",
    "learning_experiences": "SELECT session_id || '/' || coalesce(json_extract(metadata, '$.session') || '/', '') "
                            "|| json_extract(metadata, '$.step') FROM learning_experiences",
    "learning_policies": "SELECT session_id FROM learning_policies",
    "learning_state_embeddings": "SELECT session_id FROM learning_state_embeddings",
}


class CorruptShard(PipelineError, RuntimeError):
    """A shard file differs from what the load wrote (truncated, changed or missing); names the files."""


# --- what a shard holds ----------------------------------------------------------------------------

def _number(expr: pl.Expr) -> pl.Expr:
    return expr.round(DIGITS).cast(pl.String)


def state_text() -> pl.Expr:
    """A step's state as agentdb stores it: 'recent=<movie>:<rating>,...;tod=<time of day>;step=<n>'
    (most recent first; no '|', which agentdb's policy keys use, and no quote, which JSON would escape)."""
    pairs = [pl.col("recent_items").arr.get(k).cast(pl.String) + ":" + pl.col("recent_ratings").arr.get(k)
             .cast(pl.String) for k in range(episodes.HISTORY)]
    return pl.concat_str([pl.lit("recent="), pl.concat_str(pairs, separator=",", ignore_nulls=True),
                          pl.lit(";tod="), pl.col("time_of_day").cast(pl.String), pl.lit(";step="),
                          pl.col("step").cast(pl.String)])


def _json(fields: dict[str, pl.Expr]) -> pl.Expr:
    """A JSON object of numbers and booleans from expressions; a null field is left out."""
    parts = [pl.when(expr.is_not_null()).then(pl.lit(f'"{name}":') + expr.cast(pl.String)) for name, expr in fields.items()]
    return pl.lit("{") + pl.concat_str(parts, separator=",", ignore_nulls=True) + pl.lit("}")


def _with_text(steps: pl.DataFrame) -> pl.DataFrame:
    return steps.with_columns(state=state_text(), action=pl.lit("ml_") + pl.col("movie_id").cast(pl.String))


def _experiences(steps: pl.DataFrame, session: pl.Expr, metadata: dict[str, pl.Expr]) -> pl.DataFrame:
    """learning_experiences rows of steps (with their state and action texts, in session and step order)."""
    return steps.select(
        session_id=session, state="state", action="action", reward="reward",
        next_state=pl.when(~pl.col("terminal")).then(pl.col("state").shift(-1)),
        success=pl.col("success").cast(pl.Int32), timestamp="timestamp_ms", metadata=_json(metadata))


def _user_shard(steps: pl.DataFrame, sessions: pl.DataFrame, vectors: dict[int, bytes]) -> dict[str, pl.DataFrame]:
    """The four tables for some users' sessions and their steps."""
    steps = _with_text(steps.join(sessions.select("user_id", "algorithm"), on="user_id", how="left",
                                  maintain_order="left"))
    algorithm = pl.col("algorithm")
    extras = {"episode": pl.col("episode"), "step": pl.col("step"),
              "terminal": pl.when(pl.col("terminal")).then(pl.lit("true")),
              # PPO's and actor-critic's value target; what a Decision Transformer is conditioned on.
              "return": pl.when(algorithm.is_in(["ppo", "actor-critic"])).then(_number(pl.col("return"))),
              "return_to_go": pl.when(algorithm == "decision-transformer").then(_number(pl.col("return_to_go")))}
    # Policy maps keyed "state|action": Q(s, a) = the discounted return for the Q family (the fixed
    # point of agentdb's own update on this chain); the mean reward of the pair for the others.
    q_family = algorithm.is_in(episodes.Q_FAMILY)
    entry = lambda value: pl.lit('"') + pl.col("state") + "|" + pl.col("action") + pl.lit('":') + value  # noqa: E731
    as_object = lambda c: pl.lit("{") + pl.col(c).str.join(",") + pl.lit("}")  # noqa: E731
    policies = (steps.select("user_id", q=pl.when(q_family).then(entry(_number(pl.col("return")))),
                             avg=pl.when(~q_family).then(entry(_number(pl.col("reward")))), visits=entry(pl.lit("1")))
                .group_by("user_id", maintain_order=True)
                .agg(q_values=as_object("q"), visit_counts=as_object("visits"), avg_rewards=as_object("avg"))
                .join(sessions.select("user_id", "last_ms"), on="user_id", how="left", maintain_order="left")
                .select(session_id=episodes.session_id(pl.col("user_id")), state_action_pairs=pl.lit("{}"),
                        q_values="q_values", visit_counts="visit_counts", avg_rewards="avg_rewards",
                        version=pl.lit(1), created_at=pl.col("last_ms") // 1000))
    latest = steps.group_by("user_id", maintain_order=True).agg(pl.col("state").last())
    with_vector = latest.filter(pl.col("user_id").is_in(list(vectors)))
    embeddings = with_vector.select(
        session_id=episodes.session_id(pl.col("user_id")), state="state",
        embedding=pl.Series([vectors[u] for u in with_vector["user_id"].to_list()], dtype=pl.Binary))
    return {"learning_sessions": _sessions(sessions),
            "learning_experiences": _experiences(steps, episodes.session_id(pl.col("user_id")), extras),
            "learning_policies": policies, "learning_state_embeddings": embeddings}


def _sessions(sessions: pl.DataFrame) -> pl.DataFrame:
    extras = pl.DataFrame({"algorithm": list(episodes.ALGORITHMS),
                           "extras": [json.dumps(a["extras"], sort_keys=True) for a in episodes.ALGORITHMS.values()]})
    return sessions.join(extras, on="algorithm", how="left", maintain_order="left").select(
        id="session_id", user_id=pl.col("user_id").cast(pl.String), session_type="algorithm", config="config",
        start_time="start_ms", end_time=pl.lit(None, dtype=pl.Int64), status=pl.lit("active"),
        metadata=pl.concat_str([pl.lit('{"archetype":"'), pl.col("archetype"), pl.lit('","episodes":'),
                                pl.col("episodes").cast(pl.String), pl.lit(',"steps":'), pl.col("steps").cast(pl.String),
                                pl.lit(f',"step_cap":{episodes.STEP_CAP},"hyperparameters":'), pl.col("extras"),
                                pl.lit("}")]))


def _buffer_shard(transitions: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The replay buffers: one session per algorithm, its transitions as experiences, oldest first."""
    meta = {"session": pl.lit('"') + episodes.session_id(pl.col("user_id")) + pl.lit('"'),
            "step": pl.col("step"), "episode": pl.col("episode"), "terminal": pl.when(pl.col("terminal")).then(pl.lit("true"))}
    experiences = _experiences(_with_text(transitions), pl.lit("replay-") + pl.col("algorithm"), meta)
    used = transitions["algorithm"].unique().implode()
    algorithms = episodes.algorithm_table().filter(pl.col("algorithm").is_in(used))
    spans = transitions.group_by("algorithm").agg(start=pl.col("timestamp_ms").min(), transitions=pl.len())
    sessions = algorithms.join(spans, on="algorithm").sort("algorithm").select(
        id=pl.lit("replay-") + pl.col("algorithm"), user_id=pl.lit(BUFFER_USER), session_type="algorithm",
        config="config", start_time="start", end_time=pl.lit(None, dtype=pl.Int64), status=pl.lit("active"),
        metadata=pl.concat_str([pl.lit('{"kind":"replay_buffer","capacity":'), pl.col("buffer_size").cast(pl.String),
                                pl.lit(',"transitions":'), pl.col("transitions").cast(pl.String),
                                pl.lit(',"order":"fifo, oldest first by timestamp","sampling":"uniform minibatches of batchSize"}')]))
    empty = lambda table: pl.DataFrame(schema={c: pl.String for c in COLUMNS[table]})  # noqa: E731
    return {"learning_sessions": sessions, "learning_experiences": experiences,
            "learning_policies": empty("learning_policies"), "learning_state_embeddings": empty("learning_state_embeddings")}


def digest(*frames: pl.DataFrame) -> str:
    """What a shard would hold, as one hash: its inputs' rows, in order."""
    h = hashlib.sha256(FORMAT.encode())
    for frame in frames:
        h.update(",".join(frame.columns).encode())
        h.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return h.hexdigest()


def write_shard(path: Path, tables: dict[str, pl.DataFrame]) -> dict[str, int]:
    """A shard file, written under a temporary name and renamed; returns rows per table. The rows go
    in as Arrow columns (ADBC bulk ingest, in insertion order: experiences keep their step order)."""
    with atomic_output(path) as tmp:
        with sqlite_dbapi.connect(str(tmp), autocommit=True) as db, db.cursor() as cursor:
            for statement in ("PRAGMA journal_mode=OFF", "PRAGMA synchronous=OFF",
                              *TABLES_DDL.split(";")[:-1]):
                cursor.execute(statement)
            for table, frame in tables.items():
                cursor.adbc_ingest(table, frame.select(COLUMNS[table]).to_arrow(), mode="append")
            for statement in (*INDEXES_DDL.split(";")[:-1], "PRAGMA wal_checkpoint(TRUNCATE)",
                              "PRAGMA journal_mode=DELETE"):
                cursor.execute(statement)
                cursor.fetchall() if statement.startswith("PRAGMA") else None
    return {table: len(frame) for table, frame in tables.items()}


# What a changed shard replaces together: all the rows of a session (None: each row on its own).
UNITS = {"learning_sessions": "id", "learning_experiences": "session_id", "learning_policies": "session_id",
         "learning_state_embeddings": "session_id"}
BUFFER_UNITS = {**UNITS, "learning_experiences": None}


def row_hashes(frame: pl.DataFrame, table: str) -> pl.Series:
    """A hash of each row's values as SQLite holds them: the same for the frame a shard is built from
    and the rows read back from it (floats as float64, integers and text as text, blobs as hex)."""
    def canonical(column: str) -> pl.Expr:
        dtype = frame.schema[column]
        if dtype == pl.Binary:
            return pl.col(column).bin.encode("hex")
        return (pl.col(column).cast(pl.Float64) if dtype.is_float() else pl.col(column)).cast(pl.String)

    return frame.select(canonical(c) for c in COLUMNS[table]).hash_rows(seed=0)


def _changed_units(stored: pl.DataFrame, new: pl.DataFrame, table: str,
                   unit: str | None) -> tuple[pl.Series, pl.DataFrame, int]:
    """(rowids to delete, rows to insert, units gone): the stored rows of every unit whose rows differ
    from the new ones, and that unit's new rows in their order."""
    if stored.is_empty() or new.is_empty():  # nothing to compare (and SQLite gives an empty result no types)
        gone_units = stored[unit].n_unique() if unit else len(stored)
        return stored["row_id"], new, gone_units if new.is_empty() else 0
    key = unit or "_hash"
    old = stored.with_columns(_hash=row_hashes(stored, table)).group_by(key, maintain_order=True).agg(
        old=pl.col("_hash"), row_ids=pl.col("row_id"))
    fresh = new.with_columns(_hash=row_hashes(new, table))
    units = fresh.group_by(key, maintain_order=True).agg(new=pl.col("_hash"))
    both = old.join(units, on=key, how="full", coalesce=True)
    dirty = both.filter(pl.col("old").is_null() | pl.col("new").is_null() | (pl.col("old") != pl.col("new")))
    inserts = fresh.filter(pl.col(key).is_in(dirty.filter(pl.col("new").is_not_null())[key].implode()))
    return (dirty["row_ids"].explode().drop_nulls(), inserts.select(COLUMNS[table]),
            dirty.filter(pl.col("new").is_null()).height)


def update_shard(path: Path, tables: dict[str, pl.DataFrame], units: dict[str, str | None]) -> dict[str, TableLoad]:
    """Bring an intact shard to `tables` by rows: in a copy of it, one transaction deletes the rows of
    every changed unit (UNITS) and inserts their new rows; the copy then replaces the shard. Returns
    per table the rows written and the rows of units gone."""
    import pyarrow as pa

    report = {}
    with atomic_output(path) as tmp:
        shutil.copyfile(path, tmp)
        tmp.with_name(f"{tmp.name}-journal").unlink(missing_ok=True)  # a killed update's: not this copy's
        with sqlite_dbapi.connect(str(tmp)) as db, db.cursor() as cursor:
            for table, frame in tables.items():
                cursor.execute(f"SELECT rowid AS row_id, {', '.join(COLUMNS[table])} FROM {table} ORDER BY rowid")
                stored = pl.from_arrow(cursor.fetch_arrow_table())
                gone, inserts, units_gone = _changed_units(stored, frame.select(COLUMNS[table]), table, units[table])
                if len(gone):
                    cursor.adbc_ingest("gone", pa.table({"r": gone.cast(pl.Int64).to_arrow()}), mode="create",
                                       temporary=True)
                    cursor.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT r FROM temp.gone)")
                    cursor.execute("DROP TABLE temp.gone")
                if len(inserts):
                    cursor.adbc_ingest(table, inserts.to_arrow(), mode="append")
                report[table] = TableLoad(rows=len(frame), written=len(inserts),
                                          deleted=units_gone if units[table] else max(0, len(gone) - len(inserts)))
            db.commit()
    return report


def intact(path: Path, entry: dict | None) -> bool:
    """The file is the one the manifest entry describes (size, then sha256)."""
    return (entry is not None and path.exists() and path.stat().st_size == entry["bytes"]
            and file_digest(path) == entry["sha256"])


def _user_vectors(data: Path, ids: np.ndarray, wanted: np.ndarray) -> dict[int, bytes]:
    """User id -> vector as agentdb's embedding BLOB (little-endian float32), for the users where
    `wanted` (a mask over `ids`: the user ids of embeddings/users.h5, in its row order, read once per load)."""
    rows = np.flatnonzero(wanted)
    if not len(rows):
        return {}
    with open_vectors(data / USER_VECTORS) as f:
        vectors = np.ascontiguousarray(f["embeddings"][rows], dtype="<f4")
    return {int(ids[r]): vectors[i].tobytes() for i, r in enumerate(rows)}


def vector_ids(data: Path) -> np.ndarray:
    """The user ids of embeddings/users.h5 in row order (none when the embed stage has not run)."""
    path = data / USER_VECTORS
    return np.array([int(u) for u in h5_ids(path)] if path.exists() else [], dtype=np.int64)


def _transitions(data: Path) -> pl.DataFrame:
    """The replay buffers' transitions in buffer order (each one's next state is the next row's)."""
    # The episodes stream past the buffers' few transitions (the smaller side is the join's table).
    return (pl.scan_parquet(data / episodes.EPISODES).join(pl.scan_parquet(data / episodes.BUFFERS),
                                                           on=["user_id", "step"])
            .collect(engine="streaming").sort("algorithm", "timestamp_ms", "user_id", "step"))


def build_shard(data: Path, path: Path, shard: int | None, users_per_shard: int, old: dict | None,
                with_vector: np.ndarray) -> tuple[dict, dict[str, TableLoad] | None]:
    """One shard (`shard` None: the replay buffers) from the Parquet datasets: (its manifest entry,
    what was written per table; None when nothing was). Unchanged contents and an intact file:
    nothing is written; changed contents and an intact file (`old`: its entry in a manifest of this
    FORMAT): only the changed rows. Runs in a worker thread: it reads its own slice of the files;
    `with_vector` is vector_ids(data)."""
    steps_file = data / episodes.EPISODES
    if shard is None:
        transitions = _transitions(data)
        entry = {"users": None, "digest": digest(transitions)}
        tables = lambda: _buffer_shard(transitions)  # noqa: E731
    else:
        first, last = shard * users_per_shard, (shard + 1) * users_per_shard - 1
        in_shard = pl.col("user_id").is_between(first, last)
        steps = pl.scan_parquet(steps_file).filter(in_shard).collect()
        sessions = pl.scan_parquet(data / episodes.SESSIONS).filter(in_shard).collect()
        vectors = _user_vectors(data, with_vector, (with_vector >= first) & (with_vector <= last))
        vector_frame = pl.DataFrame({"user_id": list(vectors), "v": list(vectors.values())},
                                    schema={"user_id": pl.Int64, "v": pl.Binary})
        entry = {"users": [first, last], "digest": digest(steps, sessions, vector_frame)}
        tables = lambda: _user_shard(steps, sessions, vectors)  # noqa: E731
    base = old is not None and intact(path, old)
    if base and old["digest"] == entry["digest"]:
        return old, None
    content = tables()
    if base:
        report = update_shard(path, content, BUFFER_UNITS if shard is None else UNITS)
    else:
        report = {table: TableLoad(rows=n, written=n, deleted=max(0, (old or {}).get("counts", {}).get(table, 0) - n))
                  for table, n in write_shard(path, content).items()}
    entry["counts"] = {table: len(frame) for table, frame in content.items()}
    entry.update(bytes=path.stat().st_size, sha256=file_digest(path))
    return entry, report


# --- the default verification: counts and a fixed sample ---------------------------------------------

SAMPLE_USERS = 200  # users read back after every load (each: a session, its steps, a policy, an embedding)
SAMPLE_SEED = 20_261_207


def _stored_units(path: Path, table: str, sessions: list[str]) -> pl.DataFrame:
    """(session, sorted row hashes) of some sessions' rows in one shard file, as SQLite holds them."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        cursor = db.execute(f"SELECT {', '.join(COLUMNS[table])} FROM {table} "  # noqa: S608 - names from COLUMNS
                            f"WHERE {UNITS[table]} IN ({', '.join('?' * len(sessions))})", sessions)
        rows = pl.DataFrame(cursor.fetchall(), schema=COLUMNS[table], orient="row", infer_schema_length=None)
    return _units(rows, table)


def _units(rows: pl.DataFrame, table: str) -> pl.DataFrame:
    """Per session (UNITS: what a changed shard replaces together): its rows and their sorted hashes."""
    return rows.select(unit=pl.col(UNITS[table]), _hash=row_hashes(rows, table)).group_by("unit").agg(
        rows=pl.len(), hashes=pl.col("_hash").sort())


def _sample_verdict(expected: pl.DataFrame, stored: pl.DataFrame, source: int, held: int) -> dict:
    """One table's verification in reconcile()'s form (tasks.stores.snapshot.verdict's fields)."""
    both = expected.join(stored, on="unit", how="left", suffix="_stored")
    absent = both.filter(pl.col("hashes_stored").is_null())["unit"]
    differ = both.filter(pl.col("hashes_stored").is_not_null() & (pl.col("hashes") != pl.col("hashes_stored")))["unit"]
    return {"source": source, "store": held, "missing": max(len(absent), source - held), "extra": max(0, held - source),
            "differ": len(differ), "sampled": int(stored["rows"].sum()), "snapshot": True,
            "missing_sample": absent.sort().head(5).to_list(), "extra_sample": [],
            "differ_sample": differ.sort().head(5).to_list()}


# --- reconciliation sources --------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceIds:
    file: str  # under the data dir; the reconciliation skips the table when it is absent
    ids: Callable[[Path], pl.LazyFrame]  # one column of ids

    def read(self, data: Path) -> pl.Series:
        return self.ids(Path(data)).collect().to_series().alias("id")


def _session_ids(data: Path) -> pl.LazyFrame:
    users = pl.scan_parquet(data / episodes.SESSIONS).select(pl.col("session_id"))
    buffers = pl.scan_parquet(data / episodes.BUFFERS).select(
        session_id=pl.lit("replay-") + pl.col("algorithm")).unique()
    return pl.concat([users, buffers])


def _experience_ids(data: Path) -> pl.LazyFrame:
    steps = pl.scan_parquet(data / episodes.EPISODES).select(
        episodes.session_id(pl.col("user_id")) + "/" + pl.col("step").cast(pl.String))
    transitions = pl.scan_parquet(data / episodes.BUFFERS).select(
        pl.lit("replay-") + pl.col("algorithm") + "/" + episodes.session_id(pl.col("user_id")) + "/"
        + pl.col("step").cast(pl.String))
    return pl.concat([steps.rename(lambda _: "id"), transitions.rename(lambda _: "id")])


def _embedding_ids(data: Path) -> pl.LazyFrame:
    with_vector = pl.Series("user_id", vector_ids(data), dtype=pl.Int32)
    return pl.scan_parquet(data / episodes.SESSIONS).filter(pl.col("user_id").is_in(with_vector.implode())) \
        .select("session_id")


TABLES = {
    "learning_sessions": SourceIds(episodes.SESSIONS, _session_ids),
    "learning_experiences": SourceIds(episodes.EPISODES, _experience_ids),
    "learning_policies": SourceIds(episodes.SESSIONS,
                                   lambda d: pl.scan_parquet(d / episodes.SESSIONS).select("session_id")),
    "learning_state_embeddings": SourceIds(episodes.SESSIONS, _embedding_ids),
}
INPUTS = (episodes.RATINGS, episodes.USERS, USER_VECTORS)


# --- the store ---------------------------------------------------------------------------------------

class AgentDBStore:
    name = "agentdb"

    def __init__(self, settings: Settings):
        self.folder = Path(settings.agentdb_target())
        self.users_per_shard = settings.agentdb_users_per_shard

    def target(self) -> str:
        return f"AgentDB shards in {self.folder}"

    def holder(self) -> str | None:
        path = self.folder / DATASET_FILE
        return json.loads(path.read_text())["origin"] if path.exists() else None

    def claim(self, origin: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.folder / DATASET_FILE) as tmp:
            tmp.write_text(json.dumps({"origin": origin, "host": socket.gethostname()}, indent=1))

    def create_schema(self, data: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def manifest(self) -> dict:
        path = self.folder / MANIFEST
        return json.loads(path.read_text()) if path.exists() else {"shards": {}}

    def _build_datasets(self, data: Path, log: Log) -> None:
        """Episodes, sessions and buffers as Parquet under DATA_DIR/agentdb/ (tasks.stores.episodes)."""
        ratings, users = data / episodes.RATINGS, data / episodes.USERS
        check_parquet(ratings, episodes.RATING_COLUMNS)
        check_parquet(users, episodes.USER_COLUMNS)
        episodes.check_ratings(ratings, users)
        with atomic_output(data / episodes.EPISODES) as tmp:
            episodes.write_episodes(ratings, users, tmp)
        for name, build in ((episodes.SESSIONS, lambda: episodes.sessions(data / episodes.EPISODES, users)),
                            (episodes.BUFFERS,
                             lambda: episodes.buffers(data / episodes.EPISODES, data / episodes.SESSIONS))):
            with atomic_output(data / name) as tmp:
                build().collect().write_parquet(tmp, **ZSTD)
        log(f"agentdb: episodes, sessions and replay buffers -> {data / episodes.EPISODES.split('/')[0]}")

    def load(self, data: Path, log: Log) -> dict[str, TableLoad]:
        data = Path(data)
        self.create_schema(data)
        with_vector = vector_ids(data)  # first: an unreadable vectors file stops the load before any write
        self._build_datasets(data, log)
        manifest = self.manifest()
        before = manifest["shards"] if manifest.get("format") == FORMAT else {}  # another layout: write anew
        users = pl.read_parquet(data / episodes.SESSIONS, columns=["user_id"])["user_id"]
        sizes = (users // self.users_per_shard).value_counts().sort("user_id").rows()
        jobs = {f"shard-{shard:05d}.sqlite": (shard, n) for shard, n in sizes} | {BUFFER_FILE: (None, 0)}
        shards, report = {}, {table: TableLoad() for table in COLUMNS}
        progress = Progress(lambda m: log(f"agentdb: shards of {m}"), "users")
        done = 0
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = {pool.submit(build_shard, data, self.folder / name, shard, self.users_per_shard,
                                   before.get(name), with_vector): (name, n) for name, (shard, n) in jobs.items()}
            for future in as_completed(futures):
                name, n = futures[future]
                shards[name], written = future.result()
                for table, result in (written or {}).items():
                    report[table].written += result.written
                    report[table].deleted += result.deleted
                done += n
                progress(done, len(users))
        for name, old in before.items():  # shards whose users are all gone
            if name not in shards:
                for table, rows in old.get("counts", {}).items():
                    report[table].deleted += rows
        with atomic_output(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, "users_per_shard": self.users_per_shard,
                                       "shards": dict(sorted(shards.items()))}, indent=1, sort_keys=True))
        # Files the manifest does not list: gone users' shards, and what a killed load left half-written.
        for path in [*self.folder.glob("*.sqlite"), *self.folder.glob(".*.tmp"), *self.folder.glob(".*.tmp-journal")]:
            if path.name not in shards:
                path.unlink()
        for table, rows in self.counts().items():
            report[table].rows = rows
        return report

    def verify_sample(self, data: Path, held: dict[str, int]) -> dict[str, dict]:
        """The default verification after a load (`--verify full` reads back every id instead): per
        table the store's count against the source's, and the rows of a fixed sample of users (the
        SAMPLE_USERS whose ids hash lowest: the same on every run) and of the replay buffers read back
        and compared field by field with what the sources give; `held`: the store's counts, as the load
        left them. A shard edited outside the pipeline is found by the check of every file's sha256 (checks())."""
        data = Path(data)
        sessions = pl.read_parquet(data / episodes.SESSIONS)
        users = sessions.select("user_id").top_k(SAMPLE_USERS, by=pl.col("user_id").hash(seed=SAMPLE_SEED),
                                                  reverse=True)["user_id"]
        sessions = sessions.filter(pl.col("user_id").is_in(users.implode()))
        steps = pl.scan_parquet(data / episodes.EPISODES).filter(pl.col("user_id").is_in(users.implode())).collect()
        with_vector = vector_ids(data)
        expected = _user_shard(steps, sessions, _user_vectors(data, with_vector, np.isin(with_vector, users.to_numpy())))
        transitions = _transitions(data)
        buffers = _buffer_shard(transitions)
        by_file = {name: buffers["learning_sessions"]["id"].to_list() if entry["users"] is None
                   else sessions.filter(pl.col("user_id").is_between(*entry["users"]))["session_id"].to_list()
                   for name, entry in self.manifest()["shards"].items()}
        result = {}
        for table, keys in TABLES.items():
            want = pl.concat([_units(expected[table], table), _units(buffers[table], table)], how="vertical_relaxed")
            stored = pl.concat([want.clear(), *(_stored_units(self.folder / name, table, ids)
                                                for name, ids in by_file.items() if ids)], how="vertical_relaxed")
            source = keys.ids(data).select(pl.len()).collect().item()
            result[table] = _sample_verdict(want, stored, source, held[table])
        return result

    # --- reads -------------------------------------------------------------------------------------

    def _files(self) -> list[tuple[Path, dict]]:
        return [(self.folder / name, entry) for name, entry in sorted(self.manifest()["shards"].items())]

    def counts(self) -> dict[str, int]:
        """Rows per table over the shards; a shard whose size is not the manifest's counts as empty
        (so that the next load rewrites it)."""
        totals = dict.fromkeys(COLUMNS, 0)
        for path, entry in self._files():
            if not path.exists() or path.stat().st_size != entry["bytes"]:
                continue
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    for table in totals:
                        totals[table] += db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError:
                continue
        return totals

    def ids(self, table: str) -> Iterator[str]:
        for path, _ in self._files():
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    yield from (row[0] for row in db.execute(ID_SQL[table]))
            except sqlite3.DatabaseError as exc:
                raise CorruptShard(f"agentdb: {path} cannot be read ({exc}); rerun the load to rewrite it") from exc

    def checks(self, data: Path, full: bool = True) -> dict:  # noqa: ARG002 - always every shard (not sampled)
        """Every shard as the load wrote it (size and sha256), under agentdb's size limit, rewards in
        [0, 1] and a policy for every user session; raises CorruptShard naming any bad file."""
        files = self._files()
        bad = [str(path) for path, entry in files if not intact(path, entry)]
        if bad:
            raise CorruptShard(f"agentdb: {len(bad)} shard file(s) differ from what the load wrote (truncated, "
                               f"changed or missing): {', '.join(bad)}; rerun the load to rewrite them")
        out_of_range = without_policy = 0
        for path, _ in files:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                out_of_range += db.execute("SELECT count(*) FROM learning_experiences "
                                           "WHERE reward < 0 OR reward > 1").fetchone()[0]
                without_policy += db.execute(
                    "SELECT count(*) FROM learning_sessions s WHERE s.user_id != ? AND NOT EXISTS "
                    "(SELECT 1 FROM learning_policies p WHERE p.session_id = s.id)", (BUFFER_USER,)).fetchone()[0]
        sizes = [path.stat().st_size for path, _ in files]
        return {"shards": len(files), "oversize_shards": sum(s > MAX_SHARD_BYTES for s in sizes),
                "largest_shard_mb": round(max(sizes, default=0) / 2**20), "rewards_out_of_range": out_of_range,
                "sessions_without_policy": without_policy}

    def vector(self, vector_set: str, item: str) -> list[float] | None:
        return None  # AgentDB holds state embeddings, not the searchable vector sets

    def search(self, query: Query) -> list[Hit]:
        raise NotImplementedError("AgentDB answers predictions through agentdb, not vector searches")

    def close(self) -> None:
        pass


def open_store(settings: Settings) -> AgentDBStore:
    return AgentDBStore(settings)
