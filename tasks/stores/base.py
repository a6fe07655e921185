"""The one interface every store implements (the model: feast's online stores, one module per
backend behind one base class).

A store is opened from the settings and decides itself whether it is local or remote (an unset URL
is the local server or file). Its load is idempotent: rows are written only when they changed, ids
gone from the source are deleted, and a rerun with unchanged inputs writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from tasks.errors import PipelineError
from tasks.settings import Settings

if TYPE_CHECKING:
    from tasks.stores.snapshot import Snapshots

Log = Callable[[str], None]


class StoreUnavailable(PipelineError, ConnectionError):
    """The store cannot be reached (a transient error: the load task retries it). The message names
    the store and its URL, never a password."""


def unreachable(store: str, where: str, error: object, local: bool, setting: str) -> StoreUnavailable:
    """The one-line error of a store that cannot be reached, with what fixes it."""
    fix = f"start it with `python -m tasks.services start {store}`" if local else \
        f"check {setting} and that the server runs"
    return StoreUnavailable(f"{store} at {where} is unreachable ({' '.join(str(error).split())}): {fix}")


class DatasetConflict(PipelineError, RuntimeError):
    """The store (its namespace) holds another data dir's dataset; the message names both."""


class NoDataset(PipelineError, LookupError):
    """A read of a store that holds no load of this data dir's dataset."""


def require_dataset(store: "Store", settings: Settings) -> None:
    """Reads (search, explain, checks) answer only from this data dir's own dataset."""
    held = store.holder()
    if held != settings.dataset_origin:
        whose = f"the dataset of {held}" if held else "no dataset"
        raise NoDataset(f"{store.name} at {store.target()} holds {whose}, not {settings.dataset_origin}: "
                        f"load it first (python -m flows.load --data-dir {settings.data_dir})")


@dataclass(frozen=True)
class Query:
    """One search: a unit vector, the vector set to search (media, catalog) and filters on its fields."""

    vector: list[float]
    vector_set: str = "media"
    k: int = 10
    type: str | None = None
    genre: str | None = None
    year_from: int | None = None
    year_to: int | None = None
    platform: str | None = None
    exclude: str | None = None  # the --like item itself

    def conditions(self) -> list[tuple[str, str, str | int]]:
        """The filters as (field, operator, value), operators ==, contains (a list field), >=, <=, !=;
        each store writes them in its own query language."""
        wanted = [("type", "==", self.type), ("genres", "contains", self.genre),
                  ("platforms", "contains", self.platform), ("year", ">=", self.year_from),
                  ("year", "<=", self.year_to), ("id", "!=", self.exclude)]
        return [(name, op, value) for name, op, value in wanted if value is not None]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity
    title: str
    fields: dict = field(default_factory=dict)  # the filtered fields' values


@dataclass
class TableLoad:
    """What one load did to one table or collection."""

    rows: int = 0  # in the store after the load
    written: int = 0  # inserted or updated (unchanged rows are not rewritten)
    deleted: int = 0  # ids gone from the source

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "written": self.written, "deleted": self.deleted}


@runtime_checkable
class Store(Protocol):
    name: str

    def target(self) -> str:
        """Where the store is, safe to log (no password)."""

    def holder(self) -> str | None:
        """The dataset this store's namespace holds (the data dir that claimed it), None when none did."""

    def claim(self, origin: str) -> None:
        """Record `origin` as the dataset this namespace holds (before the load writes anything)."""

    def create_schema(self, data: Path) -> None:
        """Tables or collections, if missing (vector dimensions from the embeddings); indexes come
        with the load, built after a first load's rows."""

    def load(self, data: Path, log: Log) -> dict[str, TableLoad]:
        """Bring the store in line with the data dir; one entry per table or collection."""

    def counts(self) -> dict[str, int]:
        """Rows per table or collection; 0 for one that does not exist."""

    def ids(self, table: str) -> Iterable[str]:
        """Every key in a table or collection, as the source writes it (composite keys joined by '/')."""

    def checks(self, data: Path, full: bool = True) -> dict:
        """Figures for the store's suite: vector dimensions, index present, self-nearest neighbours.
        full=False (after a sampled verification): nothing that scans the whole store."""

    def vector(self, vector_set: str, item: str) -> list[float] | None:
        """The stored vector of one item (None when absent): what a --like search starts from."""

    def search(self, query: Query) -> list[Hit]:
        """Top-k by cosine similarity, ties broken by id; filters keep recall."""

    def close(self) -> None: ...


Verify = Literal["sample", "full"]  # after a load: counts and a fixed sample (the default), or everything


@runtime_checkable
class SnapshotStore(Store, Protocol):
    """A store that keeps what it last loaded (tasks.stores.snapshot): its load diffs the source
    against the snapshots and writes only that, and it verifies a sample instead of reading back
    every element."""

    def load(self, data: Path, log: Log, snapshots: "Snapshots | None" = None) -> dict[str, TableLoad]:
        """Without snapshots: every table compared with the store in full."""

    def verify(self, data: Path, snapshots: "Snapshots", log: Log, counts: dict[str, int] | None = None) -> dict[str, dict]:
        """Per table: the count (`counts`, else counted now) against the snapshot, and a fixed sample of
        elements plus those the last load wrote, compared field by field."""


def safe_url(url: str) -> str:
    """A store URL fit for logs and messages: any password dropped."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc))


def ordered(hits: Iterable[Hit], k: int) -> list[Hit]:
    """Best score first, ties by id: both stores answer in the same order."""
    return sorted(hits, key=lambda h: (-round(h.score, 6), h.id))[:k]


def sample_ids(ids: Iterable[str], n: int = 20) -> list[str]:
    """A fixed, spread sample: the same ids on every run and in both stores."""
    everything = sorted(ids)
    step = max(1, len(everything) // n)
    return everything[::step][:n]


def self_misses(store: Store, vector_set: str, sample: list[str]) -> int:
    """Sampled items that are not among the best-scored hits of a search with their own vector."""
    misses = 0
    for item in sample:
        vector = store.vector(vector_set, item)
        if vector is None:  # absent: the count and id checks name it
            misses += 1
            continue
        hits = store.search(Query(vector=vector, vector_set=vector_set, k=5))
        best = hits[0].score if hits else 0.0
        misses += not any(h.id == item and h.score >= best - 1e-5 for h in hits)
    return misses
