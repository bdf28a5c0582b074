"""The seed's ``GitLab`` storage: flows kept as ``.py`` files in a GitLab project (gitlab.com or
self-managed), read through the REST API v4 at a pinned commit.

REST calls, all ``GET``; ``:id`` is the numeric project id or the URL-encoded
``namespace/project`` path (``group%2Fflows``):

* ``/projects/:id``: the default branch, and whether the project is visible at all
  (https://docs.gitlab.com/ee/api/projects.html#get-a-single-project);
* ``/projects/:id/repository/commits/:sha``: the commit a branch, tag or sha names
  (https://docs.gitlab.com/ee/api/commits.html#get-a-single-commit);
* ``/projects/:id/repository/files/:file_path/raw?ref=``: the file's bytes, its path
  URL-encoded as one segment (https://docs.gitlab.com/ee/api/repository_files.html#get-raw-file-from-repository);
  it answers 404 for a directory, so a file costs this one request whether read as a file or a path;
* for a directory only (:meth:`GitLab.read_path`): ``/projects/:id/repository/tree?path=&ref=&recursive=true``,
  page by page (entries with git's modes; https://docs.gitlab.com/ee/api/repositories.html#list-repository-tree),
  then ``/projects/:id/repository/blobs/:sha/raw`` per file and per symlink
  (https://docs.gitlab.com/ee/api/repositories.html#raw-blob-content).

The token (``PRIVATE-TOKEN``) comes from the referenced Secret's ``GITLAB_ACCESS_TOKEN`` key or,
when no Secret is given (an agent loading ``status.storage``), from the ``GITLAB_ACCESS_TOKEN``
environment variable; without one, public projects are read anonymously. Throttled requests
(429, ``RateLimit-Reset`` / ``Retry-After``) raise :class:`~flowstore.storage.errors.RateLimited`
carrying the reset time (https://docs.gitlab.com/ee/user/gitlab_com/index.html#gitlabcom-specific-rate-limits).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

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
from flowstore.storage.git.tree import TreeEntry, kind_of_mode, read_tree, relative_path
from flowstore.storage.git.verify import SignedRef

#: the Secret key and environment variable holding the token
CREDENTIALS_KEY = "GITLAB_ACCESS_TOKEN"
DEFAULT_HOST = "gitlab.com"
#: entries asked for per page of a tree listing (the API's maximum `per_page`)
TREE_PAGE_SIZE = 100

_SEGMENT = r"[A-Za-z0-9_.+-]+"
_PROJECT_PATH = re.compile(rf"{_SEGMENT}(/{_SEGMENT})+")


class GitLab(GitHosted):
    """Flows in a GitLab project (the seed's ``GitLab`` storage), read at a pinned commit.

    Args (the seed's):
        repo: the project as ``namespace/project`` (subgroups allowed: ``group/sub/flows``) or
            its numeric id (``"42"``).
        host: the GitLab host (``gitlab.example.com``); None means gitlab.com. The API is
            ``https://HOST/api/v4``.
        path: the default flow file in the repository, e.g. ``flows/etl.py``.
        ref: branch, tag or commit to read (the project's default branch when None).
        **kwargs: the base :class:`~flowstore.storage.base.Storage` options.

    Keyword-only (this project's):
        api_url: the API base URL itself (``…/api/v4``), overriding `host` (proxies, tests).
        access_token: the token; None reads the ``GITLAB_ACCESS_TOKEN`` environment variable,
            and without either the project is read anonymously (public projects only).
        token_source: where the token came from, for error messages (never the value).
    """

    type_name = "GitLab"
    default_label = "gitlab-flow-storage"

    def __init__(
        self,
        repo: str,
        host: str | None = None,
        path: str | None = None,
        ref: str | None = None,
        *,
        api_url: str | None = None,
        access_token: str | None = None,
        token_source: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path=path, ref=ref, **kwargs)
        repo = str(repo).strip().strip("/") if isinstance(repo, str | int) and not isinstance(repo, bool) else ""
        if not (repo.isdigit() or _PROJECT_PATH.fullmatch(repo)):
            raise InvalidConfig(
                f"GitLab `repo` must be namespace/project (e.g. my-group/flows) or a numeric project id, not {repo!r}"
            )
        self.repo = repo
        self.host = host.strip() if host else None
        self.api_url = api_url.strip().rstrip("/") if api_url else None
        if self.api_url is not None and not is_http_url(self.api_url):
            raise InvalidConfig(f"GitLab `apiURL` must be an http(s) URL, not {api_url!r}")
        scheme, name = split_host(self.host or DEFAULT_HOST, provider="GitLab", example="gitlab.example.com")
        self._web_base = f"{scheme}://{name}"
        self._api_base = self.api_url or f"{self._web_base}/api/v4"
        #: the project's ``path_with_namespace`` once known (web URLs of numeric ids)
        self._project_path: str | None = None if repo.isdigit() else repo
        if access_token is None:
            access_token = os.environ.get(CREDENTIALS_KEY) or None
            token_source = token_source or (f"the {CREDENTIALS_KEY} environment variable" if access_token else None)
        self._token = check_token(access_token, token_source or "the access token", provider="GitLab")
        self._token_source = token_source or "the access token"
        self._session_lock = threading.Lock()
        self._session_instance: requests.Session | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"GitLab(repo={self.repo!r}, path={self.path!r}, ref={self.ref!r}, api={self._api_base!r})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> GitLab:
        """From a FlowStorage ``spec.gitlab`` block (the token from `credentials`, the referenced
        Secret's ``GITLAB_ACCESS_TOKEN`` key) or :meth:`serialize` output (no credentials: the
        ``GITLAB_ACCESS_TOKEN`` environment variable, else anonymous)."""
        repo = config.get("repo")
        if repo is None or repo == "" or isinstance(repo, bool) or not isinstance(repo, str | int):
            raise InvalidConfig(
                "GitLab storage needs `repo` (spec.gitlab.repo: namespace/project, e.g. "
                "my-group/flows, or the numeric project id)"
            )
        token, source = token_from(credentials, CREDENTIALS_KEY,
                                   wanted="a GitLab token with the read_api or read_repository scope")
        storage = cls(
            repo=str(repo),
            host=config.get("host") or None,
            path=config.get("path") or None,
            ref=config.get(cls.ref_key) or None,
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
        """The seed's GitLab fields: ``host`` is the server's URL (None: gitlab.com); an
        ``apiURL`` of flowstore's own has no field. The token is the agent's
        (``GITLAB_ACCESS_TOKEN``, the seed's default)."""
        return {"repo": self.repo, "path": self.seed_path(), "host": self._web_base if self.host else None,
                "ref": self.seed_ref()}

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"repo": doc.get("repo"), "path": doc.get("path"), "host": doc.get("host"), "ref": doc.get("ref")}

    # ------------------------------------------------------------------ provider primitives
    @property
    def api_base(self) -> str:
        """The REST API base URL requests go to."""
        return self._api_base

    @property
    def project_id(self) -> str:
        """``:id`` in API paths: the numeric id, or the path URL-encoded as one segment."""
        return quote(self.repo)

    def repo_name(self) -> str:
        return self.repo

    def web_url(self, path: str, commit: str) -> str:
        if self._project_path is None:  # a numeric id: ask for the path once
            try:
                self.project()
            except StorageError:
                pass
        # /projects/:id on the web redirects to the project, for ids whose path is unknown here
        project = self._project_path or f"projects/{self.repo}"
        return f"{self._web_base}/{project}/-/blob/{quote(commit)}/{quote_path(path)}"

    def project(self) -> dict[str, Any]:
        """The project (``GET /projects/:id``); raises RepositoryNotFound when it is not visible."""
        # https://docs.gitlab.com/ee/api/projects.html#get-a-single-project
        what = f"GitLab project {self.repo}"
        response = self._get("", what)
        if response.status_code == 404:
            hint = (
                "check the namespace/project spelling (or id), and that the token can read it (a "
                "token with the read_api or read_repository scope and at least Reporter access)"
                if self._token
                else "check the namespace/project spelling (or id); a private project needs a token: "
                f"reference a Secret with a {CREDENTIALS_KEY} key"
            )
            raise RepositoryNotFound(f"{what} not found at {self._api_base} (HTTP 404): {hint}")
        self._raise(response, what, not_found=RepositoryNotFound)
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise Unavailable(f"{what}: the API answered something other than a project; will retry")
        if isinstance(doc.get("path_with_namespace"), str):
            self._project_path = doc["path_with_namespace"]
        return doc

    def default_branch(self) -> str:
        branch = self.project().get("default_branch")
        if not branch or not isinstance(branch, str):
            raise RefNotFound(
                f"GitLab project {self.repo} has no default branch (its repository is empty): "
                "push a commit holding the flow file, or set the storage's ref"
            )
        return branch

    def resolve_ref(self, ref: str | None = None) -> str:
        target = ref or self.ref or self.default_branch()
        # https://docs.gitlab.com/ee/api/commits.html#get-a-single-commit (:sha is a commit, branch
        # or tag name)
        what = f"resolving ref {target!r} of GitLab project {self.repo}"
        response = self._get(f"/repository/commits/{quote(target)}", what)
        if response.status_code == 404:
            # "404 Project Not Found" and "404 Commit Not Found" share the status: ask for the project
            self.project()
            raise RefNotFound(
                f"ref {target!r} not found in GitLab project {self.repo}: no branch, tag or commit has that "
                "name; push it, or fix the storage's ref"
            )
        self._raise(response, what, not_found=RefNotFound)
        try:
            commit = response.json().get("id")
        except (ValueError, AttributeError):
            commit = None
        if not isinstance(commit, str) or not is_commit_id(commit):
            raise Unavailable(f"{what}: the API answered without a commit id; will retry")
        return commit.lower()

    def signed_ref(self, ref: str | None, *, tag: str | None) -> SignedRef:
        """As :meth:`GitHosted.signed_ref`. GitLab's API gives no raw commit (its signature
        endpoint gives its own verdict), so the objects are fetched over git's smart HTTP from the
        project's ``http_url_to_repo``
        (https://docs.gitlab.com/ee/api/projects.html#get-a-single-project), the token as the
        password of the user ``oauth2`` (https://docs.gitlab.com/ee/api/oauth2.html)."""
        clone = self.project().get("http_url_to_repo")
        return self.signed_ref_over_git(ref, tag=tag, clone_url=clone, api_url=self._api_base,
                                        username="oauth2" if self._token else None, password=self._token)

    def read_file(self, path: str, commit: str) -> bytes:
        path = normalize_path(path)
        response = self._raw_file(path, commit)
        if response is None:
            self._missing(path, commit)
        return response.content

    def read_path(self, path: str, commit: str, *,
                  keep: Callable[[str], bool] | None = None) -> bytes | dict[str, bytes]:
        path = normalize_path(path)
        response = self._raw_file(path, commit)  # a file: this one request, as read_file
        if response is not None:
            return response.content
        return read_tree(path, commit, self._tree_entries(path, commit), self._blob, keep=keep)

    def _raw_file(self, path: str, commit: str) -> requests.Response | None:
        """The raw file API's answer for `path` at `commit`, or None when it has no such file
        (404: nothing there, or a directory)."""
        # https://docs.gitlab.com/ee/api/repository_files.html#get-raw-file-from-repository (the
        # whole path is one segment: flows%2Fetl.py)
        what = f"reading {path} at {commit} from GitLab project {self.repo}"
        response = self._get(f"/repository/files/{quote(path)}/raw", what, params={"ref": commit})
        if response.status_code == 404:
            return None
        self._raise(response, what, not_found=FileNotFound)
        return response

    def _missing(self, path: str, commit: str) -> NoReturn:
        self.project()  # the project itself may have gone
        raise FileNotFound(
            f"{path} not found in GitLab project {self.repo} at {commit}: commit the file "
            "there, or fix the flow's path"
        )

    def _tree_entries(self, path: str, commit: str) -> Iterator[TreeEntry]:
        """Everything under the directory `path` at `commit`, with git's modes, a page at a
        time (the next page is asked for only when the previous one is used up)."""
        # https://docs.gitlab.com/ee/api/repositories.html#list-repository-tree (recursive; entries
        # carry `mode`, 120000 for symlinks, 160000 for submodules; offset pagination: `page` and
        # `per_page` up to 100, the next page in X-Next-Page, empty on the last,
        # https://docs.gitlab.com/ee/api/rest/#pagination). A path that is no directory answers
        # 404 "Tree Not Found" (older versions: an empty list).
        what = f"listing {path} at {commit} in GitLab project {self.repo}"
        page = "1"
        while page:
            params = {"path": path, "ref": commit, "recursive": "true", "per_page": str(TREE_PAGE_SIZE), "page": page}
            response = self._get("/repository/tree", what, params=params)
            if response.status_code == 404 and page == "1":
                self._missing(path, commit)
            self._raise(response, what, not_found=FileNotFound)
            try:
                entries = response.json()
            except ValueError:
                entries = None
            if not isinstance(entries, list):
                raise Unavailable(f"{what}: the API answered something other than a tree listing; will retry")
            if not entries and page == "1":
                self._missing(path, commit)
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    yield TreeEntry(relative_path(path, entry["path"]), kind_of_mode(str(entry.get("mode", ""))),
                                    str(entry.get("id", "")))
            page = response.headers.get("X-Next-Page", "").strip()

    def _blob(self, entry: TreeEntry) -> bytes:
        # https://docs.gitlab.com/ee/api/repositories.html#raw-blob-content
        what = f"reading blob {entry.key} ({entry.path}) from GitLab project {self.repo}"
        response = self._get(f"/repository/blobs/{quote(entry.key)}/raw", what)
        self._raise(response, what, not_found=FileNotFound)
        return response.content

    # ------------------------------------------------------------------ HTTP
    def _session(self) -> requests.Session:
        with self._session_lock:
            if self._session_instance is None:
                session = requests.Session()
                session.headers["User-Agent"] = "flowstore"
                if self._token:
                    session.headers["PRIVATE-TOKEN"] = self._token
                self._session_instance = session
            return self._session_instance

    def _get(self, suffix: str, what: str, *, params: Mapping[str, str] | None = None) -> requests.Response:
        """GET ``/projects/:id{suffix}``, retrying connection errors, timeouts and 5xx. Returns
        the last response (any status); raises Unavailable when the API stays unreachable."""
        url = f"{self._api_base}/projects/{self.project_id}{suffix}"
        return get_with_retries(self._session(), url, what=what, api="the GitLab API", api_base=self._api_base,
                                params=params)

    def _raise(self, response: requests.Response, what: str, not_found: type[StorageError] = FileNotFound) -> None:
        try:
            raise_for_http(response.status_code, response.headers, response.text, what=what, not_found=not_found)
        except AuthFailed as exc:
            source = self._token_source if self._token else "no token (anonymous)"
            raise AuthFailed(f"{exc.message} (token from {source}; GitLab said: {error_message(response)})") from None


# ---------------------------------------------------------------------- helpers
