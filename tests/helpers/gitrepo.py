"""A real git repository on disk that tests commit to, and that the git server and the
provider contract fakes serve from. Commit ids, trees and blobs are git's own, so what a fake
answers is what the provider would answer for the same repository."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from tests.helpers.gitsigning import Signer, signing_args

_ENV = {
    "GIT_AUTHOR_NAME": "flowstore tests",
    "GIT_AUTHOR_EMAIL": "tests@flowstore.dev",
    "GIT_COMMITTER_NAME": "flowstore tests",
    "GIT_COMMITTER_EMAIL": "tests@flowstore.dev",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path | None = None, input: bytes | None = None,
        env: dict[str, str] | None = None) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                          env={**os.environ, **_ENV, **(env or {})}, check=False)
    if done.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


@dataclasses.dataclass(frozen=True)
class Symlink:
    """A symlink to commit (git mode 120000: a blob holding `target`)."""

    target: str


@dataclasses.dataclass(frozen=True)
class Submodule:
    """A submodule to commit (git mode 160000: a gitlink to `commit` of another repository,
    which need not exist here)."""

    commit: str


@dataclasses.dataclass(frozen=True)
class TreeLine:
    """One line of ``git ls-tree --long``."""

    mode: str  # as git prints it: 100644, 100755, 120000, 040000, 160000
    type: str  # blob, tree, commit
    id: str
    size: int | None  # blobs only
    path: str


class LocalGitRepo:
    """A bare repository (``bare``, what servers serve) with helpers that commit to it without
    a work tree. Default branch ``main``."""

    def __init__(self, root: Path, name: str | None = None) -> None:
        self.name = name or f"flows-{uuid.uuid4().hex[:8]}"
        self.bare = root / f"{self.name}.git"
        git("init", "-q", "--bare", "--initial-branch=main", str(self.bare))
        git("config", "http.receivepack", "true", cwd=self.bare)
        # fetches of single objects without their trees (--filter=tree:0), as the providers allow
        git("config", "uploadpack.allowFilter", "true", cwd=self.bare)

    def run(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
        return git(*args, cwd=self.bare, input=input, env=env)

    def head(self, branch: str = "main") -> str | None:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", f"refs/heads/{branch}"], cwd=self.bare,
                              capture_output=True, env={**os.environ, **_ENV}, check=False)
        return done.stdout.decode().strip() or None

    def commit(self, files: Mapping[str, bytes | Symlink | Submodule | None], message: str = "update flows",
               branch: str = "main", parent: str | None = None, signer: Signer | None = None) -> str:
        """Commit `files` (path -> bytes, a Symlink or a Submodule; None deletes the path) on top
        of `branch` (or `parent`), move the branch there, and return the new commit id. With
        `signer` the commit is signed (``commit-tree -S``), as ``git commit -S`` signs."""
        base = parent or self.head(branch)
        index = self.bare / f"index-{uuid.uuid4().hex}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if base:
                self.run("read-tree", base, env=env)
            for path, data in files.items():
                if data is None:
                    self.run("rm", "--cached", "-q", "--", path, env={**env, "GIT_WORK_TREE": str(self.bare)})
                    continue
                if isinstance(data, Submodule):
                    mode, object_id = "160000", data.commit
                else:
                    mode = "120000" if isinstance(data, Symlink) else "100644"
                    content = data.target.encode() if isinstance(data, Symlink) else data
                    object_id = self.run("hash-object", "-w", "--stdin", input=content).decode().strip()
                self.run("update-index", "--add", "--cacheinfo", f"{mode},{object_id},{path}", env=env)
            tree = self.run("write-tree", env=env).decode().strip()
        finally:
            index.unlink(missing_ok=True)
        options, signer_env = signing_args(signer)
        args = [*options, "commit-tree", tree, "-m", message, *(["-S"] if signer else [])]
        if base:
            args += ["-p", base]
        commit = self.run(*args, env=signer_env).decode().strip()
        self.run("update-ref", f"refs/heads/{branch}", commit)
        return commit

    def tag(self, name: str, commit: str, *, message: str | None = None, signer: Signer | None = None) -> str:
        """Tag `commit` as `name` (moving the tag if it exists): a lightweight tag, or an
        annotated one with `message`, signed with `signer` (``git tag -s``). Returns the tag's
        object id (the commit's for a lightweight tag)."""
        if message is None and signer is None:
            self.run("update-ref", f"refs/tags/{name}", commit)
            return commit
        options, signer_env = signing_args(signer)
        self.run(*options, "tag", "-f", *(["-s"] if signer else ["-a"]), "-m", message or name, name, commit,
                 env=signer_env)
        return self.run("rev-parse", f"refs/tags/{name}").decode().strip()

    def raw(self, object_id: str) -> tuple[str, bytes]:
        """(type, bytes) of an object as git stores it (without the ``<type> <size>`` header)."""
        kind = self.run("cat-file", "-t", object_id).decode().strip()
        return kind, self.run("cat-file", kind, object_id)

    def force(self, branch: str, commit: str) -> None:
        """Force-move `branch` to `commit` (a force-push)."""
        self.run("update-ref", f"refs/heads/{branch}", commit)

    # ---------------------------------------------------------------- reads for the fakes
    def resolve(self, ref: str) -> str | None:
        """The commit `ref` names (branch, tag, full or abbreviated id), or None."""
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"], cwd=self.bare,
                              capture_output=True, env={**os.environ, **_ENV}, check=False)
        return done.stdout.decode().strip() or None

    def show(self, commit: str, path: str) -> bytes | None:
        """The bytes of `path` at `commit`, or None when the commit has no such file."""
        done = subprocess.run(["git", "cat-file", "blob", f"{commit}:{path}"], cwd=self.bare,
                              capture_output=True, env={**os.environ, **_ENV}, check=False)
        return done.stdout if done.returncode == 0 else None

    def blob_id(self, commit: str, path: str) -> str | None:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{commit}:{path}"], cwd=self.bare,
                              capture_output=True, env={**os.environ, **_ENV}, check=False)
        return done.stdout.decode().strip() or None

    def object_type(self, name: str) -> str | None:
        """``blob``, ``tree``, ``commit`` or ``tag`` for an object name (an id, ``commit:path``),
        or None when it names nothing."""
        done = subprocess.run(["git", "cat-file", "-t", name], cwd=self.bare, capture_output=True,
                              env={**os.environ, **_ENV}, check=False)
        return done.stdout.decode().strip() if done.returncode == 0 else None

    def ls_tree(self, tree: str, *, recursive: bool = False) -> list[TreeLine] | None:
        """The entries of `tree` (a tree id or ``commit:path``), with the subtrees' entries too
        when `recursive` (trees included, as GitHub and GitLab list them), paths relative to
        `tree`; None when `tree` is no tree."""
        if self.object_type(tree) != "tree":
            return None
        args = ["ls-tree", "-z", "--long", *(["-r", "-t"] if recursive else []), tree]
        lines = []
        for record in self.run(*args).decode("utf-8", "surrogateescape").split("\0"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, kind, object_id, size = meta.split()
            lines.append(TreeLine(mode, kind, object_id, int(size) if size != "-" else None, path))
        return lines

    def branches(self) -> dict[str, str]:
        out = self.run("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads").decode()
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def default_branch(self) -> str:
        return self.run("symbolic-ref", "--short", "HEAD").decode().strip()
