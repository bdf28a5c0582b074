"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.webhook_server import WebhookServer


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    """A real HTTP flow service on a free local port (tests/helpers/webhook_server.py)."""
    with WebhookServer() as server:
        yield server
