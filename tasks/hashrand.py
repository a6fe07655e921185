"""Counter-based randomness: every value is a hash of (seed, stream, row key, draw number).

A row's values therefore depend only on the seed and its own key, never on how many rows there are
or how they are chunked, and whole columns come from a few NumPy operations.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 with good avalanche."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def stream_key(seed: int, stream: str) -> np.uint64:
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def bits(seed: int, stream: str, keys: np.ndarray, draws: int = 1) -> np.ndarray:
    """uint64 array of shape (len(keys), draws)."""
    base = _mix(np.asarray(keys).astype(np.uint64) ^ stream_key(seed, stream))
    with np.errstate(over="ignore"):
        counters = (np.arange(1, draws + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        return _mix(base[:, None] + counters)


def uniform(seed: int, stream: str, keys: np.ndarray, draws: int = 1) -> np.ndarray:
    """Floats in [0, 1), shape (len(keys), draws)."""
    return (bits(seed, stream, keys, draws) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def normal(seed: int, stream: str, keys: np.ndarray, draws: int = 1) -> np.ndarray:
    """Standard normal draws (Box-Muller), shape (len(keys), draws)."""
    u = uniform(seed, stream, keys, 2 * draws)
    return np.sqrt(-2.0 * np.log1p(-u[:, :draws])) * np.cos(2.0 * np.pi * u[:, draws:])


def choice(u: np.ndarray, weights) -> np.ndarray:
    """Index into `weights` for each uniform (inverse CDF)."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), len(cdf) - 1)


def ranked_lists(keys: np.ndarray, counts: np.ndarray, labels: pl.Series,
                 label_offsets: np.ndarray | None = None) -> pl.Series:
    """Row i: the labels of its `counts[i]` smallest keys (distinct picks, in key order).

    keys: (rows, width) sort keys, one per candidate; labels: the candidates' texts, indexed by
    column (plus label_offsets[i] when each row has its own block of candidates)."""
    most = int(counts.max()) if len(counts) else 0
    order = np.argsort(keys, axis=1)[:, :most]
    if label_offsets is not None:
        order = order + label_offsets[:, None]
    count_col = pl.lit(pl.Series(counts))
    parts = [pl.when(count_col > j).then(pl.lit(labels.gather(order[:, j]))) for j in range(most)]
    if not parts:
        return pl.Series([[]] * len(counts), dtype=pl.List(labels.dtype))
    return pl.select(pl.concat_list(parts).list.drop_nulls()).to_series()
