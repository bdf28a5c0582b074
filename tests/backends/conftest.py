"""Fixtures of the backend tier shared by modules.

``server`` and ``repo``: the real git smart-HTTP server (tests/helpers/git_server.py) over a
temp directory, and a repository it serves, for the modules that test the plain Git storage
(test_git, test_git_hardening). It takes the module's own ``USER`` and ``PASSWORD`` (each
module its own canary password). Modules against other servers (the provider fakes, the
webhook server) define fixtures of the same names, which take precedence in their module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.git_server import GitServer
from tests.helpers.gitrepo import LocalGitRepo


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GitServer]:
    (tmp_path / "repos").mkdir()
    with GitServer(tmp_path / "repos", request.module.USER, request.module.PASSWORD) as running:
        yield running


@pytest.fixture
def repo(server: GitServer) -> LocalGitRepo:
    return LocalGitRepo(server.root)
