"""The stores the pipeline loads: ONE registry, read by the flows, the CLIs, the deploy script and
the tests. A store's name is written here once, and it is the name of its module in tasks/stores/.

Each module provides `open_store(settings)` (a `tasks.stores.base.Store`), `TABLES` (table or
collection -> where its source ids are) and `INPUTS` (the data-dir files it loads: their digests
decide whether a load can be skipped).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from tasks.settings import Settings
from tasks.stores.base import Store


@dataclass(frozen=True)
class StoreSpec:
    name: str
    loads: str  # what it holds, for help texts and the UI
    searches: bool = False  # answers vector searches (python -m flows.search --store NAME)

    @property
    def flag(self) -> str:
        return f"--no-{self.name}"

    @property
    def parameter(self) -> str:
        return f"no_{self.name}"

    def implementation(self) -> ModuleType:
        return importlib.import_module(f"tasks.stores.{self.name}")

    def open(self, settings: Settings) -> Store:
        return self.implementation().open_store(settings)

    def concurrency_limit(self) -> str:
        return f"store-{self.name}"


STORES: dict[str, StoreSpec] = {s.name: s for s in [
    StoreSpec("milvus", "movie, catalog and user vectors with their filter fields (Milvus)", searches=True),
    StoreSpec("postgres", "movies, users, platforms, availability and the catalog's metadata as tables, and the "
                          "movie, catalog and user vectors with HNSW indexes (PostgreSQL+pgvector)", searches=True),
    StoreSpec("neo4j", "the knowledge graph: media, users, genres, tags, platforms (Neo4j or the local Bolt server)"),
    StoreSpec("agentdb", "RL episodes, policies, replay buffers and user state embeddings (AgentDB shards)"),
]}
