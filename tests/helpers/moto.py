"""A moto server of a test's own, beside the local cloud's shared one (which accepts any keys)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.net import free_port


@contextmanager
def auth_enforcing_moto(log_dir: Path) -> Iterator[str]:
    """A real moto server on 127.0.0.1 that enforces IAM authentication from the first request
    (INITIAL_NO_AUTH_ACTION_COUNT=0, https://docs.getmoto.org/en/latest/docs/iam.html); its
    endpoint URL. Its log goes to `log_dir`/moto.log; it is stopped on exit."""
    moto_server = shutil.which("moto_server")
    if moto_server is None:
        pytest.fail("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = log_dir / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()  # noqa: S310 - local server
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {log.read_text()}")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
