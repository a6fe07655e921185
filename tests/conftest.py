"""Shared fixtures: real local servers on free loopback ports, started once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import services
from tasks.services.base import free_port  # noqa: F401 - the tests' one, imported from here
from tasks.settings import Settings
from tasks.stores import STORES

STORE_NAMES = list(STORES)

ROOT = Path(__file__).resolve().parents[1]




def world_readable_tmpdir(prefix: str) -> Path:
    """PostgreSQL runs as its own user, which must reach its data dir (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def pg_connect(url: str, dataset: Path | Settings, **options):
    """A psycopg connection to `url` that sees the tables of a dataset (its schema): a data dir's,
    or the settings' namespace."""
    import psycopg

    settings = dataset if isinstance(dataset, Settings) else Settings(_env_file=None, data_dir=dataset)
    schema = settings.dataset_namespace
    return psycopg.connect(url, options=f"-c search_path={schema},public", **options)


def make_settings(base: Path, **overrides) -> Settings:
    values = dict(
        _env_file=None, services_dir=base / "services", data_dir=base / "data", postgres_port=free_port(),
        neo4j_bolt_port=free_port(), neo4j_http_port=free_port(), prefect_port=free_port(), neo4j_heap="1g",
        milvus_port=free_port(), milvus_http_port=free_port(),
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def service_settings() -> Iterator[Settings]:
    base = world_readable_tmpdir("mg-test-")
    # A quick scheduler loop, so that cron schedules produce runs within the test.
    os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "3"
    settings = make_settings(base)
    yield settings
    services.stop(settings)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def running_services(service_settings: Settings) -> Settings:
    services.start(service_settings, list(services.SERVICES))
    return service_settings


@pytest.fixture()
def prefect_server(running_services: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's real Prefect server, for this test's client, flows and subprocesses."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = running_services.local_prefect_url
    monkeypatch.setenv("PREFECT_API_URL", url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # send this test's buffered run logs while the server is configured


@pytest.fixture()
def small_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated small MovieLens-format release, made once and copied per test."""
    cache = tmp_path_factory.getbasetemp() / "small-release"
    if not cache.exists():
        from tasks.ingest.sample import generate

        generate("small", cache, seed=7)
    copy = tmp_path_factory.mktemp("release") / "ml-small"
    shutil.copytree(cache, copy)
    return copy


@pytest.fixture()
def store_env(running_services: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The environment a user sets to reach their stores, pointing at the session's servers: flows
    and store tasks read the store settings from it."""
    monkeypatch.setenv("MG_POSTGRES_PORT", str(running_services.postgres_port))
    monkeypatch.setenv("MG_NEO4J_BOLT_PORT", str(running_services.neo4j_bolt_port))
    monkeypatch.setenv("MG_NEO4J_HTTP_PORT", str(running_services.neo4j_http_port))  # the graph's bulk path restarts it
    monkeypatch.setenv("MG_NEO4J_HEAP", running_services.neo4j_heap)
    monkeypatch.setenv("MG_MILVUS_PORT", str(running_services.milvus_port))
    monkeypatch.setenv("MG_MILVUS_HTTP_PORT", str(running_services.milvus_http_port))
    monkeypatch.setenv("MG_SERVICES_DIR", str(running_services.services_dir))
    return running_services


@pytest.fixture(scope="session")
def pipeline_data(running_services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir through ingest, synthetic (300 catalog items) and embed, made once by the project's
    own CLI (a generated small release: 9,742 movies, 610 users). Copy it before changing it."""
    import subprocess
    import sys

    data = tmp_path_factory.mktemp("pipeline") / "data"
    env = {**os.environ, "PREFECT_API_URL": running_services.local_prefect_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    subprocess.run([sys.executable, "-m", "flows.full", "--data-dir", str(data), "--catalog-size", "300",
                    "--skip-validate", *(f"--no-{name}" for name in STORE_NAMES)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    return data


@pytest.fixture()
def store_data(pipeline_data: Path, tmp_path: Path) -> Path:
    """This test's own copy of the pipeline data (without any store state)."""
    copy = tmp_path / "data"
    shutil.copytree(pipeline_data, copy, ignore=shutil.ignore_patterns(".prefect-results", "stores", "milvus.db"))
    return copy
