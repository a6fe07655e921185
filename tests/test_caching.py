"""The Prefect pattern: digest keys, and retries for transient errors only."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tasks.caching import file_digest, retry_transient, stage_key


def test_digest_follows_content_not_timestamps(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("x,y\n1,2\n")
    first = file_digest(a)
    a.write_text("x,y\n1,2\n")  # rewritten, same bytes
    assert file_digest(a) == first
    a.write_text("x,y\n1,3\n")
    assert file_digest(a) != first
    folder = tmp_path / "rel"
    folder.mkdir()
    (folder / "m.csv").write_text("1")
    before = file_digest(folder)
    (folder / "m.csv").rename(folder / "n.csv")  # a renamed file changes the folder's digest
    assert file_digest(folder) != before


def test_stage_key_covers_version_and_parameters(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("1")
    base = stage_key("v1", [src], {"n": 1})
    assert stage_key("v1", [src], {"n": 1}) == base
    assert stage_key("v2", [src], {"n": 1}) != base
    assert stage_key("v1", [src], {"n": 2}) != base


@pytest.mark.parametrize("error, expected_calls", [(ConnectionError("store down"), 3), (ValueError("bad row"), 1)])
def test_only_transient_errors_are_retried(prefect_server, error, expected_calls):
    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky() -> None:
        calls.append(1)
        raise error

    @flow
    def run() -> None:
        flaky()

    with pytest.raises(type(error)):
        run()
    assert len(calls) == expected_calls
