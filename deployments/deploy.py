"""Create the work pools and register every deployment in prefect.yaml, without prompts.

    python -m deployments.deploy

Talks to PREFECT_API_URL when it is set, else to the local server of `python -m tasks.services`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks import services
from tasks.errors import PipelineError, run_cli
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.tasks import ensure_concurrency_limits

ROOT = Path(__file__).resolve().parent.parent
# Pool -> (type, base job template). local-process runs flows beside the worker; a100-gpu runs the
# embed stage in the GPU image (deployments/gpu.Dockerfile) on a host with Docker and NVIDIA's
# container toolkit; its template makes every container it starts ask for all GPUs.
WORK_POOLS = {"local-process": ("process", None), "a100-gpu": ("docker", ROOT / "deployments/pools/a100-gpu.json")}
# A flow run whose heartbeats (every 30 s: PREFECT_FLOWS_HEARTBEAT_FREQUENCY in prefect.yaml) stop for this
# long lost its worker: the automation marks it Crashed, and the embed flow submits its shard again.
LOST_RUN = "media-gateway: crash flow runs that lost their worker"
LOST_AFTER_S = 75


def ensure_lost_run_automation() -> None:
    """Prefect's documented zombie-flow automation, made once (by name)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=LOST_RUN)
        return
    except ValueError:  # none of that name
        pass
    Automation(
        name=LOST_RUN,
        description="A flow run that stops sending heartbeats without finishing lost its worker.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=LOST_AFTER_S)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"No heartbeat for {LOST_AFTER_S} s: its worker is gone")],
    ).create()


def prefect_cli(*args: str, env: dict[str, str]) -> None:
    prefect = str(Path(sys.executable).with_name("prefect"))
    result = subprocess.run([prefect, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"prefect {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def deploy(settings: Settings) -> None:
    api_url = services.prefect_api_url(settings)
    if api_url is None:
        raise PipelineError("No Prefect server: set PREFECT_API_URL, or run `python -m tasks.services start prefect`.")
    env = {**os.environ, "PREFECT_API_URL": api_url, "MG_PROJECT_DIR": str(ROOT),
           "MG_DATA_HOST_DIR": str(settings.data_host_dir or settings.data_dir.resolve()),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for pool, (pool_type, template) in WORK_POOLS.items():
        extra = ("--base-job-template", str(template)) if template else ()
        prefect_cli("work-pool", "create", pool, "--type", pool_type, *extra, "--overwrite", env=env)
    prefect_cli("--no-prompt", "deploy", "--all", env=env)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        ensure_concurrency_limits(list(STORES))
        ensure_lost_run_automation()
    print(f"Registered every deployment of prefect.yaml on {api_url}; pools: {', '.join(WORK_POOLS)}; "
          f"concurrency limits: {', '.join(spec.concurrency_limit() for spec in STORES.values())}; "
          f"automation: {LOST_RUN!r}")


if __name__ == "__main__":
    raise SystemExit(run_cli(lambda: deploy(Settings())))
