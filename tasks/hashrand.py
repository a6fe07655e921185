"""Counter-based randomness: every value is a hash of (seed, stream, row key, draw number).

A row's values therefore depend only on the seed and its own key, never on how many rows there are
or how they are chunked, and whole columns come from a few NumPy operations.
"""

from __future__ import annotations

import hashlib

import numpy as np

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


def distinct_choices(u: np.ndarray, pool_size: int, counts: np.ndarray) -> list[list[int]]:
    """For each row, `counts[i]` distinct indices below pool_size (a permutation by sorted keys)."""
    order = np.argsort(u[:, :pool_size], axis=1)
    return [row[:k].tolist() for row, k in zip(order, counts)]
