"""AgentDB: episodes from the ratings, policies and buffers, the sharded store, and the real npm
package reading a shard."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from tasks.stores import episodes
from tasks.settings import Settings
from tasks.stores import agentdb
from tasks.stores.loading import ReconciliationFailed, check_store, load_store
from tasks.stores.sources import StaleInputs
from tasks.synthetic.datasets import ARCHETYPE_NAMES
from tests.agentdb import reader

DAY = 86_400


def write_inputs(folder: Path, ratings: list[tuple[int, int, float, int]], archetypes: dict[int, str]) -> Path:
    """A data dir with processed/ratings.parquet and synthetic/users.parquet of these rows."""
    (folder / "processed").mkdir(parents=True)
    (folder / "synthetic").mkdir(parents=True)
    frame = pl.DataFrame(ratings, schema={"user_id": pl.Int32, "movie_id": pl.Int32, "rating": pl.Float32,
                                          "timestamp": pl.Int64}, orient="row")
    times = ["night", "morning", "afternoon", "evening", "late_night"]
    frame.with_columns(time_of_day=pl.col("timestamp").map_elements(lambda t: times[(t // 3600) % 5],
                                                                    return_dtype=pl.String))\
        .write_parquet(folder / episodes.RATINGS)
    pl.DataFrame({"user_id": list(archetypes), "archetype": list(archetypes.values())},
                 schema={"user_id": pl.Int32, "archetype": pl.String}).write_parquet(folder / episodes.USERS)
    return folder


def oracle(ratings: list[tuple[int, int, float, int]], gammas: dict[int, float]) -> list[dict]:
    """The episodes by the definitions in tasks/stores/episodes.py, in plain Python."""
    rows = []
    for user in sorted({r[0] for r in ratings}):
        history = sorted((r for r in ratings if r[0] == user), key=lambda r: (r[3], r[1]))[-episodes.STEP_CAP:]
        steps, episode = [], 0
        for step, (_, movie, rating, ts) in enumerate(history):
            nxt = history[step + 1][3] if step + 1 < len(history) else None
            terminal = nxt is None or nxt - ts > episodes.GAP_DAYS * DAY
            before = history[max(0, step - episodes.HISTORY):step][::-1]
            steps.append({"user_id": user, "step": step, "episode": episode, "movie_id": movie,
                          "reward": (rating - 0.5) / 4.5, "terminal": terminal, "timestamp_ms": ts * 1000,
                          "recent_items": [b[1] for b in before], "recent_ratings": [b[2] for b in before]})
            episode += terminal
        for i in reversed(range(len(steps))):
            later = steps[i + 1] if i + 1 < len(steps) and not steps[i]["terminal"] else None
            steps[i]["return"] = steps[i]["reward"] + (gammas[user] * later["return"] if later else 0.0)
            steps[i]["return_to_go"] = steps[i]["reward"] + (later["return_to_go"] if later else 0.0)
        rows += steps
    return rows


T0 = 1_300_000_000
PLANTED = [
    # user 1: a gap of 40 days closes the first episode; two ratings at one time go by movie id.
    (1, 10, 0.5, T0), (1, 12, 5.0, T0 + DAY), (1, 11, 3.0, T0 + DAY), (1, 13, 4.0, T0 + 41 * DAY),
    (1, 14, 2.5, T0 + 42 * DAY),
    # user 2: more ratings than the cap, an hour apart: the oldest ones go.
    *[(2, 100 + i, 0.5 + (i % 10) / 2, T0 + i * 3600) for i in range(episodes.STEP_CAP + 7)],
    # user 3: one rating, terminal at once.
    (3, 7, 4.5, T0),
]
ARCHETYPES = {1: "casual", 2: "cinephile", 3: "family"}


def test_episodes_follow_the_definitions(tmp_path):
    data = write_inputs(tmp_path / "data", PLANTED, ARCHETYPES)
    got = episodes.episodes(data / episodes.RATINGS, data / episodes.USERS).collect()
    gammas = {u: episodes.ALGORITHMS[episodes.ARCHETYPE_ALGORITHM[a]]["config"]["discountFactor"]
              for u, a in ARCHETYPES.items()}
    expected = oracle(PLANTED, gammas)
    assert len(got) == len(expected) == 5 + episodes.STEP_CAP + 1
    for row, want in zip(got.iter_rows(named=True), expected, strict=True):
        assert row["recent_items"] == want["recent_items"] + [None] * (episodes.HISTORY - len(want["recent_items"]))
        padding = [None] * (episodes.HISTORY - len(want["recent_ratings"]))
        assert row["recent_ratings"] == want["recent_ratings"] + padding
        for key in ("user_id", "step", "episode", "movie_id", "terminal", "timestamp_ms"):
            assert row[key] == want[key], (key, row, want)
        for key in ("reward", "return", "return_to_go"):
            assert row[key] == pytest.approx(want[key], abs=1e-9), (key, row, want)
    user1 = got.filter(pl.col("user_id") == 1)
    assert user1["movie_id"].to_list() == [10, 11, 12, 13, 14]  # a tie in time goes by movie id
    assert user1["terminal"].to_list() == [False, False, True, False, True]  # the 40-day gap, the last rating
    assert user1["episode"].to_list() == [0, 0, 0, 1, 1]
    user2 = got.filter(pl.col("user_id") == 2)
    assert user2["movie_id"][0] == 107 and user2["step"].to_list() == list(range(episodes.STEP_CAP))  # capped
    assert got.filter(pl.col("user_id") == 3)["terminal"].to_list() == [True]


def test_reward_is_in_0_1_and_grows_with_the_rating(tmp_path):
    grid = [0.5 * k for k in range(1, 11)]
    data = write_inputs(tmp_path / "data", [(1, m, r, T0 + m) for m, r in enumerate(grid)], {1: "casual"})
    rewards = episodes.episodes(data / episodes.RATINGS, data / episodes.USERS).collect()["reward"].to_list()
    assert rewards[0] == 0.0 and rewards[-1] == 1.0
    assert all(a < b for a, b in zip(rewards, rewards[1:]))


def test_every_archetype_has_an_algorithm_that_agentdb_knows(tmp_path):
    known = {"q-learning", "sarsa", "dqn", "policy-gradient", "actor-critic", "ppo", "decision-transformer", "mcts",
             "model-based"}  # agentdb 1.6.1's LearningSession.sessionType
    assert set(episodes.ARCHETYPE_ALGORITHM) == set(ARCHETYPE_NAMES)
    assert set(episodes.ARCHETYPE_ALGORITHM.values()) <= known and set(episodes.ALGORITHMS) <= known
    assert len(set(episodes.ARCHETYPE_ALGORITHM.values())) == 6
    for algorithm in episodes.ALGORITHMS.values():
        assert {"learningRate", "discountFactor", "explorationRate"} <= set(algorithm["config"])
    data = write_inputs(tmp_path / "data", PLANTED, ARCHETYPES)
    episodes.episodes(data / episodes.RATINGS, data / episodes.USERS).collect().write_parquet(data / "episodes.parquet")
    sessions = episodes.sessions(data / "episodes.parquet", data / episodes.USERS).collect()
    assert dict(zip(sessions["user_id"], sessions["algorithm"])) == {1: "q-learning", 2: "decision-transformer",
                                                                    3: "actor-critic"}
    assert json.loads(sessions["config"][1]) == episodes.ALGORITHMS["decision-transformer"]["config"]


def test_a_bad_rating_or_a_user_without_profile_is_named(tmp_path):
    data = write_inputs(tmp_path / "a", [*PLANTED, (3, 8, 6.0, T0 + 5)], ARCHETYPES)
    with pytest.raises(episodes.BadRatings, match=r"ratings.parquet: user 3, movie 8: rating 6.0 is outside"):
        episodes.check_ratings(data / episodes.RATINGS, data / episodes.USERS)
    data = write_inputs(tmp_path / "b", PLANTED, {1: "casual", 2: "cinephile"})
    with pytest.raises(episodes.BadRatings, match=r"users.parquet: 1 rating users have no profile .* user 3"):
        episodes.check_ratings(data / episodes.RATINGS, data / episodes.USERS)


# --- the store ---------------------------------------------------------------------------------------

def settings_for(data: Path, shards: Path | None = None) -> Settings:
    return Settings(_env_file=None, data_dir=data, agentdb_users_per_shard=100, agentdb_dir=shards)


def shard_state(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.glob("*.sqlite"))}


def stored_rows(folder: Path) -> Counter:
    """Every row of every shard (without agentdb's autoincrement ids), as (file, table, values)."""
    rows = Counter()
    for path in sorted(folder.glob("*.sqlite")):
        with sqlite3.connect(path) as db:
            for table, columns in agentdb.COLUMNS.items():
                rows.update((path.name, table, *r) for r in db.execute(f"SELECT {', '.join(columns)} FROM {table}"))
    return rows


def test_store_is_exact_idempotent_deterministic_and_updates_only_changed_rows(store_data, tmp_path):
    settings = settings_for(store_data)
    folder = settings.agentdb_target()
    summary = load_store(settings, "agentdb", lambda m: None, verify="full")  # reconciles every id
    assert summary["status"] == "loaded" and summary["verified"].startswith("full")
    steps = pl.read_parquet(store_data / episodes.EPISODES)
    slots = pl.read_parquet(store_data / episodes.BUFFERS)
    users = steps["user_id"].n_unique()
    tables = summary["tables"]
    assert tables["learning_experiences"]["rows"] == len(steps) + len(slots)
    assert tables["learning_sessions"]["rows"] == users + slots["algorithm"].n_unique()
    assert tables["learning_policies"]["rows"] == tables["learning_state_embeddings"]["rows"] == users
    first = shard_state(folder)
    assert len(first) == (steps["user_id"].max() // 100) + 2  # user shards and the buffers

    # Every experience as the episodes say, with agentdb's rules.
    with sqlite3.connect(folder / "shard-00000.sqlite") as db:
        rows = db.execute("SELECT session_id, action, reward, next_state, success, timestamp, metadata "
                          "FROM learning_experiences WHERE session_id = 'user-1' ORDER BY id").fetchall()
        session = db.execute("SELECT session_type, config, status FROM learning_sessions WHERE id = 'user-1'").fetchone()
        policy = db.execute("SELECT q_values, avg_rewards, visit_counts FROM learning_policies "
                            "WHERE session_id = 'user-1'").fetchone()
    user1 = steps.filter(pl.col("user_id") == 1)
    assert [r[1] for r in rows] == [f"ml_{m}" for m in user1["movie_id"]]
    assert [r[2] for r in rows] == user1["reward"].to_list()
    assert [r[5] for r in rows] == user1["timestamp_ms"].to_list()
    for row, terminal in zip(rows, user1["terminal"], strict=True):
        meta = json.loads(row[6])
        assert (row[3] is None) == terminal and meta.get("terminal", False) == terminal
        assert "|" not in row[1]
    assert session[2] == "active" and set(json.loads(session[1])) >= {"learningRate", "discountFactor"}
    maps = [json.loads(m) for m in policy]
    assert len(maps[2]) == len(user1) and all(v == 1 for v in maps[2].values())
    assert (len(maps[0]), len(maps[1])) == ((len(user1), 0) if session[0] in episodes.Q_FAMILY else (0, len(user1)))

    # Unchanged inputs: nothing is rewritten.
    assert load_store(settings, "agentdb", lambda m: None)["status"] == "unchanged"
    assert shard_state(folder) == first
    # Deterministic: the same inputs elsewhere give the same bytes.
    elsewhere = settings_for(store_data, tmp_path / "elsewhere")
    load_store(elsewhere, "agentdb", lambda m: None)
    assert elsewhere.agentdb_target() == tmp_path / "elsewhere" / elsewhere.dataset_namespace  # a folder per dataset
    assert {n: s[1] for n, s in shard_state(elsewhere.agentdb_target()).items()} == {n: s[1] for n, s in first.items()}

    # One user's new rating: in that user's shard only the user's session (its rows replaced, in step
    # order), and in the buffers the transitions that changed; the result is what a load from
    # nothing writes.
    ratings = pl.read_parquet(store_data / episodes.RATINGS)
    user = int(steps["user_id"].max())  # in the last user shard
    newest = ratings.filter(pl.col("user_id") == user).sort("timestamp").tail(1)
    ratings = pl.concat([ratings, newest.with_columns(movie_id=pl.lit(999_999, dtype=pl.Int32),
                                                      timestamp=pl.col("timestamp") + 60)])
    ratings.write_parquet(store_data / episodes.RATINGS)
    old_rows = stored_rows(folder)
    stray = [folder / "shard-09999.sqlite", folder / ".shard-00000.sqlite.tmp"]  # as a killed load leaves them
    for path in stray:
        path.write_bytes(b"half")
    summary = load_store(settings, "agentdb", lambda m: None)
    assert not any(path.exists() for path in stray)
    after = shard_state(folder)
    changed = {name for name in after if after[name] != first[name]}
    assert changed == {f"shard-{user // 100:05d}.sqlite", agentdb.BUFFER_FILE}
    new_rows = stored_rows(folder)
    fresh = settings_for(store_data, tmp_path / "fresh")
    load_store(fresh, "agentdb", lambda m: None)
    assert new_rows == stored_rows(fresh.agentdb_target())
    session = f"user-{user}"
    user_steps = len(pl.read_parquet(store_data / episodes.EPISODES).filter(pl.col("user_id") == user))
    buffer_changes = sum(n for row, n in (new_rows - old_rows).items() if row[0] == agentdb.BUFFER_FILE
                         and row[1] == "learning_experiences")
    assert 1 <= buffer_changes < 20  # the new transition, and the user's last one, no longer terminal
    written = {t: r["written"] for t, r in summary["tables"].items()}
    assert written["learning_experiences"] == user_steps + buffer_changes
    assert written["learning_policies"] == written["learning_state_embeddings"] == 1
    assert 1 <= written["learning_sessions"] <= 2  # the user's (steps) and its buffer's (span), if that changed
    untouched = {row: n for row, n in new_rows.items() if session not in row and row[0] != agentdb.BUFFER_FILE}
    assert all(old_rows[row] == n for row, n in untouched.items())
    assert summary["tables"]["learning_experiences"]["rows"] == tables["learning_experiences"]["rows"] + (
        len(steps.filter(pl.col("user_id") == user)) < episodes.STEP_CAP)

    # A truncated shard: the check names it; the next load rewrites only it.
    victim = folder / "shard-00001.sqlite"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    store = agentdb.open_store(settings)
    with pytest.raises(agentdb.CorruptShard, match=str(victim)):
        check_store(store, store_data)
    assert load_store(settings, "agentdb", lambda m: None)["status"] == "loaded"
    healed = shard_state(folder)
    assert {n for n in healed if healed[n] != after[n]} == {victim.name}
    assert healed[victim.name][1] == after[victim.name][1]


def test_a_load_verifies_counts_and_a_fixed_sample_that_names_a_wrong_row(store_data):
    """The default verification reads back a fixed sample of users and the buffers, not every id; a
    row the writer got wrong in a sampled user's session (the manifest's digest of the file updated
    with it, so that only the comparison with the sources can see it) is named."""
    settings = settings_for(store_data)
    summary = load_store(settings, "agentdb", lambda m: None)
    figures = json.loads((store_data / "stores" / "agentdb.json").read_text())
    held = sum(t["store"] for t in figures["tables"].values())
    assert figures["verification"] == "sample" and summary["verified"] == \
        f"sample: {figures['read_back']:,} elements read back and compared"
    assert 0 < figures["read_back"] < held and figures["differing"] == figures["missing_ids"] == 0
    users = pl.read_parquet(store_data / episodes.SESSIONS)["user_id"]
    sampled = users.sort().filter(users.sort().hash(seed=agentdb.SAMPLE_SEED).rank("ordinal") == 1).item()
    store = agentdb.open_store(settings)
    path = store.folder / f"shard-{sampled // 100:05d}.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("UPDATE learning_experiences SET reward = 0.123 WHERE rowid = "
                   "(SELECT min(rowid) FROM learning_experiences WHERE session_id = ?)", (f"user-{sampled}",))
    manifest = json.loads((store.folder / agentdb.MANIFEST).read_text())
    manifest["shards"][path.name].update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (store.folder / agentdb.MANIFEST).write_text(json.dumps(manifest))
    verification = store.verify_sample(store_data, store.counts())
    assert verification["learning_experiences"]["differ_sample"] == [f"user-{sampled}"]
    assert sum(r["differ"] for r in verification.values()) == 1
    with pytest.raises(ReconciliationFailed, match=f"learning_experiences: 1 of .* differ .*user-{sampled}"):
        check_store(store, store_data, settings, verification)


def test_an_unreadable_source_is_named_and_nothing_is_written(store_data):
    settings = settings_for(store_data)
    ratings, vectors = store_data / episodes.RATINGS, store_data / agentdb.USER_VECTORS
    whole, vector_bytes = ratings.read_bytes(), vectors.read_bytes()
    cases = [(ratings, whole[: len(whole) // 2], "unreadable Parquet file"),
             (ratings, None, "no column time_of_day"),
             (vectors, vector_bytes[: len(vector_bytes) // 2], "unreadable embeddings file")]
    for path, content, message in cases:
        if content is None:
            pl.read_parquet(ratings).drop("time_of_day").write_parquet(ratings)
        else:
            path.write_bytes(content)
        with pytest.raises(StaleInputs, match=f"{path}: {message}"):
            load_store(settings, "agentdb", lambda m: None)
        written = {p.name for p in (store_data / "agentdb").rglob("*.*")} if (store_data / "agentdb").exists() else set()
        assert written <= {agentdb.DATASET_FILE}  # at most the claim of the namespace: no dataset, no shard
        ratings.write_bytes(whole)
        vectors.write_bytes(vector_bytes)
    # An extra, empty column is not read.
    pl.read_parquet(ratings).with_columns(extra=pl.lit(None, dtype=pl.String)).write_parquet(ratings)
    assert load_store(settings, "agentdb", lambda m: None)["status"] == "loaded"


# --- the real agentdb ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def agentdb_reader() -> Path:
    try:
        return reader.install()
    except reader.ReaderUnavailable as exc:
        pytest.fail(str(exc))


def test_the_real_agentdb_reads_a_shard_as_python_wrote_it(store_data, agentdb_reader):
    settings = settings_for(store_data)
    load_store(settings, "agentdb", lambda m: None)
    steps = pl.read_parquet(store_data / episodes.EPISODES)
    sessions = pl.read_parquet(store_data / episodes.SESSIONS)
    shard = settings.agentdb_target() / "shard-00000.sqlite"
    with sqlite3.connect(shard) as db:
        latest = dict(db.execute("SELECT session_id, state FROM learning_state_embeddings").fetchall())
    checked = set()
    for row in sessions.filter(pl.col("user_id") < 100).iter_rows(named=True):
        family = "q" if row["algorithm"] in episodes.Q_FAMILY else "avg"
        last = steps.filter(pl.col("user_id") == row["user_id"]).tail(1).row(0, named=True)
        value = round(last["return"] if family == "q" else last["reward"], agentdb.DIGITS)
        if family in checked or value <= 0 or row["session_id"] not in latest:
            continue
        got = reader.read(agentdb_reader, shard, row["session_id"], latest[row["session_id"]])
        mine = steps.filter(pl.col("user_id") == row["user_id"])
        overall = got["metrics"]["overall"]
        assert overall["totalEpisodes"] == len(mine)
        assert overall["avgReward"] == pytest.approx(mine["reward"].mean(), abs=1e-9)
        assert overall["successRate"] == pytest.approx(mine["success"].mean(), abs=1e-9)
        assert (overall["minReward"], overall["maxReward"]) == pytest.approx((mine["reward"].min(), mine["reward"].max()))
        # From the user's latest state, the policy knows one action: the item the user rated there.
        assert got["prediction"]["action"] == f"ml_{last['movie_id']}"
        assert got["prediction"]["qValue"] == pytest.approx(value, abs=1e-9)
        assert got["embedded"] == 1  # the user's vector, read from the shard, not computed by agentdb
        checked.add(family)
        if checked == {"q", "avg"}:
            break
    assert checked == {"q", "avg"}  # a Q-family session and an average-reward one
