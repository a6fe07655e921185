"""The embed stage's work as plain functions on paths, with thin Prefect task wrappers.

A set (media, catalog) is planned into shards (tasks.embed.shards), the unfinished shards are embedded
(here, or one flow run each on a work pool: flows.embed), then the set's index is written over its
parts. User vectors are computed from the media set's index.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import polars as pl
from prefect import get_run_logger, task

from tasks.caching import key_from_inputs
from tasks.embed.embeddings import catalog_texts, encode_to_h5, movie_texts, quality, user_vectors
from tasks.embed.models import EmbeddingError, load_model, precision_of
from tasks.embed.shards import Shard, finished, intact, manifest, prepare, shard_texts, write_index
from tasks.files import atomic_output
from tasks.progress import Progress

SETS = ("media", "catalog")


def set_texts(data: Path, name: str) -> pl.DataFrame:
    """id and text of a set, in its shard order: movies by movie id, the catalog by id."""
    if name == "media":
        return movie_texts(data / "processed")
    return catalog_texts(data / "synthetic" / "media_catalog.parquet").sort("id")


def plan_set(data: Path, name: str, model: str, shard_rows: int,
             shard_count: int | None = None) -> tuple[list[Shard], list[Shard]]:
    """(every shard of the set, those still to embed): shards of `shard_rows` texts, or `shard_count`
    shards when given."""
    embeddings = data / "embeddings"
    texts = set_texts(data, name)
    if shard_count:
        shard_rows = max(1, math.ceil(texts.height / shard_count))
    shards = prepare(embeddings, name, texts, model, shard_rows)
    return shards, [s for s in shards if not finished(embeddings, s, model)]


def embed_shard(embeddings: Path, shard: Shard, model, model_name: str, batch_size: int,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Embed one shard into its part. Vectors of unchanged texts are carried over from the shard's
    earlier part, or from a set file of the single-file layout this one replaced; a partial part
    resumes at its last chunk."""
    started = time.perf_counter()
    frame = shard_texts(embeddings, shard, model_name)
    part = shard.part(embeddings)
    part.parent.mkdir(parents=True, exist_ok=True)
    single_file = embeddings / f"{shard.set}.h5"
    if part.exists() and not intact(part):
        part.unlink()  # corrupt: nothing in it can be trusted
    carry_from = part if part.exists() else single_file if _single_file(single_file) else None
    counts = encode_to_h5(frame, part, model, model_name, batch_size, progress, carry_from, shard.digest)
    counts.update(seconds=round(time.perf_counter() - started, 2), device=str(model.device),
                  precision=precision_of(model))
    with h5py.File(part, "r+") as f:  # what this run did, for the set's stats (not part of the seal)
        f.attrs["counts"] = json.dumps(counts)
    return counts


def _single_file(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "parts" not in f.attrs and not f["embeddings"].is_virtual
    except (OSError, KeyError):
        return False


def embed_shards(data: Path, shards: list[Shard], model_name: str, device: str, batch_size: int,
                 model_dir: str | None = None, precision: str = "auto", log: Callable[[str], None] = print,
                 runtime: str = "auto") -> None:
    """Every given shard in this process, with one model."""
    if not shards:
        return
    model = load_model(model_name, device, Path(model_dir) if model_dir else None, precision, runtime)
    for shard in shards:
        name = f"{shard.set} shard {shard.index} ({shard.rows:,} texts)"
        counts = embed_shard(data / "embeddings", shard, model, model_name, batch_size,
                             Progress(lambda text, name=name: log(f"{name}: {text}"), "texts"))
        log(f"{name}: {counts['encoded']:,} encoded ({counts['device']}, {counts['precision']}), "
            f"{counts['carried_over']:,} carried over, {counts['resumed']:,} resumed")


def index_set(data: Path, name: str, shards: list[Shard], ran: list[Shard], model_name: str, seconds: float,
              model=None) -> tuple[Path, dict]:
    """Write the set's index and its stats: what the shards that ran this time did, and the quality figures."""
    embeddings = data / "embeddings"
    before = manifest(embeddings / f"{name}.h5")
    out = write_index(embeddings, name, shards, model_name)
    earlier = json.loads((embeddings / "stats.json").read_text()) if (embeddings / "stats.json").exists() else {}
    if not ran and manifest(out) == before and name in earlier:
        return out, earlier[name]  # nothing changed: the figures of the run that made it stand
    done = []
    for shard in ran:
        with h5py.File(shard.part(embeddings), "r") as f:
            done.append(json.loads(f.attrs.get("counts", "{}")))
    counts = {"rows": sum(s.rows for s in shards), "shards": len(shards), "shards_run": len(ran),
              "seconds": round(seconds, 2)}
    for key in ("encoded", "carried_over", "resumed", "truncated"):
        counts[key] = sum(c.get(key, 0) for c in done)
    counts["texts_per_s"] = round(counts["encoded"] / seconds, 1) if seconds and counts["encoded"] else None
    counts.update({key: done[0][key] for key in ("device", "precision") if done and key in done[0]})
    texts = pl.read_parquet(embeddings / name / "texts.parquet", columns=["text"])["text"].to_list() if model else None
    counts["quality"] = quality(out, model, texts)
    write_stats(embeddings, name, counts)
    return out, counts


@task(name="plan-embed-set")
def plan_set_task(data_dir: str, name: str, model: str, shard_rows: int,
                  shard_count: int | None = None) -> tuple[list[dict], list[dict]]:
    shards, todo = plan_set(Path(data_dir), name, model, shard_rows, shard_count)
    get_run_logger().info("%s: %s texts in %s shard(s) of up to %s; %s to embed", name,
                          f"{sum(s.rows for s in shards):,}", len(shards),
                          f"{max((s.rows for s in shards), default=0):,}", len(todo))
    return [s.__dict__ for s in shards], [s.__dict__ for s in todo]


@task(name="embed-shards")
def embed_shards_task(data_dir: str, shards: list[dict], model: str, device: str, batch_size: int,
                      model_dir: str | None = None, precision: str = "auto", runtime: str = "auto") -> None:
    logger = get_run_logger()
    embed_shards(Path(data_dir), [Shard.of(s) for s in shards], model, device, batch_size, model_dir, precision,
                 logger.info, runtime)


@task(name="index-embed-set")
def index_set_task(data_dir: str, name: str, shards: list[dict], ran: list[dict], model: str, seconds: float,
                   model_dir: str | None = None, precision: str = "auto") -> str:
    """The quality figures need the model (a near-duplicate text embedded): loaded on this machine's
    CPU when the shards ran elsewhere; without it here, they are left out."""
    encoder = None
    if ran:
        try:
            # 64 texts: torch, not the seconds of an OpenVINO conversion
            encoder = load_model(model, "cpu", Path(model_dir) if model_dir else None, precision, "torch")
        except EmbeddingError as exc:
            get_run_logger().warning("%s: no near-duplicate check (%s)", name, exc)
    out, counts = index_set(Path(data_dir), name, [Shard.of(s) for s in shards], [Shard.of(s) for s in ran],
                            model, seconds, encoder)
    get_run_logger().info("%s: index over %s part(s); this run %s encoded, %s carried over, %s resumed", out.name,
                          counts["shards"], f"{counts['encoded']:,}", f"{counts['carried_over']:,}",
                          f"{counts['resumed']:,}")
    return str(out)


USERS_VERSION = "users-2"  # bump when what a user vector is changes (users-2: centred)


@task(name="user-vectors", cache_key_fn=key_from_inputs(USERS_VERSION, ("ratings", "media")), persist_result=True)
def user_vectors_task(ratings: str, media: str, out: str) -> str:
    started = time.perf_counter()
    counts = user_vectors(Path(ratings), Path(media), Path(out))
    counts.update(seconds=round(time.perf_counter() - started, 2), quality=quality(Path(out)))
    write_stats(Path(out).parent, "users", counts)
    get_run_logger().info("%s user vectors: %s computed, %s carried over unchanged (%s users had no embedded movie)",
                          f"{counts['users']:,}", f"{counts['computed']:,}", f"{counts['carried_over']:,}",
                          counts["users_without_vector"])
    return out


def write_stats(folder: Path, key: str, counts: dict) -> None:
    """Merge this file's figures into embeddings/stats.json (written atomically)."""
    path = folder / "stats.json"
    stats = json.loads(path.read_text()) if path.exists() else {}
    stats[key] = counts
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(stats, indent=2))
