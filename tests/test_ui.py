"""The Prefect UI path in a real browser: the full-refresh deployment's Run -> Custom run form, with
a number, a boolean, a choice, a text and a list set by hand, submitted, then run to Completed by a
process worker. Debian's chromium driven by Playwright (its own browser download cannot work
offline); facts that shaped it are in ../shared/notes/prefect-ui-notes.md. Screenshots go to
test-artifacts/ui/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, DeploymentFilter, \
    DeploymentFilterId, FlowRunFilter

from tests.conftest import ROOT, STORE_NAMES

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "ui"
# Without these, chromium tries the network at start (refused connections on a closed network).
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt when the machine lacks it (~100 s, ~480 MB)."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) as root")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return CHROMIUM


def field(page, name: str):
    """A form property by its label (the labels are not linked to their inputs)."""
    return page.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label", has_text=f"{name} (Optional)"))


def pick(page, prop, *options: str) -> None:
    for option in options:
        prop.locator("button.p-select-button__control").focus()
        page.keyboard.press("ArrowDown")
        page.get_by_role("option", name=option, exact=True).click()
        page.keyboard.press("Escape")


def test_a_custom_run_from_the_ui_completes_on_a_worker(prefect_server, running_services, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    deployed = subprocess.run([sys.executable, "-m", "deployments.deploy"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("full-refresh/full-refresh")
    ui = prefect_server.removesuffix("/api")
    data_dir = tmp_path / "data"
    SHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.set_default_timeout(30_000)  # 5 s is too short on a loaded 2-core machine
        try:
            page.goto(f"{ui}/deployments/deployment/{deployment.id}")
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("link", name="Custom run").click()
            field(page, "data_dir").get_by_role("button", name="str", exact=True).click()
            field(page, "data_dir").get_by_role("textbox").fill(str(data_dir))
            field(page, "catalog_size").get_by_role("button", name="int", exact=True).click()
            field(page, "catalog_size").get_by_role("spinbutton").fill("500")
            pick(page, field(page, "on_bad_rows"), "fail")
            field(page, "skip_embed").get_by_role("switch").click()
            field(page, "skip_stores").get_by_role("button", name="list", exact=True).click()
            pick(page, field(page, "skip_stores"), *STORE_NAMES)
            page.get_by_text("Parameters", exact=True).click()  # closes the open list
            page.screenshot(path=SHOTS / "1-custom-run-form.png", full_page=True)
            page.get_by_role("button", name="Submit", exact=True).click()
            # The "scheduled to start" toast appears twice; its button opens the run, whose id is in the URL.
            page.get_by_role("button", name="View run").last.click()
            page.wait_for_url("**/flow-run/**")
            run_id = page.url.split("flow-run/")[1].split("?")[0].strip("/")
            page.screenshot(path=SHOTS / "2-submitted-run.png", full_page=True)
        finally:
            browser.close()

    with get_client(sync_client=True) as client:
        # Only this run may be due when the worker starts (a nightly run could be, near 03:00 UTC).
        for run in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))):
            if run.state_name == "Scheduled" and str(run.id) != run_id:
                client.delete_flow_run(run.id)
        submitted = client.read_flow_run(run_id)
        chosen = {"data_dir": str(data_dir), "catalog_size": 500, "on_bad_rows": "fail", "skip_embed": True,
                  "skip_stores": STORE_NAMES}
        assert {key: submitted.parameters.get(key) for key in chosen} == chosen

    started = time.monotonic()
    worker = subprocess.run([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool",
                             "local-process", "--run-once"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert worker.returncode == 0, worker.stderr[-3000:]
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run_id)
        assert finished.state_name == "Completed", (finished.state, worker.stdout[-3000:], time.monotonic() - started)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["full-refresh-summary"])),
            flow_run_filter=FlowRunFilter(id={"any_": [finished.id]}))
        summary = artifacts[0].data
    assert "| ingest | completed |" in summary and "| embed | skipped |" in summary
    assert "500-item catalog" in summary and all(f"| {name} | skipped |" in summary for name in STORE_NAMES)
    assert (data_dir / "synthetic" / "media_catalog.parquet").exists()

    with sync_playwright() as playwright:  # the run as the UI shows it
        browser = playwright.chromium.launch(executable_path=str(chromium), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{ui}/runs/flow-run/{run_id}?tab=Parameters")
            page.get_by_text("Completed").first.wait_for()
            page.get_by_text(str(data_dir)).first.wait_for()
            page.screenshot(path=SHOTS / "3-completed-run-parameters.png", full_page=True)
        finally:
            browser.close()
