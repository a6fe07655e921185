"""Embedding sets as shards: the unit of work of the embed stage, in this process or on a work pool.

Layout of a set (media, catalog) under DATA_DIR/embeddings/:
- <set>/texts.parquet: every text to embed (id, text), in the set's order (movies by movie id, the
  catalog by id): what the shards read, so that a worker never rebuilds texts.
- <set>/part-NNNNN.h5: one shard, contiguous rows [start, stop) of texts.parquet, in the layout of
  tasks.embed.embeddings (ids, hashes, embeddings) plus the attributes `inputs_digest` (its ids, texts
  and model) and `vectors_digest` (its vectors as written).
- <set>.h5: the set's index, the one file every reader opens: ids and hashes, and `embeddings` an HDF5
  virtual dataset over the parts' vectors (never a second copy of the matrix); its `parts` attribute is
  the manifest (file, rows, both digests of each part).

The split depends only on the texts and the shard size: the same inputs give the same shards on every
run. A part whose inputs digest and model match its shard is finished and is skipped; a part that
cannot be read or whose vectors no longer match their digest is corrupt and is embedded again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import polars as pl

from tasks.embed.embeddings import check_texts, text_hashes, vectors_digest
from tasks.errors import StaleInputs
from tasks.files import atomic_output


@dataclass(frozen=True)
class Shard:
    set: str
    index: int
    start: int
    stop: int
    digest: str  # of its ids, texts and the model: what a finished part must carry

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def part(self, embeddings: Path) -> Path:
        return embeddings / self.set / f"part-{self.index:05d}.h5"

    @classmethod
    def of(cls, value: dict) -> Shard:
        return cls(**value)


def prepare(embeddings: Path, name: str, texts: pl.DataFrame, model: str,
            shard_rows: int) -> list[Shard]:
    """Write the set's texts.parquet (when its content changed) and return its shards."""
    check_texts(texts, f"{name} texts")
    folder = embeddings / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "texts.parquet"
    if not path.exists() or not pl.read_parquet(path).equals(texts):
        with atomic_output(path) as tmp:
            texts.write_parquet(tmp, row_group_size=min(shard_rows, 65_536))
    return [Shard(name, index, start, min(start + shard_rows, texts.height),
                  inputs_digest(texts.slice(start, shard_rows), model))
            for index, start in enumerate(range(0, texts.height, shard_rows))]


def inputs_digest(frame: pl.DataFrame, model: str) -> str:
    """Of a shard's ids, texts and model: what a finished part of it carries."""
    return hashlib.blake2b(json.dumps([model, frame["id"].to_list()]).encode()
                           + text_hashes(frame["text"].to_list()).tobytes(), digest_size=16).hexdigest()


def shard_texts(embeddings: Path, shard: Shard, model: str) -> pl.DataFrame:
    """The shard's rows of texts.parquet, checked against its digest (a texts file rewritten since the
    shard was planned would otherwise be embedded under the shard's name)."""
    path = embeddings / shard.set / "texts.parquet"
    frame = pl.scan_parquet(path).slice(shard.start, shard.rows).collect()
    if inputs_digest(frame, model) != shard.digest:
        raise StaleInputs(f"{path}: rows {shard.start:,}-{shard.stop:,} are not the texts shard {shard.index} "
                          f"of set {shard.set} was planned for (rewritten since?): rerun the embed stage")
    return frame


def intact(part: Path, digest: str | None = None, model: str | None = None) -> bool:
    """Readable, sealed (for these inputs and this model, when given), and its vectors still those it
    was sealed with."""
    try:
        with h5py.File(part, "r") as f:
            if digest and (f.attrs.get("inputs_digest"), f.attrs.get("model")) != (digest, model):
                return False
            return f.attrs.get("vectors_digest") == vectors_digest(f["embeddings"][:])
    except (OSError, KeyError):
        return False


def finished(embeddings: Path, shard: Shard, model: str) -> bool:
    """Whether the shard's part is complete, for these inputs and this model, and intact."""
    return intact(shard.part(embeddings), shard.digest, model)


def write_index(embeddings: Path, name: str, shards: list[Shard], model: str) -> Path:
    """The set's <set>.h5 over its parts (each sealed for its shard and this model); parts beyond
    the last shard are removed."""
    entries, ids, hashes, dim = [], [], [], 0
    for shard in shards:
        part = shard.part(embeddings)
        try:
            with h5py.File(part, "r") as f:
                sealed = (f.attrs.get("inputs_digest"), f.attrs.get("model")) == (shard.digest, model)
                dim = int(f["embeddings"].shape[1])
                ids.extend(f["ids"].asstr()[:])
                hashes.append(f["hashes"][:])
                entries.append({"file": f"{name}/{part.name}", "start": shard.start, "rows": shard.rows,
                                "inputs_digest": shard.digest, "vectors_digest": f.attrs.get("vectors_digest")})
        except (OSError, KeyError):
            sealed = False
        if not sealed:
            raise StaleInputs(f"{part} is missing, unfinished or not for these texts: rerun the embed stage")
    out = embeddings / f"{name}.h5"
    if out.exists() and manifest(out) == entries:
        return out  # unchanged: its digest (what later stages cache on) stays the same
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("hashes", data=np.concatenate(hashes) if hashes else np.zeros(0, "<u8"))
        if shards:
            layout = h5py.VirtualLayout((len(ids), dim), "float32")
            for shard, entry in zip(shards, entries):
                layout[shard.start:shard.stop] = h5py.VirtualSource(entry["file"], "embeddings", (shard.rows, dim))
            # NaN where a part goes missing: a reader that skipped open_vectors still fails the validation suite.
            f.create_virtual_dataset("embeddings", layout, fillvalue=np.nan)
        else:
            f.create_dataset("embeddings", shape=(0, 0), dtype="float32")
        f.attrs.update(model=model, dim=dim, normalized=True, parts=json.dumps(entries),
                       created_at=datetime.now(timezone.utc).isoformat())
    keep = {shard.part(embeddings).name for shard in shards}
    for stale in (embeddings / name).glob("part-*.h5*"):
        if stale.name not in keep:
            stale.unlink()
    return out


def manifest(path: Path) -> list[dict]:
    """The parts an index file is made of (none for a file of the single-file layout, or an unreadable one)."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs.get("parts", "[]"))
    except OSError:
        return []
