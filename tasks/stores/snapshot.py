"""What a store last loaded, so that a load sends only what changed and reads back only a sample.

Per store, DATA_DIR/stores/<store>.snapshot/<table>.parquet holds the keys and a 64-bit digest of
every row as the load sent it. A load diffs the new source against it with Polars (new, updated and
gone keys) and writes only those; it never reads the store back in full to find what changed.

A table's snapshot is removed before the load writes to it and saved after its last write is
committed: a load killed midway leaves no snapshot for the table, and the next load compares that
table with the store in full. A table whose count in the store differs from its snapshot (the store
was wiped or edited outside the pipeline) is compared in full too, and so is one whose verification
sample differs (verify_sample).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tasks.files import ZSTD, atomic_output

DIGEST = "_digest"
# Polars' hash is stable within one version only: a snapshot from another version is not trusted
# (every table is then compared in full once).
FORMAT = f"snapshot-1 polars {pl.__version__}"
SAMPLE_ROWS = 10_000  # verified per table after every load: the same seeded sample on every run
SAMPLE_SEED = 20_261_206


def with_digest(frame: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """The keys and a digest of the whole row (keys included, columns in the frame's order)."""
    return frame.select(*keys, pl.struct(pl.all()).hash(seed=0).alias(DIGEST))


@dataclass
class Changes:
    """Keys only: what a load must create, set and delete."""

    new: pl.DataFrame
    updated: pl.DataFrame
    gone: pl.DataFrame

    @property
    def written(self) -> pl.DataFrame:
        return pl.concat([self.new, self.updated])


def diff(current: pl.DataFrame, previous: pl.DataFrame, keys: list[str]) -> Changes:
    """The difference between two (keys, digest) frames."""
    both = current.join(previous, on=keys, how="inner", suffix="_before")
    return Changes(new=current.join(previous, on=keys, how="anti").select(keys),
                   updated=both.filter(pl.col(DIGEST) != pl.col(f"{DIGEST}_before")).select(keys),
                   gone=previous.join(current, on=keys, how="anti").select(keys))


def sample(current: pl.DataFrame, keys: list[str], rows: int | None = None) -> pl.DataFrame:
    """The rows whose keys hash lowest under a fixed seed (SAMPLE_ROWS of them unless told): the same
    elements on every run while they exist, spread over the whole table."""
    ranked = current.with_columns(_rank=pl.struct(keys).hash(seed=SAMPLE_SEED))
    return ranked.top_k(rows or SAMPLE_ROWS, by="_rank", reverse=True).drop("_rank")


def rows_of(frame: pl.LazyFrame, keys: pl.DataFrame, on: list[str]) -> pl.DataFrame:
    """The full source rows of some keys, streamed from the source (only they are held)."""
    return frame.join(keys.lazy(), on=on, how="semi").collect(engine="streaming")


class Snapshots:
    """One store's snapshots, for one target (a snapshot of another server or database is not ours)."""

    def __init__(self, folder: Path, target: str):
        self.folder, self.target = Path(folder), target
        meta = self.folder / "meta.json"
        current = {"format": FORMAT, "target": target}
        if not meta.exists() or json.loads(meta.read_text()) != current:
            self.clear()
            with atomic_output(meta) as tmp:
                tmp.write_text(json.dumps(current))

    def _path(self, table: str) -> Path:
        return self.folder / f"{table}.parquet"

    def read(self, table: str) -> pl.DataFrame | None:
        path = self._path(table)
        try:
            return pl.read_parquet(path) if path.exists() else None
        except (pl.exceptions.PolarsError, OSError):  # a damaged snapshot is only a lost shortcut
            path.unlink(missing_ok=True)
            return None

    def rows(self, table: str) -> int | None:
        """How many rows the table's snapshot holds (from the Parquet footer), None without one."""
        path = self._path(table)
        try:
            return pl.scan_parquet(path).select(pl.len()).collect().item() if path.exists() else None
        except (pl.exceptions.PolarsError, OSError):
            return None

    def forget(self, tables: Iterable[str]) -> None:
        for table in tables:
            self._path(table).unlink(missing_ok=True)

    def save(self, table: str, current: pl.DataFrame) -> None:
        with atomic_output(self._path(table)) as tmp:
            current.write_parquet(tmp, **ZSTD)

    def clear(self) -> None:
        """Every table's snapshot (not the folder's meta.json: whose snapshots these are)."""
        if self.folder.exists():
            for path in self.folder.glob("*.parquet"):
                path.unlink()


class NoSnapshots(Snapshots):
    """A store's load without snapshots (a store loaded directly, not by the load stage): every table
    compared with the store in full, nothing kept."""

    def __init__(self) -> None:  # noqa: D107 - no folder
        pass

    def read(self, table: str) -> None:
        return None

    def rows(self, table: str) -> None:
        return None

    def forget(self, tables: Iterable[str]) -> None:
        pass

    def save(self, table: str, current: pl.DataFrame) -> None:
        pass

    def clear(self) -> None:
        pass


# --- verification (the stores' verify()) ------------------------------------------------------------

def unverified(held: int) -> dict:
    """A table without a snapshot: it needs a full comparison."""
    return {"source": None, "store": held, "missing": 0, "extra": 0, "differ": 0, "sampled": 0, "snapshot": False,
            "missing_sample": [], "extra_sample": [], "differ_sample": []}


def to_check(expected: pl.DataFrame, keys: list[str], written: pl.DataFrame | None) -> pl.DataFrame:
    """The (keys, digest) rows a verification reads back: the fixed sample and every row just written."""
    parts = [sample(expected, keys)]
    if written is not None and len(written):
        parts.append(expected.join(written.select(keys), on=keys, how="semi"))
    return pl.concat(parts).unique(keys, maintain_order=True)


def verdict(expected: pl.DataFrame, checked: pl.DataFrame, stored: pl.DataFrame, held: int,
            keys: list[str]) -> dict:
    """One table's verification, in reconcile()'s form plus `sampled` (rows read back) and `differ`
    (rows whose content differs): `stored` holds the keys and the digest (`stored`) of what the store
    returned for the checked rows, `held` its count."""
    joined = checked.join(stored, on=keys, how="left", nulls_equal=True)
    key_text = pl.concat_str([pl.col(c).cast(pl.String) for c in keys], separator="/")
    absent = joined.filter(pl.col("stored").is_null()).select(key_text).to_series()
    differ = joined.filter(pl.col("stored").is_not_null() & (pl.col("stored") != pl.col(DIGEST)))\
        .select(key_text).to_series()
    return {"source": len(expected), "store": held, "missing": max(len(absent), len(expected) - held),
            "extra": max(0, held - len(expected)), "differ": len(differ), "sampled": len(checked), "snapshot": True,
            "missing_sample": absent.sort().head(5).to_list(), "extra_sample": [],
            "differ_sample": differ.sort().head(5).to_list()}


def verify_tables(tables: dict[str, list[str]], snapshots: Snapshots, written: dict[str, pl.DataFrame],
                  held: Callable[[str], int], read_back: Callable[[str, pl.DataFrame], pl.DataFrame]) -> dict[str, dict]:
    """A store's verify(): per table (name -> its keys), the count `held(name)` against the snapshot,
    and the checked rows (to_check) read back by `read_back(name, checked)` -> keys and `stored` digest."""
    result = {}
    for name, keys in tables.items():
        expected, count = snapshots.read(name), held(name)
        if expected is None:
            result[name] = unverified(count)
            continue
        checked = to_check(expected, keys, written.get(name))
        result[name] = verdict(expected, checked, read_back(name, checked), count, keys)
    return result
