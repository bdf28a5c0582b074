"""Read-only storages for flows kept as ``.py`` files in a git repository (the seed's GitHub,
GitLab, Bitbucket and CodeCommit storages, plus plain ``Git``).

As in the seed, the storage never commits: users push flow files themselves, ``add_flow``
returns the file's path, ``build`` uploads nothing. Unlike the seed, reads are *pinned*: the
controller resolves ``ref`` (a branch, tag or commit) to a commit once, records it, and agents
read the file at that commit, so the flow an agent runs is the flow that was checked.

A provider implements these primitives on top of its API:

* :meth:`GitHosted.resolve_ref`  ``ref`` -> full commit id;
* :meth:`GitHosted.read_file`    the bytes of ``path`` at a commit;
* :meth:`GitHosted.read_path`    the same for a file, or every file under ``path`` when it is a
  directory (bounded by :data:`MAX_DIRECTORY_FILES` and :data:`MAX_DIRECTORY_BYTES`; the
  listing, symlink and submodule rules are written once in :mod:`flowstore.storage.git.tree`);
* :meth:`GitHosted.web_url`      a URL a person can open for ``path`` at a commit;

plus ``from_config`` and the two documents (``_status_config``, ``_seed_config`` and
``_config_from_seed``). Everything else (the seed's interface, pinning,
``stat`` for drift checks, the read-only refusals) is written once here.

Locations are repository paths without a leading slash (``flows/etl.py``); the seed's
``/flows/etl.py`` is accepted and normalised.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from flowstore.api.backends import backend
from flowstore.artifacts import bundle, flowfiles, loading
from flowstore.storage.base import (
    ObjectInfo,
    Storage,
    StoredArtifact,
    artifact_format,
    stat_by_reading,
    verify_digest,
)
from flowstore.storage.errors import FileNotFound, InvalidConfig, RateLimited, Rejected, StorageError
from flowstore.storage.git import verify as verifying
from flowstore.storage.refs import ConfigRef, SecretKeys

#: the most files a directory named by ``spec.source.path`` may hold (a symlink counts as a file);
#: a directory with more is refused as soon as the listing passes it, before any file is read
MAX_DIRECTORY_FILES = 1000
#: the most bytes the files of such a directory may hold together (32 MiB)
MAX_DIRECTORY_BYTES = 32 * 1024 * 1024


def is_commit_id(ref: str) -> bool:
    """A full SHA-1 (40) or SHA-256 (64) commit id in hex."""
    return len(ref) in (40, 64) and all(c in "0123456789abcdef" for c in ref.lower())


def normalize_path(path: str) -> str:
    """A repository path as providers' APIs want it: no leading ``/``, no ``./`` or ``..``."""
    parts = [p for p in path.strip().split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidConfig(f"{path!r} is not a file path inside the repository (e.g. flows/etl.py)")
    return "/".join(parts)


class GitHosted(Storage):
    """Base of the git-hosted storages. All keyword arguments of :class:`Storage` apply;
    ``stored_as_script`` is always true (the repository holds source files).

    Args (the seed's):
        path: the default flow file in the repository (``flow_location`` when none is given).
        ref: branch, tag or commit to read (the provider's default branch when None).
    """

    #: never uploads; the controller pins a file at a commit instead (see module docstring)
    family: ClassVar[str] = "git"
    deletes_objects: ClassVar[bool] = False
    #: the configuration key naming the ref (``commit`` for CodeCommit, as in the seed)
    ref_key: ClassVar[str] = "ref"
    #: ``verify.secretRef``: the trusted keys (SSH allowed signers, OpenPGP ``*.asc``) as ``verifyKeys``
    config_refs: ClassVar[tuple[ConfigRef, ...]] = (
        SecretKeys("verify.secretRef", into="verifyKeys", keys=("allowed_signers",), suffixes=(".asc",),
                   hint="create it with the trusted keys (allowed_signers and/or *.asc)"),
    )

    def __init__(self, path: str | None = None, ref: str | None = None, **kwargs: Any) -> None:
        kwargs["stored_as_script"] = True
        super().__init__(**kwargs)
        self.path = normalize_path(path) if path else None
        self.ref = ref
        #: the commit ``ref`` was resolved to by the controller (status ``git.commit``); reads use
        #: it when set
        self.commit: str | None = None
        #: a flow that is a directory (read_path gives its files): the entrypoint and the ignore
        #: rules its bundle was made with, so an agent makes the same bundle from the pinned commit
        self.bundle_entrypoint: str | None = None
        self.bundle_ignore: tuple[str, ...] = ()
        #: spec.<backend>.verify with the keys of its Secret: only signed commits (or tags) are
        #: pinned (:mod:`flowstore.storage.git.verify`); None pins what the ref names
        self.verify_policy: verifying.VerifyPolicy | None = None

    # ------------------------------------------------------------------ provider primitives
    @abc.abstractmethod
    def resolve_ref(self, ref: str | None = None) -> str:
        """The full commit id `ref` (default: ``self.ref``, else the default branch) points at.
        Raises RepositoryNotFound, RefNotFound, AuthFailed, RateLimited, Unavailable."""

    @abc.abstractmethod
    def read_file(self, path: str, commit: str) -> bytes:
        """The bytes of `path` at `commit`. Raises FileNotFound when the commit has no such
        file, or another StorageError."""

    @abc.abstractmethod
    def read_path(self, path: str, commit: str, *,
                  keep: Callable[[str], bool] | None = None) -> bytes | dict[str, bytes]:
        """`path` (normalised as :func:`normalize_path` does: a leading or trailing ``/`` is fine)
        at `commit`: a file's bytes (at the cost of one :meth:`read_file`), or, when `path` is a
        directory, every file under it (recursively) as {path relative to `path` (POSIX, no
        leading "./"): bytes}, sorted by path.

        `keep`, when given, is asked for each file's relative path; files it refuses are neither
        counted against the bounds nor read (the caller's ignore rules).

        Inside a directory, a symlink to a file inside it is returned as that file's bytes under
        the link's path; a symlink pointing outside it, at a directory, at nothing, or an absolute
        one, and any submodule, raise InvalidConfig naming them. More than
        :data:`MAX_DIRECTORY_FILES` files or :data:`MAX_DIRECTORY_BYTES` bytes raise InvalidConfig
        as soon as the listing (or the reading) passes the bound. Raises FileNotFound when nothing
        is at `path`, or another StorageError."""

    def signed_ref(self, ref: str | None, *, tag: str | None) -> verifying.SignedRef:
        """The commit `ref` resolves to and its raw object, for verification; with `tag`, the
        annotated tag object of that name too (None when it is a lightweight tag), the commit
        then being the one it points at. Raw objects come from the provider as it stores them
        (never its opinion of their signatures)."""
        raise InvalidConfig(f"{type(self).__name__} storages cannot verify commits (spec.*.verify)")

    @abc.abstractmethod
    def web_url(self, path: str, commit: str) -> str:
        """A URL a person can open for `path` at `commit`."""

    @abc.abstractmethod
    def repo_name(self) -> str:
        """The repository as a person names it (``owner/repo``, a clone URL, …) for status.git."""

    def finish_config(self, config: Mapping[str, Any]) -> GitHosted:
        """Every provider's ``from_config`` ends here: a serialized *pinned* storage (status.storage,
        which carries ``requestedRef``) reads at its pinned commit, not at the moving ref."""
        if "requestedRef" in config:
            self.commit = str(config.get(self.ref_key) or "") or None
            requested = config.get("requestedRef")
            self.ref = str(requested) if requested else None
        self.restore_state(config)
        if config.get("verify") is not None:
            row = backend(self.type_name)
            self.verify_policy = verifying.VerifyPolicy.from_config(
                config.get("verify"), config.get("verifyKeys"), backend=row.key if row else self.type_name.lower())
        return self

    # ------------------------------------------------------------------ pinning
    def reading_ref(self) -> str:
        """The commit reads use: the pinned one, ``ref`` itself when it is a full commit id,
        else ``ref`` resolved now."""
        if self.commit:
            return self.commit
        if self.ref and is_commit_id(self.ref):
            return self.ref
        return self.resolve_ref()

    def signed_ref_over_git(self, ref: str | None, *, tag: str | None, clone_url: Any, api_url: str,
                            other_hosts: Iterable[str] = (), username: str | None = None,
                            password: str | None = None, token: str | None = None) -> verifying.SignedRef:
        """:meth:`signed_ref` for providers whose API gives no raw objects: the commit (or tag)
        fetched over git's smart HTTP from `clone_url` (what the provider's API names), only when
        it is on the API's host or one of `other_hosts` (the credentials go nowhere else), over
        https unless the API itself is plain http (a local test server)."""
        from flowstore.storage.git.plain import fetch_signed_ref

        url = checked_clone_url(clone_url, api_url, other_hosts, what=f"{type(self).__name__} {self.repo_name()}")
        commit = None if tag else self.resolve_ref(ref)
        return fetch_signed_ref(url, commit=commit, tag=tag, username=username, password=password, token=token)

    def resolve_verified(self) -> tuple[str, verifying.Verification | None]:
        """The commit to pin: what ``ref`` resolves to, and, with a verify policy, the proof that
        it (and its tag, in Tag modes) is signed by a key of the policy (SourceUnverified
        otherwise: nothing is pinned)."""
        policy = self.verify_policy
        if policy is None:
            return self.resolve_ref(), None
        row = backend(self.type_name)
        tag = verifying.tag_name(self.ref, backend=row.key if row else "git") if policy.wants_tag else None
        found = self.signed_ref(self.ref, tag=tag)
        what = f"{type(self).__name__} {self.repo_name()} at {tag or self.ref or 'the default branch'}"
        return found.commit, verifying.verify(policy, found, what=what)

    def pin(self, commit: str) -> None:
        self.commit = commit

    def pinned_state(self, commit: str) -> dict[str, Any]:
        """What an agent needs on top of the configuration to read at `commit`: merged into the
        serialized storage (``ref``/``commit`` then names the commit, never a moving branch)."""
        return {self.ref_key: commit, "requestedRef": self.ref}

    def bundle_state(self, entrypoint: str, ignore: Iterable[str]) -> dict[str, Any]:
        """What an agent needs on top of the pinned state to make a directory's bundle again."""
        return {"bundleEntrypoint": entrypoint, "bundleIgnore": list(ignore)}

    def restore_state(self, state: Mapping[str, Any] | None) -> None:
        if state and state.get(self.ref_key) and "requestedRef" in state:
            self.commit = str(state[self.ref_key])
        if state and state.get("bundleEntrypoint"):
            self.bundle_entrypoint = str(state["bundleEntrypoint"])
            self.bundle_ignore = tuple(str(p) for p in state.get("bundleIgnore") or ())

    # ------------------------------------------------------------------ Storage primitives
    def location_for(self, flow_name: str, key: str | None = None) -> str:
        if key:
            return normalize_path(key)
        if self.path:
            return self.path
        raise InvalidConfig(
            f"no file for flow {flow_name!r}: set the storage's path or the flow's spec.source.path")

    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
        raise InvalidConfig(
            f"{type(self).__name__} storage is read-only: commit {location} to the repository yourself; "
            "flowstore pins the commit that holds it")

    def get_bytes(self, location: str) -> bytes:
        return self.read_flow(normalize_path(location), self.reading_ref())

    def read_flow(self, path: str, commit: str, state: Mapping[str, Any] | None = None) -> bytes:
        """The flow at `path` at `commit` as stored: a file's bytes, or a directory's bundle made
        with the recorded entrypoint and ignore rules (the same bytes the operator recorded):
        those of `state` (an artifact's storage state) when given, else this storage's."""
        entrypoint = str(state["bundleEntrypoint"]) if state and state.get("bundleEntrypoint") else \
            self.bundle_entrypoint
        ignore = tuple(state.get("bundleIgnore") or ()) if state else self.bundle_ignore
        found = self.read_path(path, commit, keep=flowfiles.keeper(ignore))
        if isinstance(found, bytes):
            return found
        if not entrypoint:
            raise InvalidConfig(f"{path} is a directory at commit {commit[:12]}, and no entrypoint was recorded for "
                                "it; load it through its StoredFlow's status (flowstore.client)")
        return flowfiles.pack(found, bundle.Entrypoint.parse(entrypoint), ignore)

    def stat(self, location: str) -> ObjectInfo | None:
        return stat_by_reading(self, location)

    def delete(self, location: str) -> None:
        """The storage never commits, so it never deletes either: a no-op."""
        return None

    def url_for(self, location: str) -> str:
        return self.web_url(normalize_path(location), self.commit or self.ref or "HEAD")

    def check_container(self) -> None:
        """The repository is reachable and ``ref`` resolves."""
        self.resolve_ref()

    # ------------------------------------------------------------------ seed interface
    def add_flow(self, flow: Any, source: bytes | None = None) -> str:
        """Record that the flow lives at ``path`` (the seed's: the file is committed by the user).
        Returns the path. Raises ValueError on a name conflict."""
        name = flow if isinstance(flow, str) else flow.name
        if name in self:
            raise ValueError(f'Name conflict: Flow with the name "{name}" is already present in this storage.')
        location = self.location_for(name)
        self.flows[name] = location
        return location

    def build(self) -> GitHosted:
        """Nothing is committed; checks that every added flow's file exists at ``ref``."""
        self.run_basic_healthchecks()
        return self

    def run_basic_healthchecks(self) -> None:
        commit = self.reading_ref()
        for location in self.flows.values():
            data = self.read_file(normalize_path(location), commit)
            compile(data, location, "exec")

    def get_flow(self, flow_location: str | None = None, ref: str | None = None, *,  # type: ignore[override]
                 sha256: str | None = None, flow_name: str | None = None, object_name: str | None = None) -> Any:
        """The flow defined in the file at `flow_location` (default: ``path``), read at `ref`
        (default: the pinned commit, else ``ref``). With `sha256` the bytes are verified before
        they are executed."""
        location = normalize_path(flow_location or self.path or self._default_location())
        if self.flows and location not in {normalize_path(v) for v in self.flows.values()}:
            raise ValueError(f"Flow is not contained in this Storage: {location}")
        commit = self.resolve_ref(ref) if ref else self.reading_ref()
        data = self.read_flow(location, commit)
        verify_digest(data, sha256, what=self.web_url(location, commit))
        if flow_name is None and len(self.flows) == 1:
            flow_name = next(iter(self.flows))
        return loading.load(data, artifact_format(data, stored_as_script=True), flow_name=flow_name,
                            object_name=object_name)

    def to_status(self) -> dict[str, Any]:
        doc = super().to_status()
        if self.path:
            doc["path"] = self.path
        if self.commit:
            doc.update(self.pinned_state(self.commit))
        return doc

    # ------------------------------------------------------------------ the seed's schema
    def seed_ref(self) -> str | None:
        """The ref the seed's document names: the pinned commit when there is one (an agent
        reads what was checked, never where a branch has moved since), else ``ref``."""
        return self.commit or self.ref

    def seed_path(self) -> str | None:
        """The seed's ``path``: the default flow file, else the only flow's (the seed's GitHub
        and Git demand one; `flows` names each flow's file either way)."""
        if self.path:
            return self.path
        locations = sorted(set(self.flows.values()))
        return locations[0] if len(locations) == 1 else None


def checked_clone_url(clone_url: Any, api_url: str, other_hosts: Iterable[str], *, what: str) -> str:
    """`clone_url` without any user name in it, when it is an http(s) URL on the API's host (or
    one of `other_hosts`), https unless the API is http; Rejected otherwise (the provider's answer
    would send our credentials elsewhere)."""
    import urllib.parse

    if not isinstance(clone_url, str) or not clone_url:
        raise Rejected(f"{what}: the provider's API names no https clone URL, so its commits cannot be fetched to "
                       "verify them")
    parts, api = urllib.parse.urlsplit(clone_url), urllib.parse.urlsplit(api_url)
    hosts = {api.hostname or "", *other_hosts}
    if parts.scheme not in ("https", api.scheme) or parts.hostname not in hosts or (
            parts.hostname == api.hostname and parts.port != api.port):
        raise Rejected(f"{what}: the provider's API names the clone URL {parts.scheme}://{parts.hostname}"
                       f"{parts.path[:100]}, not on {' or '.join(sorted(h for h in hosts if h))}; refusing to send "
                       "credentials there")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ---------------------------------------------------------------------- shared HTTP handling
def raise_for_http(status: int, headers: Mapping[str, str], body: str, *, what: str,
                   not_found: type[StorageError] = FileNotFound, now: float | None = None) -> None:
    """Turn a provider's HTTP error answer into the storage error taxonomy. `what` names the
    thing requested (for the message); `not_found` is raised on 404. 2xx/3xx return quietly.

    Rate limits: 429, or 403 with ``X-RateLimit-Remaining: 0`` / ``Retry-After`` (GitHub's
    secondary limits answer 403), retry after ``Retry-After`` seconds or at
    ``X-RateLimit-Reset`` / ``RateLimit-Reset`` (epoch seconds)."""
    import time

    from flowstore.storage.errors import AuthFailed, Unavailable

    if status < 400:
        return
    lowered = {k.lower(): v for k, v in headers.items()}
    short = " ".join(body.split())[:200]
    limited = status == 429 or (status == 403 and (
        lowered.get("x-ratelimit-remaining") == "0" or "retry-after" in lowered))
    if limited:
        retry_after = _reset_seconds(lowered, time.time() if now is None else now)
        raise RateLimited(f"{what}: rate limited by the provider (HTTP {status}); retrying in "
                          f"{retry_after:.0f}s, at the reset time it gave", retry_after=retry_after)
    if status in (401, 403):
        raise AuthFailed(f"{what}: HTTP {status}, the token was rejected or cannot read this repository; "
                         "check the credentials Secret (token value, expiry, scopes)")
    if status == 404:
        raise not_found(f"{what}: not found (HTTP 404)")
    if status >= 500 or status == 408:
        raise Unavailable(f"{what}: the provider answered HTTP {status}; will retry")
    raise Rejected(f"{what}: HTTP {status}: {short}")


def _reset_seconds(headers: Mapping[str, str], now: float) -> float:
    retry = headers.get("retry-after")
    if retry is not None:
        try:
            return max(1.0, float(retry))
        except ValueError:
            pass
    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        if name in headers:
            try:
                value = float(headers[name])
            except ValueError:
                continue
            # GitLab's RateLimit-Reset and GitHub's X-RateLimit-Reset are epoch seconds; small
            # values are a delay in seconds (as some servers send)
            return max(1.0, value - now if value > 1e9 else value)
    return 60.0
