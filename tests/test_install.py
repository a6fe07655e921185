"""`make install` on a machine with the local torch wheel folder and on one without it (PyTorch's CPU
index). The real index is out of reach here, so a local index of the same layout serves the wheel."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT

WHEELS = Path("/opt/wheels")  # the Makefile's default WHEELS


def torch_wheel() -> Path:
    wheels = sorted(WHEELS.glob("torch-*.whl"))
    if not wheels:
        pytest.skip(f"no torch wheel in {WHEELS}: this machine installed torch from PyTorch's index (make install)")
    return wheels[0]


def make_install(venv: Path, **variables: str) -> str:
    done = subprocess.run(["make", "install", f"VENV={venv}", *(f"{k}={v}" for k, v in variables.items())],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def torch_version(venv: Path) -> str:
    return subprocess.run([venv / "bin" / "python", "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True, check=True, timeout=300).stdout.strip()


def test_install_takes_torch_from_the_local_wheel_folder(tmp_path):
    wheel = torch_wheel()
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / wheel.name).symlink_to(wheel)
    out = make_install(tmp_path / "venv", WHEELS=str(folder), TORCH_INDEX="http://127.0.0.1:9/unreachable")
    assert f"--find-links {folder}" in out and "--extra-index-url" not in out
    assert torch_version(tmp_path / "venv") == "2.13.0+cpu"


def test_install_without_the_folder_takes_torch_from_the_cpu_index(tmp_path):
    wheel = torch_wheel()
    # A PEP 503 index like https://download.pytorch.org/whl/cpu: simple/torch/ links to the wheel.
    root = tmp_path / "index"
    (root / "simple" / "torch").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / wheel.name).symlink_to(wheel)
    (root / "simple" / "torch" / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name.replace("+", "%2B")}">{wheel.name}</a></body></html>')
    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            served.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_address[1]}/simple"
        out = make_install(tmp_path / "venv", WHEELS=str(tmp_path / "no-wheels"), TORCH_INDEX=index)
    finally:
        server.shutdown()
    assert f"--extra-index-url {index} --index-strategy unsafe-best-match" in out and "--find-links" not in out
    assert any(path.startswith("/files/torch-") for path in served)  # the wheel came from the index
    assert torch_version(tmp_path / "venv") == "2.13.0+cpu"
    assert "/opt/wheels" not in (ROOT / "requirements.lock").read_text()  # the lock names no local folder
