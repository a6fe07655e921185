"""Incremental refresh at 25m scale (issue #14, item 3): a full run, a refresh with no change, then a
refresh where one movie's title changed, one user added ratings and one catalog item was removed.

    .venv/bin/python benchmarks/refresh.py [--release DIR] [--catalog-size 10000]

Every run is `python -m flows.full` in a child process (wall, CPU and peak RSS from its rusage),
against the benchmark's own local servers and data dir (benchmarks/.cache/refresh/). The release
is the 25m-scale generated one that benchmarks/ingest.py leaves in the cache (made when absent);
the benchmark refreshes a folder of links to it, replacing the files it changes, as an upstream
drop would.

What each refresh touched is counted from the stores themselves, not from the loads' reports:
PostgreSQL's tuple counters (pg_stat_user_tables: rows inserted, updated, deleted per table); the
graph's nodes and relationships per label and type, with ArcadeDB's server counters (records
created, updated, deleted; write transactions); Milvus' stored (id, digest) pairs per collection;
AgentDB's rows (every row of every shard with its SQLite rowid, which a row written again changes).
The one-change refresh is checked against what the change implies: one movie text re-embedded, the
changed movie's raters and the user recomputed, and in each store those rows only; the removed
catalog item is gone from every store.
Last line: one JSON object (speedup = full run / no-change refresh; no_change_ratio and
one_change_ratio = each refresh's wall time / the full run's, the #26 targets <= 0.05).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, ROOT, SCALES, cpu_model, free_port  # noqa: E402

WORK = CACHE / "refresh"
NEW_RATINGS = 3  # ratings the changed user adds


# --- the change -----------------------------------------------------------------------------------

def live_release(base: Path, folder: Path) -> Path:
    """A release folder of links to `base`'s files, which a change replaces one by one."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for f in base.iterdir():
        (folder / f.name).symlink_to(f.resolve())
    return folder


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as out:
        write(out)
    tmp.replace(path)  # the link becomes a file of its own


def make_change(release: Path, data: Path) -> dict:
    """Change the release in place: a new title for the movie with the fewest raters (at least 5, ties
    by id), NEW_RATINGS new ratings for the first user, after their last one. Returns what changed,
    and the user ids whose vectors that affects (the movie's raters and the user)."""
    import polars as pl

    ratings = pl.scan_parquet(data / "processed" / "ratings.parquet")
    movie = (ratings.group_by("movie_id").len().filter(pl.col("len") >= 5).sort("len", "movie_id")
             .select("movie_id").first().collect().item())
    raters = set(ratings.filter(pl.col("movie_id") == movie).select("user_id").collect()["user_id"].to_list())
    user = ratings.select(pl.col("user_id").min()).collect().item()
    own = ratings.filter(pl.col("user_id") == user).select("movie_id", "timestamp").collect()
    rated = set(own["movie_id"].to_list()) | {movie}
    movies = pl.read_parquet(data / "processed" / "movies.parquet", columns=["movie_id"])["movie_id"].sort()
    new = [m for m in movies.to_list() if m not in rated][:NEW_RATINGS]
    from tasks.stores.neo4j import LIKED, PEERS

    # The user (the lowest id) joins the first likers (LIKED_BY) of each movie; a movie that had more
    # than PEERS likers loses its last one.
    likers = ratings.filter(pl.col("movie_id").is_in(new) & (pl.col("rating") >= LIKED)).group_by("movie_id").len()
    crowded = likers.filter(pl.col("len") > PEERS).select(pl.len()).collect().item()
    last = int(own["timestamp"].max())
    lines = [f"{user},{m},4.0,{last + 86_400 * (i + 1)}\n" for i, m in enumerate(new)]

    source = (release / "ratings.csv").resolve()

    def ratings_csv(out) -> None:
        with source.open("r", encoding="utf-8", newline="") as f:
            shutil.copyfileobj(f, out, 16 << 20)
        out.writelines(lines)

    _replace(release / "ratings.csv", ratings_csv)

    old_title = new_title = None
    text = (release / "movies.csv").read_text(encoding="utf-8")
    out_lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith(f"{movie},") and old_title is None:
            row = next(csv.reader([line]))
            old_title = row[1]
            match = re.match(r"^(.*?)(\s*\(\d{4}\))?\s*$", old_title)
            new_title = f"{match.group(1)}: Remastered{match.group(2) or ''}"
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator=line[len(line.rstrip("\r\n")):] or "\n").writerow(
                [row[0], new_title, *row[2:]])
            line = buffer.getvalue()
        out_lines.append(line)
    if old_title is None:
        raise SystemExit(f"{release / 'movies.csv'}: movie {movie} not found")
    _replace(release / "movies.csv", lambda out: out.write("".join(out_lines)))
    return {"movie_id": movie, "old_title": old_title, "new_title": new_title, "user_id": user,
            "new_ratings": new, "affected_users": sorted(raters | {user}), "liked_by_dropped": crowded}


def removed_catalog_id(data: Path, size: int) -> str:
    """The id of the catalog's last item: the one a catalog of size - 1 no longer holds (items are
    drawn per index, so the smaller catalog is the same items less the last)."""
    import polars as pl

    return pl.scan_parquet(data / "synthetic" / "media_catalog.parquet").select(pl.col("id").get(size - 1)) \
        .collect().item()


# --- counting from the stores ---------------------------------------------------------------------

def _postgres(settings) -> dict:
    import psycopg

    sql = ("SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
           "WHERE schemaname = %s AND relname <> 'mg_dataset' ORDER BY relname")  # the dataset's own tables
    previous = None
    for _ in range(20):  # a load's backend reports its counters as it exits: wait until they settle
        with psycopg.connect(settings.postgres_dsn()) as conn:
            now = {r[0]: {"inserted": r[1], "updated": r[2], "deleted": r[3]}
                   for r in conn.execute(sql, (settings.dataset_namespace,))}
        if now == previous:
            return now
        previous = now
        time.sleep(0.5)
    return previous


def _graph(settings) -> dict:
    """Nodes and relationships per label and type, and the server's record and write-transaction
    counters (since it started)."""
    import httpx

    from tasks.stores import STORES

    reply = httpx.get(f"http://127.0.0.1:{settings.neo4j_http_port}/api/v1/server", params={"mode": "default"},
                      auth=("root", settings.local_password.get_secret_value()), timeout=30)
    reply.raise_for_status()
    profiler = reply.json()["metrics"]["profiler"]
    graph = STORES["neo4j"].open(settings)
    try:
        counts = graph.counts()  # ArcadeDB counts created vertices as records, not relationships
    finally:
        graph.close()
    return {**counts, "records_created": profiler["createRecord"]["count"],
            "records_updated": profiler["updateRecord"]["count"], "records_deleted": profiler["deleteRecord"]["count"],
            "write_transactions": profiler["writeTx"]["count"]}


def _milvus(settings) -> dict:
    from tasks.stores import STORES
    from tasks.stores.milvus import COLLECTIONS

    store = STORES["milvus"].open(settings)
    try:
        result = {}
        for collection in COLLECTIONS:
            stored: dict[str, int] = {}
            if store.count(collection):
                iterator = store.client.query_iterator(collection, batch_size=16_384, filter="",
                                                       output_fields=["digest"])
                try:
                    while batch := iterator.next():
                        stored.update((row["id"], row["digest"]) for row in batch)
                finally:
                    iterator.close()
            result[collection] = stored
        return result
    finally:
        store.close()


def _agentdb(settings) -> dict:
    """Per table, a hash of every row of every shard with its SQLite rowid: a row written again, even
    with the same values, has a new rowid."""
    import polars as pl
    from adbc_driver_sqlite import dbapi

    from tasks.stores.agentdb import COLUMNS, row_hashes

    hashes = {table: [] for table in COLUMNS}
    for shard in sorted(settings.agentdb_target().glob("*.sqlite")):
        with dbapi.connect(str(shard)) as db, db.cursor() as cursor:
            for table, columns in COLUMNS.items():
                cursor.execute(f"SELECT {', '.join(columns)}, rowid AS row_id FROM {table}")
                rows = pl.from_arrow(cursor.fetch_arrow_table())
                hashes[table].append(pl.DataFrame({"content": row_hashes(rows, table), "row_id": rows["row_id"],
                                                   "file": [shard.name] * len(rows)}).hash_rows(seed=0))
    return {table: pl.concat(parts) if parts else pl.Series([], dtype=pl.UInt64) for table, parts in hashes.items()}


def snapshot(settings) -> dict:
    return {"postgres": _postgres(settings), "neo4j": _graph(settings), "milvus": _milvus(settings),
            "agentdb": _agentdb(settings)}


def touched(before: dict, after: dict) -> dict:
    """What changed between two snapshots, per store; empty where nothing was written."""
    result: dict[str, dict] = {}
    pg = {}
    for table, counts in after["postgres"].items():
        old = before["postgres"].get(table, dict.fromkeys(counts, 0))
        delta = {k: v - old[k] for k, v in counts.items() if v != old[k]}
        if delta:
            pg[table] = delta
    graph = {k: v - before["neo4j"][k] for k, v in after["neo4j"].items() if v != before["neo4j"][k]}
    milvus = {}
    for collection, rows in after["milvus"].items():
        old = before["milvus"].get(collection, {})
        delta = {"added": sum(k not in old for k in rows), "removed": sum(k not in rows for k in old),
                 "changed": sum(k in old and old[k] != v for k, v in rows.items())}
        if any(delta.values()):
            milvus[collection] = {k: v for k, v in delta.items() if v}
    agentdb = {}
    for table, rows in after["agentdb"].items():
        old = before["agentdb"].get(table)
        delta = {"written": int((~rows.is_in(old.implode())).sum()), "removed": int((~old.is_in(rows.implode())).sum())}
        if any(delta.values()):
            agentdb[table] = {k: v for k, v in delta.items() if v}
    for name, delta in (("postgres", pg), ("neo4j", graph), ("milvus", milvus), ("agentdb", agentdb)):
        if delta:
            result[name] = delta
    return result


def expected_touches(change: dict) -> dict:
    """What the one change must write, row for row, where it is known without replaying the episodes:
    every table of PostgreSQL and Milvus; the graph's relationships and write transactions (one for
    the title, one for the new ratings, one for the new first likers and one for the likers they
    displace, if any); AgentDB's state embeddings (one per affected user) and policies (the user's).
    AgentDB's sessions and experiences (the user's session, replaced whole, and the buffer
    transitions that moved) and the graph's record counters are reported beside."""
    users = len(change["affected_users"])
    added, dropped = len(change["new_ratings"]), change["liked_by_dropped"]
    graph = {"RATED": added, "LIKED_BY": added - dropped, "write_transactions": 3 + (dropped > 0)}
    return {
        "neo4j": {k: v for k, v in graph.items() if v},
        "postgres": {"movies": {"updated": 1}, "users": {"updated": 1}, "media_embeddings": {"updated": 1},
                     "user_embeddings": {"updated": users}, "media_metadata": {"deleted": 1},
                     "catalog_embeddings": {"deleted": 1}},
        "milvus": {"media_vectors": {"changed": 1}, "user_vectors": {"changed": users},
                   "catalog_vectors": {"removed": 1}},
        "agentdb": {"learning_state_embeddings": {"written": users, "removed": users},
                    "learning_policies": {"written": 1, "removed": 1}},
    }


def still_holding(settings, item: str) -> list[str]:
    """The stores (and tables) that still hold the catalog item `item`."""
    import psycopg
    from psycopg import sql

    from tasks.stores import STORES

    found = []
    with psycopg.connect(settings.postgres_dsn(), options=f"-c search_path={settings.dataset_namespace}") as conn:
        for table in ("media_metadata", "catalog_embeddings"):
            query = sql.SQL("SELECT count(*) FROM {} WHERE id = %s").format(sql.Identifier(table))
            if conn.execute(query, (item,)).fetchone()[0]:
                found.append(f"postgres {table}")
    milvus = STORES["milvus"].open(settings)
    try:
        if milvus.vector("catalog", item) is not None:
            found.append("milvus catalog_vectors")
    finally:
        milvus.close()
    graph = STORES["neo4j"].open(settings)
    try:
        if graph.query("MATCH (n {id: $id}) RETURN count(n) AS n", id=item)[0]["n"]:
            found.append("neo4j")
    finally:
        graph.close()
    import sqlite3

    for shard in sorted(settings.agentdb_target().glob("*.sqlite")):
        with sqlite3.connect(f"file:{shard}?mode=ro", uri=True) as db:
            if db.execute("SELECT count(*) FROM learning_experiences WHERE action = ?", (item,)).fetchone()[0]:
                found.append(f"agentdb {shard.name}")
    return found


# --- the runs -------------------------------------------------------------------------------------

def services_settings():
    """The benchmark's own local servers, on ports saved beside them."""
    from tasks import services
    from tasks.settings import Settings

    folder = WORK / "services"
    ports_file = folder / "ports.json"
    ports = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    if "milvus" not in ports:
        ports = {"postgres": free_port(), "bolt": free_port(), "http": free_port(), "prefect": free_port(),
                 "milvus": free_port(), "milvus_http": free_port()}
        folder.mkdir(parents=True, exist_ok=True)
        ports_file.write_text(json.dumps(ports))
    settings = Settings(_env_file=None, data_dir=WORK / "data", services_dir=folder, postgres_port=ports["postgres"],
                        neo4j_bolt_port=ports["bolt"], neo4j_http_port=ports["http"], prefect_port=ports["prefect"],
                        milvus_port=ports["milvus"], milvus_http_port=ports["milvus_http"], neo4j_heap="3g")
    services.start(settings, list(services.SERVICES))
    return settings


def child_env(settings) -> dict:
    return {**os.environ, "MG_SERVICES_DIR": str(settings.services_dir), "MG_POSTGRES_PORT": str(settings.postgres_port),
            "MG_NEO4J_BOLT_PORT": str(settings.neo4j_bolt_port), "MG_NEO4J_HTTP_PORT": str(settings.neo4j_http_port),
            "MG_PREFECT_PORT": str(settings.prefect_port), "MG_NEO4J_HEAP": settings.neo4j_heap,
            "MG_MILVUS_PORT": str(settings.milvus_port), "MG_MILVUS_HTTP_PORT": str(settings.milvus_http_port),
            "PREFECT_API_URL": settings.local_prefect_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def run_flow(settings, release: Path, catalog_size: int, label: str, *flags: str) -> dict:
    """`python -m flows.full` in a child: its wall and CPU seconds, peak RSS and summary table."""
    command = [sys.executable, "-m", "flows.full", "--data-dir", str(settings.data_dir), "--source", str(release),
               "--catalog-size", str(catalog_size), *flags]
    log = WORK / f"{label}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(command, cwd=ROOT, env=child_env(settings), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed (see {log}):\n{text[-3000:]}")
    table = text[text.rindex("Full refresh finished"):]
    print(f"{label}: {seconds:.1f} s, {usage.ru_utime + usage.ru_stime:.1f} CPU s, "
          f"peak RSS {usage.ru_maxrss // 1024} MB\n{table}", flush=True)
    return {"seconds": round(seconds, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": usage.ru_maxrss // 1024, "summary": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, help="the base release (default: the generated one of --scale)")
    parser.add_argument("--scale", default="25m", choices=SCALES, help="small: the tests' smoke run")
    parser.add_argument("--catalog-size", type=int, default=10_000)
    parser.add_argument("--skip-validate", action="store_true",
                        help="pass --skip-validate to every run (the same for the full run and the refreshes)")
    args = parser.parse_args()
    flags = ["--skip-validate"] if args.skip_validate else []
    global WORK
    WORK = CACHE / ("refresh" if args.scale == "25m" else f"refresh-{args.scale}")
    generated = CACHE / f"ml-{args.scale}-seed42"
    args.release = args.release or generated
    if not (args.release / "ratings.csv").exists():
        if args.release != generated:
            raise SystemExit(f"{args.release}: no ratings.csv there")
        from tasks.ingest.sample import generate

        generate(args.scale, generated, seed=42)  # as benchmarks/ingest.py makes it
    print(f"CPU: {cpu_model()}", flush=True)
    from tasks import services

    shutil.rmtree(WORK / "data", ignore_errors=True)
    shutil.rmtree(WORK / "services", ignore_errors=True)  # empty stores: the full run loads from nothing
    settings = services_settings()
    try:
        release = live_release(args.release, WORK / "release")
        full = run_flow(settings, release, args.catalog_size, "full", *flags)
        before = snapshot(settings)
        same = run_flow(settings, release, args.catalog_size, "no-change", *flags)
        unchanged = snapshot(settings)
        no_change = touched(before, unchanged)
        removed = removed_catalog_id(settings.data_dir, args.catalog_size)
        change = make_change(release, settings.data_dir)
        print(f"change: {json.dumps(change)[:400]}; catalog item {removed} removed", flush=True)
        one = run_flow(settings, release, args.catalog_size - 1, "one-change", *flags)
        one_change = touched(unchanged, snapshot(settings))
        stats = json.loads((settings.data_dir / "embeddings" / "stats.json").read_text())
        embedded = {"media_encoded": stats["media"]["encoded"], "catalog_encoded": stats["catalog"]["encoded"],
                    "user_vectors_computed": stats["users"]["computed"],
                    "affected_users": len(change["affected_users"])}
        holding = still_holding(settings, removed)
    finally:
        services.stop(settings)
    expected = expected_touches(change)
    checks = {
        "no_change_writes_nothing": no_change == {},
        "no_change_within_5pct": same["seconds"] <= 0.05 * full["seconds"],
        "one_change_within_5pct": one["seconds"] <= 0.05 * full["seconds"],
        "one_text_reembedded": embedded["media_encoded"] == 1 and embedded["catalog_encoded"] == 0,
        "only_affected_users_computed": embedded["user_vectors_computed"] == embedded["affected_users"],
        "postgres_exact": one_change.get("postgres") == expected["postgres"],
        "milvus_exact": one_change.get("milvus") == expected["milvus"],
        "agentdb_exact_where_known": all(one_change.get("agentdb", {}).get(t) == v
                                         for t, v in expected["agentdb"].items()),
        "graph_exact": {k: one_change.get("neo4j", {}).get(k, 0) for k in expected["neo4j"]} == expected["neo4j"],
        "removed_item_gone": not holding,
    }
    print(json.dumps({"benchmark": "refresh", "cpu": cpu_model(), "catalog_size": args.catalog_size, "flags": flags,
                      "wall_s": same["seconds"], "cpu_s": same["cpu_s"], "peak_rss_mb": same["peak_rss_mb"],
                      "full_wall_s": full["seconds"], "full_cpu_s": full["cpu_s"], "full_peak_rss_mb": full["peak_rss_mb"],
                      "one_change_wall_s": one["seconds"], "one_change_cpu_s": one["cpu_s"],
                      "one_change_peak_rss_mb": one["peak_rss_mb"],
                      "speedup": round(full["seconds"] / same["seconds"], 1),
                      "no_change_ratio": round(same["seconds"] / full["seconds"], 4),
                      "one_change_ratio": round(one["seconds"] / full["seconds"], 4),
                      "no_change_touched": no_change, "one_change_touched": one_change, "embedded": embedded,
                      "still_holding_removed_item": holding, "checks": checks}))


if __name__ == "__main__":
    main()
