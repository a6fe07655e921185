"""Hybrid search: a text (or an item's own vector) plus metadata filters, answered by either store.

The query text is embedded with the model that embedded the stored vectors, with that model's
query prefix (bge: "Represent this sentence for searching relevant passages: ", e5: "query: ").
Filters pick the vector set: --type searches the synthetic catalog; --genre and --on-platform the
movies; without either, movies. Both stores answer in one shape (id, score, title, the filtered
fields), best first, ties broken by id.
"""

from __future__ import annotations

from dataclasses import replace

from tasks.errors import PipelineError
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.base import Hit, Query
from tasks.stores.sources import VECTOR_SETS, h5_model

SEARCHABLE = tuple(name for name, spec in STORES.items() if spec.searches)


class SearchError(PipelineError, ValueError):
    pass


def stored_model(settings: Settings) -> str:
    """The model the stored vectors came from (the embeddings file says), else the configured one."""
    path = VECTOR_SETS["media"].path(settings.data_dir)
    return (h5_model(path) if path.exists() else "") or settings.model


def embed_query(settings: Settings, text: str) -> list[float]:
    from tasks.embed.models import MODELS, encode, load_model

    name = stored_model(settings)
    spec = MODELS.get(name)
    model = load_model(name, "cpu", settings.model_dir, settings.embed_precision)
    return encode(model, [(spec.query_prefix if spec else "") + text])[0].tolist()


def vector_set_for(query: Query, like: str | None) -> str:
    if query.type is not None and (query.genre is not None or query.platform is not None):
        raise SearchError("--type filters the media catalog; --genre and --on-platform filter movies: use one kind")
    if query.type is not None or (like is not None and not like.startswith("ml_")):
        return "catalog"
    return "media"


def search(settings: Settings, text: str | None = None, like: str | None = None, store: str = "milvus",
           **filters) -> list[Hit]:
    """Top-k items for a text or like an item (its stored vector), with filters (type, genre,
    year_from, year_to, platform, k)."""
    if store not in SEARCHABLE:
        raise SearchError(f"store {store!r} does not answer vector searches; use one of {', '.join(SEARCHABLE)}")
    if (text is None) == (like is None):
        raise SearchError("give a query text or --like ITEM (one of them)")
    query = Query(vector=[], **filters)
    if query.year_to is not None and query.year_from is None:
        query = replace(query, year_from=1)  # year 0 stands for "unknown": not before year_to
    query = replace(query, vector_set=vector_set_for(query, like))
    opened = STORES[store].open(settings)
    try:
        if like is not None:
            vector = opened.vector(query.vector_set, like)
            if vector is None:
                raise SearchError(f"--like {like}: no such item in {store} ({query.vector_set} vectors)")
            query = replace(query, vector=vector, exclude=like)
        else:
            query = replace(query, vector=embed_query(settings, text))
        return opened.search(query)
    finally:
        opened.close()
