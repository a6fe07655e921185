"""RL training data from the ratings, for AgentDB: episodes, one learning session per user, and
one replay buffer per algorithm. Polars window operations over the ratings sorted by user and time;
no rating ever becomes a Python object.

- Step: one rating, in time order (ties by movie id). The last STEP_CAP ratings of a user are kept:
  an agentdb session is one policy row that agentdb parses whole on every predict, and a user with
  8,000 ratings would make it megabytes; the most recent steps are what a policy serves now. At 25m
  scale this keeps 16.6M of the 25.0M ratings (users with more than 200 ratings lose their oldest).
- State: the last HISTORY items and their ratings (most recent first), the time of day of the step,
  and the step. Action: the item rated ("ml_<movieId>").
- Reward: (rating - 0.5) / 4.5, so 0.5 stars -> 0.0 and 5 stars -> 1.0: in [0, 1], never negative,
  increasing with the rating. Success: a rating of SUCCESS_RATING or more.
- Terminal: the user's last rating, or a gap of more than GAP_DAYS to the next; an episode is the
  steps up to a terminal one.
- Return: the discounted reward to the end of the episode, G_t = r_t + gamma G_{t+1} with the
  session's discount factor: the value Q(s_t, a_t) of agentdb's own Q-learning update at its fixed
  point on this chain (each state is visited once), and the value target of PPO and actor-critic.
  Return-to-go: the undiscounted rest of the episode's rewards, what a Decision Transformer is
  conditioned on.

Algorithms by archetype and their hyperparameters (seed-scripts-review.md): ALGORITHMS.
A replay buffer of an algorithm is what a FIFO buffer of its capacity holds after replaying the
history of that algorithm's sessions in time order: their most recent `buffer_size` transitions
(ties by session and step). A trainer samples minibatches of `batchSize` from it uniformly.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from tasks.errors import PipelineError

STEP_CAP = 200
HISTORY = 5
GAP_DAYS = 30
SUCCESS_RATING = 4.0
MIN_RATING, MAX_RATING = 0.5, 5.0

# agentdb session types (LearningSystem.sessionType); config keys as agentdb reads them (camelCase),
# extras that agentdb does not read go to the session's metadata.
ALGORITHMS = {
    "q-learning": {"config": {"learningRate": 0.1, "discountFactor": 0.95, "explorationRate": 0.1},
                   "extras": {"buffer_size": 10_000}},
    "sarsa": {"config": {"learningRate": 0.1, "discountFactor": 0.95, "explorationRate": 0.05},
              "extras": {"buffer_size": 10_000}},
    "dqn": {"config": {"learningRate": 1e-3, "discountFactor": 0.99, "explorationRate": 0.2, "batchSize": 32,
                       "targetUpdateFrequency": 1_000},
            "extras": {"buffer_size": 10_000}},
    "actor-critic": {"config": {"learningRate": 7e-4, "discountFactor": 0.99, "explorationRate": 0.1,
                                "batchSize": 64},
                     "extras": {"buffer_size": 10_000, "entropy_coef": 0.01, "value_coef": 0.5}},
    "ppo": {"config": {"learningRate": 3e-4, "discountFactor": 0.99, "explorationRate": 0.1, "batchSize": 64},
            "extras": {"buffer_size": 2_048, "clip_range": 0.2, "gae_lambda": 0.95, "epochs": 10}},
    "decision-transformer": {"config": {"learningRate": 1e-4, "discountFactor": 1.0, "explorationRate": 0.1,
                                        "batchSize": 64},
                             "extras": {"buffer_size": 10_000, "context_length": 20, "layers": 4, "heads": 4,
                                        "d_model": 128}},
}
ARCHETYPE_ALGORITHM = {
    "cinephile": "decision-transformer", "genre_specialist": "decision-transformer", "casual": "q-learning",
    "family": "actor-critic", "young_adult": "dqn", "senior": "sarsa", "international": "ppo",
}
Q_FAMILY = ("q-learning", "sarsa", "dqn")  # agentdb predicts from q_values; the others from avg_rewards

EPISODES = "agentdb/episodes.parquet"
SESSIONS = "agentdb/sessions.parquet"
BUFFERS = "agentdb/buffers.parquet"
RATINGS = "processed/ratings.parquet"
ROW_GROUP = 262_144  # rows per Parquet row group: a shard reads only its users' groups
USERS = "synthetic/users.parquet"
RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp", "time_of_day"]  # what the episodes read
USER_COLUMNS = ["user_id", "archetype"]


class BadRatings(PipelineError, ValueError):
    """A rating the episodes cannot use; the message names the file and the user."""


def session_id(user: pl.Expr) -> pl.Expr:
    return pl.lit("user-") + user.cast(pl.String)


def algorithm_table() -> pl.DataFrame:
    return pl.DataFrame({
        "algorithm": list(ALGORITHMS),
        "gamma": [a["config"]["discountFactor"] for a in ALGORITHMS.values()],
        "config": [json.dumps(a["config"], sort_keys=True) for a in ALGORITHMS.values()],
        "buffer_size": [a["extras"]["buffer_size"] for a in ALGORITHMS.values()],
    })


def user_algorithms(users: Path) -> pl.LazyFrame:
    """user_id, archetype, algorithm, gamma, config: one row per profile."""
    mapping = pl.DataFrame({"archetype": list(ARCHETYPE_ALGORITHM), "algorithm": list(ARCHETYPE_ALGORITHM.values())})
    frame = pl.scan_parquet(users).select(USER_COLUMNS).with_columns(pl.col("archetype").cast(pl.String))
    return frame.join(mapping.lazy(), on="archetype", how="left").join(algorithm_table().lazy(), on="algorithm",
                                                                        how="left")


def check_ratings(ratings: Path, users: Path) -> None:
    """Ratings inside MovieLens's scale and users with a known archetype, else name the file and user."""
    bad = (pl.scan_parquet(ratings).filter(~pl.col("rating").is_between(MIN_RATING, MAX_RATING)
                                           | pl.col("rating").is_null() | pl.col("timestamp").is_null())
           .select("user_id", "movie_id", "rating").head(1).collect())
    if len(bad):
        user, movie, rating = bad.row(0)
        raise BadRatings(f"{ratings}: user {user}, movie {movie}: rating {rating} is outside "
                         f"[{MIN_RATING}, {MAX_RATING}] or a field is empty")
    known = user_algorithms(users)
    orphans = (pl.scan_parquet(ratings).select("user_id").unique()
               .join(known.filter(pl.col("algorithm").is_not_null()), on="user_id", how="anti").collect())
    if len(orphans):
        raise BadRatings(f"{users}: {len(orphans):,} rating users have no profile with a known archetype "
                         f"(e.g. user {orphans['user_id'].min()}); rerun the synthetic stage")


def episodes(ratings: Path, users: Path, user_range: tuple[int, int] | None = None) -> pl.LazyFrame:
    """One row per step of every user's capped history (or of users in `user_range`, both ends
    included), typed (see the module's docstring). The recent items and ratings are fixed-width
    arrays, most recent first, null before the first step."""
    user = pl.col("user_id")
    rows = pl.scan_parquet(ratings)
    if user_range is not None:
        rows = rows.filter(user.is_between(*user_range))
    steps = (rows.select(RATING_COLUMNS)
             .sort("user_id", "timestamp", "movie_id")
             .filter(pl.int_range(pl.len()).reverse().over(user) < STEP_CAP))
    gap = pl.col("timestamp").shift(-1).over(user) - pl.col("timestamp")
    # concat_arr, not concat_list: 0.4 s against 9 s per column at 25m scale.
    recent = lambda c: pl.concat_arr([pl.col(c).shift(k).over(user) for k in range(1, HISTORY + 1)])  # noqa: E731
    frame = steps.with_columns(
        step=pl.int_range(pl.len(), dtype=pl.Int32).over(user),
        recent_items=recent("movie_id"), recent_ratings=recent("rating"),
        reward=(pl.col("rating").cast(pl.Float64) - MIN_RATING) / (MAX_RATING - MIN_RATING),
        terminal=gap.is_null() | (gap > GAP_DAYS * 86_400), success=pl.col("rating") >= SUCCESS_RATING,
        timestamp_ms=pl.col("timestamp") * 1000)
    closed = pl.col("terminal").cast(pl.Int32)
    frame = frame.with_columns(episode=(closed.cum_sum() - closed).over(user))
    frame = frame.join(user_algorithms(users).select("user_id", "gamma"), on="user_id", how="left",
                       maintain_order="left")
    # Returns within each episode, discounted from its first step: G_t = sum_k>=t gamma^(k-t) r_k.
    # An episode has at most STEP_CAP steps, so gamma^offset stays far from underflow.
    episode = [user, pl.col("episode")]
    weight = pl.col("gamma").pow((pl.col("step") - pl.col("step").min().over(episode)).cast(pl.Float64))
    frame = frame.with_columns(**{"return": (pl.col("reward") * weight).cum_sum(reverse=True).over(episode) / weight},
                               return_to_go=pl.col("reward").cum_sum(reverse=True).over(episode))
    return frame.select("user_id", "step", "episode", "movie_id", "rating", "reward", "success", "terminal",
                        "timestamp_ms", "time_of_day", "recent_items", "recent_ratings", "return", "return_to_go")


def write_episodes(ratings: Path, users: Path, out: Path, users_per_part: int = 40_000) -> int:
    """The episodes into one Parquet file, computed a range of users at a time: all 25M ratings at
    once peaked at 3.4 GB, parts of 40,000 users at about a quarter of it. Returns the rows."""
    last = pl.scan_parquet(ratings).select(pl.col("user_id").max()).collect().item() or 0
    written = 0
    writer = None
    try:
        for first in range(0, last + 1, users_per_part):
            part = episodes(ratings, users, (first, first + users_per_part - 1)).collect().to_arrow()
            writer = writer or pq.ParquetWriter(out, part.schema, compression="zstd", write_statistics=True)
            writer.write_table(part, row_group_size=ROW_GROUP)
            written += part.num_rows
        if writer is None:  # no ratings: an empty file with the columns
            episodes(ratings, users).collect().write_parquet(out)
    finally:
        if writer is not None:
            writer.close()
    return written


def sessions(episode_file: Path, users: Path) -> pl.LazyFrame:
    """One learning session per user with episodes: its algorithm, config and span."""
    spans = pl.scan_parquet(episode_file).group_by("user_id").agg(
        start_ms=pl.col("timestamp_ms").min(), last_ms=pl.col("timestamp_ms").max(), steps=pl.len(),
        episodes=pl.col("episode").max() + 1)
    return (spans.join(user_algorithms(users), on="user_id", how="left")
            .select(session_id(pl.col("user_id")).alias("session_id"), "user_id", "archetype", "algorithm", "config",
                    "start_ms", "last_ms", "steps", "episodes")
            .sort("user_id"))


def buffers(episode_file: Path, session_file: Path) -> pl.LazyFrame:
    """Per algorithm, the transitions its FIFO replay buffer holds (its newest buffer_size), oldest
    first. A transition is known by its user and step, not by a slot number: new transitions push
    out as many old ones and leave the others as they were."""
    steps = pl.scan_parquet(episode_file).select("user_id", "step", "timestamp_ms").join(
        pl.scan_parquet(session_file).select("user_id", "algorithm"), on="user_id")
    capacity = algorithm_table().select("algorithm", "buffer_size").lazy()
    newest = pl.int_range(pl.len()).over("algorithm", order_by=["timestamp_ms", "user_id", "step"], descending=True)
    kept = (steps.join(capacity, on="algorithm").with_columns(newest=newest)
            .filter(pl.col("newest") < pl.col("buffer_size")))
    return kept.sort("algorithm", "timestamp_ms", "user_id", "step").select("algorithm", "user_id", "step")
