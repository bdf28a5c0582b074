"""A contract fake of the GitLab REST v4 endpoints flowstore calls (a project, a commit, a raw
file, and for directories the repository tree and raw blobs) and git's smart HTTP at each
project's ``http_url_to_repo`` (fetch only, for verified sources), serving real git repositories
(:class:`tests.gitrepo.LocalGitRepo`) as projects, by numeric id or by ``namespace/project``
path. The API base is ``fake.url + "/api/v4"``.

What it holds to, from the GitLab docs (https://docs.gitlab.com/ee/api/rest/):

* routing: ``:id`` is a number or the URL-encoded path (``group%2Fflows``) and ``:file_path`` /
  ``:sha`` are single segments, so an unencoded ``/`` there is another route, which does not
  exist: 404 ``{"error": "404 Not Found"}``
  (https://docs.gitlab.com/ee/api/rest/#namespaced-paths, https://docs.gitlab.com/ee/api/rest/#file-path-branches-and-tags-name-encoding);
* auth: ``PRIVATE-TOKEN`` (or ``Authorization: Bearer``); a wrong token is 401
  ``{"message": "401 Unauthorized"}``; without one a private project does not exist (404
  ``404 Project Not Found``) (https://docs.gitlab.com/ee/api/rest/authentication.html);
* errors: ``{"message": "404 Project Not Found"}``, ``404 Commit Not Found``, ``404 File Not
  Found``, ``404 Tree Not Found``, ``404 Blob Not Found``, ``403 Forbidden``;
* offset pagination (the tree listing): ``page`` and ``per_page`` (default 20, at most 100),
  answered with ``X-Page``, ``X-Per-Page``, ``X-Next-Page`` / ``X-Prev-Page`` (empty at the ends),
  ``X-Total``, ``X-Total-Pages`` and a ``Link`` header
  (https://docs.gitlab.com/ee/api/rest/#offset-based-pagination);
* rate limits: answers carry ``RateLimit-Limit/-Observed/-Remaining/-Reset/-ResetTime``;
  :meth:`GitLabAPI.rate_limit` makes the next requests answer 429 ``Retry later`` with
  ``RateLimit-Reset`` (epoch seconds) and ``Retry-After``
  (https://docs.gitlab.com/ee/user/gitlab_com/index.html#gitlabcom-specific-rate-limits,
  https://docs.gitlab.com/ee/administration/settings/user_and_ip_rate_limits.html#response-headers).
"""

from __future__ import annotations

import dataclasses
import email.utils
import threading
import time
import urllib.parse

from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.git_http import basic_auth, challenge, serve_git
from tests.helpers.gitrepo import LocalGitRepo

#: gitlab.com's authenticated API limit per minute
RATE_LIMIT = 2000
#: offset pagination: `per_page` when none is given, and the most it may be
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


@dataclasses.dataclass
class _Project:
    id: int
    path_with_namespace: str
    git: LocalGitRepo
    private: bool
    #: repository endpoints answer 403 (a member without repository access, e.g. Guest)
    denied: bool = False


@dataclasses.dataclass
class _Throttle:
    remaining: int
    reset_at: int
    retry_after: int


class GitLabAPI(FakeServer):
    """``GitLabAPI(token=...)``; :meth:`add_project` serves a LocalGitRepo as a project."""

    def __init__(self, token: str | None = None, web_url: str = "https://gitlab.example.com") -> None:
        super().__init__()
        self.token = token
        self.web_url = web_url
        self._projects: dict[int, _Project] = {}
        self._lock = threading.Lock()
        self._throttles: list[_Throttle] = []
        self._observed = 0
        #: the largest page the tree listing answers (lower it to test pagination)
        self.max_per_page = MAX_PER_PAGE

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v4"

    # ------------------------------------------------------------------ test controls
    def add_project(
        self, path_with_namespace: str, repo: LocalGitRepo, *, private: bool = True, project_id: int | None = None
    ) -> int:
        """Serve `repo` as `path_with_namespace`; returns its numeric id."""
        pid = project_id if project_id is not None else 1000 + len(self._projects)
        self._projects[pid] = _Project(pid, path_with_namespace, repo, private)
        return pid

    def deny(self, path_with_namespace: str) -> None:
        """The project is visible but its repository endpoints answer 403 Forbidden."""
        project = self._find(path_with_namespace)
        assert project is not None
        project.denied = True

    def rate_limit(self, next_n_requests: int, reset_in_seconds: int) -> int:
        """The next `next_n_requests` requests are throttled: 429 with ``RateLimit-Reset``
        `reset_in_seconds` from now and ``Retry-After``. Returns the reset (epoch seconds)."""
        reset_at = int(time.time()) + reset_in_seconds
        with self._lock:
            self._throttles.append(_Throttle(next_n_requests, reset_at, reset_in_seconds))
        return reset_at

    # ------------------------------------------------------------------ dispatch
    def handle(self, request: Request) -> Response:
        with self._lock:
            self._observed += 1
            # a limit ends at its reset time, as GitLab's window does
            throttle = next((t for t in self._throttles if t.remaining > 0 and t.reset_at > time.time()), None)
            if throttle is not None:
                throttle.remaining -= 1
        if throttle is not None:
            return self._throttled(throttle)
        if ".git/" in request.path and not request.path.startswith("/api/"):
            return self._git(request)
        authenticated, failure = self._authenticate(request)
        if failure is not None:
            return self._finish(failure)
        return self._finish(self._route(request, authenticated))

    def _authenticate(self, request: Request) -> tuple[bool, Response | None]:
        token = request.headers.get("private-token")
        bearer = request.headers.get("authorization")
        if token is None and bearer is not None:
            scheme, _, token = bearer.partition(" ")
            if scheme.lower() != "bearer":
                return False, _message(401, "401 Unauthorized")
        if token is None:
            return False, None
        if token != self.token:
            return False, _message(401, "401 Unauthorized")
        return True, None

    def _route(self, request: Request, authenticated: bool) -> Response:
        # Matched on the path as sent: every parameter is one segment ("/" must be %2F)
        parts = request.raw_path.split("/")
        if request.method != "GET" or parts[:4] != ["", "api", "v4", "projects"] or len(parts) < 5 or not parts[4]:
            return _not_found_route()
        project = self._find(urllib.parse.unquote(parts[4]))
        rest = parts[5:]
        known = (
            not rest
            or (len(rest) == 3 and rest[:2] == ["repository", "commits"] and rest[2])
            or (len(rest) == 4 and rest[:2] == ["repository", "files"] and rest[2] and rest[3] == "raw")
            or rest == ["repository", "tree"]
            or (len(rest) == 4 and rest[:2] == ["repository", "blobs"] and rest[2] and rest[3] == "raw")
        )
        if not known:
            return _not_found_route()
        if project is None or (project.private and not authenticated):
            return _message(404, "404 Project Not Found")
        if not rest:
            return self._get_project(project)
        if project.denied:
            return _message(403, "403 Forbidden")
        if rest[1] == "commits":
            return self._get_commit(project, urllib.parse.unquote(rest[2]))
        if rest[1] == "tree":
            return self._list_tree(project, request)
        if rest[1] == "blobs":
            return self._get_raw_blob(project, urllib.parse.unquote(rest[2]))
        return self._get_raw_file(project, urllib.parse.unquote(rest[2]), request)

    def _git(self, request: Request) -> Response:
        # git over HTTPS at the project's http_url_to_repo: a token is the password, any user name
        # (oauth2 by convention) (https://docs.gitlab.com/ee/api/oauth2.html#access-git-over-https-with-access-token,
        # https://docs.gitlab.com/ee/user/profile/personal_access_tokens.html: scope read_repository)
        path, _, rest = request.path.lstrip("/").partition(".git")
        project = self._find(path)
        credentials = basic_auth(request)
        if credentials is not None and (self.token is None or credentials[1] != self.token):
            return challenge("GitLab")
        if project is None or (project.private and credentials is None):
            return challenge("GitLab") if credentials is None else Response(404, b"Not Found\n")
        return serve_git(project.git, request, rest)

    def _find(self, id_or_path: str) -> _Project | None:
        if id_or_path.isdigit():
            return self._projects.get(int(id_or_path))
        wanted = id_or_path.lower()
        return next((p for p in self._projects.values() if p.path_with_namespace.lower() == wanted), None)

    # ------------------------------------------------------------------ endpoints
    def _get_project(self, project: _Project) -> Response:
        # https://docs.gitlab.com/ee/api/projects.html#get-a-single-project
        empty = not project.git.branches()
        namespace, _, path = project.path_with_namespace.rpartition("/")
        return Response.json(
            {
                "id": project.id,
                "name": path,
                "path": path,
                "path_with_namespace": project.path_with_namespace,
                "namespace": {"full_path": namespace},
                "default_branch": None if empty else project.git.default_branch(),
                "visibility": "private" if project.private else "public",
                "empty_repo": empty,
                "web_url": f"{self.web_url}/{project.path_with_namespace}",
                # served by this fake too (git's smart HTTP), as GitLab serves it beside the API
                "http_url_to_repo": f"{self.url}/{project.path_with_namespace}.git",
            }
        )

    def _get_commit(self, project: _Project, sha: str) -> Response:
        # https://docs.gitlab.com/ee/api/commits.html#get-a-single-commit (sha: a commit sha,
        # branch or tag name)
        commit = _resolve(project.git, sha)
        if commit is None:
            return _message(404, "404 Commit Not Found")
        title = project.git.run("log", "-1", "--format=%s", commit).decode().strip()
        parents = project.git.run("log", "-1", "--format=%P", commit).decode().split()
        return Response.json(
            {
                "id": commit,
                "short_id": commit[:8],
                "title": title,
                "message": title + "\n",
                "author_name": "flowstore tests",
                "parent_ids": parents,
                "web_url": f"{self.web_url}/{project.path_with_namespace}/-/commit/{commit}",
            }
        )

    def _get_raw_file(self, project: _Project, file_path: str, request: Request) -> Response:
        # https://docs.gitlab.com/ee/api/repository_files.html#get-raw-file-from-repository (ref
        # defaults to the project's HEAD)
        ref = request.arg("ref") or (project.git.default_branch() if project.git.branches() else "")
        commit = _resolve(project.git, ref)
        if commit is None:
            return _message(404, "404 Commit Not Found")
        data = project.git.show(commit, file_path)
        if data is None or project.git.blob_id(commit, file_path) is None:
            return _message(404, "404 File Not Found")
        return Response(
            200,
            data,
            {
                "Content-Type": "text/plain; charset=utf-8",
                "X-Gitlab-Blob-Id": project.git.blob_id(commit, file_path) or "",
                "X-Gitlab-Commit-Id": commit,
            },
        )

    def _list_tree(self, project: _Project, request: Request) -> Response:
        # https://docs.gitlab.com/ee/api/repositories.html#list-repository-tree: `ref` (default: the
        # default branch), `path`, `recursive`; entries {id, name, type, path, mode}, paginated
        ref = request.arg("ref") or (project.git.default_branch() if project.git.branches() else "")
        commit = _resolve(project.git, ref)
        if commit is None:
            return _message(404, "404 Tree Not Found")
        path = (request.arg("path") or "").strip("/")
        recursive = (request.arg("recursive") or "false").lower() in ("true", "1")
        lines = project.git.ls_tree(f"{commit}:{path}", recursive=recursive)
        if lines is None:
            return _message(404, "404 Tree Not Found")
        try:
            page = max(1, int(request.arg("page") or "1"))
            per_page = min(self.max_per_page, max(1, int(request.arg("per_page") or DEFAULT_PER_PAGE)))
        except ValueError:
            return Response.json({"error": "page is invalid"}, status=400)
        entries = [
            {
                "id": line.id,
                "name": line.path.rsplit("/", 1)[-1],
                "type": line.type,
                "path": f"{path}/{line.path}" if path else line.path,
                "mode": line.mode,
            }
            for line in lines
        ]
        pages = max(1, -(-len(entries) // per_page))
        response = Response.json(entries[(page - 1) * per_page: page * per_page])
        query = {k: v[0] for k, v in request.query.items()}
        base = f"{self.api_url}{request.raw_path.removeprefix('/api/v4')}"
        links = [f'<{base}?{urllib.parse.urlencode({**query, "page": str(number), "per_page": str(per_page)})}>; '
                 f'rel="{rel}"'
                 for rel, number, present in (("prev", page - 1, page > 1), ("next", page + 1, page < pages),
                                              ("first", 1, True), ("last", pages, True)) if present]
        response.headers.update({
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "X-Total": str(len(entries)),
            "X-Total-Pages": str(pages),
            "Link": ", ".join(links),
        })
        return response

    def _get_raw_blob(self, project: _Project, sha: str) -> Response:
        # https://docs.gitlab.com/ee/api/repositories.html#raw-blob-content
        if not sha or sha.startswith("-") or project.git.object_type(sha) != "blob":
            return _message(404, "404 Blob Not Found")
        return Response(200, project.git.run("cat-file", "blob", sha), {"Content-Type": "application/octet-stream"})

    # ------------------------------------------------------------------ responses
    def _throttled(self, throttle: _Throttle) -> Response:
        return Response(
            429,
            b"Retry later\n",
            {
                "Content-Type": "text/plain",
                "RateLimit-Name": "throttle_authenticated_api",
                "RateLimit-Limit": str(RATE_LIMIT),
                "RateLimit-Observed": str(RATE_LIMIT + 1),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(throttle.reset_at),
                "RateLimit-ResetTime": email.utils.formatdate(throttle.reset_at, usegmt=True),
                "Retry-After": str(throttle.retry_after),
            },
        )

    def _finish(self, response: Response) -> Response:
        with self._lock:
            observed = min(self._observed, RATE_LIMIT)
        reset = (int(time.time()) // 60 + 1) * 60
        response.headers.update(
            {
                "RateLimit-Limit": str(RATE_LIMIT),
                "RateLimit-Observed": str(observed),
                "RateLimit-Remaining": str(RATE_LIMIT - observed),
                "RateLimit-Reset": str(reset),
                "RateLimit-ResetTime": email.utils.formatdate(reset, usegmt=True),
            }
        )
        return response


def _message(status: int, message: str) -> Response:
    return Response.json({"message": message}, status=status)


def _not_found_route() -> Response:
    """What GitLab answers for a path no API route matches."""
    return Response.json({"error": "404 Not Found"}, status=404)


def _resolve(git: LocalGitRepo, ref: str) -> str | None:
    if not ref or ref.startswith("-") or ".." in ref:
        return None
    return git.resolve(ref)
