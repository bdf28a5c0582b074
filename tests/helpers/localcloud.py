"""The local cloud (scripts/localcloud) from tests: bring services up, read their exports."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCALCLOUD = ROOT / "scripts" / "localcloud"


def localcloud_env(*services: str, state_dir: Path | None = None) -> dict[str, str]:
    """Run `localcloud up SERVICES` (idempotent) and return what `localcloud env` exports."""
    env = {**os.environ, **({"FLOWSTORE_LOCALCLOUD_DIR": str(state_dir)} if state_dir else {})}
    subprocess.run([sys.executable, str(LOCALCLOUD), "up", *services], check=True, cwd=ROOT, env=env)
    out = subprocess.run([sys.executable, str(LOCALCLOUD), "env"], check=True, cwd=ROOT, capture_output=True,
                         text=True, env=env).stdout
    exports: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            exports[name] = shlex.split(value)[0] if value else ""
    return exports


def ensure(service: str, marker: str) -> dict[str, str]:
    """The environment with `service` up: as exported already (under `make test`), else brought
    up now, so `pytest tests/x.py` works from a bare shell too."""
    if not os.environ.get(marker):
        os.environ.update(localcloud_env(service))
    return dict(os.environ)
