"""The adopter's view: the wheel, installed without extras into a fresh virtualenv, run from a project
of their own that has its own ``tasks.py``, ``worker.py`` and ``api/`` (each refuses to be imported).

Proves the wheel holds everything the runtime needs, that every third-party import of the runtime
is a declared dependency, and that nothing generic lands in site-packages beside the user's code.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.wheel

NOT_OURS = 'raise ImportError("the adopter\'s own {name}: chatq must never import it")\n'
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis")
IMPORT_ALL = """
import importlib, pkgutil, chatq
names = [m.name for m in pkgutil.walk_packages(chatq.__path__, "chatq.") if m.name != "chatq.__main__"]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Iterator[Path]:
    """A fresh virtualenv holding the wheel and its declared dependencies, nothing else."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "wheel", "--no-deps", "-w", tmp / "dist", source, timeout=300)
    (wheel,) = (tmp / "dist").glob("chatq-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", tmp / "venv", timeout=120)
    python = tmp / "venv" / "bin" / "python"
    run(*pip, "--python", python, "install", "--no-compile", wheel, timeout=300)
    yield tmp / "venv"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The adopter's own project, whose module names a careless package would shadow or import."""
    (tmp_path / "tasks.py").write_text(NOT_OURS.format(name="tasks.py"))
    (tmp_path / "worker.py").write_text(NOT_OURS.format(name="worker.py"))
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "__init__.py").write_text(NOT_OURS.format(name="api/"))
    return tmp_path


def env_of(fleet, venv: Path) -> dict[str, str]:
    env = {k: v for k, v in fleet.env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_site_packages_holds_only_the_chatq_namespace(venv):
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "chatq" / "tasks" / "client.py").exists() and (site / "chatq" / "worker" / "celery.py").exists()
    for generic in ("tasks", "worker", "api"):
        assert not (site / generic).exists() and not (site / f"{generic}.py").exists(), generic


def test_every_runtime_module_imports_with_the_declared_dependencies_only(venv, project):
    out = run(venv / "bin" / "python", "-c", IMPORT_ALL, cwd=project, timeout=120)
    assert int(out.stdout) > 30


def test_demo_batch_and_serve_from_a_project_of_ones_own(venv, project, make_fleet):
    fleet = make_fleet(online=False)
    fleet.env = env = env_of(fleet, venv)
    bin_ = venv / "bin"
    # Started first, as they take seconds to come up: the API, and a worker the ordinary Celery way.
    port = free_port()
    serve = subprocess.Popen([bin_ / "chatq", "serve", "--port", str(port)], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        worker = fleet.start_worker(4, how="celery", python=str(bin_ / "python"), cwd=project)

        demo = run(bin_ / "chatq", "demo", cwd=project, env=env, timeout=120)  # with a worker of its own
        assert "demo ok" in demo.stdout and "Your name is Alice." in demo.stdout

        fleet.wait_ready(worker)
        (project / "small.jsonl").write_text("\n".join(json.dumps(line) for line in (
            {"custom_id": "ann", "messages": ["My name is Ann", "What's my name?"]},
            {"custom_id": "bo", "message": "Hello"},
        )) + "\n")
        batch = run(bin_ / "chatq", "batch", "run", "small.jsonl", "-o", "out.jsonl", "--timeout", "60",
                    cwd=project, env=env, timeout=120)
        assert json.loads(batch.stdout)["succeeded"] == 2
        results = {r["custom_id"]: r for r in map(json.loads, (project / "out.jsonl").read_text().splitlines())}
        assert results["ann"]["replies"][-1] == "Your name is Ann." and results["bo"]["status"] == "succeeded"

        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, serve.stdout.read()
            try:
                status, health = get_json(f"http://127.0.0.1:{port}/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chatq serve never answered /healthz with 200"
            time.sleep(0.2)
        assert health == {"status": "ok", "redis": True, "workers": True}
        # The console's templates and static files travel in the wheel as package data.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/jobs", timeout=5) as page:  # open: no keys
            assert page.status == 200 and b'id="job-rows"' in page.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/static/console.js", timeout=5) as script:
            assert script.status == 200 and b"EventSource" in script.read()
    finally:
        serve.terminate()
        serve.wait(10)
