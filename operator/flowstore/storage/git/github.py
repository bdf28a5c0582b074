"""The seed's ``GitHub`` storage: flows kept as ``.py`` files in a GitHub (or GitHub
Enterprise Server) repository, read through the REST API at a pinned commit.

REST calls, all ``GET`` (https://docs.github.com/en/rest):

* ``/repos/{owner}/{repo}/commits/{ref}`` with ``Accept: application/vnd.github.sha``: the
  commit a branch, tag or sha names (https://docs.github.com/en/rest/commits/commits#get-a-commit);
* ``/repos/{owner}/{repo}``: the default branch, and whether the repository is visible at all
  (https://docs.github.com/en/rest/repos/repos#get-a-repository);
* ``/repos/{owner}/{repo}/contents/{path}?ref={commit}`` with
  ``Accept: application/vnd.github.raw+json``: the file's bytes, up to 100 MB
  (https://docs.github.com/en/rest/repos/contents#get-repository-content); a directory answers
  its listing instead, so a file costs this one request whether read as a file or a path;
* for a directory only (:meth:`GitHub.read_path`): ``/repos/{owner}/{repo}/git/commits/{commit}``
  (its root tree, https://docs.github.com/en/rest/git/commits#get-a-commit-object), then
  ``/repos/{owner}/{repo}/git/trees/{sha}`` for each segment of the path and once with
  ``recursive=1`` for the directory itself (entries with git's modes: symlinks 120000,
  submodules 160000; https://docs.github.com/en/rest/git/trees#get-a-tree), then
  ``/repos/{owner}/{repo}/git/blobs/{sha}`` per file and per symlink, raw
  (https://docs.github.com/en/rest/git/blobs#get-a-blob).

The token (``Authorization: Bearer``) comes from the referenced Secret's ``GITHUB_ACCESS_TOKEN``
key (the seed's secret name) or, when no Secret is given (an agent loading ``status.storage``),
from the ``GITHUB_ACCESS_TOKEN`` environment variable; without one, public repositories are read
anonymously (60 requests an hour). Rate limits (403/429 with ``x-ratelimit-remaining: 0`` or
``retry-after``) raise :class:`~flowstore.storage.errors.RateLimited` carrying the reset time
(https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import requests

from flowstore.storage._rest import (
    check_token,
    error_message,
    get_with_retries,
    is_http_url,
    quote,
    quote_path,
    split_host,
    token_from,
)
from flowstore.storage.errors import (
    AuthFailed,
    FileNotFound,
    InvalidConfig,
    RefNotFound,
    RepositoryNotFound,
    StorageError,
    Unavailable,
)
from flowstore.storage.git.base import GitHosted, is_commit_id, normalize_path, raise_for_http
from flowstore.storage.git.tree import TreeEntry, kind_of_mode, read_tree
from flowstore.storage.git.verify import RawObject, SignedRef, commit_from_payload, tag_from_payload

#: the Secret key and environment variable holding the token (the seed's secret name)
CREDENTIALS_KEY = "GITHUB_ACCESS_TOKEN"
DEFAULT_API_URL = "https://api.github.com"
DEFAULT_WEB_URL = "https://github.com"
API_VERSION = "2022-11-28"

_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


class GitHub(GitHosted):
    """Flows in a GitHub repository (the seed's ``GitHub`` storage), read at a pinned commit.

    Args (the seed's):
        repo: the repository as ``owner/name``, e.g. ``my-org/flows``.
        path: the default flow file in the repository, e.g. ``flows/etl.py``.
        ref: branch, tag or commit to read (the repository's default branch when None).
        **kwargs: the base :class:`~flowstore.storage.base.Storage` options.

    Keyword-only (this project's):
        host: a GitHub Enterprise Server host (``github.example.com``); the API is then
            ``https://HOST/api/v3``. None means github.com.
        api_url: the API base URL itself, overriding `host` (proxies, tests).
        access_token: the token; None reads the ``GITHUB_ACCESS_TOKEN`` environment variable,
            and without either the repository is read anonymously (public repositories only).
        token_source: where the token came from, for error messages (never the value).
    """

    type_name = "GitHub"
    default_label = "github-flow-storage"

    def __init__(
        self,
        repo: str,
        path: str | None = None,
        ref: str | None = None,
        *,
        host: str | None = None,
        api_url: str | None = None,
        access_token: str | None = None,
        token_source: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path=path, ref=ref, **kwargs)
        if not isinstance(repo, str) or not _REPO.fullmatch(repo.strip().strip("/")):
            raise InvalidConfig(f"GitHub `repo` must be owner/name (e.g. my-org/flows), not {repo!r}")
        self.repo = repo.strip().strip("/")
        self.host = host.strip() if host else None
        self.api_url = api_url.strip().rstrip("/") if api_url else None
        if self.api_url is not None and not is_http_url(self.api_url):
            raise InvalidConfig(f"GitHub `apiURL` must be an http(s) URL, not {api_url!r}")
        self._api_base = self.api_url or api_base_for_host(self.host)
        self._web_base = web_base_for_host(self.host)
        if access_token is None:
            access_token = os.environ.get(CREDENTIALS_KEY) or None
            token_source = token_source or (f"the {CREDENTIALS_KEY} environment variable" if access_token else None)
        self._token = check_token(access_token, token_source or "the access token", provider="GitHub")
        self._token_source = token_source or "the access token"
        self._session_lock = threading.Lock()
        self._session_instance: requests.Session | None = None
        #: raw commit objects read for verification, by id (objects never change)
        self._raw_objects: dict[str, RawObject] = {}

    def __repr__(self) -> str:  # never shows the token
        return f"GitHub(repo={self.repo!r}, path={self.path!r}, ref={self.ref!r}, api={self._api_base!r})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> GitHub:
        """From a FlowStorage ``spec.github`` block (the token from `credentials`, the referenced
        Secret's ``GITHUB_ACCESS_TOKEN`` key) or :meth:`serialize` output (no credentials: the
        ``GITHUB_ACCESS_TOKEN`` environment variable, else anonymous)."""
        repo = config.get("repo")
        if not repo or not isinstance(repo, str):
            raise InvalidConfig("GitHub storage needs `repo` (spec.github.repo: owner/name, e.g. my-org/flows)")
        token, source = token_from(credentials, CREDENTIALS_KEY,
                                   wanted="a GitHub token with read access to the repository's contents")
        storage = cls(
            repo=repo,
            path=config.get("path") or None,
            ref=config.get(cls.ref_key) or None,
            host=config.get("host") or None,
            api_url=config.get("apiURL") or None,
            access_token=token,
            token_source=source,
            **cls.common_kwargs(config),
        )
        return storage.finish_config(config)  # type: ignore[return-value]

    def _status_config(self) -> dict[str, Any]:
        doc = {"repo": self.repo, "ref": self.ref, "host": self.host, "apiURL": self.api_url}
        return {k: v for k, v in doc.items() if v is not None}

    def _seed_config(self) -> dict[str, Any]:
        """The seed's GitHub fields: ``base_url`` is the REST API of an Enterprise Server (None:
        github.com); the token is the agent's (``GITHUB_ACCESS_TOKEN``, the seed's default)."""
        base_url = self.api_url or (self._api_base if self._api_base != DEFAULT_API_URL else None)
        return {"repo": self.repo, "ref": self.seed_ref(), "path": self.seed_path(), "base_url": base_url}

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"repo": doc.get("repo"), "ref": doc.get("ref"), "path": doc.get("path"),
                "apiURL": doc.get("base_url")}

    # ------------------------------------------------------------------ provider primitives
    @property
    def api_base(self) -> str:
        """The REST API base URL requests go to."""
        return self._api_base

    def repo_name(self) -> str:
        return self.repo

    def web_url(self, path: str, commit: str) -> str:
        return f"{self._web_base}/{self.repo}/blob/{quote(commit)}/{quote_path(path)}"

    def resolve_ref(self, ref: str | None = None) -> str:
        target = ref or self.ref or self.default_branch()
        # https://docs.github.com/en/rest/commits/commits#get-a-commit (the sha media type answers
        # the commit id alone)
        what = f"resolving ref {target!r} of GitHub repository {self.repo}"
        response = self._get(f"/commits/{quote(target)}", what, accept="application/vnd.github.sha")
        if response.status_code in (404, 422):
            # 422 "No commit found for SHA": the repository exists, the ref does not; 404 may mean
            # either, so ask for the repository to tell them apart
            self.default_branch()
            raise RefNotFound(
                f"ref {target!r} not found in GitHub repository {self.repo}: no branch, tag or commit has "
                "that name; push it, or fix the storage's ref"
            )
        if response.status_code == 409:  # "Git Repository is empty."
            raise RefNotFound(
                f"GitHub repository {self.repo} is empty, so ref {target!r} does not exist yet: "
                "push a commit holding the flow file"
            )
        self._raise(response, what)
        commit = response.text.strip()
        if not is_commit_id(commit):  # a proxy that ignored the media type: the commit object
            try:
                commit = str(response.json().get("sha") or "")
            except (ValueError, AttributeError):
                commit = ""
        if not is_commit_id(commit):
            raise Unavailable(f"{what}: the API answered without a commit id; will retry")
        return commit.lower()

    def default_branch(self) -> str:
        """The repository's default branch; raises RepositoryNotFound when it is not visible."""
        # https://docs.github.com/en/rest/repos/repos#get-a-repository
        what = f"GitHub repository {self.repo}"
        response = self._get("", what, accept="application/vnd.github+json")
        if response.status_code == 404:
            hint = (
                "check the owner/name spelling, and that the token can read it (private "
                "repositories need a token with read access to their contents)"
                if self._token
                else "check the owner/name spelling; a private repository needs a token: reference a "
                f"Secret with a {CREDENTIALS_KEY} key"
            )
            raise RepositoryNotFound(f"{what} not found at {self._api_base} (HTTP 404): {hint}")
        self._raise(response, what, not_found=RepositoryNotFound)
        try:
            branch = response.json().get("default_branch")
        except (ValueError, AttributeError):
            branch = None
        if not branch or not isinstance(branch, str):
            raise RefNotFound(f"{what} has no default branch (is it empty?); set the storage's ref")
        return branch

    def read_file(self, path: str, commit: str) -> bytes:
        path = normalize_path(path)
        response = self._contents(path, commit)
        if _is_directory_listing(response):
            raise FileNotFound(
                f"{path} is a directory in GitHub repository {self.repo} at {commit}, not a "
                "file: point the flow's path at the .py file"
            )
        return response.content

    def read_path(self, path: str, commit: str, *,
                  keep: Callable[[str], bool] | None = None) -> bytes | dict[str, bytes]:
        path = normalize_path(path)
        response = self._contents(path, commit)  # a file: this one request, as read_file
        if not _is_directory_listing(response):
            return response.content
        return read_tree(path, commit, self._tree_entries(path, commit), self._blob, keep=keep)

    def _contents(self, path: str, commit: str) -> requests.Response:
        """The contents API's answer for `path` at `commit`: a file's bytes, or a directory's
        listing (JSON array). Raises FileNotFound (RepositoryNotFound when the repository went)."""
        # https://docs.github.com/en/rest/repos/contents#get-repository-content (the raw media
        # type answers the bytes, for files up to 100 MB; a directory answers its listing)
        what = f"reading {path} at {commit} from GitHub repository {self.repo}"
        response = self._get(
            f"/contents/{quote_path(path)}", what, params={"ref": commit}, accept="application/vnd.github.raw+json"
        )
        if response.status_code == 404:
            self.default_branch()  # the repository itself may have gone
            raise FileNotFound(
                f"{path} not found in GitHub repository {self.repo} at {commit}: commit the "
                "file there, or fix the flow's path"
            )
        self._raise(response, what, not_found=FileNotFound)
        return response

    def _tree_entries(self, path: str, commit: str) -> Iterator[TreeEntry]:
        """Everything under the directory `path` at `commit`, with git's modes: the commit's root
        tree, one tree per segment of `path` down to the directory, then its recursive tree.
        (The contents API's listing has no modes and calls submodules "file"; a recursive tree
        of the whole commit would be truncated for big repositories.)"""
        what = f"listing {path} at {commit} in GitHub repository {self.repo}"
        # https://docs.github.com/en/rest/git/commits#get-a-commit-object (its `tree.sha`)
        tree = self._json(f"/git/commits/{quote(commit)}", what).get("tree")
        sha = tree.get("sha") if isinstance(tree, dict) else None
        for segment in path.split("/"):
            if not isinstance(sha, str):
                raise Unavailable(f"{what}: the API answered without a tree id; will retry")
            # https://docs.github.com/en/rest/git/trees#get-a-tree (by the tree's SHA1)
            entries = self._json(f"/git/trees/{quote(sha)}", what).get("tree") or []
            sha = next((e.get("sha") for e in entries if isinstance(e, dict) and e.get("path") == segment
                        and e.get("type") == "tree"), None)
            if sha is None:
                raise FileNotFound(f"{path} is no directory of GitHub repository {self.repo} at {commit}")
        if not isinstance(sha, str):
            raise Unavailable(f"{what}: the API answered without a tree id; will retry")
        # recursive: "any value" returns the subtrees too; `truncated` past 100,000 entries / 7 MB
        doc = self._json(f"/git/trees/{quote(sha)}", what, params={"recursive": "1"})
        if doc.get("truncated"):
            raise InvalidConfig(
                f"{path} at {commit} in GitHub repository {self.repo} holds more entries than GitHub lists in one "
                "tree (100,000), far more than flowstore reads from a directory: point spec.source.path at a "
                "smaller directory"
            )
        for entry in doc.get("tree") or []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                size = entry.get("size")
                yield TreeEntry(entry["path"], kind_of_mode(str(entry.get("mode", ""))), str(entry.get("sha", "")),
                                size if isinstance(size, int) else None)

    def signed_ref(self, ref: str | None, *, tag: str | None) -> SignedRef:
        """As :meth:`GitHosted.signed_ref`, from the git database API: the raw commit (and tag)
        put back together from the documented ``verification.payload`` (the object without its
        signature) and ``verification.signature``; GitHub's own ``verified`` is never read."""
        what = f"reading {tag or ref or 'the default branch'!r} of GitHub repository {self.repo} to verify it"
        if tag is None:
            commit = self.resolve_ref(ref)
            return SignedRef(commit=commit, commit_object=self._raw_object("commit", commit, what))
        # https://docs.github.com/en/rest/git/refs#get-a-reference: {object: {type, sha}}
        response = self._get(f"/git/ref/tags/{quote(tag)}", what, accept="application/vnd.github+json")
        if response.status_code == 404:
            raise RefNotFound(f"{what}: no tag {tag!r} in GitHub repository {self.repo}; push it, or fix the ref")
        self._raise(response, what)
        target = _object_of(response, what)
        if target[0] == "commit":  # a lightweight tag: no tag object, no signature
            return SignedRef(commit=target[1], commit_object=self._raw_object("commit", target[1], what), tag_name=tag)
        if target[0] != "tag":
            raise RefNotFound(f"{what}: tag {tag!r} names a {target[0]}, not a commit")
        # https://docs.github.com/en/rest/git/tags#get-a-tag: {object: {type, sha}, verification}
        doc = self._json(f"/git/tags/{quote(target[1])}", what)
        pointed = doc.get("object")
        pointed = pointed if isinstance(pointed, dict) else {}
        commit = str(pointed.get("sha") or "").lower()
        if pointed.get("type") != "commit" or not is_commit_id(commit):
            raise RefNotFound(f"{what}: tag {tag!r} does not point at a commit")
        return SignedRef(commit=commit, commit_object=self._raw_object("commit", commit, what), tag_name=tag,
                         tag_id=target[1], tag_object=_from_verification(doc, "tag", target[1]))

    def _raw_object(self, kind: str, sha: str, what: str) -> RawObject | None:
        """The raw `kind` object `sha` from its verification payload and signature (None when
        GitHub says it carries no signature); kept, as objects never change."""
        cached = self._raw_objects.get(sha)
        if cached is not None:
            return cached
        # https://docs.github.com/en/rest/git/commits#get-a-commit-object
        raw = _from_verification(self._json(f"/git/commits/{quote(sha)}", what), kind, sha)
        if raw is not None:
            with self._session_lock:
                if len(self._raw_objects) > 256:
                    self._raw_objects.clear()
                self._raw_objects[sha] = raw
        return raw

    def _blob(self, entry: TreeEntry) -> bytes:
        # https://docs.github.com/en/rest/git/blobs#get-a-blob (the raw media type answers the
        # bytes, up to 100 MB)
        what = f"reading blob {entry.key} ({entry.path}) from GitHub repository {self.repo}"
        response = self._get(f"/git/blobs/{quote(entry.key)}", what, accept="application/vnd.github.raw+json")
        self._raise(response, what, not_found=FileNotFound)
        return response.content

    def _json(self, suffix: str, what: str, *, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        response = self._get(suffix, what, accept="application/vnd.github+json", params=params)
        self._raise(response, what, not_found=FileNotFound)
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise Unavailable(f"{what}: the API answered something other than a JSON object; will retry")
        return doc

    # ------------------------------------------------------------------ HTTP
    def _session(self) -> requests.Session:
        with self._session_lock:
            if self._session_instance is None:
                session = requests.Session()
                session.headers["X-GitHub-Api-Version"] = API_VERSION
                session.headers["User-Agent"] = "flowstore"
                if self._token:
                    session.headers["Authorization"] = f"Bearer {self._token}"
                self._session_instance = session
            return self._session_instance

    def _get(
        self, suffix: str, what: str, *, accept: str, params: Mapping[str, str] | None = None
    ) -> requests.Response:
        """GET ``/repos/{repo}{suffix}``, retrying connection errors, timeouts and 5xx. Returns
        the last response (any status); raises Unavailable when the API stays unreachable."""
        url = f"{self._api_base}/repos/{self.repo}{suffix}"
        return get_with_retries(self._session(), url, what=what, api="the GitHub API", api_base=self._api_base,
                                params=params, headers={"Accept": accept})

    def _raise(self, response: requests.Response, what: str, not_found: type[StorageError] = FileNotFound) -> None:
        try:
            raise_for_http(response.status_code, response.headers, response.text, what=what, not_found=not_found)
        except AuthFailed as exc:
            source = self._token_source if self._token else "no token (anonymous)"
            raise AuthFailed(f"{exc.message} (token from {source}; GitHub said: {error_message(response)})") from None


# ---------------------------------------------------------------------- helpers
def _object_of(response: requests.Response, what: str) -> tuple[str, str]:
    try:
        target = response.json().get("object")
    except (ValueError, AttributeError):
        target = None
    if not isinstance(target, dict) or not is_commit_id(str(target.get("sha") or "")):
        raise Unavailable(f"{what}: the API answered without the object the ref names; will retry")
    return str(target.get("type") or ""), str(target["sha"]).lower()


def _from_verification(doc: Mapping[str, Any], kind: str, sha: str) -> RawObject | None:
    """The raw object from a git database answer's ``verification`` (payload + signature), or
    None when it carries no signature."""
    verification = doc.get("verification")
    verification = verification if isinstance(verification, dict) else {}
    payload, signature = verification.get("payload"), verification.get("signature")
    if not isinstance(payload, str) or not isinstance(signature, str) or not signature:
        return None
    data = commit_from_payload(payload, signature, sha256=len(sha) == 64) if kind == "commit" \
        else tag_from_payload(payload, signature)
    return RawObject(kind, sha, data)


def _is_directory_listing(response: requests.Response) -> bool:
    """The contents API answers a directory with a JSON array, whatever the media type asked."""
    return response.headers.get("Content-Type", "").startswith("application/json") and response.content[:1] == b"["


def api_base_for_host(host: str | None) -> str:
    """The REST API base for a GitHub host: api.github.com for github.com (or no host), else
    the Enterprise Server's ``https://HOST/api/v3``."""
    if not host:
        return DEFAULT_API_URL
    scheme, name = split_host(host, provider="GitHub", example="github.example.com")
    if name.lower() in ("github.com", "api.github.com"):
        return DEFAULT_API_URL
    return f"{scheme}://{name}/api/v3"


def web_base_for_host(host: str | None) -> str:
    if not host:
        return DEFAULT_WEB_URL
    scheme, name = split_host(host, provider="GitHub", example="github.example.com")
    if name.lower() in ("github.com", "api.github.com"):
        return DEFAULT_WEB_URL
    return f"{scheme}://{name}"


