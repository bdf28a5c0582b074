"""webhook: the real HTTP service the Webhook storage's tests use (tests/helpers/webhook_server.py,
aiohttp: a dependency of kopf, so present wherever flowstore's operator is), behind a token."""

from __future__ import annotations

import secrets
import sys
from typing import Any

from . import procs
from . import state as st
from .cloud import Cloud
from .model import Server, Service
from .state import State


def _argv(cloud: Cloud, state: State) -> list[str]:
    token_file = cloud.state_dir / "webhook-token"
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(16))
        token_file.chmod(0o600)
    # -P: the script's directory stays off sys.path (tests/helpers/operator.py would shadow
    # the stdlib's operator module)
    return [sys.executable, "-P", str(cloud.root / "tests" / "helpers" / "webhook_server.py"),
            "--port", str(st.port(state, "webhook")), "--token-file", str(token_file)]


def _ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, _ = procs.probe(f"http://127.0.0.1:{srv['port']}/status/204")
    return code == 204


def _exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    token = (cloud.state_dir / "webhook-token").read_text().strip()
    return [
        ("FLOWSTORE_WEBHOOK_URL", f"http://127.0.0.1:{st.port(state, 'webhook')}"),
        ("FLOWSTORE_WEBHOOK_TOKEN", token),
        # the name the examples' Webhook templates use, which agents fill from their environment
        ("WEBHOOK_TOKEN", token),
    ]


SERVICE = Service("webhook", "an HTTP service storing PUT/POST bodies",
                  (Server("webhook", exe_hint="webhook_server.py", argv=_argv, ready=_ready),), _exports)
