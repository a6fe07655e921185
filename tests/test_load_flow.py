"""The load stage on a real Prefect server: concurrent loads under global concurrency limits, a store
that stays down, the summary artifact, and `flows.validate --stage load`."""

from __future__ import annotations

import json

import polars as pl
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, LogFilter, \
    LogFilterFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId
from prefect.client.schemas.sorting import TaskRunSort

from flows.load import load_flow
from flows.load import main as load_main
from flows.validate import main as validate_main
from tasks.stores import STORES
from tests.conftest import free_port, pg_connect
from tests.test_stores import pg_url  # noqa: F401 - the fixture



def test_loads_run_at_once_under_their_concurrency_limits(prefect_server, store_data, pg_url):  # noqa: F811
    state = load_flow(str(store_data), return_state=True)
    assert state.is_completed(), state
    rows = state.result()
    assert {r["stage"]: r["status"] for r in rows} == {n: "loaded" for n in STORES}
    with get_client(sync_client=True) as client:
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits(limit=100)}
        assert all(limits.get(STORES[name].concurrency_limit()) == 1 for name in STORES)
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC)
        loads = {r.name: r for r in runs if r.name.startswith("load-")}
        assert set(loads) == {f"load-{name}" for name in STORES}
        assert max(r.start_time for r in loads.values()) < min(r.end_time for r in loads.values())  # overlapped
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["load-summary"])),
                                         flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
        assert "| postgres | loaded |" in artifact[0].data and "media_embeddings 9,742" in artifact[0].data
        rows = sum(pl.scan_parquet(store_data / "agentdb" / f"{name}.parquet").select(pl.len()).collect().item()
                   for name in ("episodes", "buffers"))  # each step and each buffer transition is an experience
        assert "| agentdb | loaded |" in artifact[0].data and f"learning_experiences {rows:,} (" in artifact[0].data
    report = json.loads((store_data / "reports" / "validation_load.json").read_text())
    assert {s["suite"]: s["status"] for s in report["suites"]} == {f"store_{n}": "pass" for n in STORES}

    # A rerun with unchanged inputs and stores writes nothing; the summary says how each store was verified.
    rows = load_flow(str(store_data))
    assert {r["stage"]: r["status"] for r in rows if r["stage"] in STORES} == {n: "unchanged" for n in STORES}
    verified = {r["stage"]: r["detail"].split("verified: ")[1] for r in rows if r["stage"] in STORES}
    assert verified["neo4j"].startswith("sample: ") and verified["milvus"].startswith("sample: ")
    # --verify full: every element read back and compared; nothing to write.
    assert load_main(["--data-dir", str(store_data), "--verify", "full"]) == 0
    figures = {n: json.loads((store_data / "stores" / f"{n}.json").read_text()) for n in STORES}
    assert {n: f["verification"] for n, f in figures.items()} == {n: "full" for n in STORES}
    assert figures["neo4j"]["read_back"] == sum(t["store"] for t in figures["neo4j"]["tables"].values())


def test_a_store_that_stays_down_fails_alone_and_names_its_url(prefect_server, store_data, store_env, monkeypatch,
                                                               capsys):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MG_POSTGRES_URL", f"postgresql://mediagw:sekret-pw@127.0.0.1:{port}/mediagw")
    assert load_main(["--data-dir", str(store_data)]) == 1
    err = capsys.readouterr().err
    assert f"postgres load failed: postgres at postgresql://mediagw@127.0.0.1:{port}/mediagw is unreachable" in err
    assert "sekret-pw" not in err
    assert json.loads((store_data / "stores" / "milvus.state.json").read_text())["counts"]["media_vectors"] == 9_742

    with get_client(sync_client=True) as client:
        run = client.read_task_runs(task_run_filter=TaskRunFilter(name={"any_": ["load-postgres"]}),
                                    sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=1)[0]
        assert (run.state_name, run.run_count) == ("Failed", 4)  # the first try and three retries
        milvus = client.read_task_runs(task_run_filter=TaskRunFilter(
            name={"any_": ["load-milvus"]}, flow_run_id=TaskRunFilterFlowRunId(any_=[run.flow_run_id])))[0]
        assert milvus.state_name == "Completed"
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.flow_run_id])))
    text = "\n".join(log.message for log in logs)
    assert f"postgres at postgresql://mediagw@127.0.0.1:{port}/mediagw is unreachable" in text
    assert "sekret-pw" not in text


def test_a_graph_server_that_is_down_fails_alone_and_names_its_url(prefect_server, store_data, store_env, monkeypatch,
                                                                   capsys):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MG_NEO4J_URL", f"bolt://127.0.0.1:{port}")
    monkeypatch.setenv("MG_NEO4J_PASSWORD", "sekret-graph-pw")
    assert load_main(["--data-dir", str(store_data), "--no-milvus"]) == 1
    err = capsys.readouterr().err
    assert f"neo4j load failed: neo4j at bolt://127.0.0.1:{port} is unreachable" in err
    assert "sekret-graph-pw" not in err
    assert json.loads((store_data / "stores" / "postgres.state.json").read_text())["counts"]["movies"] == 9_742


def test_validate_load_stage_names_a_row_the_source_lacks(prefect_server, store_data, pg_url, capsys):  # noqa: F811
    rows = load_flow(str(store_data), skip_stores=[n for n in STORES if n != "postgres"])
    assert {r["stage"]: r["status"] for r in rows}["postgres"] == "loaded"
    assert validate_main(["--data-dir", str(store_data), "--stage", "load"]) == 0
    with pg_connect(pg_url, store_data) as conn:
        conn.execute("INSERT INTO platforms (platform_id, name) VALUES ('bogus', 'Bogus')")
    assert validate_main(["--data-dir", str(store_data), "--stage", "load"]) == 1
    assert "postgres platforms: 1 ids not in the source (e.g. bogus)" in capsys.readouterr().err
