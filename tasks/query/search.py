"""Hybrid search: a text (or an item's own vector) plus metadata filters, answered by either store.

The query text is embedded with the model that embedded the stored vectors, with that model's
query prefix (bge: "Represent this sentence for searching relevant passages: ", e5: "query: ").
Filters pick the vector set: --type searches the synthetic catalog; --genre and --on-platform the
movies; without either, movies. Both stores answer in one shape (id, score, title, the filtered
fields), best first, ties broken by id.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl

from tasks.errors import PipelineError
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.base import Hit, NoDataset, Query, require_dataset
from tasks.stores.sources import VECTOR_SETS, h5_model

SEARCHABLE = tuple(name for name, spec in STORES.items() if spec.searches)


class SearchError(PipelineError, ValueError):
    pass


def stored_model(settings: Settings) -> str:
    """The model the stored vectors came from (the embeddings file says), else the configured one."""
    path = VECTOR_SETS["media"].path(settings.data_dir)
    return (h5_model(path) if path.exists() else "") or settings.model


def embed_query(settings: Settings, text: str) -> list[float]:
    """The text's vector from the stored vectors' model: numpy's BERT forward pass where the model is
    a BERT (no torch to import: milliseconds, not 13 s), else sentence-transformers."""
    from tasks.embed.models import MODELS, model_path
    from tasks.embed.query import query_encoder, supported

    name = stored_model(settings)
    spec = MODELS.get(name)
    text = (spec.query_prefix if spec else "") + text
    path = model_path(name, settings.model_dir)
    if supported(path):
        return query_encoder(path).encode(text).tolist()
    from tasks.embed.models import encode, load_model

    # One text: converting the model for OpenVINO (~2 s) would cost more than torch's forward pass.
    model = load_model(name, "cpu", settings.model_dir, settings.embed_precision, runtime="torch")
    return encode(model, [text])[0].tolist()


def vector_set_for(query: Query, like: str | None) -> str:
    if query.type is not None and (query.genre is not None or query.platform is not None):
        raise SearchError("--type filters the media catalog; --genre and --on-platform filter movies: use one kind")
    if query.type is not None or (like is not None and not like.startswith("ml_")):
        return "catalog"
    return "media"


def _one_of(flag: str, value: str, known: dict[str, str], file: Path) -> str:
    """The stored spelling of a value given in any case (keys: lower-case spellings)."""
    found = known.get(value.lower())
    if found is None:
        choices = ", ".join(sorted(set(known.values())))
        raise SearchError(f"{flag} {value!r} is none of the values in {file}: {choices}")
    return found


def checked_filters(data: Path, query: Query) -> Query:
    """The filters as the stores hold them: genre and platform matched without regard to case (a
    platform by its id or name), years in order; a value the data lacks is an error listing the
    valid ones, not an empty answer."""
    if query.year_from is not None and query.year_to is not None and query.year_from > query.year_to:
        raise SearchError(f"--year-from {query.year_from} is after --year-to {query.year_to}")
    if query.genre is not None:
        movies = data / "processed" / "movies.parquet"
        genres = pl.read_parquet(movies, columns=["genres"])["genres"].explode().drop_nulls().unique().to_list()
        query = replace(query, genre=_one_of("--genre", query.genre, {g.lower(): g for g in genres}, movies))
    if query.platform is not None:
        platforms = data / "synthetic" / "platforms.parquet"
        rows = pl.read_parquet(platforms, columns=["platform_id", "name"]).rows()
        known = {name.lower(): pid for pid, name in rows} | {pid.lower(): pid for pid, _ in rows}
        query = replace(query, platform=_one_of("--on-platform", query.platform, known, platforms))
    if query.year_to is not None and query.year_from is None:
        query = replace(query, year_from=1)  # year 0 stands for "unknown": not before year_to
    return query


def search(settings: Settings, text: str | None = None, like: str | None = None, store: str = "milvus",
           **filters) -> list[Hit]:
    """Top-k items for a text or like an item (its stored vector), with filters (type, genre,
    year_from, year_to, platform, k), from the data dir's own dataset in the store."""
    if store not in SEARCHABLE:
        raise SearchError(f"store {store!r} does not answer vector searches; use one of {', '.join(SEARCHABLE)}")
    if (text is None) == (like is None):
        raise SearchError("give a query text or --like ITEM (one of them)")
    if not settings.data_dir.is_dir():
        raise NoDataset(f"data dir {settings.data_dir} does not exist: give the --data-dir of a loaded dataset")
    query = checked_filters(settings.data_dir, Query(vector=[], **filters))
    query = replace(query, vector_set=vector_set_for(query, like))
    opened = STORES[store].open(settings)
    try:
        require_dataset(opened, settings)
        if like is not None:
            vector = opened.vector(query.vector_set, like)
            if vector is None:
                raise SearchError(f"--like {like}: no such item in {store} ({query.vector_set} vectors)")
            query = replace(query, vector=vector, exclude=like)
        else:
            query = replace(query, vector=embed_query(settings, text))
        hits = opened.search(query)
    finally:
        opened.close()
    if query.vector_set != "media":
        return hits
    from tasks.ingest.movielens import natural_titles

    return [replace(hit, title=title) for hit, title in zip(hits, natural_titles([h.title for h in hits]))]
