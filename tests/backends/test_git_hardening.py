"""git runs with configuration flowstore controls, and reads stay bounded (issue 20, items 1 and
8), against the real git smart-HTTP server: a config planted in the git cache (what a Local
FlowStorage over the temp directory once could write) runs no credential helper and no hook and
sends nothing through a proxy; a cache directory someone else made is refused; a huge flow file
is refused before it is read; a provider's answer is bounded while it streams in."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flowstore.storage import AuthFailed, InvalidConfig, StorageError
from flowstore.storage._rest import get_with_retries
from flowstore.storage.git.plain import MAX_FILE_BYTES, REPO_CONFIG, Git, cache_root
from tests.backends.git_conformance import flow_script
from tests.helpers.git_server import GitServer
from tests.helpers.gitrepo import LocalGitRepo
from tests.helpers.webhook_server import WebhookServer

USER, PASSWORD = "flows", "canary-git-password-77d0-do-not-leak"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    (tmp_path / "repos").mkdir()
    with GitServer(tmp_path / "repos", USER, PASSWORD) as running:
        yield running


@pytest.fixture
def repo(server: GitServer) -> LocalGitRepo:
    return LocalGitRepo(server.root)


@pytest.fixture(autouse=True)
def private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The git cache of these tests in a temp directory of their own."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def plant(storage: Git, config: str, *, mode: int = 0o700, script: bool = True) -> None:
    """What a FlowStorage writing into the temp directory once could leave: a repository where
    the operator's cache for that URL goes, each file also a valid Python script."""
    storage.cache_dir.mkdir(parents=True, mode=0o700)
    storage.cache_dir.parent.chmod(0o700)
    storage.cache_dir.chmod(mode)
    (storage.cache_dir / "HEAD").write_text("ref: refs/heads/main\n")
    for directory in ("objects", "refs"):  # keys objects/x.py, refs/x.py make a repository git accepts
        (storage.cache_dir / directory).mkdir()
        (storage.cache_dir / directory / "x.py").write_text("x = 1\n")
    (storage.cache_dir / "config").write_text(config)
    if script:
        compile(config, "config", "exec")


def test_a_planted_config_runs_no_helper_and_no_hook(server: GitServer, repo: LocalGitRepo, tmp_path: Path) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    helper_ran, hook_ran = tmp_path / "helper-ran", tmp_path / "hook-ran"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("reference-transaction", "post-checkout", "fsmonitor-watchman"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\ntouch {hook_ran}\n")
        hook.chmod(0o755)
    url = f"{server.url}/{repo.name}.git"
    anonymous = Git(url=url)  # the server answers 401: git asks its credential helpers
    plant(anonymous, "\n".join([
        "[core]", f'hooksPath = "{hooks}"', 'fsmonitor = "touch /dev/null"',
        "[credential]", f'helper = "!touch {helper_ran}"',
        "[http]", 'proxy = "http://127.0.0.1:9"', ""]))
    with pytest.raises(AuthFailed):
        anonymous.read_file("flows/etl.py", head)
    assert not helper_ran.exists() and not hook_ran.exists()
    assert (anonymous.cache_dir / "config").read_text() == REPO_CONFIG  # replaced before git read it
    # with credentials the same planted config neither sends them to the proxy nor runs a hook
    storage = Git(url=url, username=USER, password=PASSWORD)
    plant(storage, "\n".join(["[http]", 'proxy = "http://127.0.0.1:9"', "[core]", f'hooksPath = "{hooks}"', ""]))
    assert storage.read_file("flows/etl.py", head) == flow_script("etl", 1)
    assert not hook_ran.exists()


def test_a_cache_someone_else_made_is_refused(server: GitServer, repo: LocalGitRepo, tmp_path: Path) -> None:
    head = repo.commit({"flows/etl.py": flow_script("etl", 1)})
    storage = Git(url=f"{server.url}/{repo.name}.git", username=USER, password=PASSWORD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, cache_root())  # the whole cache, a link
    with pytest.raises(StorageError, match="not a private directory"):
        storage.read_file("flows/etl.py", head)
    os.unlink(cache_root())
    plant(storage, REPO_CONFIG, mode=0o755, script=False)  # a repository others may write to (as Local made them)
    with pytest.raises(StorageError, match="not a private directory"):
        storage.read_file("flows/etl.py", head)
    assert not any(elsewhere.iterdir())
    storage.cache_dir.chmod(0o700)
    assert storage.read_file("flows/etl.py", head) == flow_script("etl", 1)
    assert stat.S_IMODE(os.lstat(cache_root()).st_mode) == 0o700


def test_a_huge_flow_file_is_refused_before_it_is_read(server: GitServer, repo: LocalGitRepo) -> None:
    head = repo.commit({"flows/etl.py": b"#" * (MAX_FILE_BYTES + 1)})
    storage = Git(url=f"{server.url}/{repo.name}.git", username=USER, password=PASSWORD)
    with pytest.raises(InvalidConfig, match="more than a flow file may be"):
        storage.read_file("flows/etl.py", head)


def test_a_providers_answer_is_bounded_while_it_streams() -> None:
    with WebhookServer() as service:
        big = b"x" * (2 * 1024 * 1024 + 1)
        requests.put(f"{service.url}/objects/big", data=big, timeout=30).raise_for_status()
        requests.put(f"{service.url}/objects/small", data=b"small", timeout=30).raise_for_status()
        session = requests.Session()
        small = get_with_retries(session, f"{service.url}/objects/small", what="reading small", api="the API",
                                 api_base=service.url)
        assert small.content == b"small"
        import flowstore.storage._rest as rest

        limit = rest.MAX_RESPONSE_BYTES
        rest.MAX_RESPONSE_BYTES = 2 * 1024 * 1024
        try:
            with pytest.raises(InvalidConfig, match="more than a flow's file may be"):
                rest.read_bounded(session.get(f"{service.url}/objects/big", stream=True, timeout=30),
                                  what="reading big", limit=rest.MAX_RESPONSE_BYTES)
        finally:
            rest.MAX_RESPONSE_BYTES = limit
