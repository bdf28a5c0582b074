"""The seed's ``Bitbucket`` storage: flows read from a Bitbucket repository, pinned to a commit.

Two flavours share the class, chosen by ``host`` (as in the seed):

* **Bitbucket Cloud** (no ``host``): the repository ``workspace/repo`` (the seed's ``project``
  serves as the workspace when ``workspace`` is not set), through the 2.0 REST API at
  ``https://api.bitbucket.org/2.0``. Credentials: an app password (``BITBUCKET_USERNAME`` +
  ``BITBUCKET_APP_PASSWORD``, HTTP basic auth; an Atlassian API token with the account e-mail
  as the user name works the same way) or an access token (``BITBUCKET_ACCESS_TOKEN``, Bearer).
* **Bitbucket Server / Data Center** (``host`` set): project key ``project`` and repository slug
  ``repo``, through the REST API at ``https://HOST/rest/api/1.0``. Credentials: an HTTP access
  token (``BITBUCKET_ACCESS_TOKEN``, Bearer).

Credentials come from the referenced Secret's data; without one (``credentials=None``) the
same names are read from the environment, and none at all means anonymous access (public
repositories; an empty ``credentials`` mapping, what the controller passes for a storage
without a Secret, is anonymous too and never reads the environment). Uses ``requests`` (a
core dependency). Every HTTP failure becomes an error of :mod:`flowstore.storage.errors`;
messages never contain credential values.

Endpoints used (Cloud, relative to the API base):

* ``GET /repositories/{workspace}/{repo}``                  the main branch's name
* ``GET /repositories/{workspace}/{repo}/commit/{revision}`` branch, tag or commit -> ``hash``
* ``GET /repositories/{workspace}/{repo}/src/{commit}/{path}`` the raw file; a directory answers
  its listing instead (so a file costs this one request whether read as a file or a path), and
  :meth:`Bitbucket.read_path` walks it: ``src/{commit}/{dir}/`` per directory, page by page
  (``pagelen``, ``next``), then ``src/{commit}/{path}`` per file and per symlink

(Server / Data Center, relative to the API base):

* ``GET /projects/{key}/repos/{slug}``                    the repository exists
* ``GET /projects/{key}/repos/{slug}/branches/default``   the default branch's ``latestCommit``
* ``GET /projects/{key}/repos/{slug}/commits/{commitId}``  branch, tag or commit -> ``id``
  (``commits?until={ref}&limit=1`` for refs holding a ``/``: Data Center's servlet container
  refuses encoded slashes in paths)
* ``GET /projects/{key}/repos/{slug}/raw/{path}?at={commit}`` the raw file (one request); 404 for
  a directory, which :meth:`Bitbucket.read_path` then walks: ``browse/{dir}?at={commit}`` per
  directory, page by page (``start``, ``limit``), then ``raw/{path}?at={commit}`` per file
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import requests

from flowstore.storage._rest import read_bounded
from flowstore.storage.errors import (
    FileNotFound,
    InvalidConfig,
    RefNotFound,
    RepositoryNotFound,
    StorageError,
    Unavailable,
)
from flowstore.storage.git._bitbucket_tree import cloud_entries, server_entries
from flowstore.storage.git.base import GitHosted, normalize_path, raise_for_http
from flowstore.storage.git.tree import TreeEntry, read_tree
from flowstore.storage.git.verify import SignedRef

CLOUD_API_URL = "https://api.bitbucket.org/2.0"
CLOUD_WEB_URL = "https://bitbucket.org"
#: keys of the credentials mapping (the referenced Secret's data) and of the environment fallback
USERNAME = "BITBUCKET_USERNAME"
APP_PASSWORD = "BITBUCKET_APP_PASSWORD"  # noqa: S105 - a key name, not a secret
ACCESS_TOKEN = "BITBUCKET_ACCESS_TOKEN"  # noqa: S105 - a key name, not a secret
CREDENTIAL_KEYS = (USERNAME, APP_PASSWORD, ACCESS_TOKEN)
#: (connect, read) seconds per request
TIMEOUT = (5.0, 60.0)


def _require_name(value: Any, key: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidConfig(f"Bitbucket storage needs `{key}` (spec.bitbucket.{key}, e.g. {example})")
    name: str = value.strip()
    if "/" in name or name in (".", ".."):
        raise InvalidConfig(f"Bitbucket `{key}` {name!r} must be a single name without '/' (e.g. {example})")
    return name


def _optional_str(value: Any, key: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidConfig(f"Bitbucket `{key}` must be a string (quote it in YAML)")
    return value.strip()


class Bitbucket(GitHosted):
    """Flows kept as ``.py`` files in a Bitbucket Cloud or Server / Data Center repository.

    Args (the seed's):
        project: Server / Data Center: the project key (required). Cloud: the workspace when
            `workspace` is not given.
        repo: the repository slug.
        host: the Server / Data Center host (``bitbucket.example.com`` or a base URL such as
            ``https://example.com/bitbucket``); None means Bitbucket Cloud.
        path: the default flow file in the repository.
        ref: branch, tag or commit to read (the repository's default branch when None).
    Args (flowstore's):
        workspace: Cloud: the workspace holding `repo`.
        api_url: the REST API base, overriding the flavour's default (proxies, tests).
        credentials: ``BITBUCKET_USERNAME`` + ``BITBUCKET_APP_PASSWORD`` (Cloud) or
            ``BITBUCKET_ACCESS_TOKEN``; None reads the same names from the environment.
        **kwargs: the base :class:`Storage` options.
    """

    type_name: ClassVar[str] = "Bitbucket"
    default_label: ClassVar[str | None] = "bitbucket-flow-storage"

    def __init__(
        self,
        project: str | None = None,
        repo: str | None = None,
        host: str | None = None,
        path: str | None = None,
        ref: str | None = None,
        *,
        workspace: str | None = None,
        api_url: str | None = None,
        credentials: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path=path, ref=_optional_str(ref, "ref"), **kwargs)
        self.host = _optional_str(host, "host")
        self.repo = _require_name(repo, "repo", "flows")
        if self.host:
            self.project: str | None = _require_name(project, "project", "the project key, PROJ")
            self.workspace: str | None = None
            if workspace:
                raise InvalidConfig("Bitbucket `workspace` is for Bitbucket Cloud; with `host` set (Server / "
                                    "Data Center) name the project key in `project`")
        else:
            self.project = _optional_str(project, "project")
            self.workspace = _require_name(workspace or self.project, "workspace", "acme")
        self.api_url = (_optional_str(api_url, "apiURL") or self._default_api_url()).rstrip("/")
        self._auth = self._auth_from(credentials)
        self._secrets = [v for v in ((credentials if credentials is not None else os.environ).get(k)
                                     for k in CREDENTIAL_KEYS) if v]
        self._session_lock = threading.Lock()
        self._session_instance: requests.Session | None = None

    @property
    def is_cloud(self) -> bool:
        return not self.host

    def __repr__(self) -> str:  # never shows credentials
        return f"Bitbucket(repo={self.repo_name()!r}, ref={self.ref!r}, path={self.path!r})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> GitHosted:
        storage = cls(
            project=config.get("project"),
            repo=config.get("repo"),
            host=config.get("host"),
            path=config.get("path"),
            ref=config.get("ref"),
            workspace=config.get("workspace"),
            api_url=config.get("apiURL"),
            credentials=credentials,
            **cls.common_kwargs(config),
        )
        return storage.finish_config(config)

    def _seed_config(self) -> dict[str, Any]:
        """The seed's Bitbucket fields. Its ``project`` is required even on Bitbucket Cloud (where
        it only names things in messages): the workspace stands in when no project was given.
        The API URL has no field; credentials are the agent's (the seed reads
        ``BITBUCKET_ACCESS_TOKEN``, or ``BITBUCKET_CLOUD_USERNAME`` / ``BITBUCKET_CLOUD_APP_PASSWORD``)."""
        return {
            "project": self.project or self.workspace,
            "repo": self.repo,
            "workspace": self.workspace,
            "host": self._host_url() if self.host else None,
            "path": self.seed_path(),
            "ref": self.seed_ref(),
        }

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {k: doc.get(k) for k in ("project", "repo", "workspace", "host", "path", "ref")}

    def _status_config(self) -> dict[str, Any]:
        doc = {
            "workspace": self.workspace,
            "project": self.project,
            "repo": self.repo,
            "host": self.host,
            "apiURL": self.api_url if self.api_url != self._default_api_url() else None,
            "ref": self.ref,
        }
        return {k: v for k, v in doc.items() if v is not None}

    def _host_url(self) -> str:
        assert self.host
        host = self.host.rstrip("/")
        return host if host.startswith(("https://", "http://")) else f"https://{host}"

    def _default_api_url(self) -> str:
        return f"{self._host_url()}/rest/api/1.0" if self.host else CLOUD_API_URL

    def _auth_from(self, credentials: Mapping[str, str] | None) -> tuple[str, str] | str | None:
        """(user, password) for basic auth, a token for Bearer, or None (anonymous)."""
        source = credentials if credentials is not None else os.environ
        where = "the referenced Secret" if credentials is not None else "the environment"
        token, user, password = (source.get(k) or None for k in (ACCESS_TOKEN, USERNAME, APP_PASSWORD))
        if token:
            return token
        if self.host and (user or password):
            raise InvalidConfig(
                f"Bitbucket Server / Data Center authenticates with an HTTP access token: put it in {where} "
                f"as {ACCESS_TOKEN} ({USERNAME} / {APP_PASSWORD} are for Bitbucket Cloud)")
        if user and password:
            return (user, password)
        if user or password:
            missing = USERNAME if not user else APP_PASSWORD
            raise InvalidConfig(f"the Bitbucket credentials in {where} lack {missing}: an app password needs "
                                f"both {USERNAME} and {APP_PASSWORD} (or use {ACCESS_TOKEN})")
        if credentials:  # a Secret with other keys: a mistake. An empty mapping means anonymous.
            wanted = ACCESS_TOKEN if self.host else f"{ACCESS_TOKEN}, or {USERNAME} and {APP_PASSWORD}"
            raise InvalidConfig(f"the Bitbucket credentials Secret holds none of the keys it needs ({wanted})")
        return None

    # ------------------------------------------------------------------ naming
    def repo_name(self) -> str:
        if self.is_cloud:
            return f"{self.workspace}/{self.repo}"
        return f"{self.host}/projects/{self.project}/repos/{self.repo}"

    def web_url(self, path: str, commit: str) -> str:
        quoted = urllib.parse.quote(path, safe="/")
        if self.is_cloud:
            return f"{CLOUD_WEB_URL}/{self.workspace}/{self.repo}/src/{urllib.parse.quote(commit, safe='')}/{quoted}"
        return (f"{self._host_url()}/projects/{self.project}/repos/{self.repo}/browse/{quoted}"
                f"?at={urllib.parse.quote(commit, safe='')}")

    def _repo_url(self) -> str:
        if self.is_cloud:
            return f"{self.api_url}/repositories/{self.workspace}/{self.repo}"
        return f"{self.api_url}/projects/{self.project}/repos/{self.repo}"

    def _what(self) -> str:
        flavour = "Bitbucket Cloud" if self.is_cloud else "Bitbucket"
        return f"{flavour} repository {self.repo_name()}"

    # ------------------------------------------------------------------ provider primitives
    def resolve_ref(self, ref: str | None = None) -> str:
        target = ref if ref is not None else self.ref
        if not target:
            return self._default_branch_commit()
        if self.is_cloud:
            url = f"{self._repo_url()}/commit/{urllib.parse.quote(target, safe='')}"
            doc = self._json(url, what=f"{self._what()}: resolve ref {target!r}", ref=target)
            commit = doc.get("hash")
        elif "/" in target:
            url = f"{self._repo_url()}/commits"
            doc = self._json(url, what=f"{self._what()}: resolve ref {target!r}", ref=target,
                             params={"until": target, "limit": "1"})
            values = doc.get("values") or []
            commit = values[0].get("id") if values and isinstance(values[0], dict) else None
        else:
            url = f"{self._repo_url()}/commits/{urllib.parse.quote(target, safe='')}"
            doc = self._json(url, what=f"{self._what()}: resolve ref {target!r}", ref=target)
            commit = doc.get("id")
        if not isinstance(commit, str) or not commit:
            raise RefNotFound(f"{self._what()}: the answer for ref {target!r} names no commit; "
                              "check that the ref exists")
        return commit

    def _default_branch_commit(self) -> str:
        if self.is_cloud:
            doc = self._repository()
            branch = (doc.get("mainbranch") or {}).get("name")
            if not branch:
                raise RefNotFound(f"{self._what()} has no main branch (is it empty?); push a commit or set "
                                  "spec.bitbucket.ref")
            return self.resolve_ref(str(branch))
        url = f"{self._repo_url()}/branches/default"
        response = self._get(url, what=f"{self._what()}: read the default branch", not_found=RefNotFound)
        if response.status_code == 404 or response.status_code == 204:
            self._repository()  # RepositoryNotFound when that is why
            raise RefNotFound(f"{self._what()} has no default branch (is it empty?); push a commit or set "
                              "spec.bitbucket.ref")
        commit = _decode(response, f"{self._what()}: read the default branch").get("latestCommit")
        if not isinstance(commit, str) or not commit:
            raise RefNotFound(f"{self._what()}: the default branch has no latest commit; set spec.bitbucket.ref")
        return commit

    def _repository(self) -> dict[str, Any]:
        url = self._repo_url()
        response = self._get(url, what=f"read {self._what()}", not_found=RepositoryNotFound)
        if response.status_code == 404:
            raise RepositoryNotFound(
                f"{self._what()} does not exist at {self.api_url}, or the credentials cannot see it; "
                "fix spec.bitbucket (workspace/project, repo, host) or grant the credentials read access")
        return _decode(response, f"read {self._what()}")

    def signed_ref(self, ref: str | None, *, tag: str | None) -> SignedRef:
        """As :meth:`GitHosted.signed_ref`. Bitbucket's APIs give no raw commits, so the objects
        are fetched over git's smart HTTP from the repository's clone link (``links.clone``, named
        ``https`` on Cloud, ``http`` on Server / Data Center) with the same credentials: an app
        password as basic auth, a Cloud access token as the password of ``x-token-auth``
        (https://support.atlassian.com/bitbucket-cloud/docs/using-access-tokens/), a Data Center
        HTTP access token as Bearer
        (https://confluence.atlassian.com/bitbucketserver/http-access-tokens-939515499.html)."""
        links = (self._repository().get("links") or {}).get("clone") or []
        wanted = "https" if self.is_cloud else "http"
        clone = next((link.get("href") for link in links
                      if isinstance(link, dict) and link.get("name") == wanted), None)
        auth = self._auth
        other_hosts = [urllib.parse.urlsplit(CLOUD_WEB_URL).hostname or ""] if self.is_cloud else []
        if isinstance(auth, tuple):
            return self.signed_ref_over_git(ref, tag=tag, clone_url=clone, api_url=self.api_url,
                                            other_hosts=other_hosts, username=auth[0], password=auth[1])
        if auth and self.is_cloud:
            return self.signed_ref_over_git(ref, tag=tag, clone_url=clone, api_url=self.api_url,
                                            other_hosts=other_hosts, username="x-token-auth", password=auth)
        return self.signed_ref_over_git(ref, tag=tag, clone_url=clone, api_url=self.api_url, other_hosts=other_hosts,
                                        token=auth or None)

    def read_file(self, path: str, commit: str) -> bytes:
        response = self._source(path, commit)
        if response is None:
            raise self._missing(path, commit)
        if self.is_cloud and _is_directory_listing(response):
            raise FileNotFound(f"{path} is a directory in {self._what()} at commit {commit}, not a flow file; "
                               "name the .py file in the storage's path / the flow's spec.source.path")
        return response.content

    def read_path(self, path: str, commit: str, *,
                  keep: Callable[[str], bool] | None = None) -> bytes | dict[str, bytes]:
        path = normalize_path(path)
        response = self._source(path, commit)  # a file: this one request, as read_file

        def list_page(directory: str, query: Mapping[str, str]) -> dict[str, Any]:
            return self._list_directory(directory, commit, query)

        if self.is_cloud:
            if response is None:
                raise self._missing(path, commit)
            if not _is_directory_listing(response):
                return response.content
            first = _decode(response, f"{self._what()}: list {path} at commit {commit}")
            entries = cloud_entries(path, first, list_page)
        elif response is not None:
            return response.content
        else:
            entries = server_entries(path, list_page)
        return read_tree(path, commit, entries, lambda entry: self._read_entry(entry, commit), keep=keep)

    def _source(self, path: str, commit: str) -> requests.Response | None:
        """The one request a file costs, or None when it answers 404: Cloud's ``src`` (a file's
        bytes, or a directory's first listing page), Server's ``raw`` (files only)."""
        quoted = urllib.parse.quote(path, safe="/")
        what = f"{self._what()}: read {path} at commit {commit}"
        if self.is_cloud:
            url = f"{self._repo_url()}/src/{urllib.parse.quote(commit, safe='')}/{quoted}"
            response = self._get(url, what=what, not_found=FileNotFound)
        else:
            url = f"{self._repo_url()}/raw/{quoted}"
            response = self._get(url, what=what, not_found=FileNotFound, params={"at": commit})
        return None if response.status_code == 404 else response

    def _missing(self, path: str, commit: str) -> FileNotFound:
        return FileNotFound(f"{path} is not in {self._what()} at commit {commit}: commit the file there, or fix the "
                            "storage's path / the flow's spec.source.path")

    def _read_entry(self, entry: TreeEntry, commit: str) -> bytes:
        response = self._source(entry.key, commit)
        if response is None:
            raise self._missing(entry.key, commit)
        return response.content

    def _list_directory(self, directory: str, commit: str, params: Mapping[str, str]) -> dict[str, Any]:
        """One page of the listing of `directory` at `commit` (see :mod:`._bitbucket_tree`)."""
        quoted = urllib.parse.quote(directory, safe="/")
        what = f"{self._what()}: list {directory} at commit {commit}"
        if self.is_cloud:  # a directory path ends with "/" (the root's must)
            url = f"{self._repo_url()}/src/{urllib.parse.quote(commit, safe='')}/{quoted}/"
        else:
            url = f"{self._repo_url()}/browse/{quoted}"
            params = {"at": commit, **params}
        response = self._get(url, what=what, not_found=FileNotFound, params=params, accept="application/json")
        if response.status_code == 404:
            raise self._missing(directory, commit)
        page = _decode(response, what)
        if not self.is_cloud and not isinstance(page.get("children"), dict):  # a file's lines
            raise self._missing(directory, commit)
        return page

    # ------------------------------------------------------------------ HTTP
    def _session(self) -> requests.Session:
        with self._session_lock:
            if self._session_instance is None:
                session = requests.Session()
                session.headers["User-Agent"] = "flowstore"
                if isinstance(self._auth, tuple):
                    session.auth = self._auth
                elif self._auth:
                    session.headers["Authorization"] = f"Bearer {self._auth}"
                self._session_instance = session
            return self._session_instance

    def _redact(self, text: str) -> str:
        for value in self._secrets:
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def _get(self, url: str, *, what: str, not_found: type[StorageError],
             params: Mapping[str, str] | None = None, accept: str | None = None) -> requests.Response:
        """GET `url`. 404 is returned to the caller (which knows what is missing); every other
        failure raises."""
        headers = {"Accept": accept} if accept else {}
        try:
            response = self._session().get(url, params=params, headers=headers, timeout=TIMEOUT, stream=True)
            read_bounded(response, what=what)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "is unreachable"
            raise Unavailable(f"{what}: Bitbucket at {self.api_url} {kind} ({type(exc).__name__}); "
                              "will retry") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise InvalidConfig(f"{what}: {self.api_url} is not a usable Bitbucket API URL "
                                f"({type(exc).__name__}); fix spec.bitbucket.host / apiURL") from None
        except requests.exceptions.RequestException as exc:
            raise Unavailable(f"{what}: request to Bitbucket at {self.api_url} failed "
                              f"({type(exc).__name__}); will retry") from None
        if response.status_code == 404:
            return response
        body = self._redact(response.text) if response.status_code >= 400 else ""
        raise_for_http(response.status_code, response.headers, body, what=what, not_found=not_found)
        return response

    def _json(self, url: str, *, what: str, ref: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A JSON answer naming a commit; 404 means the ref is unknown, or the repository is."""
        response = self._get(url, what=what, not_found=RefNotFound, params=params, accept="application/json")
        if response.status_code == 404:
            self._repository()  # RepositoryNotFound when the repository is what is missing
            raise RefNotFound(
                f"{ref!r} is not a branch, tag or commit of {self._what()}; push it or fix spec.bitbucket.ref")
        return _decode(response, what)


def _decode(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise Unavailable(f"{what}: Bitbucket answered HTTP {response.status_code} with a body that is not a "
                          "JSON object (a proxy in the way?); will retry")
    return doc


def _is_directory_listing(response: requests.Response) -> bool:
    """Cloud's ``src`` answers a directory with a paginated JSON listing instead of bytes."""
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        return False
    try:
        doc = json.loads(response.content)
    except ValueError:
        return False
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), list) or "pagelen" not in doc:
        return False
    return all(isinstance(v, dict) and v.get("type") in ("commit_file", "commit_directory")
               for v in doc["values"])
