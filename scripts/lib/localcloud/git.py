"""git: smart HTTP (Debian's git http-backend) with basic auth, through tests/helpers/git_server.py;
bare repositories live in the state directory's git-repos/."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

from . import procs
from . import state as st
from .cloud import Cloud, LocalCloudError
from .model import Server, Service
from .state import State

GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


def _argv(cloud: Cloud, state: State) -> list[str]:
    if not Path(GIT_HTTP_BACKEND).exists():
        raise LocalCloudError(f"git: {GIT_HTTP_BACKEND} is missing; install git (apt-get install git)")
    cred_file = cloud.state_dir / "git-credentials"
    if not cred_file.exists():
        cred_file.write_text(f"flows:{secrets.token_hex(16)}")
        cred_file.chmod(0o600)
    return [sys.executable, "-P", str(cloud.root / "tests" / "helpers" / "git_server.py"),
            "--port", str(st.port(state, "git")), "--root", str(cloud.state_dir / "git-repos"),
            "--credentials-file", str(cred_file)]


def _ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, _ = procs.probe(f"http://127.0.0.1:{srv['port']}/healthz")
    return code == 200


def _exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    user, password = cloud.credentials("git-credentials")
    return [
        ("FLOWSTORE_GIT_URL", f"http://127.0.0.1:{st.port(state, 'git')}"),
        ("FLOWSTORE_GIT_ROOT", str(cloud.state_dir / "git-repos")),
        ("FLOWSTORE_GIT_USERNAME", user),
        ("FLOWSTORE_GIT_PASSWORD", password),
        # the names a git storage's agent reads (the operator reads them from a Secret only)
        ("GIT_USERNAME", user),
        ("GIT_PASSWORD", password),
    ]


SERVICE = Service("git", "git http-backend behind basic auth",
                  (Server("git", exe_hint="git_server.py", argv=_argv, ready=_ready),), _exports)
