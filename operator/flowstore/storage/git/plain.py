"""Git storage: flows as ``.py`` files in any git repository, read with the ``git`` command
over https or ssh and pinned to a commit.

    Git(url="https://git.example.com/data/flows.git", path="flows/etl.py", ref="main")

``resolve_ref`` is one ``git ls-remote``; ``read_file`` fetches exactly the pinned commit
(``--depth=1``) into a bare cache repository in a private directory of the temp directory, once
per commit, and reads the blob from it (at most :data:`MAX_FILE_BYTES`); ``read_path`` reads a
directory from the same fetch (``git ls-tree`` gives git's modes: symlinks 120000, submodules
160000). Credentials never reach a command line
or ``.git/config``:

* https: ``GIT_USERNAME`` + ``GIT_PASSWORD`` (basic auth) or ``GIT_TOKEN`` (bearer), sent as an
  ``http.extraHeader`` through ``GIT_CONFIG_*`` environment variables of the git process;
* ssh: ``SSH_PRIVATE_KEY`` and ``SSH_KNOWN_HOSTS`` (required: host keys are always checked),
  written 0600 to a private directory for the git process.

The operator passes them from the FlowStorage's Secret; an agent (credentials None) reads the
same names from its environment.

Every git command runs with configuration flowstore controls (:func:`git_env`): no system or
global config, no hooks, no fsmonitor, no credential helper, only the https, http and ssh
protocols; and the cache repository's own ``config`` is checked (and rewritten) before each use,
in a cache directory that must be this user's and private. A config planted there (issue 20: a
FlowStorage's Local directory over the temp directory) can neither run a command nor redirect a
fetch.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flowstore.storage.errors import (
    AuthFailed,
    FileNotFound,
    InvalidConfig,
    RefNotFound,
    RepositoryNotFound,
    StorageError,
    Unavailable,
)
from flowstore.storage.git.base import GitHosted, is_commit_id, normalize_path
from flowstore.storage.git.tree import TreeEntry, kind_of_mode, read_tree
from flowstore.storage.git.verify import RawObject, SignedRef

CREDENTIAL_KEYS = ("GIT_USERNAME", "GIT_PASSWORD", "GIT_TOKEN", "SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS")
#: seconds one git command may take (a fetch of one commit of a flows repository is small)
GIT_TIMEOUT = 120.0
#: the largest flow file read (a directory has its own bounds: git/tree.py)
MAX_FILE_BYTES = 32 * 1024 * 1024
#: configuration every git command gets on top of nothing (no system or global config), and that
#: wins over a repository's own: no hooks, no fsmonitor command, no credential helper (the list is
#: reset), only the protocols flowstore uses (never ext:: or file://)
FORCED_CONFIG = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("credential.helper", ""),
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("protocol.http.allow", "always"),
    ("protocol.ssh.allow", "always"),
)
#: the cache repositories' own config, exactly (``git init --bare`` writes the same)
REPO_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
log = logging.getLogger(__name__)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def _is_ssh(url: str) -> bool:
    return url.startswith("ssh://") or bool(re.match(r"^[\w.-]+@[\w.-]+:", url))


def _seed_location(url: str) -> tuple[str, str, bool]:
    """(repo_host, repo, use_ssh) of a clone URL, as the seed's Git storage names a repository."""
    if _is_ssh(url) and not url.startswith("ssh://"):
        user_host, _, path = url.partition(":")
        host = user_host.rpartition("@")[2]
    else:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "") if _is_ssh(url) else parts.netloc
        path = parts.path
    return host, path.strip("/").removesuffix(".git"), _is_ssh(url)


class Git(GitHosted):
    """Flows in any git repository.

    Args:
        url: clone URL, ``https://…`` / ``http://…`` or ``ssh://…`` / ``user@host:path``.
        path: the default flow file in the repository.
        ref: branch, tag or commit (default: the remote's HEAD).
        username, password, token: https credentials (basic auth, or a bearer token).
        ssh_private_key, known_hosts: ssh credentials (known_hosts required for ssh URLs).
    """

    type_name = "Git"
    default_label = "git-flow-storage"

    def __init__(self, url: str, path: str | None = None, ref: str | None = None, *,
                 username: str | None = None, password: str | None = None, token: str | None = None,
                 ssh_private_key: str | None = None, known_hosts: str | None = None, **kwargs: Any) -> None:
        super().__init__(path=path, ref=ref, **kwargs)
        if not url or not (re.match(r"^(https?|ssh)://", url) or _is_ssh(url)):
            raise InvalidConfig(f"git url {url!r} must be https://, http://, ssh:// or user@host:path")
        if re.match(r"^https?://[^/]*@", url):
            raise InvalidConfig("put git credentials in the credentials Secret (GIT_USERNAME / GIT_PASSWORD or "
                                "GIT_TOKEN), not in the url")
        if _is_ssh(url) and ssh_private_key and not known_hosts:
            raise InvalidConfig("ssh git urls need SSH_KNOWN_HOSTS next to SSH_PRIVATE_KEY in the credentials "
                                "Secret: host keys are always verified")
        self.url = url
        self._username, self._password, self._token = username, password, token
        self._ssh_key, self._known_hosts = ssh_private_key, known_hosts
        # One cache per url *and* credentials: a commit fetched with one FlowStorage's credentials
        # is never readable through another's (e.g. one naming a commit id without credentials).
        identity = "\0".join([url, username or "", password or "", token or "", ssh_private_key or ""])
        digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
        self.cache_dir = cache_root() / digest

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> Git:
        creds = dict(credentials) if credentials is not None else {
            k: os.environ[k] for k in CREDENTIAL_KEYS if os.environ.get(k)}
        storage = cls(
            url=str(config.get("url") or ""),
            path=config.get("path"),
            ref=config.get("ref"),
            username=creds.get("GIT_USERNAME"),
            password=creds.get("GIT_PASSWORD"),
            token=creds.get("GIT_TOKEN"),
            ssh_private_key=creds.get("SSH_PRIVATE_KEY"),
            known_hosts=creds.get("SSH_KNOWN_HOSTS"),
            **cls.common_kwargs(config),
        )
        storage.finish_config(config)
        return storage

    def _status_config(self) -> dict[str, Any]:
        return {"url": self.url, "ref": self.ref}

    def _seed_config(self) -> dict[str, Any]:
        """The seed's Git fields. The seed builds its clone URL from ``repo_host`` and ``repo``
        (``https://HOST/REPO.git``, or ``git@HOST:REPO.git`` with ``use_ssh``), so an http:// URL
        or an ssh port cannot be carried (the seed would use https / port 22). A ref that is not a
        commit id is given as ``branch_name`` (git resolves tag names there too); the pinned commit
        wins. Credentials are the agent's."""
        host, repo, use_ssh = _seed_location(self.url)
        commit = self.commit or (self.ref if self.ref and is_commit_id(self.ref) else None)
        names = sorted(self.flows)
        return {
            "flow_path": self.seed_path(),
            "repo": repo,
            "repo_host": host,
            "flow_name": names[0] if len(names) == 1 else None,
            "branch_name": None if commit else self.ref,
            "commit": commit,
            "use_ssh": use_ssh,
        }

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        repo, host = doc.get("repo"), doc.get("repo_host") or "github.com"
        if not repo:
            raise InvalidConfig("the seed's Git storage names no `repo` (a clone URL in a Prefect Secret, "
                                "git_clone_url_secret_name, cannot be read here); give repo and repo_host")
        url = f"git@{host}:{repo}.git" if doc.get("use_ssh") else f"https://{host}/{repo}.git"
        return {"url": url, "path": doc.get("flow_path"),
                "ref": doc.get("commit") or doc.get("tag") or doc.get("branch_name")}

    def repo_name(self) -> str:
        return self.url

    def web_url(self, path: str, commit: str) -> str:
        return f"git+{self.url}@{commit}#path={path}"

    # ------------------------------------------------------------------ running git
    def _env(self, private_dir: Path) -> dict[str, str]:
        header = None
        if self._token:
            header = f"Authorization: Bearer {self._token}"
        elif self._username or self._password:
            basic = base64.b64encode(f"{self._username or ''}:{self._password or ''}".encode()).decode()
            header = f"Authorization: Basic {basic}"
        env = git_env(str(private_dir), extra=[("http.extraHeader", header)] if header else [])
        if _is_ssh(self.url):
            ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
            if self._known_hosts:
                known = private_dir / "known_hosts"
                known.write_text(self._known_hosts)
                ssh += ["-o", f"UserKnownHostsFile={known}"]
            if self._ssh_key:
                key = private_dir / "id"
                key.write_text(self._ssh_key if self._ssh_key.endswith("\n") else self._ssh_key + "\n")
                key.chmod(0o600)
                ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
            env["GIT_SSH_COMMAND"] = " ".join(ssh)
        return env

    def _git(self, *args: str, what: str, cwd: Path | None = None) -> str:
        private_dir = Path(tempfile.mkdtemp(prefix="flowstore-git-"))
        private_dir.chmod(0o700)
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, env=self._env(private_dir),
                                  timeout=GIT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{what}: git did not answer within {GIT_TIMEOUT:.0f}s; will retry") from None
        except FileNotFoundError:
            raise InvalidConfig("Git storage needs the `git` command; install git") from None
        finally:
            shutil.rmtree(private_dir, ignore_errors=True)
        stderr = done.stderr.decode(errors="replace")
        if done.returncode:
            raise self._error(stderr, what)
        return done.stdout.decode(errors="replace")

    def _error(self, stderr: str, what: str) -> StorageError:
        text = " ".join(stderr.split())
        for secret in (self._password, self._token):
            if secret:
                text = text.replace(secret, "***")
        low = text.lower()
        if "not our ref" in low or "couldn't find remote ref" in low:
            return RefNotFound(f"{what}: the commit is not in {self.url} (force-pushed away?)")
        if any(s in low for s in ("could not read username", "authentication failed", "error: 403",
                                  "permission denied", "host key verification failed")):
            return AuthFailed(f"{what}: the git server refused the credentials ({text[:200]}); check the "
                              "credentials Secret (GIT_USERNAME/GIT_PASSWORD, GIT_TOKEN, or SSH_PRIVATE_KEY and "
                              "SSH_KNOWN_HOSTS)")
        if "repository not found" in low or ("not found" in low and "repository" in low) \
                or "does not appear to be a git repository" in low:
            return RepositoryNotFound(f"{what}: repository {self.url} was not found; check spec.git.url")
        if any(s in low for s in ("could not resolve host", "couldn't connect", "connection refused",
                                  "timed out", "connection reset", "unable to access", "http 5", "error: 50")):
            return Unavailable(f"{what}: cannot reach {self.url} ({text[:200]}); will retry")
        return StorageError(f"{what}: git failed: {text[:300]}")

    # ------------------------------------------------------------------ provider primitives
    def resolve_ref(self, ref: str | None = None) -> str:
        ref = ref or self.ref
        if ref and is_commit_id(ref):
            return ref
        what = f"resolving {ref or 'HEAD'!r} in {self.url}"
        if not ref:
            out = self._git("ls-remote", "--symref", self.url, "HEAD", what=what)
            for line in out.splitlines():
                sha, _, name = line.partition("\t")
                if name == "HEAD" and not sha.startswith("ref:"):
                    return sha
            raise RefNotFound(f"{what}: the repository has no default branch (is it empty?)")
        out = self._git("ls-remote", self.url, ref, what=what)
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
            if candidate in refs:
                return refs[candidate]
        raise RefNotFound(f"{what}: no branch or tag {ref!r} in {self.url}; push it or fix spec.git.ref")

    def read_file(self, path: str, commit: str) -> bytes:
        self._fetch(commit, f"reading {path} at {commit[:12]} from {self.url}")
        size = self._local("cat-file", "-s", f"{commit}:{path}")
        if size.returncode:
            raise FileNotFound(f"{path} is not in {self.url} at commit {commit[:12]}; commit the file or fix "
                               "spec.source.path")
        if int(size.stdout.strip() or 0) > MAX_FILE_BYTES:
            raise InvalidConfig(f"{path} in {self.url} at commit {commit[:12]} is {int(size.stdout.strip())} bytes, "
                                f"more than a flow file may be ({MAX_FILE_BYTES // 2**20} MiB); point spec.source.path "
                                "at the flow's source")
        done = self._local("cat-file", "blob", f"{commit}:{path}")
        if done.returncode:
            raise FileNotFound(f"{path} is not in {self.url} at commit {commit[:12]}; commit the file or fix "
                               "spec.source.path")
        return done.stdout

    def read_path(self, path: str, commit: str, *,
                  keep: Callable[[str], bool] | None = None) -> bytes | dict[str, bytes]:
        """As :meth:`GitHosted.read_path`; a file or a directory costs the one fetch of the commit
        (cached), the rest is read from the cache: ``ls-tree -r -t --long`` (git's modes and
        sizes), then ``cat-file --batch`` for the blobs."""
        path = normalize_path(path)
        self._fetch(commit, f"reading {path} at {commit[:12]} from {self.url}")
        if self._local("cat-file", "-t", f"{commit}:{path}").stdout.strip() != b"tree":
            return self.read_file(path, commit)  # a file, or FileNotFound
        listing = self._local("ls-tree", "-r", "-t", "-z", "--long", f"{commit}:{path}")
        if listing.returncode:
            raise StorageError(f"listing {path} at {commit[:12]} in the cache of {self.url} failed: "
                               f"{listing.stderr.decode(errors='replace')[:200]}")
        with _BlobReader(self.cache_dir, _local_env()) as blobs:
            return read_tree(path, commit, _ls_tree_entries(listing.stdout), blobs.read, keep=keep)

    def _fetch(self, commit: str, what: str) -> None:
        """Make `commit` readable from the cache: fetched once (``--depth=1``), then reused."""
        with _lock_for(self.cache_dir):
            self._init_cache(what)
            if not self._has(f"{commit}^{{commit}}"):
                self._git("fetch", "-q", "--no-tags", "--depth=1", self.url, commit, what=what, cwd=self.cache_dir)

    def signed_ref(self, ref: str | None, *, tag: str | None) -> SignedRef:
        """As :meth:`GitHosted.signed_ref`: the commit (and the tag, fetched by its ref name) into
        the cache, read back raw. Git checks every fetched object against its id."""
        what = f"fetching {tag or ref or 'HEAD'!r} from {self.url} to verify it"
        if tag is None:
            commit = self.resolve_ref(ref)
            self._fetch(commit, what)
            return SignedRef(commit=commit, commit_object=self._raw("commit", commit))
        local = f"refs/flowstore/tags/{tag}"
        with _lock_for(self.cache_dir):
            self._init_cache(what)
            self._git("fetch", "-q", "--no-tags", "--depth=1", self.url, f"+refs/tags/{tag}:{local}", what=what,
                      cwd=self.cache_dir)
            object_id = self._local("rev-parse", "--verify", "-q", local).stdout.decode().strip()
            kind = self._local("cat-file", "-t", object_id).stdout.decode().strip()
            commit = self._local("rev-parse", "--verify", "-q", f"{object_id}^{{commit}}").stdout.decode().strip()
        if not object_id or not commit:
            raise RefNotFound(f"{what}: no tag {tag!r} pointing at a commit in {self.url}")
        tag_object = self._raw("tag", object_id) if kind == "tag" else None
        return SignedRef(commit=commit, commit_object=self._raw("commit", commit), tag_name=tag,
                         tag_id=object_id if kind == "tag" else None, tag_object=tag_object)

    def _raw(self, kind: str, object_id: str) -> RawObject:
        done = self._local("cat-file", kind, object_id)
        if done.returncode:
            raise StorageError(f"the git cache of {self.url} has no {kind} {object_id[:12]}")
        return RawObject(kind, object_id, done.stdout)

    def _init_cache(self, what: str) -> None:
        """The cache repository (under cache_root(), or a scratch directory), private and with
        exactly REPO_CONFIG before git reads anything there; made when missing."""
        _private_dir(self.cache_dir.parent)
        _check_repository(self.cache_dir)  # before git reads anything there
        if not all((self.cache_dir / name).exists() for name in ("HEAD", "objects", "refs")):
            self._git("init", "-q", "--bare", "--template=", str(self.cache_dir), what=what)
            _check_repository(self.cache_dir)

    def _local(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """A git command on the cache (no network, no credentials)."""
        return subprocess.run(["git", *args], cwd=self.cache_dir, capture_output=True, check=False, env=_local_env())

    def _has(self, obj: str) -> bool:
        return self._local("cat-file", "-e", obj).returncode == 0


def fetch_signed_ref(url: str, *, commit: str | None, tag: str | None, username: str | None = None,
                     password: str | None = None, token: str | None = None) -> SignedRef:
    """The raw commit `commit` (or, with `tag`, the tag of that name and the commit it points at)
    fetched over git's smart HTTP from `url` into a scratch repository deleted afterwards: only
    those objects (a promisor remote with ``--filter=tree:0``: no trees, no blobs), with the
    given credentials. For the providers whose API gives no raw objects (the files are still read
    through the API)."""
    remote = Git(url, username=username, password=password, token=token)
    what = f"fetching {tag or commit or 'HEAD'!r} from {url} to verify it"
    with tempfile.TemporaryDirectory(prefix="flowstore-verify-fetch-") as scratch:
        remote.cache_dir = Path(scratch) / "objects.git"
        remote._init_cache(what)
        for key, value in (("remote.origin.url", url), ("remote.origin.promisor", "true"),
                           ("remote.origin.partialclonefilter", "tree:0")):
            remote._local("config", key, value)
        local = f"refs/flowstore/tags/{tag}"
        refspec = f"+refs/tags/{tag}:{local}" if tag else str(commit)
        remote._git("fetch", "-q", "--no-tags", "--depth=1", "--filter=tree:0", "origin", refspec, what=what,
                    cwd=remote.cache_dir)
        if tag is None:
            assert commit is not None
            return SignedRef(commit=commit, commit_object=remote._raw("commit", commit))
        object_id = remote._local("rev-parse", "--verify", "-q", local).stdout.decode().strip()
        kind = remote._local("cat-file", "-t", object_id).stdout.decode().strip() if object_id else ""
        target = remote._local("rev-parse", "--verify", "-q", f"{object_id}^{{commit}}").stdout.decode().strip() \
            if object_id else ""
        if not target:
            raise RefNotFound(f"{what}: no tag {tag!r} pointing at a commit in {url}")
        return SignedRef(commit=target, commit_object=remote._raw("commit", target), tag_name=tag,
                         tag_id=object_id if kind == "tag" else None,
                         tag_object=remote._raw("tag", object_id) if kind == "tag" else None)


def _local_env() -> dict[str, str]:
    return git_env("/")


def git_env(home: str, extra: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """The whole environment of a git command: nothing inherited but PATH; no system or global
    config, no prompt, FORCED_CONFIG (and `extra`) as command-line configuration."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_NO_REPLACE_OBJECTS": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
    }
    pairs = [*FORCED_CONFIG, *(extra or [])]
    env["GIT_CONFIG_COUNT"] = str(len(pairs))
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def cache_root() -> Path:
    """Where the cache repositories live: a directory of the temp directory named for this
    user (its name starts ``flowstore-``, so no Local root may lie in it: storage/local.py)."""
    return Path(tempfile.gettempdir()) / f"flowstore-git-cache-{os.geteuid()}"


def _private_dir(path: Path) -> None:
    """`path` exists as a directory of this user that no one else may enter (not a link);
    StorageError otherwise (someone else made it: its repositories cannot be trusted)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise StorageError(f"the git cache {path} is not a private directory of uid {os.geteuid()} (a link, another "
                           "user's, or open to others); remove it and the operator makes its own")


def _check_repository(repo: Path) -> None:
    """A cache repository is ours and its config is exactly REPO_CONFIG (anything else, e.g. a
    credential helper or a proxy someone planted, is replaced before git reads it)."""
    _private_dir(repo)
    config = repo / "config"
    try:
        fd = os.open(config, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            current = fh.read(64 * 1024)
    except OSError:
        current = b""
    if current != REPO_CONFIG.encode():
        if current:
            log.warning("the git cache %s had a config flowstore did not write; replaced it", repo)
        staged = repo / "config.flowstore"
        staged.unlink(missing_ok=True)
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(REPO_CONFIG)
        os.replace(staged, config)


def _ls_tree_entries(output: bytes) -> Iterator[TreeEntry]:
    """``git ls-tree -z --long`` records (``<mode> <type> <id> <size>\t<path>``) as entries."""
    for record in output.split(b"\0"):
        if record:
            meta, _, path = record.partition(b"\t")
            mode, _, object_id, size = meta.decode().split()
            yield TreeEntry(path.decode("utf-8", "surrogateescape"), kind_of_mode(mode), object_id,
                            int(size) if size.isdigit() else None)


class _BlobReader:
    """Blobs of the cache by id, through one ``git cat-file --batch`` process."""

    def __init__(self, cache_dir: Path, env: dict[str, str]) -> None:
        self._process = subprocess.Popen(["git", "cat-file", "--batch"], cwd=cache_dir, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def __enter__(self) -> _BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()

    def read(self, entry: TreeEntry) -> bytes:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(entry.key.encode() + b"\n")
        stdin.flush()
        header = stdout.readline().split()  # <id> blob <size>, or <id> missing
        if len(header) != 3 or header[1] != b"blob":
            raise StorageError(f"the git cache has no blob {entry.key} for {entry.path}")
        data = stdout.read(int(header[2]))
        stdout.read(1)  # the newline after the content
        return data
