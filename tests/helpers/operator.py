"""`flowstore operator` as it runs in production, in a subprocess of the tests; restartable."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.localcloud import ROOT
from tests.helpers.net import free_port

OPERATOR_ARGS = ["--build-timeout", "5", "--build-memory", "256Mi", "--delete-retries", "2"]
#: the local cloud's servers listen on 127.0.0.1, which the operator reaches only when allowed
#: (docs/security.md); tests of the policy itself start operators without it
TEST_POLICY_ARGS = ["--allow-private-endpoints"]
#: the Local root (--local-root) of every operator the tests start; tests/conftest.py moves it
#: into the session's temporary directory. A FlowStorage in namespace NS stores under
#: LOCAL_ROOT/NS (local_dir).
LOCAL_ROOT = Path(tempfile.gettempdir()) / "fs-tests-local-root"


def local_dir(namespace: str, *parts: str) -> Path:
    """A directory a Local FlowStorage of `namespace` may use (under the operators' Local root)."""
    return LOCAL_ROOT.joinpath(namespace, *parts)


class OperatorProcess:
    """`flowstore operator` as it runs in production, in a subprocess; restartable."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, *extra: str, local_root: bool = True, test_policy: bool = True) -> None:
        """`extra` flags after the tests' defaults: OPERATOR_ARGS, TEST_POLICY_ARGS (unless
        `test_policy` is False: the operator's own defaults) and --local-root LOCAL_ROOT (unless
        `local_root` is False)."""
        self.starts += 1
        self.metrics_port = free_port()
        log = open(self.log_path, "wb")
        root: list[str] = []
        if local_root:
            LOCAL_ROOT.mkdir(parents=True, exist_ok=True)
            root = ["--local-root", str(LOCAL_ROOT)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowstore.cli", "operator", *OPERATOR_ARGS,
             *(TEST_POLICY_ARGS if test_policy else []), *root,
             "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1", *extra],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )
        # Ready to be observed once its metrics endpoint answers (imports take a moment).
        import urllib.request

        deadline = time.monotonic() + 120  # imports alone take 30 s and more on a loaded 2-core machine
        while True:
            assert self.proc.poll() is None, self.logs()
            try:
                urllib.request.urlopen(self.metrics_url, timeout=1).close()  # noqa: S310 - loopback
                break
            except OSError:
                if time.monotonic() > deadline:
                    # Stop it: a fixture whose start failed never tears down, and a stray
                    # cluster-wide operator would serve every later test's objects too. SIGKILL:
                    # one that never answered may not answer SIGTERM either.
                    self.stop(signal.SIGKILL)
                    raise AssertionError(f"operator metrics never answered:\n{self.logs()}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
