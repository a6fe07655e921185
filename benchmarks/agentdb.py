"""AgentDB benchmark at 25m scale: the ratings to episodes, sessions, replay buffers and SQLite shards
(the load stage for the agentdb store), against the seed's per-user pandas loop and JSONL writer.

    python benchmarks/agentdb.py [--slice-users 10] [--scale 25m|small]

Data: the 25m-scale ingest that benchmarks/ingest.py leaves in benchmarks/.cache/out-ours (25M
ratings, 162,541 users), the project's synthetic users for those ids, and random unit user vectors
(384-d, seeded: the embed stage's user vectors need the 62k movie vectors, which are GPU work at this
scale; their values do not change what is written).

- ours: tasks.stores.loading.load_store(settings, "agentdb") from an empty folder: the Parquet
  datasets, the shards, then the check and the default verification (counts and a fixed sample);
  then the same call with nothing changed. In a child of its own after it: the call with
  `verify="full"` (every id read back), and the load after three new ratings of one user
  (`one_change_s`: one shard and the buffers updated, then verified). Peak RSS is the process's own (shards are written by threads in it). Then every
  shard opened with the real agentdb (npm agentdb@1.6.1, tests/agentdb): its open time.
- seed: the seed's method (seed-scripts-review.md): pandas, a Python loop per user and per rating
  building dict states, (r - 1) / 4 rewards, 200 steps per user, every episode held in a list, then
  JSONL files for episodes, policies and one replay buffer per algorithm that copies the episodes of
  its users; run on --slice-users percent of the users and scaled (time x 100 / slice, memory the
  same; the seed holds everything at once, so both grow with the rows).
Last line: one JSON object. Targets (issue #13): the whole stage <= 120 s and <= 4 GB; every shard
opens in agentdb in <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    CACHE, SCALES, child_or_prepare, compare, cpu_model, ingested, run_child, timed_load)

DATA = CACHE / "agentdb-data-25m"  # per --scale
SEED_OUT = CACHE / "agentdb-seed-out"
SCALE = "25m"


def prepare() -> Path:
    """The data dir: the 25m ingest's ratings, synthetic users and random user vectors (once)."""
    import h5py
    import numpy as np
    import polars as pl

    from tasks.synthetic.datasets import profiles

    marker = DATA / "benchmark.json"
    if marker.exists():
        return DATA
    ratings = ingested(SCALE) / "ratings.parquet"
    shutil.rmtree(DATA, ignore_errors=True)
    for folder in ("processed", "synthetic", "embeddings"):
        (DATA / folder).mkdir(parents=True)
    os.link(ratings, DATA / "processed" / "ratings.parquet")
    users = pl.scan_parquet(ratings).select(pl.col("user_id").unique().sort()).collect()["user_id"].to_numpy()
    profiles(users, 42).write_parquet(DATA / "synthetic" / "users.parquet")
    vectors = np.random.default_rng(0).standard_normal((len(users), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with h5py.File(DATA / "embeddings" / "users.h5", "w") as f:
        f.create_dataset("ids", data=np.array([str(u) for u in users], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=vectors)
        f.attrs.update(model="random", dim=384, normalized=True)
    marker.write_text(json.dumps({"source": str(ratings)}))
    return DATA


def settings():
    from tasks.settings import Settings

    return Settings(_env_file=None, data_dir=DATA)


# --- children ------------------------------------------------------------------------------------

def ours() -> dict:
    from tasks.stores.loading import load_store

    shutil.rmtree(DATA / "agentdb", ignore_errors=True)
    shutil.rmtree(DATA / "stores", ignore_errors=True)
    summary, events, loaded = timed_load(settings(), "agentdb")
    datasets = next(t for t, m in events if "episodes, sessions and replay buffers" in m)
    shards_done = max(t for t, m in events if "shards of" in m)
    rerun_started = time.perf_counter()
    again = load_store(settings(), "agentdb", lambda m: None)
    return {"stage_s": round(shards_done, 1), "datasets_s": round(datasets, 1),
            "check_and_reconcile_s": round(loaded - shards_done, 1), "verified": summary["verified"],
            "tables": {t: r["rows"] for t, r in summary["tables"].items()}, "status": summary["status"],
            "rerun_s": round(time.perf_counter() - rerun_started, 2), "rerun_status": again["status"]}


def changes() -> dict:
    """After ours(): `--verify full` with nothing changed (every id read back), then three new ratings
    of one user and the load that follows (what a refresh's AgentDB step costs)."""
    import polars as pl

    from tasks.stores.loading import load_store

    started = time.perf_counter()
    load_store(settings(), "agentdb", lambda m: None, verify="full")
    full_s = time.perf_counter() - started

    ratings = DATA / "processed" / "ratings.parquet"
    original = ratings.with_name("ratings.original.parquet")
    os.replace(ratings, original)
    try:
        frame = pl.read_parquet(original)
        user = frame["user_id"].max()
        newest = frame.filter(pl.col("user_id") == user).sort("timestamp").tail(3)
        pl.concat([frame, newest.with_columns(movie_id=pl.col("movie_id") + 1_000_000,
                                              timestamp=pl.col("timestamp") + 60)]).write_parquet(ratings)
        del frame
        started = time.perf_counter()
        summary = load_store(settings(), "agentdb", lambda m: None)
        seconds = time.perf_counter() - started
    finally:
        os.replace(original, ratings)
    return {"verify_full_unchanged_s": round(full_s, 1),
            "one_change_s": round(seconds, 1), "one_change_verified": summary["verified"],
            "one_change_written": {t: r["written"] for t, r in summary["tables"].items()}}


def open_shards() -> dict:
    """Every shard opened by the real agentdb: open time and a prediction for its first user."""
    import sqlite3

    from tests.agentdb import reader

    script = reader.install()
    times = {}
    for shard in sorted(settings().agentdb_target().glob("*.sqlite")):
        with sqlite3.connect(f"file:{shard}?mode=ro", uri=True) as db:
            session, state = db.execute("SELECT session_id, state FROM learning_experiences ORDER BY id LIMIT 1"
                                        ).fetchone()
        started = time.perf_counter()
        got = reader.read(script, shard, session, state)
        times[shard.name] = {"open_ms": round(got["openMs"]), "read_s": round(time.perf_counter() - started, 2),
                             "mb": round(shard.stat().st_size / 2**20)}
    return {"shards": times, "max_open_ms": max(t["open_ms"] for t in times.values())}


def seed(slice_percent: int) -> dict:
    """The seed's method on a slice of the users (see the module's docstring)."""
    import pandas as pd

    from tasks.stores.episodes import ARCHETYPE_ALGORITHM

    shutil.rmtree(SEED_OUT, ignore_errors=True)
    SEED_OUT.mkdir(parents=True)
    ratings = pd.read_parquet(DATA / "processed" / "ratings.parquet",
                              columns=["user_id", "movie_id", "rating", "timestamp"])
    ratings = ratings[ratings.user_id % 100 < slice_percent]
    users = pd.read_parquet(DATA / "synthetic" / "users.parquet", columns=["user_id", "archetype"])
    merged = ratings.merge(users, on="user_id")  # the seed held the ratings twice
    policies, episodes = [], []
    for user_id, group in merged.groupby("user_id"):
        group = group.sort_values("timestamp").tail(200)
        algorithm = ARCHETYPE_ALGORITHM[str(group.archetype.iloc[0])].replace("-", "_")
        policies.append({"user_id": int(user_id), "algorithm": algorithm, "learning_rate": 1e-3, "gamma": 0.99})
        rows = group.to_dict("records")
        for step, row in enumerate(rows):
            recent = rows[max(0, step - 5):step]
            hour = pd.Timestamp(row["timestamp"], unit="s").hour
            state = {"recent_items": [int(r["movie_id"]) for r in recent],
                     "recent_ratings": [float(r["rating"]) for r in recent],
                     "time_of_day": "morning" if hour < 12 else "afternoon" if hour < 18 else "evening", "step": step}
            last = step == len(rows) - 1
            terminal = last or rows[step + 1]["timestamp"] - row["timestamp"] > 30 * 86_400
            next_state = None if terminal else {**state, "step": step + 1}
            episodes.append({"user_id": int(user_id), "algorithm": algorithm, "state": state,
                             "action": int(row["movie_id"]), "reward": (row["rating"] - 1) / 4,
                             "next_state": next_state, "done": terminal})
    with open(SEED_OUT / "policies.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in policies)
    with open(SEED_OUT / "episodes.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in episodes)
    for algorithm in {p["algorithm"] for p in policies}:
        with open(SEED_OUT / f"replay_buffer_{algorithm}.jsonl", "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in episodes if e["algorithm"] == algorithm)
    return {"users": len(policies), "episodes": len(episodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice-users", type=int, default=10, help="percent of the users the seed's method runs on")
    parser.add_argument("--scale", default="25m", choices=SCALES, help="small: the tests' smoke run")
    parser.add_argument("--child", nargs=1, metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DATA, SCALE
    DATA, SCALE = CACHE / f"agentdb-data-{args.scale}", args.scale
    children = {"ours": ours, "changes": changes, "open": open_shards, "seed": lambda: seed(args.slice_users)}
    if child_or_prepare(args.child and args.child[0], children, prepare):
        return
    mine = run_child(__file__, "ours", "--scale", args.scale)
    changed = run_child(__file__, "changes", "--scale", args.scale)
    opened = run_child(__file__, "open", "--scale", args.scale)
    baseline = run_child(__file__, "seed", "--slice-users", str(args.slice_users), "--scale", args.scale)
    scale = 100 / args.slice_users
    scaled = {**baseline, "seconds": round(baseline["seconds"] * scale, 1), "cpu_s": round(baseline["cpu_s"] * scale, 1),
              "peak_rss_mb": round(baseline["peak_rss_mb"] * scale)}
    print(json.dumps({"benchmark": "agentdb", "cpu": cpu_model(), **compare(mine, scaled),
                      "stage_s": mine["stage_s"], "datasets_s": mine["datasets_s"],
                      "check_and_reconcile_s": mine["check_and_reconcile_s"], "verified": mine["verified"],
                      "verify_full_unchanged_s": changed["verify_full_unchanged_s"], "rerun_s": mine["rerun_s"],
                      "one_change_s": changed["one_change_s"], "one_change_verified": changed["one_change_verified"],
                      "one_change_written": changed["one_change_written"],
                      "tables": mine["tables"], "max_open_ms": opened["max_open_ms"], "shards": opened["shards"],
                      "seed_slice": {"percent": args.slice_users, "seconds": baseline["seconds"],
                                     "peak_rss_mb": baseline["peak_rss_mb"], "episodes": baseline["episodes"]}}))


if __name__ == "__main__":
    main()
