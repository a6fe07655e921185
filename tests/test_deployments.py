"""prefect.yaml registers on a real Prefect server; a triggered run completes on a process worker;
the nightly cron schedule produces scheduled runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from tasks.stores import STORES
from tests.conftest import ROOT, STORE_NAMES

BIN = Path(sys.executable).parent


def test_deploy_trigger_and_schedule(prefect_server, running_services, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    limits = [spec.concurrency_limit() for spec in STORES.values()]
    with get_client(sync_client=True) as client:  # another test's flow may have made them already
        for name in limits:
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                pass
    deployed = subprocess.run([sys.executable, "-m", "deployments.deploy"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout

    with get_client(sync_client=True) as client:
        # One global concurrency limit per built store, one load at a time.
        assert {name: client.read_global_concurrency_limit_by_name(name).limit for name in limits} == \
            {name: 1 for name in limits}
        # The automation that marks a flow run Crashed when its worker is gone (its heartbeats stop).
        from prefect.automations import Automation

        from deployments.deploy import LOST_AFTER_S, LOST_RUN
        lost = Automation.read(name=LOST_RUN)
        assert lost.trigger.within.total_seconds() == LOST_AFTER_S and lost.actions[0].state.value == "CRASHED"
        deployment = client.read_deployment_by_name("full-refresh/full-refresh")
        assert deployment.work_pool_name == "local-process"
        # Nightly with the sampled verification, Sundays with the full read-back of every store.
        assert sorted((s.schedule.cron, s.schedule.timezone, s.parameters) for s in deployment.schedules) == \
            [("0 3 * * 0", "UTC", {"verify": "full"}), ("0 3 * * 1-6", "UTC", {})]
        # The UI builds its form from this schema: typed parameters, not free text.
        props = deployment.parameter_openapi_schema["properties"]
        assert props["skip_embed"]["type"] == "boolean"
        assert {"type": "integer", "minimum": 1, "maximum": 100_000_000} in props["catalog_size"]["anyOf"]
        assert props["on_bad_rows"]["enum"] == ["reject", "fail"]
        assert props["verify"]["enum"] == ["sample", "full"]
        assert {"type": "number", "minimum": 0.0, "maximum": 1.0}.items() <= props["max_reject_fraction"].items()
        undescribed = [name for name, prop in props.items() if not prop.get("description")]
        assert not undescribed, f"the deployment form shows no description for {undescribed}"

        deadline = time.monotonic() + 90
        scheduled = []
        while not scheduled and time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            scheduled = [r for r in runs if r.state_name == "Scheduled"]
            time.sleep(2)
        assert scheduled, "the cron schedule produced no scheduled runs"
        starts = {r.expected_start_time.astimezone().utctimetuple()[3:5] for r in scheduled}
        assert starts == {(3, 0)}
        # Sunday's runs read every store back in full; the other nights verify a sample.
        days = {(r.expected_start_time.astimezone(timezone.utc).weekday() == 6, r.parameters.get("verify", "sample"))
                for r in scheduled}
        assert days <= {(True, "full"), (False, "sample")}, days

        # The embed shards' GPU deployment registers on its docker pool, and the container it would start asks
        # for every GPU and sends heartbeats (a lost GPU host's shard is found and submitted again).
        gpu = client.read_deployment_by_name("embed-shard/a100-gpu")
        assert gpu.parameters["data_dir"] == "/data" and gpu.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
        assert client.read_deployment_by_name("embed-shard/local-process").work_queue_name == "embed"
        # The form of the full refresh offers the pool and the shard count.
        assert {"type": "integer", "minimum": 1, "maximum": 100_000} in props["embed_shards"]["anyOf"]
        pool = client.read_work_pool("a100-gpu")
        assert (gpu.work_pool_name, pool.type) == ("a100-gpu", "docker")
        from prefect_docker.worker import DockerWorkerJobConfiguration

        import asyncio

        config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(
            pool.base_job_template, gpu.job_variables))
        assert config.container_create_kwargs["device_requests"] == [
            {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
        assert config.image == "media-gateway-embed-gpu:latest" and config.env["MG_DATA_DIR"] == "/data"
        assert config.volumes[0].endswith(":/data") and "{{" not in config.volumes[0]
        # The pool's own template asks for the GPUs too, for any deployment put on it.
        bare = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(pool.base_job_template, {}))
        assert bare.container_create_kwargs["device_requests"][0]["capabilities"] == [["gpu"]]

    # The server refuses a run whose parameters break the schema, before any worker sees it.
    with pytest.raises(Exception, match="(?i)validation|invalid|minimum|422|409"):
        run_deployment("full-refresh/full-refresh", timeout=0, parameters={"catalog_size": -5})

    data_dir = tmp_path / "data"
    flow_run = run_deployment(
        "full-refresh/full-refresh", timeout=0,
        parameters={"data_dir": str(data_dir), "skip_synthetic": True, "skip_embed": True, "skip_validate": True,
                    "skip_stores": STORE_NAMES},
    )
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "local-process", "--run-once"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-3000:]
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
        assert finished.state_name == "Completed", (finished.state, worker.stdout[-3000:], worker.stderr[-3000:])
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter())
        assert any(r.parent_task_run_id and r.name for r in runs)  # the ingest subflow ran under it
    assert (data_dir / "processed" / "ratings.parquet").exists()


def test_a_due_cron_refresh_runs_to_completed_on_a_worker(prefect_server, running_services, tmp_path):
    """A minutely cron schedule on the full-refresh deployment (with its own, light parameters): the
    scheduler makes the run, it comes due, and a process worker runs it to Completed."""
    from prefect.client.schemas.schedules import CronSchedule

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    deployed = subprocess.run([sys.executable, "-m", "deployments.deploy"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    data_dir = tmp_path / "data"
    light = {"data_dir": str(data_dir), "skip_ingest": True, "skip_synthetic": True, "skip_embed": True,
             "skip_validate": True, "skip_stores": STORE_NAMES}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("full-refresh/full-refresh")
        [schedule] = client.create_deployment_schedules(deployment.id, [(CronSchedule(cron="* * * * *"), True)],
                                                        parameters=light, slug="test-minutely")
        try:
            deadline, due = time.monotonic() + 150, []
            while not due and time.monotonic() < deadline:
                time.sleep(3)
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                now = time.time()
                due = [r for r in runs if r.state_name == "Scheduled" and r.parameters.get("data_dir") == str(data_dir)
                       and r.expected_start_time.timestamp() <= now]
            assert due, "the minutely schedule produced no due run"
            worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "local-process", "--run-once"],
                                    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert worker.returncode == 0, worker.stderr[-3000:]
            finished = client.read_flow_run(due[0].id)
            assert finished.state_name == "Completed", (finished.state, worker.stdout[-3000:])
            assert finished.parameters == light and finished.auto_scheduled
        finally:
            client.delete_deployment_schedule(deployment.id, schedule.id)
            for run in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))):
                if run.state_name == "Scheduled":
                    client.delete_flow_run(run.id)
