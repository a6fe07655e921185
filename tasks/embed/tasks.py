"""The embed stage's Prefect tasks: thin wrappers over tasks.embed.embeddings and tasks.embed.models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task

from tasks.caching import key_from_inputs
from tasks.embed.embeddings import catalog_texts, encode_to_h5, movie_texts, quality, user_vectors
from tasks.embed.models import load_model
from tasks.files import atomic_output
from tasks.progress import Progress

EMBED_VERSION = "embed-2"  # bump when texts or file layout change (unchanged texts are carried over, not re-encoded)


def _embed(frame: pl.DataFrame, out: Path, model_name: str, device: str, batch_size: int,
           model_dir: str | None = None, precision: str = "auto") -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    model = load_model(model_name, device, Path(model_dir) if model_dir else None, precision)
    progress = Progress(lambda text: logger.info("%s: %s", out.name, text), "texts")

    counts = encode_to_h5(frame, out, model, model_name, batch_size, progress)
    seconds = time.perf_counter() - started
    counts.update(seconds=round(seconds, 2), texts_per_s=round(counts["encoded"] / seconds, 1) if seconds else None,
                  device=str(model.device), precision=str(next(model.parameters()).dtype).removeprefix("torch."),
                  quality=quality(out, model, frame["text"].to_list()))
    logger.info("%s: %s encoded (%s, %s), %s carried over, %s resumed, %s truncated to the model's length",
                out.name, counts["encoded"], counts["device"], counts["precision"], counts["carried_over"],
                counts["resumed"], counts["truncated"])
    return counts


@task(name="embed-media", cache_key_fn=key_from_inputs(EMBED_VERSION, ("movies", "genome")), persist_result=True)
def embed_media_task(movies: str, genome: str | None, out: str, model: str, device: str, batch_size: int,
                     model_dir: str | None = None, precision: str = "auto") -> str:
    counts = _embed(movie_texts(Path(movies).parent), Path(out), model, device, batch_size, model_dir, precision)
    _write_stats(Path(out).parent, "media", counts)
    return out


@task(name="embed-catalog", cache_key_fn=key_from_inputs(EMBED_VERSION, ("catalog",)), persist_result=True)
def embed_catalog_task(catalog: str, out: str, model: str, device: str, batch_size: int,
                       model_dir: str | None = None, precision: str = "auto") -> str:
    counts = _embed(catalog_texts(Path(catalog)), Path(out), model, device, batch_size, model_dir, precision)
    _write_stats(Path(out).parent, "catalog", counts)
    return out


USERS_VERSION = "users-2"  # bump when what a user vector is changes (users-2: centred)


@task(name="user-vectors", cache_key_fn=key_from_inputs(USERS_VERSION, ("ratings", "media")), persist_result=True)
def user_vectors_task(ratings: str, media: str, out: str) -> str:
    started = time.perf_counter()
    counts = user_vectors(Path(ratings), Path(media), Path(out))
    counts.update(seconds=round(time.perf_counter() - started, 2), quality=quality(Path(out)))
    _write_stats(Path(out).parent, "users", counts)
    get_run_logger().info("%s user vectors: %s computed, %s carried over unchanged (%s users had no embedded movie)",
                          f"{counts['users']:,}", f"{counts['computed']:,}", f"{counts['carried_over']:,}",
                          counts["users_without_vector"])
    return out


def _write_stats(folder: Path, key: str, counts: dict) -> None:
    """Merge this file's figures into embeddings/stats.json (written atomically)."""
    path = folder / "stats.json"
    stats = json.loads(path.read_text()) if path.exists() else {}
    stats[key] = counts
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(stats, indent=2))
