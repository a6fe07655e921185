"""The pipeline's one settings object: paths, store URLs and local-service ports.

Precedence, lowest first: defaults < environment (MG_*) < .env file < CLI flags (init kwargs).
A store URL left unset means "use the local server that `python -m tasks.services` runs";
set it and nothing local is started for that store.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

LOCAL_HOST = "127.0.0.1"
LOCAL_NEO4J_DATABASE = "kg"  # the local graph server's own database (readiness); datasets have their own
NEO4J_SCHEMES = {"bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"}


# Bounds shared by the settings and the flows' parameters (which the deployment form enforces).
CatalogSize = Annotated[int, Field(ge=1, le=100_000_000)]
RejectFraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MG_", env_file=".env", env_file_encoding="utf-8", extra="ignore",
        hide_input_in_errors=True,  # a rejected URL may carry a password
        populate_by_name=True,  # prefect_api_url by its name in code, by Prefect's variable in the environment
    )

    data_dir: Path = Field(Path("data"), description="Root of raw, processed, synthetic and embedding files.")
    namespace: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9_]{0,47}$",
        description="The dataset's name in the stores: PostgreSQL schema, local graph database, Milvus database, "
                    "AgentDB folder (default: derived from the data dir's path)")
    data_host_dir: Path | None = Field(None, description="The data dir as the GPU pool's docker host mounts it "
                                                         "(default: data_dir, resolved).")
    services_dir: Path = Field(Path(".services"), description="State and logs of the local servers.")
    seed: int = 42
    catalog_size: CatalogSize = Field(10_000, description="Items in the synthetic media catalog (at least 1).")
    model: str = Field("all-MiniLM-L6-v2", description="Embedding model: a registry name or a local model folder.")
    model_dir: Path | None = Field(None, description="Folder holding models by name (MODEL_DIR/bge-base-en-v1.5), "
                                                     "read before the Hugging Face cache.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    embed_batch_size: int = Field(256, ge=1, le=65_536, description="Texts per encode call.")
    # 100k texts: minutes of a CPU core, seconds of a GPU, against ~15 s to start a shard's flow run.
    embed_shard_rows: int = Field(100_000, ge=1, le=100_000_000,
                                  description="Texts per embedding shard: one flow run each on a work pool.")
    embed_precision: Literal["auto", "fp32"] = Field(
        "auto", description="auto: fp16 on a GPU, bf16 on a CPU that has it natively (AMX/AVX512-BF16), else fp32.")
    embed_runtime: Literal["auto", "torch"] = Field(
        "auto", description="auto: OpenVINO on a CPU (1.15-1.4x torch here), torch on a GPU; torch: torch everywhere.")

    # External stores; None = the local one.
    postgres_url: SecretStr | None = Field(None, description="postgresql://user:password@host:port/db")
    neo4j_url: str | None = Field(None, description="bolt:// or neo4j:// URL of a Neo4j 5 server")
    neo4j_user: str = "neo4j"
    neo4j_password: SecretStr | None = None
    neo4j_database: str = "neo4j"
    milvus_uri: str | None = Field(None, description="http(s)://host:port of a Milvus server, or a Milvus Lite "
                                                     ".db file (development only: it ignores the index it is given)")
    milvus_token: SecretStr | None = None
    agentdb_dir: Path | None = Field(None, description="Folder of the AgentDB shards (default DATA_DIR/agentdb/shards).")
    agentdb_users_per_shard: int = Field(
        10_000, ge=1, le=100_000,
        description="Users per AgentDB shard file: with the 200-step cap, 10,000 users stay under ~1 GB.")

    # Local servers (loopback only).
    local_password: SecretStr = SecretStr("mediagw-local")
    postgres_port: int = Field(55432, ge=1, le=65535)
    neo4j_bolt_port: int = Field(57687, ge=1, le=65535)
    neo4j_http_port: int = Field(52480, ge=1, le=65535)
    milvus_port: int = Field(59530, ge=1, le=65535)
    milvus_http_port: int = Field(59091, ge=1, le=65535, description="the local Milvus's health and metrics port")
    prefect_port: int = Field(4200, ge=1, le=65535)
    # Prefect's own variable: when set, flows and the deploy script talk to that server, and no local
    # Prefect server is wanted.
    prefect_api_url: str | None = Field(None, validation_alias="PREFECT_API_URL")
    neo4j_heap: str = "2g"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI flags, then the project's .env, then the process environment.
        return init_settings, dotenv_settings, env_settings, file_secret_settings

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        from tasks.embed.models import MODELS

        if value not in MODELS and not Path(value).is_dir():
            raise ValueError(f"model {value!r} is unknown; use one of {', '.join(MODELS)}, or a local model folder")
        return value

    @field_validator("postgres_url")
    @classmethod
    def _check_postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in {"postgresql", "postgres", "postgresql+psycopg"} or not parts.hostname:
                # The URL may hold a password: name the field and the expected form, never the value.
                raise ValueError("postgres_url must look like postgresql://user:password@host:port/dbname")
        return value

    @field_validator("neo4j_url")
    @classmethod
    def _check_neo4j_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in NEO4J_SCHEMES or not parts.hostname:
                raise ValueError(f"neo4j_url {value!r} must be bolt://host:port or neo4j://host:port")
            _ = parts.port  # raises ValueError on a malformed port
        return value

    @field_validator("milvus_uri")
    @classmethod
    def _check_milvus_uri(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https", "tcp"} or not parts.hostname:
                raise ValueError(f"milvus_uri {value!r} must be http(s)://host:port or a local .db path")
            _ = parts.port
        return value

    # Which dataset: each data dir is one, kept apart in every store.
    @property
    def dataset_origin(self) -> str:
        """The data dir, resolved: what a store records as the dataset it holds."""
        return str(self.data_dir.resolve())

    @property
    def dataset_namespace(self) -> str:
        """MG_NAMESPACE, else the data dir's name and a hash of its path (`data_1f2e3d4c`): two data
        dirs never share a namespace by default, and one data dir keeps its own across runs."""
        if self.namespace:
            return self.namespace
        slug = re.sub(r"[^a-z0-9]+", "_", self.data_dir.resolve().name.lower()).strip("_")[:24]
        slug = slug if slug[:1].isalpha() else f"d_{slug}".rstrip("_")
        return f"{slug}_{hashlib.sha256(self.dataset_origin.encode()).hexdigest()[:8]}"

    # Where each store really is.
    @property
    def local_postgres(self) -> bool:
        return self.postgres_url is None

    @property
    def local_neo4j(self) -> bool:
        return self.neo4j_url is None

    @property
    def local_milvus(self) -> bool:
        return self.milvus_uri is None

    def postgres_dsn(self) -> str:
        """Connection string, password included: pass it to a driver, never to a log."""
        if self.postgres_url is not None:
            return self.postgres_url.get_secret_value().replace("postgresql+psycopg://", "postgresql://")
        password = self.local_password.get_secret_value()
        return f"postgresql://mediagw:{password}@{LOCAL_HOST}:{self.postgres_port}/mediagw"

    def neo4j_target(self) -> tuple[str, tuple[str, str], str]:
        """(url, (user, password), database) for the neo4j driver."""
        if self.neo4j_url is not None:
            password = self.neo4j_password.get_secret_value() if self.neo4j_password else ""
            return self.neo4j_url, (self.neo4j_user, password), self.neo4j_database
        return f"bolt://{LOCAL_HOST}:{self.neo4j_bolt_port}", ("root", self.local_password.get_secret_value()), \
            self.dataset_namespace

    def milvus_target(self) -> str:
        return self.milvus_uri or f"http://{LOCAL_HOST}:{self.milvus_port}"

    def agentdb_target(self) -> Path:
        if self.agentdb_dir is not None:  # a shared folder: one subfolder per dataset
            return self.agentdb_dir / self.dataset_namespace
        return self.data_dir / "agentdb" / "shards"

    @property
    def local_prefect_url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.prefect_port}/api"

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"
