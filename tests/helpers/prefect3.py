"""Prefect 3 for real: its own virtualenv, a server (SQLite) and a process worker on 127.0.0.1,
and the few REST calls the tests make (deployments, flow runs, their logs).

The venv is built once per requirements and Python version into
``~/.cache/flowstore/venvs/prefect3-<version>-<hash>`` when missing (a clean CI machine: pip from
PyPI, about a minute and a half here), as :mod:`tests.helpers.venvs` describes; everything runs
as ``bin/python -m prefect …``.

flowstore itself is not installed there: the venv is shared by every checkout on the machine, so
the processes get this checkout's ``operator/`` on ``PYTHONPATH`` (the worker hands its environment
to the flow-run processes it starts, which import ``flowstore.prefect`` for the pull step). The
requirements are flowstore's client dependencies (pyproject.toml) with the backends the tests use,
and prefect-kubernetes for the Kubernetes worker (tests/cluster/test_prefect_kubernetes.py);
kubernetes and boto3 are pinned because pip's resolver backtracks for many minutes through
botocore releases beside prefect's pins when they are left open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from tests.helpers import venvs
from tests.helpers.localcloud import ROOT
from tests.helpers.net import free_port

PREFECT_VERSION = "3.9.1"
REQUIREMENTS = (f"prefect=={PREFECT_VERSION}", "prefect-kubernetes==0.8.0", "kubernetes==37.0.1", "boto3==1.44.8",
                "cloudpickle>=3.0", "pathspec>=0.12", "pyyaml>=6.0", "requests>=2.31")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def venv_dir() -> Path:
    return venvs.venv_dir(f"prefect3-{PREFECT_VERSION}", REQUIREMENTS)


def python() -> Path:
    """The venv's python, built first when missing."""
    return venvs.cached_python(venv_dir(), REQUIREMENTS,
                               "import prefect, prefect_kubernetes, kubernetes, boto3; print(prefect.__version__)",
                               PREFECT_VERSION)


class Prefect:
    """A Prefect server (SQLite in `home`) and one process worker polling `pool`, both started
    in their own process groups, so :meth:`stop` ends them and every flow run they started."""

    def __init__(self, home: Path, env: dict[str, str], pool: str = "flowstore-e2e") -> None:
        self.home = home
        self.pool = pool
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.worker_cache = home / "worker-cache"
        self.env = {
            **env,
            "PYTHONPATH": str(ROOT / "operator"),
            "PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
            "FLOWSTORE_CACHE_DIR": str(self.worker_cache),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = open(self.home / f"{name}.log", "wb")  # the child writes it
        self.procs[name] = subprocess.Popen([str(python()), "-m", "prefect", *args], stdout=log,
                                            stderr=subprocess.STDOUT, env=env or self.env, cwd=self.home,
                                            start_new_session=True)

    def start_worker(self, name: str, pool: str, env: dict[str, str], worker_type: str = "process") -> None:
        """Another worker (`worker_type`: process, or kubernetes from prefect-kubernetes), polling
        `pool`, whose flow runs get `env` (stopped by :meth:`stop`)."""
        self._start(name, "worker", "start", "--pool", pool, "--type", worker_type, env=env)
        self._wait(lambda: requests.get(f"{self.api}/work_pools/{pool}", timeout=2).ok, 60, name)

    def start(self, worker: bool = True) -> None:
        """The server, and unless `worker` is false the process worker polling :attr:`pool`."""
        self._start("server", "server", "start", "--host", "127.0.0.1", "--port", str(self.port))
        self._wait(lambda: requests.get(f"{self.api}/health", timeout=2).ok, 120, "server")
        if not worker:
            return
        self._start("worker", "worker", "start", "--pool", self.pool, "--type", "process")
        self._wait(lambda: requests.get(f"{self.api}/work_pools/{self.pool}", timeout=2).ok, 60, "worker")

    def _wait(self, ready: Any, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[name]
            assert proc.poll() is None, f"prefect {name} exited ({proc.returncode}):\n{self.log(name)[-4000:]}"
            try:
                if ready():
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prefect {name} not ready after {timeout}s:\n{self.log(name)[-4000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        for name in [*(n for n in self.procs if n not in ("worker", "server")), "worker", "server"]:
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)  # its group: the worker's flow-run processes too
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # ------------------------------------------------------------------ the REST API
    #: what Prefect's own client retries (prefect/client/base.py: 429, 502, 503): the server answers
    #: 503 while its SQLite database is busy, and its clients are expected to come back
    RETRIED = (429, 502, 503)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, body)

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        for attempt in range(6):
            response = requests.request(method, f"{self.api}{path}", json=body, timeout=30)
            if response.status_code not in self.RETRIED:
                break
            time.sleep(0.5 * 2 ** attempt)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:2000]}"
        return response.json()

    def create_deployment(self, name: str, flow_name: str, entrypoint: str, pull_steps: list[dict[str, Any]],
                          pool: str | None = None, job_variables: dict[str, Any] | None = None) -> str:
        """What prefect-operator's PrefectDeployment does: a deployment whose code comes only from
        its pull steps (no local files), with these job variables."""
        flow_id = self.post("/flows/", {"name": flow_name})["id"]
        deployment = self.post("/deployments/", {"name": name, "flow_id": flow_id, "entrypoint": entrypoint,
                                                 "pull_steps": pull_steps, "work_pool_name": pool or self.pool,
                                                 "job_variables": job_variables or {},
                                                 "enforce_parameter_schema": False})
        return str(deployment["id"])

    def run(self, deployment_id: str, timeout: float = 180, job_variables: dict[str, Any] | None = None
            ) -> dict[str, Any]:
        """Start a flow run of the deployment (with these job variables) and wait for its final
        state; the flow run."""
        body = {"job_variables": job_variables} if job_variables else {}
        run_id = self.post(f"/deployments/{deployment_id}/create_flow_run", body)["id"]
        return self.wait(run_id, timeout)

    def wait(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        """The flow run once it is in a final state."""
        deadline = time.monotonic() + timeout
        while True:
            flow_run: dict[str, Any] = self.get(f"/flow_runs/{run_id}")
            if (flow_run.get("state") or {}).get("type") in TERMINAL:
                return flow_run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run_id} still {flow_run.get('state')} after {timeout}s; worker:\n"
                                     f"{self.log('worker')[-6000:]}")
            time.sleep(0.5)

    def logs(self, flow_run_id: str) -> list[str]:
        """The flow run's log messages as the Prefect API holds them."""
        found = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                           "sort": "TIMESTAMP_ASC", "limit": 200})
        return [str(entry["message"]) for entry in found]

    def wait_for_log(self, flow_run_id: str, text: str, timeout: float = 30) -> list[str]:
        """The run's logs once one of them contains `text` (processes ship logs in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.logs(flow_run_id)
            if any(text in m for m in messages):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"no log of flow run {flow_run_id} contains {text!r}:\n" + "\n".join(messages)
                                     + f"\nworker:\n{self.log('worker')[-6000:]}")
            time.sleep(0.5)

    def python(self, code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run `code` with the venv's python, in this Prefect's environment."""
        return subprocess.run([str(python()), "-c", code], capture_output=True, text=True, env=self.env,
                              cwd=self.home, timeout=timeout)
