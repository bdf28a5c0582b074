"""The CLI meets a broken environment: one `flowstore: …; hint: …` line, exit 2, never a traceback.

Each case runs the real `flowstore` in a subprocess in the broken environment itself: no
kubeconfig, a kubeconfig naming a file that is not there, an API server that is not listening
(a port just closed on 127.0.0.1), a package that is not installed (its import refused the way
Python refuses it when the package is absent: `sys.modules[name] = None`). The rows that need
a real API server or a stored flow are in tests/e2e/test_cli.py. Every row of the table is also
checked here with the exception it recognises, so a row that no longer matches fails.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flowstore import __version__, cli_errors

KUBECONFIG_AT = """apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: not-a-real-token}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u}}}}]
current-context: c
"""


def flowstore(*args: str, env: dict[str, str] | None = None, blocked: tuple[str, ...] = (),
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`flowstore ARGS` in a fresh interpreter; `blocked` packages import as if not installed."""
    code = (f"import sys\nfor name in {list(blocked)!r}:\n    sys.modules[name] = None\n"
            "from flowstore.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env=env if env is not None else dict(os.environ), cwd=cwd)


def one_line(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowstore: "), done.stderr
    assert done.returncode == code, (done.returncode, done.stderr)
    return lines[0]


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """No cluster configured: not in a Pod (no service account files), no KUBECONFIG, an empty HOME."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}
    env["HOME"] = str(tmp_path / "home")
    return env


@pytest.mark.parametrize("command", [["locate", "etl"], ["get", "etl", "-n", "data"], ["run", "etl"]])
def test_no_kubeconfig(bare_env: dict[str, str], command: list[str]) -> None:
    line = one_line(flowstore(*command, env=bare_env))
    assert "no Kubernetes cluster configured" in line and "KUBECONFIG is not set and there is no ~/.kube/config" \
        in line
    assert 'hint: point KUBECONFIG at' in line and 'eval "$(scripts/localcloud env)"' in line


def test_kubeconfig_names_a_missing_file(bare_env: dict[str, str], tmp_path: Path) -> None:
    line = one_line(flowstore("locate", "etl", env={**bare_env, "KUBECONFIG": str(tmp_path / "nope")}))
    assert f"KUBECONFIG names {tmp_path / 'nope'}, which does not exist" in line


def test_api_server_down(bare_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_AT.format(port=port))
    line = one_line(flowstore("get", "etl", "-n", "data", env={**bare_env, "KUBECONFIG": str(kubeconfig)}))
    assert f"cannot reach the Kubernetes API server at https://127.0.0.1:{port} (connection refused)" in line
    assert "hint: is the cluster running?" in line and str(kubeconfig) in line


@pytest.mark.parametrize(("command", "package", "extra"), [
    (["locate", "etl"], "kubernetes", "client"),
    (["get", "etl"], "kubernetes", "client"),
    (["run", "etl"], "kubernetes", "client"),
    (["operator"], "kopf", "operator"),
    (["completion", "bash"], "shtab", "client"),
])
def test_package_not_installed(command: list[str], package: str, extra: str) -> None:
    line = one_line(flowstore(*command, blocked=(package,)))
    assert f"the `{package}` package is not installed here" in line
    checkout = Path(__file__).resolve().parents[2]
    assert f"hint: install flowstore's `{extra}` extra from this checkout: " in line
    assert f"-m pip install -e '{checkout}[{extra}]'" in line  # the command, ready to paste


def test_version() -> None:
    done = flowstore("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"flowstore {__version__}")


def test_help_states_the_namespace_default_and_the_exit_codes() -> None:
    for command in ("locate", "get", "run"):
        assert "namespace (default: default)" in " ".join(flowstore(command, "--help").stdout.split())
    top = " ".join(flowstore("--help").stdout.split())
    assert "2 the environment is not ready" in top and "1 the flow is not available" in top


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_every_subcommand(shell: str) -> None:
    done = flowstore("completion", shell)
    assert done.returncode == 0, done.stderr
    for word in ("operator", "locate", "get", "run", "completion", "prefect-pull-step", "--namespace"):
        assert word in done.stdout, word


def test_completion_script_completes_in_bash(tmp_path: Path) -> None:
    script = tmp_path / "flowstore.bash"
    script.write_text(flowstore("completion", "bash").stdout)
    # what bash's programmable completion calls for `flowstore lo<TAB>`
    probe = (f"source {script}\nCOMP_WORDS=(flowstore lo); COMP_CWORD=1; COMP_LINE='flowstore lo'; "
             "COMP_POINT=${#COMP_LINE}\n_shtab_flowstore flowstore lo flowstore\necho \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["locate"], done.stdout + done.stderr


def test_a_closed_pipe_is_not_a_traceback() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "flowstore.cli", "completion", "zsh"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1)
    proc.stdout.close()  # the reader leaves, as `| head -c1` does
    assert "Traceback" not in proc.stderr.read().decode()
    proc.wait(timeout=30)


# ------------------------------------------------------------------- every row, by its exception
def _api_exception(status: int, reason: str, body: dict[str, object] | str) -> Exception:
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=status, reason=reason)
    exc.body = body if isinstance(body, str) else json.dumps(body)
    return exc


def _unauthorized() -> Exception:
    from kubernetes.client.exceptions import UnauthorizedException

    return UnauthorizedException(status=401, reason="Unauthorized")


def test_every_row_recognises_its_exception(tmp_path: Path) -> None:
    from kubernetes.config import ConfigException

    from flowstore.agent.errors import StatusError, TrustUnavailable, UntrustedLocation
    from flowstore.artifacts.bundle import BundleError
    from flowstore.artifacts.cache import CacheError
    from flowstore.artifacts.loading import FlowNeedsModule
    from flowstore.client import FlowNotAvailable
    from flowstore.storage import AuthFailed, MissingDependency

    missing_dir = tmp_path / "missing" / "etl.bin"
    cases: list[tuple[BaseException, str, int]] = [
        (FlowNeedsModule("…", name="prefect"), "the flow needs the `prefect` package", 2),
        (FlowNeedsModule("…", name="pandas"), "the flow needs the `pandas` module", 2),
        (ModuleNotFoundError("…", name="boto3"), "install flowstore's `s3` extra", 2),
        (ConfigException("Invalid kube-config file."), "no Kubernetes cluster configured", 2),
        (_api_exception(401, "Unauthorized", {}), "did not accept the credentials", 2),
        (_unauthorized(), "did not accept the credentials", 2),  # what the client raises for a 401
        (_api_exception(403, "Forbidden", {"message": "storedflows is forbidden"}),
         "refused this request (403 Forbidden): storedflows is forbidden", 2),
        (_api_exception(404, "Not Found", "404 page not found"), "kubectl apply --server-side -f crds/", 2),
        (MissingDependency("S3 storage needs boto3; hint: …"), "S3 storage needs boto3", 2),
        (FlowNotAvailable("StoredFlow data/etl not found"), "StoredFlow data/etl not found", 1),
        (AuthFailed("S3 refused"), "S3 refused", 1),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", str(missing_dir)),
         f"the directory {missing_dir.parent} does not exist", 2),
        (FileExistsError(errno.EEXIST, "File exists", str(tmp_path)), "it exists already", 2),
        # what an agent refuses is the flow's; what keeps it from checking is the environment's
        (StatusError("StoredFlow data/etl: status.artifact.size is str"), "status.artifact.size is str", 1),
        (UntrustedLocation("StoredFlow data/etl: its status points where"), "its status points where", 1),
        (BundleError("not a flow bundle"), "not a flow bundle", 1),
        (TrustUnavailable("grant it get on flowstorages"), "grant it get on flowstorages", 2),
        (CacheError("the agent cache /c is not private"), "the agent cache /c is not private", 2),
    ]
    for exc, expected, code in cases:
        problem = cli_errors.explain(exc)
        assert problem is not None, exc
        assert expected in problem.line() and problem.code == code, (exc, problem)
    # a row per recogniser, and each recognises something above
    assert len(cli_errors.PROBLEMS) == len({row.__name__ for row in cli_errors.PROBLEMS})


def test_what_no_row_knows_keeps_its_traceback() -> None:
    assert cli_errors.explain(ValueError("a bug")) is None
    assert cli_errors.explain(ModuleNotFoundError("…", name="flowstore.gone")) is None
