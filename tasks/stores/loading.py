"""The load stage: each store loaded, checked and reconciled with the source ids.

Per store, under DATA_DIR/stores/:
- <store>.state.json: the digest of its inputs and its counts after the last successful load. A load
  is skipped when both still match (a wiped or changed store does not match: it is reloaded).
- <store>.json: what the store's suite in expectations/ checks (counts against the sources, vector
  dimensions, indexes, self-nearest neighbours, missing and extra ids), written after every load and
  by `python -m flows.validate --stage load`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

import polars as pl

from tasks.caching import stage_key
from tasks.errors import PipelineError
from tasks.files import atomic_output
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.base import DatasetConflict, Log, SnapshotStore, Store, TableLoad, Verify, require_dataset
from tasks.stores.snapshot import Snapshots

# Every built store's module is imported now, before any flow runs: pymilvus reconfigures logging on
# import (logging.config.dictConfig flushes every handler under logging's lock), which deadlocks with
# Prefect's API log handler when it happens inside a task while another task logs.
for _spec in STORES.values():
    _spec.implementation()

LOAD_VERSION = "load-2"  # bump when a store's layout changes: every store is then reloaded
SAMPLE_IDS = 5  # missing or extra ids named per table


class ReconciliationFailed(PipelineError, RuntimeError):
    """A store holds other ids than its sources; the message names them."""


def state_dir(data: Path) -> Path:
    return Path(data) / "stores"


def inputs_digest(data: Path, name: str, target: str) -> str:
    inputs = [Path(data) / f for f in STORES[name].implementation().INPUTS if (Path(data) / f).exists()]
    return stage_key(LOAD_VERSION, inputs, {"target": target, "inputs": [str(p.relative_to(data)) for p in inputs]})


def _hashes(ids: Iterable[str], batch: int = 1_000_000) -> Iterator[tuple[pl.Series, pl.Series]]:
    """(ids, their 64-bit hashes), a million at a time."""
    ids = iter(ids)
    while chunk := list(islice(ids, batch)):
        part = pl.Series("id", chunk, dtype=pl.String)
        yield part, part.hash(seed=0)


def _compare_ids(source: pl.Series, stored: Callable[[], Iterable[str]]) -> tuple[int, pl.Series, pl.Series]:
    """(stored count, source ids missing from the store, stored ids the source lacks). The stored ids
    are compared as 64-bit hashes: 25M RATED ids as Python strings held ~2 GB, and string columns of
    both sides 3.6 GB at 16.6M AgentDB experiences. Extra ids are read again, as strings, only when
    there are some. A hash collision could only hide one missing id behind one extra id (p ~ n^2 /
    2^65: 1e-5 at 25M)."""
    source_hashes = source.hash(seed=0)
    stored_hashes = pl.concat([h for _, h in _hashes(stored())] or [pl.Series([], dtype=pl.UInt64)])
    missing = source.filter(~source_hashes.is_in(stored_hashes.implode()))
    extra_hashes = stored_hashes.filter(~stored_hashes.is_in(source_hashes.implode()))
    extra = [pl.Series("id", [], dtype=pl.String)]
    if len(extra_hashes):
        extra += [part.filter(hashed.is_in(extra_hashes.implode())) for part, hashed in _hashes(stored())]
    return len(stored_hashes), missing, pl.concat(extra)


def reconcile(store: Store, data: Path) -> dict:
    """Per table: the source ids missing from the store and the store's ids the source lacks."""
    result = {}
    for table, keys in STORES[store.name].implementation().TABLES.items():
        if not (Path(data) / keys.file).exists():
            continue
        source = keys.read(data)
        stored, missing, extra = _compare_ids(source, lambda: store.ids(table))
        result[table] = {"source": len(source), "store": stored, "missing": len(missing), "extra": len(extra),
                         "missing_sample": missing.sort().head(SAMPLE_IDS).to_list(),
                         "extra_sample": extra.sort().head(SAMPLE_IDS).to_list()}
    return result


def reconciliation_problems(name: str, tables: dict) -> list[str]:
    problems = []
    for table, r in tables.items():
        if r["missing"]:
            problems.append(f"{name} {table}: {r['missing']:,} source ids missing (e.g. {', '.join(r['missing_sample'])})")
        if r["extra"]:
            problems.append(f"{name} {table}: {r['extra']:,} ids not in the source (e.g. {', '.join(r['extra_sample'])})")
    return problems


class StoresNotReady(PipelineError, RuntimeError):
    """Stores a run would load that cannot be: one line per store, with the command that fixes it."""


def _conflict(store: Store, settings: Settings, held: str | None) -> str | None:
    if held is None or held == settings.dataset_origin:
        return None
    return (f"{store.name} at {store.target()} holds the dataset of {held}, not this one ({settings.dataset_origin}): "
            "a load would overwrite it; give this data dir its own namespace (MG_NAMESPACE) or pass --replace "
            "to overwrite it")


def claim_dataset(store: Store, settings: Settings, replace: bool, log: Log) -> str | None:
    """Before a load writes: the store's namespace holds this data dir's dataset, or none (it is
    claimed), or another one, which only `replace` may overwrite. Returns what it held before."""
    held = store.holder()
    if held == settings.dataset_origin:
        return held
    if conflict := _conflict(store, settings, held):
        if not replace:
            raise DatasetConflict(conflict)
        log(f"{store.name}: --replace: the dataset of {held} at {store.target()} is overwritten by "
            f"{settings.dataset_origin}")
    store.claim(settings.dataset_origin)
    return held


def reach_stores(settings: Settings, names: list[str], replace: bool = False) -> None:
    """Before a run's first stage: every store it will load is reached and holds this dataset or none
    (or `replace`). Raises StoresNotReady listing every store that is not, one line each."""
    problems = []
    for name in names:
        try:
            store = STORES[name].open(settings)
        except PipelineError as exc:  # StoreUnavailable: names the store, its URL and the fix
            problems.append(" ".join(str(exc).split()))
            continue
        try:
            if not replace and (conflict := _conflict(store, settings, store.holder())):
                problems.append(conflict)
        finally:
            store.close()
    if problems:
        raise StoresNotReady(f"{len(problems)} of the stores to load cannot be loaded:\n  " + "\n  ".join(problems))


def sample_problems(name: str, tables: dict) -> list[str]:
    """Sampled elements whose properties differ from the source (the default verification)."""
    return [f"{name} {table}: {r['differ']:,} of {r['sampled']:,} sampled elements differ from the source "
            f"(e.g. {', '.join(r['differ_sample'])})" for table, r in tables.items() if r.get("differ")]


def drifted(verification: dict) -> list[str]:
    """The tables a sampled verification found unlike their snapshot (or without one)."""
    return [table for table, r in verification.items()
            if not r["snapshot"] or r["missing"] or r["extra"] or r["differ"]]


def check_store(store: Store, data: Path, settings: Settings | None = None, verification: dict | None = None) -> dict:
    """The figures of the store's suite, written to stores/<store>.json; raises ReconciliationFailed
    when the store's ids differ from the sources (naming them), NoDataset when it holds another
    dataset. With a sampled `verification` (the store's verify()) its figures stand for the full
    reconciliation, which reads back every id."""
    require_dataset(store, settings or Settings(data_dir=Path(data)))
    tables = reconcile(store, data) if verification is None else verification
    figures = store.checks(data, full=verification is None)
    figures.update(
        store=store.name, target=store.target(),
        verification="full" if verification is None else "sample",
        read_back=sum(r.get("sampled", r["store"]) for r in tables.values()),
        count_mismatch=sum(abs(r["store"] - r["source"]) for r in tables.values()),
        missing_ids=sum(r["missing"] for r in tables.values()),
        extra_ids=sum(r["extra"] for r in tables.values()),
        differing=sum(r.get("differ", 0) for r in tables.values()),
        tables=tables)
    with atomic_output(state_dir(data) / f"{store.name}.json") as tmp:
        tmp.write_text(json.dumps(figures, indent=2, sort_keys=True))
    problems = reconciliation_problems(store.name, tables) + sample_problems(store.name, tables)
    if problems:
        raise ReconciliationFailed("reconciliation failed: " + "; ".join(problems))
    return figures


def recheck_stores(data: Path) -> list[str]:
    """Check and reconcile again every store loaded from this data dir (its state file exists);
    returns their names. Settings (store URLs) from the environment and .env."""
    settings = Settings(data_dir=Path(data))
    checked = []
    for name, spec in STORES.items():
        if (state_dir(data) / f"{name}.state.json").exists():
            store = spec.open(settings)
            try:
                check_store(store, Path(data), settings)
            finally:
                store.close()
            checked.append(name)
    return checked


def _verified(verification: dict | None) -> str:
    if verification is None:
        return "full: every id read back and compared"
    return f"sample: {sum(r['sampled'] for r in verification.values()):,} elements read back and compared"


def _counts(report: dict[str, TableLoad], before: dict[str, int]) -> dict[str, int]:
    """The store's counts after a load: its report's, and the tables it did not load as they were."""
    return {t: report[t].rows if t in report else n for t, n in before.items()}


def _unchanged(store: Store, counts: dict[str, int], verified: str) -> dict:
    return {"store": store.name, "status": "unchanged", "target": store.target(), "verified": verified,
            "tables": {t: {"rows": n, "written": 0, "deleted": 0} for t, n in counts.items()}}


def load_store(settings: Settings, name: str, log: Log, replace: bool = False, verify: Verify = "sample") -> dict:
    """Load one store from the data dir, then verify it: by default its counts and a fixed sample of
    elements (stores with snapshots; the others reconcile every id), with verify="full" every element
    and id. A store that already holds exactly these inputs is only verified; one found changed
    outside the pipeline is repaired (the tables that differ compared in full). A store holding
    another dataset is overwritten only with `replace`. Returns a summary: status, target, per-table
    rows written and deleted, the verification that ran."""
    data = settings.data_dir
    store = STORES[name].open(settings)
    try:
        held = claim_dataset(store, settings, replace, log)
        sampled = isinstance(store, SnapshotStore)
        snapshots = Snapshots(state_dir(data) / f"{name}.snapshot", store.target()) if sampled else None
        if snapshots and (verify == "full" or held != settings.dataset_origin):
            snapshots.clear()  # compared in full: with another dataset's graph, or as asked
        digest = inputs_digest(data, name, store.target())
        state_path = state_dir(data) / f"{name}.state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        counts = store.counts()
        verification = None
        if snapshots and (stale := [t for t, n in counts.items() if snapshots.rows(t) not in (None, n)]):
            log(f"{name}: {', '.join(stale)} hold other counts than the last load left (changed outside the "
                "pipeline): comparing them with the source in full")
            snapshots.forget(stale)
        if state.get("digest") == digest and state.get("counts") == counts:
            if not sampled:  # the store compares every row as it loads: counts tell it is intact
                how = "counts"
                if verify == "full":
                    check_store(store, data, settings)
                    how = _verified(None)
                log(f"{name}: inputs and counts unchanged since the last load: nothing to write (verified: {how})")
                return _unchanged(store, counts, how)
            if verify == "sample":
                verification = store.verify(data, snapshots, log, counts)
                if not (tables := drifted(verification)):
                    check_store(store, data, settings, verification)
                    log(f"{name}: inputs unchanged since the last load and {_verified(verification)}: nothing to write")
                    return _unchanged(store, counts, _verified(verification))
                log(f"{name}: {', '.join(tables)} differ from the last load (changed outside the pipeline): "
                    "comparing them with the source in full")
                snapshots.forget(tables)
        log(f"{name}: loading {data} into {store.target()}")
        report = store.load(data, log, snapshots) if sampled else store.load(data, log)
        if not sampled and verify == "sample" and hasattr(store, "verify_sample"):
            # counts and a fixed sample, not every id read back
            verification = store.verify_sample(data, _counts(report, counts))
        if sampled and verify == "sample":
            verification = store.verify(data, snapshots, log, _counts(report, counts))
            if tables := drifted(verification):
                log(f"{name}: the verification found {', '.join(tables)} unlike the source "
                    f"({'; '.join(sample_problems(name, verification)) or 'counts differ'}): comparing them in full")
                snapshots.forget(tables)
                for table, again in store.load(data, log, snapshots).items():
                    report[table].written += again.written
                    report[table].deleted += again.deleted
                    report[table].rows = again.rows
                verification = store.verify(data, snapshots, log, _counts(report, counts))
        check_store(store, data, settings, verification)
        counts = _counts(report, counts)
        with atomic_output(state_path) as tmp:
            tmp.write_text(json.dumps({"digest": digest, "counts": counts, "target": store.target()}, indent=2))
        return {"store": name, "status": "loaded", "target": store.target(), "verified": _verified(verification),
                "tables": {t: r.as_dict() for t, r in report.items()}}
    finally:
        store.close()
