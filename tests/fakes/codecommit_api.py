"""A contract fake of the AWS CodeCommit API operations flowstore calls, serving real git
repositories: GetRepository, GetBranch, GetCommit, GetFolder, GetFile and GetBlob.

The protocol is AWS JSON 1.1 (what boto3 speaks to CodeCommit): ``POST /`` with
``X-Amz-Target: CodeCommit_20150413.<Operation>``, ``Content-Type: application/x-amz-json-1.1``
and a JSON body; errors are HTTP 400 (403 for authentication) with
``{"__type": "<Code>", "message": ...}``. Blobs (``fileContent``) travel base64-encoded.
https://docs.aws.amazon.com/codecommit/latest/APIReference/Welcome.html ,
https://smithy.io/2.0/aws/protocols/aws-json-1_1-protocol.html

Requests must be SigV4-signed (``Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/
<region>/codecommit/aws4_request, ...``). The fake does not verify the signature itself, but
refuses an access key id other than the configured one (``UnrecognizedClientException``), a
scope for another region or service, and a missing or wrong session token when one is
configured. ``throttle(n)`` answers the next `n` requests with ``ThrottlingException``.

``cloneUrlHttp`` is served by the fake too (git's smart HTTP, fetch only, for verified sources),
authenticated as git-codecommit.<region>.amazonaws.com authenticates: a SigV4-derived password,
checked with ``secret_access_key``.
https://docs.aws.amazon.com/codecommit/latest/APIReference/CommonErrors.html
"""

from __future__ import annotations

import base64
import datetime
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.git_http import basic_auth, challenge, serve_git
from tests.helpers.gitrepo import LocalGitRepo

TARGET_PREFIX = "CodeCommit_20150413."
CONTENT_TYPE = "application/x-amz-json-1.1"
#: GetFile refuses larger files (FileTooLargeException); the documented CodeCommit file limit
MAX_FILE_SIZE = 6 * 1024 * 1024
# API reference: repositoryName is 1-100 characters of [\w.-]
_REPO_NAME = re.compile(r"[\w.-]{1,100}")
_FULL_ID = re.compile(r"[0-9a-f]{40}")


class CodeCommitError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class CodeCommitAPI(FakeServer):
    """CodeCommit in `region` for the repositories added with :meth:`add_repo`, accepting
    requests signed with `access_key_id` (and `session_token`, when given)."""

    def __init__(self, *, access_key_id: str, region: str = "us-east-1", session_token: str | None = None,
                 secret_access_key: str | None = None) -> None:
        super().__init__()
        self.access_key_id = access_key_id
        #: checks the SigV4 passwords of git requests (without it, git over HTTPS is refused)
        self.secret_access_key = secret_access_key
        self.region = region
        self.session_token = session_token
        self.repos: dict[str, LocalGitRepo] = {}
        self._lock = threading.Lock()
        self._throttled = 0
        self._operations: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "GetRepository": self._get_repository,
            "GetBranch": self._get_branch,
            "GetCommit": self._get_commit,
            "GetFolder": self._get_folder,
            "GetFile": self._get_file,
            "GetBlob": self._get_blob,
        }

    def add_repo(self, name: str, repo: LocalGitRepo) -> None:
        self.repos[name] = repo

    def throttle(self, requests: int = 1) -> None:
        """Answer the next `requests` requests with ThrottlingException (HTTP 400)."""
        with self._lock:
            self._throttled = requests

    def operations(self) -> list[str]:
        """The operation of each logged request, in order."""
        return [r.headers.get("x-amz-target", "").removeprefix(TARGET_PREFIX) for r in self.log]

    # ------------------------------------------------------------------ protocol
    def handle(self, request: Request) -> Response:
        if request.path.startswith("/v1/repos/"):
            return self._git(request)
        try:
            return self._json(200, self._dispatch(request))
        except CodeCommitError as exc:
            return self._json(exc.status, {"__type": exc.code, "message": exc.message})

    @staticmethod
    def _json(status: int, doc: dict[str, Any]) -> Response:
        return Response(status, json.dumps(doc).encode(),
                        {"Content-Type": CONTENT_TYPE, "x-amzn-RequestId": str(uuid.uuid4())})

    def _dispatch(self, request: Request) -> dict[str, Any]:
        if request.method != "POST" or request.path != "/":
            raise CodeCommitError("UnknownOperationException", "Unknown operation", 404)
        self._authenticate(request)
        with self._lock:
            if self._throttled > 0:
                self._throttled -= 1
                raise CodeCommitError("ThrottlingException", "Rate exceeded")
        target = request.headers.get("x-amz-target", "")
        operation = self._operations.get(target.removeprefix(TARGET_PREFIX)) if target.startswith(
            TARGET_PREFIX) else None
        if operation is None:
            raise CodeCommitError("UnknownOperationException", f"Unknown operation {target!r}", 400)
        if request.headers.get("content-type", "").split(";")[0].strip() != CONTENT_TYPE:
            raise CodeCommitError("SerializationException", "Content-Type must be application/x-amz-json-1.1")
        try:
            params = request.json()
        except ValueError:
            raise CodeCommitError("SerializationException", "the body is not JSON") from None
        if not isinstance(params, dict):
            raise CodeCommitError("SerializationException", "the body is not a JSON object")
        return operation(params)

    def _authenticate(self, request: Request) -> None:
        # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
        header = request.headers.get("authorization", "")
        match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
                             r"SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})", header)
        if not match or "x-amz-date" not in request.headers:
            raise CodeCommitError("MissingAuthenticationTokenException", "Missing Authentication Token", 403)
        key_id, _, region, service, signed, _ = match.groups()
        if key_id != self.access_key_id:
            raise CodeCommitError("UnrecognizedClientException",
                                  "The security token included in the request is invalid.", 403)
        if service != "codecommit" or region != self.region:
            raise CodeCommitError("InvalidSignatureException",
                                  f"Credential should be scoped to a valid region and service; got {region}/"
                                  f"{service}, expected {self.region}/codecommit", 403)
        if "x-amz-target" not in signed.split(";"):
            raise CodeCommitError("InvalidSignatureException", "X-Amz-Target must be signed", 403)
        if self.session_token is not None and request.headers.get("x-amz-security-token") != self.session_token:
            raise CodeCommitError("UnrecognizedClientException",
                                  "The security token included in the request is invalid.", 403)

    def _git(self, request: Request) -> Response:
        """git over HTTPS at ``cloneUrlHttp``: the user name is the access key id (``%`` and the
        session token, if any), the password ``<timestamp>Z<signature>``, a SigV4 signature of a
        ``GIT`` request for the repository's path and host (what the AWS CLI's credential helper
        computes: https://docs.aws.amazon.com/codecommit/latest/userguide/setting-up-https-unixes.html),
        checked here with the secret key, and at most 15 minutes old."""
        name, _, rest = request.path.removeprefix("/v1/repos/").partition("/")
        credentials = basic_auth(request)
        if credentials is None or self.secret_access_key is None:
            return challenge("CodeCommit")
        user, password = credentials
        _, _, token = user.partition("%")
        timestamp, _, signature = password.partition("Z")
        expected_user = self.access_key_id + (f"%{self.session_token}" if self.session_token else "")
        try:
            age = time.time() - datetime.datetime.strptime(timestamp, "%Y%m%dT%H%M%S").replace(
                tzinfo=datetime.UTC).timestamp()
        except ValueError:
            return Response(403, b"malformed password\n")
        if user != expected_user or not 0 <= age + 60 <= 900 + 60 or not hmac.compare_digest(
                signature, self._git_signature(f"/v1/repos/{name}", timestamp, token or None)):
            return Response(403, b"The request signature we calculated does not match\n")
        repo = self.repos.get(name)
        return serve_git(repo, request, "/" + rest) if repo is not None else Response(404, b"Repository not found\n")

    def _git_signature(self, path: str, timestamp: str, token: str | None) -> str:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method="GIT", url=f"{self.url}{path}")
        request.context["timestamp"] = timestamp
        signer = SigV4Auth(Credentials(self.access_key_id, self.secret_access_key, token), "codecommit", self.region)
        canonical = f"GIT\n{path}\n\nhost:127.0.0.1\n\nhost\n"
        return str(signer.signature(signer.string_to_sign(request, canonical), request))

    # ------------------------------------------------------------------ helpers
    def _repo(self, params: dict[str, Any]) -> LocalGitRepo:
        name = params.get("repositoryName")
        if not name:
            raise CodeCommitError("RepositoryNameRequiredException", "Repository name is required")
        if not isinstance(name, str) or not _REPO_NAME.fullmatch(name):
            raise CodeCommitError("InvalidRepositoryNameException", f"{name!r} is not a valid repository name")
        repo = self.repos.get(name)
        if repo is None:
            raise CodeCommitError("RepositoryDoesNotExistException", f"{name} does not exist")
        return repo

    @staticmethod
    def _commit_specifier(repo: LocalGitRepo, spec: str | None) -> str:
        """GetFile / GetFolder's ``commitSpecifier``: a full commit id, a branch or tag name, or a
        fully qualified ref (``refs/heads/main``); the default branch's head when absent."""
        if spec is None:
            spec = f"refs/heads/{repo.default_branch()}"
        if not isinstance(spec, str) or not spec or spec.startswith("-"):
            raise CodeCommitError("InvalidCommitException", "The specified commit is not valid")
        if _FULL_ID.fullmatch(spec):
            commit = repo.resolve(spec)
        elif spec.startswith("refs/"):
            commit = repo.resolve(spec)
        else:
            commit = repo.resolve(f"refs/heads/{spec}") or repo.resolve(f"refs/tags/{spec}")
        if commit is None:
            raise CodeCommitError("CommitDoesNotExistException",
                                  f"Could not find the specified commit: {spec}")
        return commit

    @staticmethod
    def _path(params: dict[str, Any], key: str) -> str:
        path = params.get(key)
        if path is None:
            raise CodeCommitError("PathRequiredException", f"{key} is required")
        if not isinstance(path, str) or "\x00" in path or ".." in path.split("/"):
            raise CodeCommitError("InvalidPathException", f"{path!r} is not a valid path")
        return path.strip("/")

    @staticmethod
    def _object_type(repo: LocalGitRepo, commit: str, path: str) -> str | None:
        try:
            return repo.run("cat-file", "-t", f"{commit}:{path}").decode().strip()
        except AssertionError:
            return None

    # ------------------------------------------------------------------ operations
    def _get_repository(self, params: dict[str, Any]) -> dict[str, Any]:
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetRepository.html
        repo = self._repo(params)
        name = params["repositoryName"]
        meta: dict[str, Any] = {
            "accountId": "111122223333",
            "repositoryId": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
            "repositoryName": name,
            # served by this fake (git's smart HTTP), as git-codecommit.<region>.amazonaws.com serves it
            "cloneUrlHttp": f"{self.url}/v1/repos/{name}",
            "Arn": f"arn:aws:codecommit:{self.region}:111122223333:{name}",
        }
        branch = repo.default_branch()
        if branch in repo.branches():  # an empty repository has no default branch yet
            meta["defaultBranch"] = branch
        return {"repositoryMetadata": meta}

    def _get_branch(self, params: dict[str, Any]) -> dict[str, Any]:
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetBranch.html
        repo = self._repo(params)
        name = params.get("branchName")
        if not name:
            raise CodeCommitError("BranchNameRequiredException", "Branch name is required")
        if not isinstance(name, str) or name.startswith(("-", "/")) or ".." in name or name.endswith("/"):
            raise CodeCommitError("InvalidBranchNameException", f"{name!r} is not a valid branch name")
        commit = repo.branches().get(name)
        if commit is None:
            raise CodeCommitError("BranchDoesNotExistException", f"Could not find branch {name}")
        return {"branch": {"branchName": name, "commitId": commit}}

    def _get_commit(self, params: dict[str, Any]) -> dict[str, Any]:
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetCommit.html
        repo = self._repo(params)
        commit_id = params.get("commitId")
        if not commit_id:
            raise CodeCommitError("CommitIdRequiredException", "A commit ID is required")
        if not isinstance(commit_id, str) or not _FULL_ID.fullmatch(commit_id):
            raise CodeCommitError("InvalidCommitIdException", f"{commit_id!r} is not a valid full commit ID")
        if repo.resolve(commit_id) != commit_id:
            raise CodeCommitError("CommitIdDoesNotExistException", f"Could not find commit {commit_id}")
        out = repo.run("show", "-s", "--format=%T%x00%P%x00%an%x00%ae%x00%B", commit_id).decode()
        tree, parents, name, email, message = out.split("\x00", 4)
        person = {"name": name, "email": email}
        return {"commit": {"commitId": commit_id, "treeId": tree, "parents": parents.split(),
                           "message": message, "author": person, "committer": person, "additionalData": ""}}

    def _get_folder(self, params: dict[str, Any]) -> dict[str, Any]:
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetFolder.html
        repo = self._repo(params)
        path = self._path(params, "folderPath")
        commit = self._commit_specifier(repo, params.get("commitSpecifier"))
        if path and self._object_type(repo, commit, path) != "tree":
            raise CodeCommitError("FolderDoesNotExistException", f"Could not find folder /{path}")
        tree = repo.run("rev-parse", f"{commit}:{path}").decode().strip()
        folders, files, links, submodules = [], [], [], []
        for line in repo.ls_tree(tree) or []:
            entry = {"absolutePath": f"{path}/{line.path}".lstrip("/"), "relativePath": line.path}
            if line.type == "tree":
                folders.append({"treeId": line.id, **entry})
            elif line.type == "commit":
                submodules.append({"commitId": line.id, **entry})
            elif line.mode == "120000":
                links.append({"blobId": line.id, **entry, "fileMode": "SYMLINK"})
            else:
                mode = "EXECUTABLE" if line.mode == "100755" else "NORMAL"
                files.append({"blobId": line.id, **entry, "fileMode": mode})
        return {"commitId": commit, "folderPath": f"/{path}", "treeId": tree, "subFolders": folders,
                "files": files, "symbolicLinks": links, "subModules": submodules}

    def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetFile.html
        repo = self._repo(params)
        path = self._path(params, "filePath")
        commit = self._commit_specifier(repo, params.get("commitSpecifier"))
        if not path or self._object_type(repo, commit, path) != "blob":
            raise CodeCommitError("FileDoesNotExistException",
                                  f"The specified file does not exist: /{path} at commit {commit}")
        data = repo.show(commit, path) or b""
        if len(data) > MAX_FILE_SIZE:
            raise CodeCommitError("FileTooLargeException", "The specified file exceeds the file size limit")
        return {"commitId": commit, "blobId": repo.blob_id(commit, path), "filePath": path, "fileMode": "NORMAL",
                "fileSize": len(data), "fileContent": base64.b64encode(data).decode()}

    def _get_blob(self, params: dict[str, Any]) -> dict[str, Any]:
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetBlob.html
        repo = self._repo(params)
        blob_id = params.get("blobId")
        if not blob_id:
            raise CodeCommitError("BlobIdRequiredException", "A blob ID is required")
        if not isinstance(blob_id, str) or not _FULL_ID.fullmatch(blob_id):
            raise CodeCommitError("InvalidBlobIdException", f"{blob_id!r} is not a valid blob ID")
        if repo.object_type(blob_id) != "blob":
            raise CodeCommitError("BlobIdDoesNotExistException", f"Could not find blob {blob_id}")
        data = repo.run("cat-file", "blob", blob_id)
        if len(data) > MAX_FILE_SIZE:
            raise CodeCommitError("FileTooLargeException", "The specified blob exceeds the size limit")
        return {"content": base64.b64encode(data).decode()}
