"""One settings object: defaults < environment < .env < CLI flags; clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.common import load_settings
from tasks.settings import Settings


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # .env is read from the working directory
    for name in ("MG_DATA_DIR", "MG_CATALOG_SIZE", "MG_POSTGRES_URL", "MG_NEO4J_URL", "MG_MODEL"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_local():
    settings = Settings()
    assert settings.data_dir == Path("data")
    assert settings.local_postgres and settings.local_neo4j and settings.local_milvus
    assert settings.postgres_dsn().startswith("postgresql://mediagw:")
    assert settings.neo4j_target()[0] == f"bolt://127.0.0.1:{settings.neo4j_bolt_port}"
    assert settings.milvus_target() == f"http://127.0.0.1:{settings.milvus_port}"  # the local server, not Lite


def test_precedence_environment_then_dotenv_then_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("MG_DATA_DIR", "/from/env")
    monkeypatch.setenv("MG_MODEL", "BAAI/bge-base-en-v1.5")
    assert Settings().data_dir == Path("/from/env")
    (tmp_path / ".env").write_text("MG_DATA_DIR=/from/dotenv\n")
    settings = Settings()
    assert settings.data_dir == Path("/from/dotenv")  # .env beats the environment
    assert settings.model == "BAAI/bge-base-en-v1.5"  # what .env does not set still comes from the environment
    assert load_settings(data_dir=Path("/from/flag"), model=None).data_dir == Path("/from/flag")


def test_external_urls_switch_off_local_servers(monkeypatch):
    monkeypatch.setenv("MG_POSTGRES_URL", "postgresql://app:s3cret@db.internal:5432/media")
    monkeypatch.setenv("MG_NEO4J_URL", "neo4j+s://graph.internal:7687")
    settings = Settings()
    assert not settings.local_postgres and not settings.local_neo4j
    assert settings.postgres_dsn() == "postgresql://app:s3cret@db.internal:5432/media"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


@pytest.mark.parametrize("field, value, message", [
    ("postgres_url", "mysql://x@y/z", "postgres_url must look like postgresql://"),
    ("postgres_url", "postgresql://", "postgres_url must look like postgresql://"),
    ("neo4j_url", "http://graph:7474", "neo4j_url 'http://graph:7474' must be bolt://"),
    ("neo4j_url", "bolt://graph:notaport", "neo4j_url"),
    ("milvus_uri", "ftp://milvus:19530", "milvus_uri"),
    ("catalog_size", -5, "catalog_size"),
    ("catalog_size", 0, "catalog_size"),
    ("model", "no-such-model", "model 'no-such-model' is unknown"),
    ("postgres_port", 70000, "postgres_port"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})
    assert message in str(info.value)
    assert field in str(info.value)


def test_bad_postgres_url_error_hides_the_password():
    with pytest.raises(ValidationError) as info:
        Settings(postgres_url="mysql://user:hunter2@db/x")
    assert "hunter2" not in str(info.value)


def test_cli_rejects_negative_size(capsys):
    from flows.full import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--catalog-size", "-1"])
    assert exit_info.value.code == 1  # one `error:` line and exit 1, as the README promises
    err = capsys.readouterr().err
    assert err.startswith("error: bad setting: catalog_size:") and "errors.pydantic.dev" not in err
    assert len(err.strip().splitlines()) == 1
