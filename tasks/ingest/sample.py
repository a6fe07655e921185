"""A generator of MovieLens-format releases: same files, headers, quoting and encoding as GroupLens's.

Nobody here can download a real release, so the default run, the tests and the full-scale
benchmarks use these. Shapes follow the real releases: long-tailed movie popularity and user
activity (every user has at least 20 ratings), the real half-star rating mix, timestamps across
the release's years, titles with years (and the odd forms real titles take), the real 20 genres.
Everything is vectorised with NumPy and written with Polars; the output depends only on the seed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl


SAMPLE_VERSION = "1"  # bump when the generator's output changes for a given seed
GENRES = [
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
NO_GENRES = "(no genres listed)"
# Relative frequency of each genre on MovieLens movies (drama and comedy dominate).
GENRE_WEIGHTS = np.array([7.3, 4.1, 2.9, 2.9, 16.9, 5.3, 5.6, 25.6, 3.0, 0.4, 7.0, 0.3, 1.0, 2.6, 7.7, 3.8,
                          8.1, 1.6, 1.1])
# Half-star mix of ml-25m's 25,000,095 ratings, 0.5 to 5.0.
RATING_VALUES = np.arange(1, 11) / 2
RATING_SHARES = np.array([393_068, 776_815, 399_490, 1_640_868, 1_262_797, 4_896_928, 3_177_318, 6_639_798,
                          2_200_539, 3_612_474], dtype=np.float64)

WORDS = (
    "night day love last first dark city river star secret war man woman girl boy story house world heart "
    "time king queen blood shadow fire ice summer winter road dream home lost return rising fall storm ghost "
    "island sea mountain garden stranger brother sister father mother child game silence light edge kingdom "
    "escape hunter wild golden broken silver iron glass paper letter promise memory journey moon sun empire"
).split()
TAG_WORDS = (
    "atmospheric twist ending dark comedy based on a book visually appealing thought-provoking funny "
    "sci-fi dystopia surreal great soundtrack cult film classic quirky romance violence nonlinear "
    "philosophical stylized inspirational feel-good slow suspense bittersweet satire noir space time travel "
    "world war ii psychology heist revenge friendship coming of age family animation superhero music "
    "religion politics mystery horror gore true story beautiful masterpiece boring overrated"
).split()


@dataclass(frozen=True)
class Scale:
    name: str
    users: int
    movies: int
    ratings: int
    tags: int
    tag_users: int
    genome_movies: int
    genome_tags: int
    first_ts: int
    last_ts: int
    max_movie_id: int


def _ts(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=timezone.utc).timestamp())


SCALES = {
    "small": Scale("small", users=610, movies=9_742, ratings=100_836, tags=3_683, tag_users=58, genome_movies=0,
                   genome_tags=0, first_ts=_ts(1996, 3, 29), last_ts=_ts(2018, 9, 24), max_movie_id=193_609),
    "25m": Scale("25m", users=162_541, movies=62_423, ratings=25_000_095, tags=1_093_360, tag_users=14_592,
                 genome_movies=13_816, genome_tags=1_128, first_ts=_ts(1995, 1, 9), last_ts=_ts(2019, 11, 21),
                 max_movie_id=209_171),
}


def _write_csv(frame: pl.DataFrame, path: Path) -> None:
    # GroupLens quotes a field only when it needs it, and writes "\n" line ends in UTF-8.
    frame.write_csv(path, quote_style="necessary", line_terminator="\n")


def _titles(rng: np.random.Generator, n: int, years: np.ndarray) -> list[str]:
    words = np.array(WORDS)
    lengths = rng.integers(1, 5, n)
    picks = rng.integers(0, len(words), (n, 4))
    kind = rng.random(n)
    titles = []
    for i in range(n):
        base = " ".join(w.capitalize() for w in words[picks[i, : lengths[i]]])
        year = int(years[i])
        if kind[i] < 0.04:  # the article moved to the end, as GroupLens does: "President, The (1995)"
            title = f"{base}, The ({year})"
        elif kind[i] < 0.06:  # an alternative title in parentheses
            title = f"{base} ({words[picks[i, 0]].capitalize()} {words[picks[i, 1]]}) ({year})"
        elif kind[i] < 0.07:  # quotes inside the title
            title = f"\"{base}\" {words[picks[i, 2]].capitalize()} ({year})"
        elif kind[i] < 0.075:  # a series with a year range
            title = f"{base} ({year}\u2013{year + int(rng.integers(1, 6))})"
        elif kind[i] < 0.082:  # no year at all
            title = base
        elif kind[i] < 0.09:  # trailing space, as some real titles have
            title = f"{base} ({year}) "
        else:
            title = f"{base} ({year})"
        titles.append(title)
    return titles


def _genres(rng: np.random.Generator, n: int) -> list[str]:
    counts = np.clip(rng.poisson(1.0, n) + 1, 1, 6)
    # Weighted sampling without replacement for every movie at once (Gumbel top-k).
    order = np.argsort(-(np.log(GENRE_WEIGHTS) + rng.gumbel(size=(n, len(GENRES)))), axis=1)
    none = rng.random(n) < 0.08
    return [NO_GENRES if none[i] else "|".join(GENRES[j] for j in sorted(order[i, : counts[i]])) for i in range(n)]


def _movies(rng: np.random.Generator, scale: Scale) -> pl.DataFrame:
    ids = np.sort(rng.choice(np.arange(1, scale.max_movie_id + 1), scale.movies, replace=False))
    ids[-1] = scale.max_movie_id
    # Most catalogued films are recent: release years fall off exponentially into the past.
    last_year = datetime.fromtimestamp(scale.last_ts, timezone.utc).year
    years = np.clip(last_year - rng.exponential(17, scale.movies), 1902, last_year).astype(int)
    return pl.DataFrame({
        "movieId": ids.astype(np.int64),
        "title": _titles(rng, scale.movies, years),
        "genres": _genres(rng, scale.movies),
    })


def _links(rng: np.random.Generator, movie_ids: np.ndarray) -> pl.DataFrame:
    n = len(movie_ids)
    imdb = rng.choice(np.arange(1, 9_999_999), n, replace=False)
    tmdb = rng.choice(np.arange(2, 700_000), n, replace=False).astype(np.float64)
    tmdb[rng.random(n) < 0.002] = np.nan  # a few movies have no TMDB id
    return pl.DataFrame({
        "movieId": movie_ids,
        "imdbId": [f"{i:07d}" for i in imdb],
        "tmdbId": pl.Series(tmdb).fill_nan(None).cast(pl.Int64),
    })


def _user_activity(rng: np.random.Generator, scale: Scale) -> np.ndarray:
    """Ratings per user: at least 20, log-normal tail, summing exactly to scale.ratings."""
    raw = rng.lognormal(mean=0.0, sigma=1.25, size=scale.users)
    extra_total = scale.ratings - 20 * scale.users
    cap = min(scale.movies // 3, 8_000) - 20
    extra = np.minimum(np.floor(raw / raw.sum() * extra_total), cap).astype(np.int64)
    short = extra_total - int(extra.sum())
    while short > 0:  # hand the rounding remainder to users below the cap
        room = np.flatnonzero(extra < cap)
        take = rng.choice(room, size=min(short, len(room)), replace=False)
        extra[take] += 1
        short -= len(take)
    return extra + 20


def _unique_pairs(rng: np.random.Generator, counts: np.ndarray, n_movies: int) -> tuple[np.ndarray, np.ndarray]:
    """(user index, movie index) pairs, `counts[u]` distinct movies per user, long-tailed popularity.

    Each round draws more candidates than each open user needs, as uint64 keys user * n_movies +
    movie, sorts them once and keeps each user's first `counts[u]` distinct movies (so a user who
    over-drew drops the least popular of their draws). Users short of distinct movies draw again,
    from scratch, with a larger surplus.
    """
    n = np.uint64(n_movies)
    open_users = np.arange(len(counts))
    surplus = 1.2
    done: list[np.ndarray] = []
    for round_ in range(20):
        if not len(open_users):
            break
        need = counts[open_users]
        users = np.repeat(open_users.astype(np.uint64), np.ceil(need * surplus).astype(np.int64) + 2)
        # popularity-weighted: index ~ N * U^3 puts most ratings on few movies; later rounds mix in uniform draws
        u01 = rng.random(len(users), dtype=np.float32)
        movies = (n_movies * (u01 ** 3.0 if round_ < 6 else u01)).astype(np.uint64)
        keys = np.sort(users * n + np.minimum(movies, n - np.uint64(1)))
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        user = (keys // n).astype(np.int64)
        rank = np.arange(len(user)) - np.searchsorted(user, user, side="left")
        distinct = np.bincount(user, minlength=len(counts))
        enough = distinct[user] >= counts[user]
        done.append(keys[enough & (rank < counts[user])])
        open_users = open_users[distinct[open_users] < need]
        surplus *= 1.6
    if len(open_users):
        raise RuntimeError(f"could not draw distinct movies for {len(open_users)} users")
    keys = np.concatenate(done)
    return (keys // n).astype(np.int64), (keys % n).astype(np.int64)


def _timestamps(rng: np.random.Generator, users: np.ndarray, n_users: int, scale: Scale) -> np.ndarray:
    span_all = scale.last_ts - scale.first_ts
    # Each user is active from a start time for a span: many rate everything in a day, some for years.
    start = scale.first_ts + (rng.random(n_users) ** 0.7) * span_all
    span = np.minimum(rng.exponential(0.04, n_users) * span_all, scale.last_ts - start)
    ts = start[users] + rng.random(len(users)) * span[users]
    return np.clip(ts, scale.first_ts, scale.last_ts).astype(np.int64)


def _ratings(rng: np.random.Generator, scale: Scale, movie_ids: np.ndarray, popularity: np.ndarray) -> pl.DataFrame:
    counts = _user_activity(rng, scale)
    u, m = _unique_pairs(rng, counts, len(movie_ids))
    # Each user has a leaning (generous or harsh): shift their draws on the half-star grid.
    shares = RATING_SHARES / RATING_SHARES.sum()
    grid = rng.choice(10, size=len(u), p=shares).astype(np.int16)
    bias = np.round(rng.normal(0, 0.6, len(counts))).astype(np.int16)
    shifted = np.clip(grid + np.where(rng.random(len(u)) < 0.25, bias[u], 0), 0, 9)
    return pl.DataFrame({
        "userId": (u + 1).astype(np.int64),
        "movieId": movie_ids[popularity[m]],
        "rating": RATING_VALUES[shifted],
        "timestamp": _timestamps(rng, u, len(counts), scale),
    }).sort("userId", "movieId")


def _tags(rng: np.random.Generator, scale: Scale, ratings: pl.DataFrame) -> pl.DataFrame:
    """Tags by a minority of users, on movies they rated, at about the time they rated them."""
    taggers = rng.choice(np.arange(1, scale.users + 1), scale.tag_users, replace=False)
    pool = ratings.filter(pl.col("userId").is_in(taggers.tolist()))
    rows = pool.sample(n=scale.tags, with_replacement=len(pool) < scale.tags, seed=int(rng.integers(2**31)))
    words = np.array(TAG_WORDS)
    picks = rng.integers(0, len(words), (scale.tags, 2))
    two = rng.random(scale.tags) < 0.3
    text = np.where(two, np.char.add(np.char.add(words[picks[:, 0]], " "), words[picks[:, 1]]), words[picks[:, 0]])
    return pl.DataFrame({
        "userId": rows["userId"],
        "movieId": rows["movieId"],
        "tag": text,
        "timestamp": rows["timestamp"] + rng.integers(0, 3600, scale.tags),
    }).with_columns(pl.col("timestamp").clip(upper_bound=scale.last_ts)).unique(
        ["userId", "movieId", "tag"], maintain_order=True).sort("userId", "movieId")


def _genome(rng: np.random.Generator, scale: Scale, movie_ids: np.ndarray,
            popularity: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    pairs = [f"{a} {b}" for a in TAG_WORDS for b in TAG_WORDS if a != b]
    tag_names = list(dict.fromkeys(TAG_WORDS + pairs))[: scale.genome_tags]  # unique, as genome tags are
    genome_tags = pl.DataFrame({"tagId": np.arange(1, scale.genome_tags + 1), "tag": tag_names})
    movies = np.sort(movie_ids[popularity[: scale.genome_movies]])  # the most-rated movies
    n = len(movies) * scale.genome_tags
    # Relevance: mostly low, a few strong tags per movie (about 4% above 0.5, as in the real genome).
    relevance = rng.beta(0.55, 3.6, n)
    scores = pl.DataFrame({
        "movieId": np.repeat(movies, scale.genome_tags),
        "tagId": np.tile(np.arange(1, scale.genome_tags + 1), len(movies)),
        "relevance": relevance,
    })
    return genome_tags, scores


def generate(scale_name: str, out: Path, seed: int = 42) -> Path:
    """Write a release into `out` (replaced whole, atomically); returns `out`."""
    scale = SCALES[scale_name]
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        movies = _movies(rng, scale)
        movie_ids = movies["movieId"].to_numpy()
        popularity = rng.permutation(len(movie_ids))  # popularity rank -> movie index
        _write_csv(movies, tmp / "movies.csv")
        _write_csv(_links(rng, movie_ids), tmp / "links.csv")
        ratings = _ratings(rng, scale, movie_ids, popularity)
        _write_csv(ratings, tmp / "ratings.csv")
        _write_csv(_tags(rng, scale, ratings), tmp / "tags.csv")
        del ratings
        if scale.genome_movies:
            genome_tags, scores = _genome(rng, scale, movie_ids, popularity)
            _write_csv(genome_tags, tmp / "genome-tags.csv")
            _write_csv(scores, tmp / "genome-scores.csv")
        (tmp / "README.txt").write_text(
            f"Synthetic MovieLens-format release ({scale.name} scale, seed {seed}) generated by "
            "flows.sample_movielens. Same files and formats as a GroupLens release; not real ratings.\n"
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
