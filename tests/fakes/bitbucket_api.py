"""Contract fakes of the Bitbucket REST APIs flowstore calls, serving real git repositories.

Two flavours:

* :class:`BitbucketCloudAPI`: Bitbucket Cloud's 2.0 API, served under ``/2.0`` (point the
  storage's ``api_url`` at ``fake.url + "/2.0"``). Auth: HTTP basic with a user name and an
  app password, or ``Authorization: Bearer <access token>``.
  https://developer.atlassian.com/cloud/bitbucket/rest/intro/#authentication
* :class:`BitbucketServerAPI`: Bitbucket Server / Data Center's REST API 1.0, served under
  ``/rest/api/1.0`` (point ``api_url`` at ``fake.url + "/rest/api/1.0"``). Auth:
  ``Authorization: Bearer <HTTP access token>``.
  https://developer.atlassian.com/server/bitbucket/rest/ ,
  https://confluence.atlassian.com/bitbucketserver/http-access-tokens-939515499.html

Directory listings paginate as documented: Cloud's ``src`` with ``pagelen`` (default 10, at
most 100), ``page`` and a ``next`` URL (https://developer.atlassian.com/cloud/bitbucket/rest/intro/#pagination);
Data Center's ``browse`` with ``start`` / ``limit``, ``isLastPage`` and ``nextPageStart``
(https://developer.atlassian.com/server/bitbucket/rest/v906/intro/#pagination). Tests lower the
largest page (``max_page``) to make small directories span pages.

Each repository's clone link (``links.clone``: ``https`` on Cloud, ``http`` on Data Center) is
served by the fake too, git's smart HTTP (fetch only, for verified sources), with the credentials
each flavour documents for git: Cloud an app password or ``x-token-auth`` + access token, Data
Center the token as Bearer.

Only GET is served, and only the endpoints listed per class; anything else is answered the
way the real API answers an unknown resource (404) or method (405). Wrong credentials get
401; anonymous requests get what each API gives for a private repository. ``rate_limit(n,
retry_after)`` answers the next `n` requests with 429 and ``Retry-After``, as both APIs do
when a client exceeds its limits:
https://support.atlassian.com/bitbucket-cloud/docs/api-request-limits/ ,
https://confluence.atlassian.com/bitbucketserver/improving-instance-stability-with-rate-limiting-976171954.html
"""

from __future__ import annotations

import base64
import mimetypes
import threading
import time
import urllib.parse

from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.git_http import basic_auth, challenge, serve_git
from tests.helpers.gitrepo import LocalGitRepo, TreeLine


def _segments(request: Request) -> list[str]:
    """The path's segments, each percent-decoded on its own (a ``%2F`` stays inside a segment)."""
    return [urllib.parse.unquote(s) for s in request.raw_path.split("/") if s]


def _object_type(repo: LocalGitRepo, commit: str, path: str) -> str | None:
    """``blob``, ``tree`` or None for `path` at `commit`."""
    try:
        return repo.run("cat-file", "-t", f"{commit}:{path}").decode().strip()
    except AssertionError:
        return None


def _commit_info(repo: LocalGitRepo, commit: str) -> tuple[str, str, int, list[str]]:
    """(author, message, author time in seconds, parents) of `commit`."""
    out = repo.run("show", "-s", "--format=%an <%ae>%x00%at%x00%P%x00%B", commit).decode()
    author, when, parents, message = out.split("\x00", 3)
    return author, message.strip(), int(when), parents.split()


def _entries(repo: LocalGitRepo, commit: str, path: str) -> list[TreeLine] | None:
    """The entries of directory `path` at `commit` (paths relative to it), or None."""
    return repo.ls_tree(f"{commit}:{path}")


class _RateLimiting(FakeServer):
    """The rate-limit switch and the repository table shared by both flavours."""

    #: the largest directory listing page the API answers (Cloud's `pagelen` is at most 100)
    MAX_PAGE = 100

    def __init__(self) -> None:
        super().__init__()
        self.max_page = self.MAX_PAGE
        self._lock = threading.Lock()
        self._limited = 0
        self._retry_after = 60
        self._limited_until = 0.0

    def rate_limit(self, requests: int = 1, retry_after: int = 60) -> None:
        """Answer the next `requests` requests with 429 and ``Retry-After: retry_after``, for at
        most `retry_after` seconds (then the window has passed, as on the real service)."""
        with self._lock:
            self._limited = requests
            self._retry_after = retry_after
            self._limited_until = time.time() + retry_after

    def _take_limit(self) -> int | None:
        with self._lock:
            if self._limited <= 0 or time.time() >= self._limited_until:
                return None
            self._limited -= 1
            return self._retry_after


# ---------------------------------------------------------------------- Bitbucket Cloud
def _cloud_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Cloud's error body: ``{"type": "error", "error": {"message": ...}}``
    (https://developer.atlassian.com/cloud/bitbucket/rest/intro/#standardized-error-responses)."""
    return Response.json({"type": "error", "error": {"message": message}}, status, headers)


class BitbucketCloudAPI(_RateLimiting):
    """Bitbucket Cloud's 2.0 API for the repositories added with :meth:`add_repo`.

    Credentials: `username` + `app_password` (basic auth) and/or `access_token` (Bearer).
    All repositories are private: anonymous requests are refused with 403."""

    def __init__(self, *, username: str | None = None, app_password: str | None = None,
                 access_token: str | None = None) -> None:
        super().__init__()
        self.username = username
        self.app_password = app_password
        self.access_token = access_token
        self.repos: dict[tuple[str, str], LocalGitRepo] = {}

    def add_repo(self, workspace: str, slug: str, repo: LocalGitRepo) -> None:
        self.repos[(workspace, slug)] = repo

    def _authorised(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if not header:
            # private repositories are not visible anonymously
            return _cloud_error(403, "Access denied. You must have read access to this repository.")
        if scheme == "Basic" and self.username and self.app_password:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except ValueError:
                user = password = ""
            if user == self.username and password == self.app_password:
                return None
        elif scheme == "Bearer" and self.access_token and value == self.access_token:
            return None
        return Response(401, b"", {"WWW-Authenticate": 'Basic realm="Bitbucket.org HTTP"'})

    def handle(self, request: Request) -> Response:
        retry_after = self._take_limit()
        if retry_after is not None:
            # https://support.atlassian.com/bitbucket-cloud/docs/api-request-limits/
            return _cloud_error(429, "Rate limit for this resource has been exceeded",
                                {"Retry-After": str(retry_after)})
        parts = _segments(request)
        if len(parts) >= 3 and parts[1].endswith(".git") and parts[:2] != ["2.0", "repositories"]:
            return self._git(request, parts[0], parts[1].removesuffix(".git"), "/" + "/".join(parts[2:]))
        if parts[:2] != ["2.0", "repositories"] or len(parts) < 4:
            return _cloud_error(404, "Resource not found")
        if request.method not in ("GET", "HEAD"):
            return _cloud_error(405, f"Method {request.method} not allowed")
        refused = self._authorised(request)
        if refused is not None:
            return refused
        workspace, slug, rest = parts[2], parts[3], parts[4:]
        repo = self.repos.get((workspace, slug))
        if repo is None:
            return _cloud_error(404, f"Repository {workspace}/{slug} not found")
        if not rest:
            return self._repository(workspace, slug, repo)
        if rest[0] == "commit" and len(rest) == 2:
            return self._commit(workspace, slug, repo, rest[1])
        if rest[0] == "src" and len(rest) >= 2:
            return self._src(workspace, slug, repo, rest[1], "/".join(rest[2:]), request)
        return _cloud_error(404, "Resource not found")

    def _git(self, request: Request, workspace: str, slug: str, rest: str) -> Response:
        # git over HTTPS: an app password with its user name, or an access token as the password
        # of x-token-auth (https://support.atlassian.com/bitbucket-cloud/docs/using-access-tokens/)
        credentials = basic_auth(request)
        accepted = {(self.username, self.app_password), ("x-token-auth", self.access_token)}
        if credentials is None or credentials not in accepted or None in credentials:
            return challenge("Bitbucket.org HTTP")
        repo = self.repos.get((workspace, slug))
        return serve_git(repo, request, rest) if repo is not None else Response(404, b"Repository not found\n")

    def _repository(self, workspace: str, slug: str, repo: LocalGitRepo) -> Response:
        # https://developer.atlassian.com/cloud/bitbucket/rest/api-group-repositories/#api-repositories-workspace-repo-slug-get
        # `mainbranch` is absent until the repository has a branch
        doc: dict[str, object] = {
            "type": "repository",
            "full_name": f"{workspace}/{slug}",
            "name": slug,
            "slug": slug,
            "scm": "git",
            "is_private": True,
            # the https clone link is this fake's (git's smart HTTP), as bitbucket.org serves it
            "links": {"html": {"href": f"https://bitbucket.org/{workspace}/{slug}"},
                      "clone": [{"name": "https", "href": f"{self.url}/{workspace}/{slug}.git"},
                                {"name": "ssh", "href": f"git@bitbucket.org:{workspace}/{slug}.git"}]},
        }
        branch = repo.default_branch()
        if branch in repo.branches():
            doc["mainbranch"] = {"type": "branch", "name": branch}
        return Response.json(doc)

    def _commit(self, workspace: str, slug: str, repo: LocalGitRepo, revision: str) -> Response:
        # https://developer.atlassian.com/cloud/bitbucket/rest/api-group-commits/#api-repositories-workspace-repo-slug-commit-commit-get
        # `commit` is a SHA1 (full or abbreviated); a branch or tag name resolves too
        commit = repo.resolve(revision) if revision and not revision.startswith("-") else None
        if commit is None:
            return _cloud_error(404, f"Commit not found: {revision}")
        author, message, _, parents = _commit_info(repo, commit)
        return Response.json({
            "type": "commit",
            "hash": commit,
            "message": message,
            "author": {"type": "author", "raw": author},
            "parents": [{"type": "commit", "hash": p} for p in parents],
            "repository": {"type": "repository", "full_name": f"{workspace}/{slug}"},
            "links": {"html": {"href": f"https://bitbucket.org/{workspace}/{slug}/commits/{commit}"}},
        })

    def _src(self, workspace: str, slug: str, repo: LocalGitRepo, revision: str, path: str,
             request: Request) -> Response:
        # https://developer.atlassian.com/cloud/bitbucket/rest/api-group-source/#api-repositories-workspace-repo-slug-src-commit-path-get
        # a file: its raw bytes; a directory: a paginated listing (JSON) of commit_directory and
        # commit_file objects named by their repository paths, files with `size` and `attributes`
        # ("link": a symlink, "executable", "subrepository": a submodule, "binary"); else 404
        commit = repo.resolve(revision) if revision and not revision.startswith("-") else None
        if commit is None:
            return _cloud_error(404, f"Commit not found: {revision}")
        path = path.strip("/")
        kind = _object_type(repo, commit, path) if path else "tree"
        if kind == "blob":
            data = repo.show(commit, path) or b""
            content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
            return Response(200, data, {"Content-Type": content_type})
        lines = _entries(repo, commit, path) if kind == "tree" else None
        if lines is None:
            return _cloud_error(404, f"No such file or directory: {path}")
        try:
            pagelen = min(self.max_page, max(1, int(request.arg("pagelen") or "10")))
            page = max(1, int(request.arg("page") or "1"))
        except ValueError:
            return _cloud_error(400, "pagelen and page must be numbers")
        values: list[dict[str, object]] = []
        for line in lines[(page - 1) * pagelen: page * pagelen]:
            full = f"{path}/{line.path}" if path else line.path
            links = {"self": {"href": f"{self.url}/2.0/repositories/{workspace}/{slug}/src/{commit}/{full}"}}
            entry: dict[str, object] = {"path": full, "commit": {"type": "commit", "hash": commit}, "links": links}
            if line.type == "tree":
                values.append({"type": "commit_directory", **entry})
                continue
            attributes = {"120000": ["link"], "100755": ["executable"], "160000": ["subrepository"]}.get(line.mode, [])
            if line.type == "blob" and line.mode != "120000" and b"\0" in repo.run("cat-file", "blob", line.id):
                attributes = [*attributes, "binary"]
            values.append({"type": "commit_file", **entry, "attributes": attributes, "escaped_path": full,
                           "size": line.size or 0, "mimetype": mimetypes.guess_type(full)[0]})
        doc: dict[str, object] = {"pagelen": pagelen, "page": page, "values": values}
        if page * pagelen < len(lines):
            query = urllib.parse.urlencode({"pagelen": pagelen, "page": page + 1})
            doc["next"] = f"{self.url}/2.0/repositories/{workspace}/{slug}/src/{commit}/{path}/?{query}"
        return Response.json(doc)


# ---------------------------------------------------------------------- Bitbucket Server / Data Center
def _server_error(status: int, message: str, exception: str | None = None,
                  headers: dict[str, str] | None = None) -> Response:
    """Data Center's error body: ``{"errors": [{"context", "message", "exceptionName"}]}``
    (https://developer.atlassian.com/server/bitbucket/rest/ , "Errors")."""
    return Response.json({"errors": [{"context": None, "message": message, "exceptionName": exception}]},
                         status, headers)


def _server_commit(repo: LocalGitRepo, commit: str) -> dict[str, object]:
    author, message, when, parents = _commit_info(repo, commit)
    name = author.split(" <", 1)[0]
    return {
        "id": commit,
        "displayId": commit[:11],
        "author": {"name": name, "emailAddress": author.partition("<")[2].rstrip(">")},
        "authorTimestamp": when * 1000,
        "message": message,
        "parents": [{"id": p, "displayId": p[:11]} for p in parents],
    }


class BitbucketServerAPI(_RateLimiting):
    """Bitbucket Server / Data Center's REST API 1.0 for the repositories added with
    :meth:`add_repo`. Credential: `token`, an HTTP access token sent as Bearer."""

    #: Data Center caps `limit` with its own page settings (a server's configuration); 1000 here
    MAX_PAGE = 1000

    def __init__(self, *, token: str) -> None:
        super().__init__()
        self.token = token
        self.repos: dict[tuple[str, str], LocalGitRepo] = {}

    def add_repo(self, project_key: str, slug: str, repo: LocalGitRepo) -> None:
        self.repos[(project_key, slug)] = repo

    def handle(self, request: Request) -> Response:
        retry_after = self._take_limit()
        if retry_after is not None:
            # Data Center's token-bucket rate limiting answers 429 with Retry-After
            return _server_error(429, "You have been rate limited. Try again later.", None, {
                "Retry-After": str(retry_after), "X-RateLimit-Limit": "60", "X-RateLimit-Interval-Seconds": "1",
                "X-RateLimit-FillRate": "5"})
        header = request.headers.get("authorization", "")
        parts = _segments(request)
        if parts[:1] == ["scm"] and len(parts) >= 4 and parts[2].endswith(".git"):
            # git over HTTPS with an HTTP access token as Bearer
            # (https://confluence.atlassian.com/bitbucketserver/http-access-tokens-939515499.html)
            if header != f"Bearer {self.token}":
                return challenge("Bitbucket")
            repo = self.repos.get((parts[1], parts[2].removesuffix(".git")))
            return serve_git(repo, request, "/" + "/".join(parts[3:])) if repo is not None \
                else Response(404, b"Repository not found\n")
        if header and header != f"Bearer {self.token}":
            return _server_error(401, "Authentication failed. Please check your credentials and try again.",
                                 "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException")
        if parts[:3] != ["rest", "api", "1.0"] or len(parts) < 5 or parts[3] != "projects" or (
                len(parts) >= 6 and parts[5] != "repos"):
            return _server_error(404, "No resource matches the request", None)
        if request.method not in ("GET", "HEAD"):
            return _server_error(405, f"Method {request.method} is not supported by this resource", None)
        if not header:
            # no repository is public: anonymous access is refused
            return _server_error(401, "You are not permitted to access this resource",
                                 "com.atlassian.bitbucket.AuthorisationException")
        key = parts[4]
        if key not in {k for k, _ in self.repos}:
            return _server_error(404, f"Project {key} does not exist.",
                                 "com.atlassian.bitbucket.project.NoSuchProjectException")
        if len(parts) < 7:
            return _server_error(404, "No resource matches the request", None)
        slug, rest = parts[6], parts[7:]
        repo = self.repos.get((key, slug))
        if repo is None:
            return _server_error(404, f"Repository {key}/{slug} does not exist.",
                                 "com.atlassian.bitbucket.repository.NoSuchRepositoryException")
        if not rest:
            # GET /rest/api/1.0/projects/{projectKey}/repos/{repositorySlug}
            return Response.json({"slug": slug, "name": slug, "scmId": "git", "state": "AVAILABLE",
                                  "project": {"key": key}, "public": False,
                                  "links": {"self": [{"href": f"https://bitbucket.example.com/projects/{key}"
                                                              f"/repos/{slug}/browse"}],
                                            # the http clone link is this fake's (git's smart HTTP)
                                            "clone": [{"name": "http", "href": f"{self.url}/scm/{key}/{slug}.git"},
                                                      {"name": "ssh",
                                                       "href": f"ssh://git@bitbucket.example.com:7999/{key}/{slug}.git"}]}})
        if rest == ["branches", "default"]:
            return self._default_branch(repo)
        if rest[0] == "commits" and len(rest) == 2:
            return self._commit(repo, slug, rest[1])
        if rest == ["commits"]:
            return self._commits(repo, slug, request)
        if rest[0] == "raw" and len(rest) >= 2:
            return self._raw(repo, slug, "/".join(rest[1:]), request.arg("at"))
        if rest[0] == "browse":
            return self._browse(repo, slug, "/".join(rest[1:]), request)
        return _server_error(404, "No resource matches the request", None)

    def _resolve(self, repo: LocalGitRepo, ref: str) -> str | None:
        """What Data Center accepts as a commit id: a (partial) id, a branch or tag name, or a
        fully qualified ref."""
        return repo.resolve(ref) if ref and not ref.startswith("-") else None

    def _default_branch(self, repo: LocalGitRepo) -> Response:
        # GET /rest/api/1.0/projects/{projectKey}/repos/{repositorySlug}/branches/default
        branch = repo.default_branch()
        commit = repo.branches().get(branch)
        if commit is None:
            return _server_error(404, "The repository does not have a default branch.",
                                 "com.atlassian.bitbucket.repository.NoSuchBranchException")
        return Response.json({"id": f"refs/heads/{branch}", "displayId": branch, "type": "BRANCH",
                              "latestCommit": commit, "latestChangeset": commit, "isDefault": True})

    def _no_commit(self, ref: str, slug: str) -> Response:
        return _server_error(404, f"Commit '{ref}' does not exist in repository '{slug}'.",
                             "com.atlassian.bitbucket.commit.NoSuchCommitException")

    def _commit(self, repo: LocalGitRepo, slug: str, ref: str) -> Response:
        # GET /rest/api/1.0/projects/{projectKey}/repos/{repositorySlug}/commits/{commitId}
        commit = self._resolve(repo, ref)
        if commit is None:
            return self._no_commit(ref, slug)
        return Response.json(_server_commit(repo, commit))

    def _commits(self, repo: LocalGitRepo, slug: str, request: Request) -> Response:
        # GET /rest/api/1.0/projects/{projectKey}/repos/{repositorySlug}/commits?until={ref}&limit=N
        # (paged; only `until` + `limit` are served: the storage asks for the newest commit of a ref)
        until = request.arg("until") or f"refs/heads/{repo.default_branch()}"
        try:
            limit = max(1, int(request.arg("limit") or "25"))
        except ValueError:
            return _server_error(400, "limit must be a number", None)
        commit = self._resolve(repo, until)
        if commit is None:
            return self._no_commit(until, slug)
        ids = repo.run("rev-list", f"--max-count={limit + 1}", commit).decode().split()
        values = [_server_commit(repo, c) for c in ids[:limit]]
        page: dict[str, object] = {"size": len(values), "limit": limit, "start": 0,
                                   "isLastPage": len(ids) <= limit, "values": values}
        if len(ids) > limit:
            page["nextPageStart"] = limit
        return Response.json(page)

    def _raw(self, repo: LocalGitRepo, slug: str, path: str, at: str | None) -> Response:
        # GET /rest/api/1.0/projects/{projectKey}/repos/{repositorySlug}/raw/{path}?at={commit}
        ref = at or f"refs/heads/{repo.default_branch()}"
        commit = self._resolve(repo, ref)
        if commit is None:
            return self._no_commit(ref, slug)
        if _object_type(repo, commit, path) != "blob":
            return _server_error(404, f'The path "{path}" does not exist at revision "{ref}"',
                                 "com.atlassian.bitbucket.content.NoSuchPathException")
        data = repo.show(commit, path) or b""
        return Response(200, data, {"Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream"})

    def _browse(self, repo: LocalGitRepo, slug: str, path: str, request: Request) -> Response:
        # GET /rest/api/1.0/projects/{projectKey}/repos/{repositorySlug}/browse/{path}?at={commit}
        # (https://developer.atlassian.com/server/bitbucket/rest/v906/api-group-repository/#api-api-latest-projects-projectkey-repos-repositoryslug-browse-path-get):
        # a directory answers its children as a page (start / limit); a file, a page of its lines.
        # Child types are FILE, DIRECTORY and SUBMODULE: a symlink is a FILE.
        ref = request.arg("at") or f"refs/heads/{repo.default_branch()}"
        commit = self._resolve(repo, ref)
        if commit is None:
            return self._no_commit(ref, slug)
        path = path.strip("/")
        try:
            start = max(0, int(request.arg("start") or "0"))
            limit = min(self.max_page, max(1, int(request.arg("limit") or "500")))
        except ValueError:
            return _server_error(400, "start and limit must be numbers", None)
        kind = _object_type(repo, commit, path) if path else "tree"
        if kind == "blob":
            lines = (repo.show(commit, path) or b"").decode(errors="replace").splitlines()
            page = lines[start:start + limit]
            doc: dict[str, object] = {"lines": [{"text": t} for t in page], "start": start, "size": len(page),
                                      "isLastPage": start + limit >= len(lines)}
            if start + limit < len(lines):
                doc["nextPageStart"] = start + limit
            return Response.json(doc)
        entries = _entries(repo, commit, path) if kind == "tree" else None
        if entries is None:
            return _server_error(404, f'The path "{path}" does not exist at revision "{ref}"',
                                 "com.atlassian.bitbucket.content.NoSuchPathException")
        values = []
        for line in entries[start:start + limit]:
            name = line.path
            node: dict[str, object] = {
                "path": {"components": [name], "parent": "", "name": name,
                         **({"extension": name.rsplit(".", 1)[1]} if "." in name else {}), "toString": name},
                "contentId": line.id,
                "type": {"tree": "DIRECTORY", "commit": "SUBMODULE"}.get(line.type, "FILE"),
            }
            if line.type == "blob":
                node["size"] = line.size or 0
            values.append(node)
        children: dict[str, object] = {"size": len(values), "limit": limit, "start": start, "values": values,
                                       "isLastPage": start + limit >= len(entries)}
        if start + limit < len(entries):
            children["nextPageStart"] = start + limit
        components = path.split("/") if path else []
        return Response.json({"path": {"components": components, "name": components[-1] if components else "",
                                       "toString": path}, "revision": ref, "children": children})
