"""The CLI against the real API server and a real stored flow, when something around it is wrong:
one `flowstore: …` line with a hint and exit 2 (the environment) or 1 (the flow), never a
traceback. The errors that need no cluster are in tests/unit/test_cli_errors.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.kube import apply, wait_ready
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.operator import OperatorProcess


def flowstore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowstore.cli", *args], capture_output=True, text=True,
                          env=env if env is not None else dict(os.environ), timeout=120)


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowstore: "), done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    return lines[0]


def test_environment_errors_with_a_real_cluster(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                                s3_endpoint: str, tmp_path: Path) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, storedAsScript=True))
    # a script that imports Prefect: stored as it is (script mode never runs it in the operator)
    apply(inline_flow(namespace, "needs-prefect", "needs prefect").replace(
        "from flowstore.flow import Flow\n", "import prefect\n      from flowstore.flow import Flow\n", 1))
    wait_ready(namespace, "needs-prefect", timeout=60)

    # -o into a directory that does not exist
    missing = tmp_path / "no" / "such" / "dir" / "flow.py"
    line = one_line(flowstore("get", "needs-prefect", "-n", namespace, "-o", str(missing)), 2)
    assert f"cannot write {missing}: the directory {missing.parent} does not exist" in line
    assert f"hint: create it first (mkdir -p {missing.parent})" in line

    # a flow that needs a package this Python does not have
    line = one_line(flowstore("run", "needs-prefect", "-n", namespace), 2)
    assert "the flow needs the `prefect` package, which is not installed here" in line
    assert "hint: run it where its runtime is" in line

    # credentials the API server does not accept
    kubeconfig = tmp_path / "kubeconfig"
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())  # the same server and CA
    for user in config["users"]:
        user["user"] = {"token": "not-a-token-this-server-knows"}
    kubeconfig.write_text(yaml.safe_dump(config))
    line = one_line(flowstore("locate", "needs-prefect", "-n", namespace,
                              env={**os.environ, "KUBECONFIG": str(kubeconfig)}), 2)
    assert f"did not accept the credentials in {kubeconfig} (401 Unauthorized)" in line

    # the flow's own problems: exit 1
    line = one_line(flowstore("locate", "no-such-flow", "-n", namespace), 1)
    assert line == f"flowstore: StoredFlow {namespace}/no-such-flow not found"
