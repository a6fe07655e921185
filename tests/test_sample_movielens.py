"""The MovieLens-format generator: GroupLens's files and formats, realistic shapes, deterministic."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from tasks.ingest.sample import GENRES, NO_GENRES, RATING_SHARES, SCALES, _unique_pairs, _user_activity, generate
from tests.conftest import ROOT

HEADERS = {
    "movies.csv": "movieId,title,genres",
    "ratings.csv": "userId,movieId,rating,timestamp",
    "tags.csv": "userId,movieId,tag,timestamp",
    "links.csv": "movieId,imdbId,tmdbId",
}


def test_small_release_shape(small_release):
    assert sorted(p.name for p in small_release.glob("*.csv")) == sorted(HEADERS)
    for name, header in HEADERS.items():
        assert (small_release / name).read_text(encoding="utf-8").splitlines()[0] == header
    ratings = pl.read_csv(small_release / "ratings.csv")
    movies = pl.read_csv(small_release / "movies.csv")
    scale = SCALES["small"]
    assert ratings.height == scale.ratings and movies.height == scale.movies
    assert ratings["userId"].n_unique() == scale.users
    assert ratings.group_by("userId").len()["len"].min() >= 20  # as in MovieLens: every user rated 20+
    assert ratings.select("userId", "movieId").is_duplicated().sum() == 0
    assert ratings["movieId"].is_in(movies["movieId"].implode()).all()
    assert ratings["timestamp"].is_between(scale.first_ts, scale.last_ts).all()
    assert abs(pl.read_csv(small_release / "tags.csv").height - scale.tags) < scale.tags * 0.05
    # The half-star mix stays close to ml-25m's.
    shares = ratings["rating"].value_counts(normalize=True).sort("rating")["proportion"].to_numpy()
    assert np.abs(shares - RATING_SHARES / RATING_SHARES.sum()).max() < 0.05
    # Long tail: the top 10% of movies hold far more than 10% of the ratings.
    per_movie = ratings.group_by("movieId").len().sort("len", descending=True)["len"]
    assert per_movie.head(per_movie.len() // 10).sum() > 0.35 * ratings.height
    genres = set("|".join(movies["genres"]).split("|"))
    assert genres <= set(GENRES) | {NO_GENRES}
    assert movies["title"].str.contains(r"\(\d{4}\)\s*$").mean() > 0.9


def test_titles_are_quoted_as_grouplens_does(small_release):
    lines = (small_release / "movies.csv").read_text(encoding="utf-8").splitlines()[1:]
    with_comma = [line for line in lines if ", The (" in line]
    assert with_comma and all(line.split(",", 1)[1].startswith('"') for line in with_comma)
    parsed = list(csv.reader(lines))
    assert all(len(row) == 3 for row in parsed)
    assert any('"' in row[1] for row in parsed)  # titles with quotes inside survive the quoting


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (generate("small", tmp_path / name, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    for name in HEADERS:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "ratings.csv").read_bytes() != (c / "ratings.csv").read_bytes()


def test_25m_activity_and_pairs_at_full_counts():
    scale = SCALES["25m"]
    counts = _user_activity(np.random.default_rng(1), scale)
    assert counts.sum() == scale.ratings == 25_000_095 and len(counts) == 162_541 and counts.min() >= 20
    # Distinct pairs for the heaviest users, at full scale but for a slice of users.
    heavy = np.sort(counts)[-300:]
    users, movies = _unique_pairs(np.random.default_rng(2), heavy, scale.movies)
    assert np.array_equal(np.bincount(users, minlength=len(heavy)), heavy)
    assert len(np.unique(users * scale.movies + movies)) == len(users)


def test_cli_writes_a_release(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.sample_movielens", "--scale", "small", "--out",
                             str(tmp_path / "rel"), "--seed", "5"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ratings.csv" in result.stdout and (tmp_path / "rel" / "README.txt").exists()


def test_generation_replaces_a_release_atomically(tmp_path, monkeypatch):
    out = generate("small", tmp_path / "rel", seed=1)
    before = (out / "ratings.csv").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("tasks.ingest.sample._tags", boom)
    with pytest.raises(RuntimeError):
        generate("small", out, seed=2)
    assert (out / "ratings.csv").read_bytes() == before
    assert not list(tmp_path.glob(".rel.tmp-*"))
