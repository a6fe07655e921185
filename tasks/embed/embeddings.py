"""Embeddings: text building, resumable and incremental HDF5 files, user vectors.

Files (h5py): datasets `ids` (UTF-8), `embeddings` (float32, N x D, chunked), `hashes` (uint64, a
content hash of each text); attributes model, dim, normalized, created_at. A file is written as
<name>.partial and renamed when complete: a run killed midway resumes from the last finished chunk
of the partial file, and a refresh re-encodes only texts whose hash changed or that are new.

User vectors: one sparse users x movies matrix of rating weights times the movie vectors, less the
centre (the same weighted mean over all ratings: the average taste), then L2 normalisation. A
refresh computes only the users whose ratings or rated movies' vectors changed. Weight rule:
w = (rating / 5)^2, in [0.01, 1], never zero or negative, so liked movies count most. Ratings of
movies without a vector are left out; users left with none get no vector and are counted in
stats.json.

Why the centre: the weighted mean of a few hundred movie vectors is close to every other user's
(at 25m scale all users lay within cosine distance ~0.0015, and an HNSW index could not find a
user's own vector); what tells users apart is how their taste differs from the average.

The model registry and loading are in tasks.embed.models.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from tasks.errors import StaleInputs
from tasks.files import atomic_output
from tasks.embed.models import EmbeddingError, embedding_dim, encode, spec_for
from tasks.ingest.movielens import natural_title

CHUNK_ROWS = 4096  # rows encoded and flushed per step; the unit of resume
PROGRESS_ROWS = 1024  # rows per encode call: progress is reported after each


# --- texts -------------------------------------------------------------------------------------

def movie_texts(processed: Path) -> pl.DataFrame:
    """media_id and text: "Title. (Year). Genres: a, b. Themes: top-10 genome tags" as in the seed, the
    title read naturally ("The Usual Suspects", not MovieLens' "Usual Suspects, The")."""
    movies = pl.read_parquet(processed / "movies.parquet", columns=["media_id", "title", "year", "genres"])
    genome = processed / "genome_scores.parquet"
    if genome.exists():
        themes = (pl.read_parquet(genome, columns=["media_id", "tag", "rank"]).sort("media_id", "rank")
                  .group_by("media_id", maintain_order=True).agg(themes=pl.col("tag").str.join(", ")))
        movies = movies.join(themes, on="media_id", how="left")
    else:
        movies = movies.with_columns(themes=pl.lit(None, pl.String))
    text = pl.concat_str([
        natural_title(pl.col("title")) + ".",
        pl.when(pl.col("year").is_not_null()).then(pl.format("({}).", pl.col("year"))),
        pl.when(pl.col("genres").list.len() > 0).then(pl.format("Genres: {}.", pl.col("genres").list.join(", "))),
        pl.when(pl.col("themes").is_not_null()).then(pl.format("Themes: {}", pl.col("themes"))),
    ], separator=" ", ignore_nulls=True)
    return movies.select(id="media_id", text=text)


def catalog_texts(catalog: Path) -> pl.DataFrame:
    return pl.read_parquet(catalog, columns=["id", "content_text"]).rename({"content_text": "text"})


def content_hashes(blobs: Iterable[bytes]) -> np.ndarray:
    """A 64-bit hash of each blob (stable across processes, unlike Python's hash)."""
    return np.frombuffer(b"".join(hashlib.blake2b(b, digest_size=8).digest() for b in blobs), dtype="<u8")


def text_hashes(texts: list[str]) -> np.ndarray:
    return content_hashes(t.encode() for t in texts)


def vectors_digest(vectors: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(vectors, dtype="<f4").tobytes(), digest_size=16).hexdigest()


def check_texts(frame: pl.DataFrame, source: str) -> None:
    empty = frame.filter(pl.col("text").is_null() | (pl.col("text").str.strip_chars() == ""))
    if empty.height:
        raise EmbeddingError(f"{source}: {empty.height} empty text(s), first id {empty['id'][0]!r}")
    duplicated = frame.filter(pl.col("id").is_duplicated())
    if duplicated.height:
        raise EmbeddingError(f"{source}: duplicate id {duplicated['id'][0]!r}")


# --- encoding into HDF5 --------------------------------------------------------------------------

def _open_partial(path: Path, ids: list[str], hashes: np.ndarray, model_name: str, dim: int) -> h5py.File:
    """The partial file to continue, if it is the same job; else a fresh one."""
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        try:
            f = h5py.File(partial, "r+")
            same = (f.attrs.get("model") == model_name and f["embeddings"].shape == (len(ids), dim)
                    and np.array_equal(f["hashes"][:], hashes))
            if same:
                return f
            f.close()
        except (OSError, KeyError):
            pass
        partial.unlink()
    f = h5py.File(partial, "w")
    f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    f.create_dataset("hashes", data=hashes)
    f.create_dataset("embeddings", shape=(len(ids), dim), dtype="float32",
                     chunks=(min(CHUNK_ROWS, max(len(ids), 1)), dim))
    f.create_dataset("done", data=np.zeros(len(ids), dtype=bool), chunks=True)
    f.attrs.update(model=model_name, dim=dim, normalized=True)
    return f


def _carried_over(path: Path, model_name: str, hashes: np.ndarray, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(target rows, source rows) whose vectors an existing complete file already holds."""
    if not path.exists():
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    with h5py.File(path, "r") as old:
        if old.attrs.get("model") != model_name:
            return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
        old_ids = [x.decode() if isinstance(x, bytes) else x for x in old["ids"][:]]
        old_hashes = old["hashes"][:]
    position = {key: row for row, key in enumerate(zip(old_ids, old_hashes.tolist()))}
    pairs = [(row, position[key]) for row, key in enumerate(zip(ids, hashes.tolist())) if key in position]
    if not pairs:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    target, source = map(np.array, zip(*pairs))
    return target, source


def encode_to_h5(frame: pl.DataFrame, path: Path, model, model_name: str, batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None, carry_from: Path | None = None,
                 inputs_digest: str | None = None) -> dict:
    """Encode frame (id, text) into `path`, taking the vectors of unchanged texts from `carry_from`
    (default: `path` itself). Returns counts: encoded, carried_over, resumed, and truncated (texts
    longer than the model's window, counted over the first 20,000 texts). `inputs_digest` seals the
    finished file (attributes inputs_digest and vectors_digest: see tasks.embed.shards)."""
    check_texts(frame, str(path))
    spec = spec_for(model_name, model)
    ids, texts = frame["id"].to_list(), frame["text"].to_list()
    hashes = text_hashes(texts)
    dim = embedding_dim(model)
    counts = {"rows": len(ids), "encoded": 0, "carried_over": 0, "resumed": 0}
    limit = model.max_seq_length
    tokenizer = model.tokenizer
    counts["truncated"] = int(sum(len(x) > limit for x in tokenizer(texts[:20_000], add_special_tokens=True,
                                                                       truncation=False)["input_ids"]))
    with _open_partial(path, ids, hashes, model_name, dim) as f:
        done = f["done"][:]
        counts["resumed"] = int(done.sum())
        carry_from = carry_from or path
        target, source = _carried_over(carry_from, model_name, hashes, ids)
        fresh = ~done[target] if len(target) else np.array([], dtype=bool)
        if fresh.any():
            with h5py.File(carry_from, "r") as old:
                _copy_rows(old["embeddings"], source[fresh], f["embeddings"], target[fresh])
            done[target[fresh]] = True
            f["done"][:] = done
            counts["carried_over"] = int(fresh.sum())
        todo = np.flatnonzero(~done)
        for start in range(0, len(todo), CHUNK_ROWS):
            rows = todo[start:start + CHUNK_ROWS]
            parts = []
            for piece in range(0, len(rows), PROGRESS_ROWS):  # a slow CPU takes minutes per chunk
                batch = [spec.passage_prefix + texts[i] for i in rows[piece:piece + PROGRESS_ROWS]]
                parts.append(encode(model, batch, batch_size))
                if progress:
                    progress(counts["encoded"] + min(piece + PROGRESS_ROWS, len(rows)), len(todo))
            _scatter_rows(f["embeddings"], rows, np.concatenate(parts))
            done[rows] = True
            f["done"][rows[0]:rows[-1] + 1] = done[rows[0]:rows[-1] + 1]
            f.flush()
            counts["encoded"] += len(rows)
        del f["done"]
        f.attrs["created_at"] = datetime.now(timezone.utc).isoformat()
        if inputs_digest:
            f.attrs.update(inputs_digest=inputs_digest, vectors_digest=vectors_digest(f["embeddings"][:]))
    path.with_name(path.name + ".partial").rename(path)
    return counts


def _copy_rows(src: h5py.Dataset, src_rows: np.ndarray, dst: h5py.Dataset, dst_rows: np.ndarray,
               block: int = 65_536) -> None:
    """dst[dst_rows] = src[src_rows], a block of destination rows at a time (h5py is slow at
    scattered point selections; a refresh mostly keeps row order, so each block reads one range)."""
    order = np.argsort(dst_rows)
    dst_rows, src_rows = dst_rows[order], src_rows[order]
    for lo in range(0, len(dst_rows), block):
        d, s = dst_rows[lo:lo + block], src_rows[lo:lo + block]
        values = src[s.min():s.max() + 1][s - s.min()]
        target = dst[d[0]:d[-1] + 1]
        target[d - d[0]] = values
        dst[d[0]:d[-1] + 1] = target


def _scatter_rows(dataset: h5py.Dataset, rows: np.ndarray, values: np.ndarray) -> None:
    """dataset[rows] = values for rows that lie close together (one chunk of work)."""
    lo, hi = int(rows.min()), int(rows.max()) + 1
    block = dataset[lo:hi]
    block[rows - lo] = values
    dataset[lo:hi] = block


@contextmanager
def open_vectors(path: Path) -> Iterator[h5py.File]:
    """An embeddings file (a set's index or a plain file such as users.h5), checked before anything
    reads it: readable, as many vectors as ids, vectors as wide as its dim attribute, and every part
    of an index present with the digest its manifest names. A reader would otherwise zip ids with
    fewer vectors, or read a missing part's rows as NaN."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StaleInputs(f"{path}: unreadable embeddings file ({exc}); rerun the embed stage") from exc
    with f:
        if "ids" not in f or "embeddings" not in f:
            raise StaleInputs(f"{path}: no 'ids' or no 'embeddings' dataset; rerun the embed stage")
        ids, (rows, width) = f["ids"].shape[0], f["embeddings"].shape
        if rows != ids:
            raise StaleInputs(f"{path}: {ids:,} ids but {rows:,} vectors; rerun the embed stage")
        if int(f.attrs.get("dim", width)) != width:
            raise StaleInputs(f"{path}: vectors are {width} wide, its dim attribute says {f.attrs['dim']}; "
                              "rerun the embed stage")
        for entry in json.loads(f.attrs.get("parts", "[]")):
            part = path.parent / entry["file"]
            try:
                with h5py.File(part, "r") as p:
                    intact = p.attrs.get("vectors_digest") == entry["vectors_digest"]
            except OSError:
                intact = False
            if not intact:
                raise StaleInputs(f"{path}: its part {part} is missing or was rewritten since the index was "
                                  "made; rerun the embed stage")
        yield f


def read_h5(path: Path) -> tuple[list[str], np.ndarray]:
    with open_vectors(path) as f:
        ids = [x.decode() if isinstance(x, bytes) else x for x in f["ids"][:]]
        return ids, f["embeddings"][:]


# --- user vectors --------------------------------------------------------------------------------

WEIGHTING = "(rating/5)^2, less the ratings' weighted mean"
# The centre moves a little with every rating: the stored one is kept (and so every unchanged user's
# vector) until the new one differs from it by more than this share of its length.
CENTRE_DRIFT = 0.01


def _previous_users(out: Path, model: str) -> tuple[dict[int, int], h5py.File | None]:
    """(user id -> row) and the open file of an earlier users.h5 made the same way; else nothing."""
    if not out.exists():
        return {}, None
    f = h5py.File(out, "r")
    if f.attrs.get("model") != model or f.attrs.get("weighting") != WEIGHTING or "centre" not in f:
        f.close()
        return {}, None
    return {int(u): row for row, u in enumerate(f["ids"].asstr()[:])}, f


def user_vectors(ratings: Path, media_h5: Path, out: Path, centre_drift: float = CENTRE_DRIFT) -> dict:
    """Rating-weighted mean of each user's movie vectors less the centre, one sparse product,
    L2-normalised.

    Incremental: each user's `hashes` entry sums a hash of (movie vector, rating) over their ratings,
    so it changes exactly when a rating or a rated movie's vector does. Users whose hash is the one in
    the earlier users.h5 keep their vector, as long as the earlier centre is kept (it is, until the
    new one drifts from it by more than `centre_drift`); only the others are computed (`computed`,
    `carried_over`, `centre_kept`)."""
    import scipy.sparse as sp

    media_ids, vectors = read_h5(media_h5)
    model = _attr(media_h5, "model")
    # Join on the integer movie id (media ids are "ml_<movieId>"), and index rows by user id
    # directly: no string keys and no sort over the 25M ratings.
    lookup = pl.DataFrame({"movie_id": [int(m.removeprefix("ml_")) for m in media_ids],
                           "col": np.arange(len(media_ids)),
                           "vector_hash": content_hashes(row.tobytes() for row in vectors)},
                          schema={"movie_id": pl.Int32, "col": pl.Int32, "vector_hash": pl.UInt64})
    frame = (pl.scan_parquet(ratings).select("user_id", "movie_id", "rating")
             .join(lookup.lazy(), on="movie_id", how="inner")
             .select("user_id", "col", weight=((pl.col("rating") / 5.0) ** 2).cast(pl.Float32),
                     rating_hash=pl.struct("vector_hash", "rating").hash(seed=0))
             .collect(engine="streaming"))
    # Sums wrap around in 64 bits: order-free, and one changed rating changes its user's sum.
    signature = frame.group_by("user_id").agg(pl.col("rating_hash").sum()).sort("user_id")
    ratings_used = frame.height
    users, hashes = signature["user_id"].to_numpy(), signature["rating_hash"].to_numpy()
    per_movie = frame.group_by("col").agg(pl.col("weight").sum())
    totals = np.zeros(len(media_ids), dtype=np.float64)
    totals[per_movie["col"].to_numpy()] = per_movie["weight"].to_numpy()
    centre = (totals @ vectors / max(totals.sum(), 1e-12)).astype(np.float32)
    previous, old = _previous_users(out, model)
    kept = np.zeros(len(users), dtype=bool)
    try:
        centre_kept = bool(previous) and bool(np.linalg.norm(centre - old["centre"][:]) <= centre_drift * max(
            float(np.linalg.norm(old["centre"][:])), 1e-12))
        if centre_kept:
            centre = old["centre"][:]
        else:
            previous = {}  # a new centre: every user is computed again
        if previous:
            rows = np.array([previous.get(int(u), -1) for u in users], dtype=np.int64)
            kept = (rows >= 0) & (old["hashes"][:][np.maximum(rows, 0)] == hashes)
        result = np.empty((len(users), vectors.shape[1]), dtype=np.float32)
        if kept.any():
            result[kept] = old["embeddings"][:][rows[kept]]
    finally:
        if old is not None:
            old.close()
    todo = users[~kept]
    part = frame.filter(pl.col("user_id").is_in(pl.Series(todo).implode())) if kept.any() else frame
    del frame
    user_id = part["user_id"].to_numpy()
    index = np.searchsorted(todo, user_id)  # rows of the users to compute, in id order
    matrix = sp.csr_matrix((part["weight"].to_numpy(), (index, part["col"].to_numpy())),
                           shape=(len(todo), len(media_ids)))
    del part, user_id, index
    weight_sums = np.asarray(matrix.sum(axis=1)).ravel()  # > 0: every rating weighs at least 0.01
    summed = np.asarray(matrix @ vectors, dtype=np.float32)
    summed /= weight_sums[:, None].astype(np.float32)  # the weighted mean
    summed -= centre
    norms = np.linalg.norm(summed, axis=1, keepdims=True)
    # A user exactly at the centre has no direction of their own: the average taste's.
    at_centre = norms[:, 0] < 1e-6
    summed[at_centre] = centre
    norms[at_centre] = max(float(np.linalg.norm(centre)), 1e-12)
    result[~kept] = summed / norms
    all_users = pl.scan_parquet(ratings).select(pl.col("user_id").n_unique()).collect().item()
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=np.array([str(u) for u in users], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=result, chunks=(min(CHUNK_ROWS, max(len(users), 1)), result.shape[1]))
        f.create_dataset("hashes", data=hashes)
        f.create_dataset("centre", data=centre)
        f.attrs.update(model=model, dim=result.shape[1], normalized=True, weighting=WEIGHTING,
                       created_at=datetime.now(timezone.utc).isoformat())
    return {"users": int(len(users)), "users_without_vector": int(all_users - len(users)),
            "ratings_used": ratings_used,
            "computed": int(len(todo)), "carried_over": int(kept.sum()), "centre_kept": centre_kept}


def _attr(path: Path, name: str) -> str:
    with h5py.File(path, "r") as f:
        return str(f.attrs.get(name, ""))


# --- quality metrics (seed 000) -------------------------------------------------------------------

def quality(path: Path, model=None, texts: list[str] | None = None, sample: int = 2_000, seed: int = 0) -> dict:
    """NaN/Inf, norms, per-dimension spread, unique ratio (of `sample` rows: over a 1M catalog the
    whole matrix's np.unique took the stage to 9.5 GB), and (given the model and texts) how much
    closer a near-duplicate text is than a random one."""
    _, vectors = read_h5(path)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False) if len(vectors) else []
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.array([0.0])
    metrics = {
        "rows": int(len(vectors)), "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
        "nan": int(np.isnan(vectors).sum()), "inf": int(np.isinf(vectors).sum()),
        "norm_min": float(norms.min()), "norm_max": float(norms.max()), "norm_mean": float(norms.mean()),
        "dim_std_min": float(vectors.std(axis=0).min()) if len(vectors) > 1 else 0.0,
        "dim_std_mean": float(vectors.std(axis=0).mean()) if len(vectors) > 1 else 0.0,
        "unique_ratio": float(len(np.unique(np.round(vectors[np.sort(pick)], 4), axis=0)) / max(len(pick), 1)),
    }
    if model is not None and texts and len(pick) > 1:
        chosen = [texts[i] for i in pick[:64]]
        near = [" ".join(t.split()[: max(1, int(len(t.split()) * 0.8))]) for t in chosen]
        a = vectors[pick[:64]]
        b = encode(model, near)
        other = vectors[rng.permutation(pick)[:len(a)]]
        metrics["near_duplicate_similarity"] = float((a * b).sum(axis=1).mean())
        metrics["random_pair_similarity"] = float((a * other).sum(axis=1).mean())
    return metrics
