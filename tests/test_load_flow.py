"""The load stage on a real Prefect server: concurrent loads under global concurrency limits, a store
that stays down, the summary artifact, and `flows.validate --stage load`."""

from __future__ import annotations

import json

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter, \
    TaskRunFilterFlowRunId
from prefect.client.schemas.sorting import TaskRunSort

from flows.load import load_flow, main
from tasks.stores import STORES
from tests.test_stores import pg_url  # noqa: F401 - the fixture

BUILT = [name for name, spec in STORES.items() if spec.built]


def test_loads_run_at_once_under_their_concurrency_limits(prefect_server, store_data, pg_url):  # noqa: F811
    state = load_flow(str(store_data), return_state=True)
    assert state.is_completed(), state
    rows = state.result()
    assert {r["stage"]: r["status"] for r in rows} == {**{n: "loaded" for n in BUILT},
                                                      **{n: "not built yet" for n in STORES if n not in BUILT}}
    with get_client(sync_client=True) as client:
        limits = {limit.name: limit.limit for limit in client.read_global_concurrency_limits(limit=100)}
        assert all(limits.get(STORES[name].concurrency_limit()) == 1 for name in BUILT)
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC)
        loads = {r.name: r for r in runs if r.name.startswith("load-")}
        assert set(loads) == {f"load-{name}" for name in BUILT}
        assert max(r.start_time for r in loads.values()) < min(r.end_time for r in loads.values())  # overlapped
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["load-summary"])),
                                         flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
        assert "| postgres | loaded |" in artifact[0].data and "media_embeddings 9,742" in artifact[0].data
    report = json.loads((store_data / "reports" / "validation_load.json").read_text())
    assert {s["suite"]: s["status"] for s in report["suites"]} == {f"store_{n}": "pass" for n in BUILT}

    # A rerun with unchanged inputs and stores writes nothing.
    rows = load_flow(str(store_data))
    assert {r["stage"]: r["status"] for r in rows if r["stage"] in BUILT} == {n: "unchanged" for n in BUILT}
