"""Local storage in the operator (issue 20, item 1): only under its Local root, one directory per
namespace, never over the operator's own state, and no link or '..' leads anywhere else, whoever
planted it on the volume. Real files in a temporary directory; no cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from flowstore.storage import InvalidConfig
from flowstore.storage.errors import LocalStorageDisabled, OutsideLocalRoot
from flowstore.storage.local import Local, local_root_refusal
from flowstore.storage.policy import ServePolicy


def served(root: Path, namespace: str, directory: str | Path, **config: object) -> Local:
    policy = ServePolicy(namespace=namespace, local_root=str(root))
    return Local.for_operator({"directory": str(directory), **config}, credentials=None, policy=policy)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    made = tmp_path / "root"
    made.mkdir()
    return made


def test_without_a_root_the_operator_serves_no_local_storage(tmp_path: Path) -> None:
    with pytest.raises(LocalStorageDisabled) as info:
        Local.for_operator({"directory": str(tmp_path)}, credentials=None, policy=ServePolicy(namespace="team"))
    assert info.value.reason == "LocalStorageDisabled" and not info.value.retryable
    assert "--local-root" in info.value.message and "localStorage.enabled" in info.value.message
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("where", [
    "{root}/other/flows",  # another namespace's directory
    "{root}",  # the root itself, above every namespace
    "{root}/team/../other",  # '..' that leaves the namespace
    "{root}/team/flows/../../other",
    "{root}/teams",  # a sibling whose name starts alike
    "{tmp}/flowstore-git",  # the operator's git cache (the reported attack)
    "/etc",
])
def test_a_directory_outside_the_namespaces_root_is_refused(root: Path, where: str) -> None:
    directory = where.format(root=root, tmp=tempfile.gettempdir())
    with pytest.raises(OutsideLocalRoot) as info:
        served(root, "team", directory)
    assert info.value.reason == "OutsideLocalRoot"
    assert f"{root}/team" in info.value.message
    assert sorted(p.name for p in root.iterdir()) == []  # nothing was created


def test_inside_the_namespaces_root_works_and_creates_what_it_needs(root: Path) -> None:
    storage = served(root, "team", root / "team" / "flows")
    location = storage.location_for("etl", "a/b/etl.py")
    stored = storage.put_bytes(location, b"flow = 1\n")
    assert stored.location == f"{root}/team/flows/a/b/etl.py"
    assert (root / "team" / "flows" / "a" / "b" / "etl.py").read_bytes() == b"flow = 1\n"
    assert storage.get_bytes(location) == b"flow = 1\n"
    info = storage.stat(location)
    assert info is not None and info.size == 9
    storage.delete(location)
    assert storage.stat(location) is None
    assert served(root, "team", root / "team").directory == f"{root}/team"  # the namespace's own root


def test_a_namespace_directory_replaced_by_a_link_to_another_is_refused(root: Path) -> None:
    (root / "other" / "flows").mkdir(parents=True)
    (root / "other" / "flows" / "theirs.py").write_text("secret = 1\n")
    os.symlink(root / "other", root / "team")  # someone who may write the volume
    with pytest.raises(InvalidConfig, match="symbolic link"):
        served(root, "team", root / "team" / "flows")
    (root / "team").unlink()
    storage = served(root, "team", root / "team" / "flows")
    os.symlink(root / "other" / "flows", root / "team" / "flows" / "linked")
    for action in (lambda: storage.put_bytes(storage.location_for("x", "linked/theirs.py"), b"overwritten"),
                   lambda: storage.get_bytes(storage.location_for("x", "linked/theirs.py")),
                   lambda: storage.delete(storage.location_for("x", "linked/theirs.py"))):
        with pytest.raises(InvalidConfig, match="symbolic link"):
            action()
    assert (root / "other" / "flows" / "theirs.py").read_text() == "secret = 1\n"


def test_a_link_planted_where_an_artifact_is_is_never_followed(root: Path) -> None:
    storage = served(root, "team", root / "team" / "flows")
    token = root / "token"
    token.write_text("operator-credential")
    planted = root / "team" / "flows" / "etl.py"
    os.symlink(token, planted)
    location = storage.location_for("etl", "etl.py")
    with pytest.raises(InvalidConfig, match="symbolic link"):
        storage.get_bytes(location)
    with pytest.raises(InvalidConfig, match="symbolic link"):
        storage.stat(location)
    storage.put_bytes(location, b"flow = 2\n")  # the rename replaces the link itself
    assert not planted.is_symlink() and planted.read_bytes() == b"flow = 2\n"
    assert token.read_text() == "operator-credential"


def test_a_fifo_where_an_artifact_is_does_not_hang_the_operator(root: Path) -> None:
    storage = served(root, "team", root / "team" / "flows")
    os.mkfifo(root / "team" / "flows" / "etl.py")
    done: list[BaseException] = []

    def read() -> None:
        try:
            storage.stat(storage.location_for("etl", "etl.py"))
        except BaseException as exc:
            done.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert done and isinstance(done[0], InvalidConfig) and "not a regular file" in str(done[0])


@pytest.mark.parametrize("key", ["../escape.py", "a/../../escape.py", "/etc/passwd", "{root}/other/x.py", ""])
def test_keys_stay_inside_the_directory(root: Path, key: str) -> None:
    storage = served(root, "team", root / "team" / "flows")
    with pytest.raises(InvalidConfig, match="outside the storage directory"):
        storage.put_bytes(key.format(root=root) or str(root / "team" / "flows"), b"x")
    assert not (root / "team" / "escape.py").exists() and not (root / "other").exists()


@pytest.mark.parametrize("candidate", ["/", "/tmp", "{tmp}/flowstore-git", "{tmp}/flowstore-build-x/flows",
                                       "{home}", "{prefix}", "{prefix}/lib/flows", "relative/flows", "{cwd}"])
def test_a_root_overlapping_the_operators_own_state_is_refused(candidate: str) -> None:
    path = candidate.format(tmp=tempfile.gettempdir(), home=os.path.expanduser("~"), prefix=sys.prefix,
                            cwd=os.getcwd())
    assert local_root_refusal(path) is not None, path


def test_a_root_of_its_own_is_accepted(tmp_path: Path) -> None:
    assert local_root_refusal("/var/lib/flowstore/flows") is None
    assert local_root_refusal(str(tmp_path / "volume")) is None


def test_the_operator_will_not_start_with_an_overlapping_root() -> None:
    done = subprocess.run([sys.executable, "-m", "flowstore.cli", "operator", "--local-root", tempfile.gettempdir()],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": "/nonexistent"})
    assert done.returncode == 1
    assert "--local-root" in done.stderr and "holds the operator's own files" in done.stderr
