"""What the stores load, read from the data dir the same way for every store.

Vector sets pair an embeddings file with the fields a search filters on:
- media: embeddings/media.h5 + processed/movies.parquet (title, year, genres) + the platforms that
  list the movie (synthetic/availability.parquet);
- catalog: embeddings/catalog.h5 + synthetic/media_catalog.parquet (type, title, creation year, tags);
- users: embeddings/users.h5 + synthetic/users.parquet (archetype, country).
Vectors are streamed from the HDF5 file in chunks: the 1M x 384 catalog matrix is never in memory
at once. A vector without metadata, or metadata without a vector, is an error (stale embeddings),
never a silent drop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tasks.embed.embeddings import open_vectors
from tasks.errors import StaleInputs


@dataclass(frozen=True)
class VectorSet:
    name: str  # media | catalog | users
    h5: str  # under the data dir
    fields: dict[str, str]  # filter field -> its type: str, int, list (of strings)

    def path(self, data: Path) -> Path:
        return Path(data) / self.h5


VECTOR_SETS = {s.name: s for s in [
    VectorSet("media", "embeddings/media.h5",
              {"title": "str", "year": "int", "genres": "list", "platforms": "list"}),
    VectorSet("catalog", "embeddings/catalog.h5", {"type": "str", "title": "str", "year": "int", "tags": "list"}),
    VectorSet("users", "embeddings/users.h5", {"archetype": "str", "country": "str"}),
]}

MISSING_YEAR = 0  # Milvus has no NULL in a filterable int field: a movie without a year is year 0


def h5_ids(path: Path) -> list[str]:
    with open_vectors(path) as f:
        return [x.decode() if isinstance(x, bytes) else x for x in f["ids"][:]]


def check_parquet(path: Path, columns: list[str]) -> None:
    """A Parquet source that can be read (a truncated file has lost its footer) and has the columns
    a store reads, else StaleInputs naming it: polars' own errors name neither the file nor its stage."""
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise StaleInputs(f"{path}: unreadable Parquet file ({reason}); rerun the stage that writes it") from exc
    missing = [c for c in columns if c not in schema]
    if missing:
        raise StaleInputs(f"{path}: no column {', '.join(missing)}; rerun the stage that writes it")


def h5_rows(path: Path) -> int:
    with open_vectors(path) as f:
        return int(f["ids"].shape[0])


def h5_dim(path: Path) -> int:
    with open_vectors(path) as f:
        return int(f["embeddings"].shape[1])


def h5_model(path: Path) -> str:
    with open_vectors(path) as f:
        return str(f.attrs.get("model", ""))


def _media_fields(data: Path) -> pl.DataFrame:
    movies = pl.read_parquet(data / "processed" / "movies.parquet", columns=["media_id", "title", "year", "genres"])
    availability = data / "synthetic" / "availability.parquet"
    if availability.exists():
        platforms = (pl.read_parquet(availability, columns=["media_id", "platform_id"])
                     .group_by("media_id").agg(platforms=pl.col("platform_id").sort()))
        movies = movies.join(platforms, on="media_id", how="left")
    else:
        movies = movies.with_columns(platforms=pl.lit(None, pl.List(pl.String)))
    return movies.rename({"media_id": "id"})


def _catalog_fields(data: Path) -> pl.DataFrame:
    return pl.read_parquet(data / "synthetic" / "media_catalog.parquet",
                           columns=["id", "type", "title", "creation_date", "tags"]).select(
        "id", "type", "title", year=pl.col("creation_date").dt.year(), tags="tags")


def _user_fields(data: Path) -> pl.DataFrame:
    return pl.read_parquet(data / "synthetic" / "users.parquet", columns=["user_id", "archetype", "country"]).select(
        id=pl.col("user_id").cast(pl.String), archetype=pl.col("archetype").cast(pl.String), country="country")


FIELD_READERS = {"media": _media_fields, "catalog": _catalog_fields, "users": _user_fields}


def vector_fields(data: Path, vector_set: VectorSet) -> pl.DataFrame:
    """The filter fields of every embedded id, in the HDF5 file's row order (no nulls: empty lists, year 0)."""
    path = vector_set.path(data)
    ids = pl.DataFrame({"id": h5_ids(path)}, schema={"id": pl.String})
    fields = FIELD_READERS[vector_set.name](Path(data))
    joined = ids.join(fields, on="id", how="left", maintain_order="left")
    types = vector_set.fields
    present = joined.select(pl.all_horizontal(pl.col(c).is_not_null() for c in types if types[c] == "str"))
    orphans = joined.filter(~present.to_series())["id"]
    if len(orphans):
        raise StaleInputs(f"{path}: {len(orphans):,} embedded ids have no row in their dataset "
                          f"(e.g. {', '.join(orphans.head(3))}); rerun the embed stage")
    unembedded = fields.join(ids, on="id", how="anti")["id"]
    if vector_set.name != "users" and len(unembedded):  # a user without rated, embedded movies has no vector
        raise StaleInputs(f"{path}: {len(unembedded):,} ids of its dataset have no vector "
                          f"(e.g. {', '.join(unembedded.head(3))}); rerun the embed stage")
    return joined.with_columns(
        [pl.col(c).fill_null(MISSING_YEAR).cast(pl.Int32) for c, t in types.items() if t == "int"]
        + [pl.col(c).fill_null([]).cast(pl.List(pl.String)) for c, t in types.items() if t == "list"])


def row_digests(fields: pl.DataFrame, vectors: np.ndarray) -> np.ndarray:
    """A 63-bit digest of each row's fields and vector: what a store compares to skip unchanged rows."""
    text = fields.select(pl.struct(pl.all()).struct.json_encode())
    out = np.empty(len(vectors), dtype=np.int64)
    for i, (row, vector) in enumerate(zip(text.to_series(), vectors)):
        h = hashlib.blake2b(row.encode(), digest_size=8)
        h.update(np.ascontiguousarray(vector, dtype="<f4").tobytes())
        out[i] = int.from_bytes(h.digest(), "little") >> 1
    return out


def vector_batches(data: Path, vector_set: VectorSet, rows: int,
                   digests: bool = True) -> Iterator[tuple[pl.DataFrame, np.ndarray]]:
    """(fields, vectors) chunks in file order, `rows` at a time; fields include `id`, and `digest`
    unless digests is False (a store that compares rows itself)."""
    fields = vector_fields(data, vector_set)
    with open_vectors(vector_set.path(data)) as f:
        matrix = f["embeddings"]
        for start in range(0, len(fields), rows):
            chunk = fields.slice(start, rows)
            vectors = matrix[start:start + len(chunk)]
            yield (chunk.with_columns(digest=pl.Series(row_digests(chunk, vectors))) if digests else chunk), vectors


@dataclass(frozen=True)
class Keys:
    """Where a table's source ids are: an embeddings file's ids, or key columns of a Parquet file."""

    file: str  # under the data dir
    columns: tuple[str, ...] = ()

    def read(self, data: Path) -> pl.Series:
        path = Path(data) / self.file
        if path.suffix == ".h5":
            return pl.Series("id", h5_ids(path), dtype=pl.String)
        frame = pl.read_parquet(path, columns=list(self.columns))
        return frame.select(pl.concat_str([pl.col(c).cast(pl.String) for c in self.columns], separator="/"))\
            .to_series().alias("id")
