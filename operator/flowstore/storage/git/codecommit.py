"""The seed's ``CodeCommit`` storage: flows read from an AWS CodeCommit repository, pinned to a
commit.

As in the seed the ref is spelled ``commit`` (a commit id, branch or tag; the repository's
default branch when unset). Reads go through the CodeCommit API with boto3 (the
``codecommit`` extra, imported only when a client is needed):

* ``GetRepository``  the default branch (``repositoryMetadata.defaultBranch``);
* ``GetBranch``      a branch name -> ``branch.commitId``;
* ``GetCommit``      a full commit id -> ``commit.commitId`` (that it exists);
* ``GetFolder``      ``/`` at any other commit specifier (a tag, ``refs/...``) -> ``commitId``;
* ``GetFile``        the file's bytes at a commit (``fileContent``); a folder is no file, so a
  file costs this one call whether read as a file or a path;
* for a folder only (:meth:`CodeCommit.read_path`): ``GetFolder`` per folder (subfolders, files
  with their ``fileMode``, symbolic links, submodules), ``GetFile`` per file and ``GetBlob`` per
  symbolic link (its target).

Credentials: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and optionally
``AWS_SESSION_TOKEN`` from the referenced Secret; without one, the SDK's default chain
(environment, profile, pod identity). Every SDK exception becomes an error of
:mod:`flowstore.storage.errors`; messages never contain credential values.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from flowstore.storage._aws import (
    ACCESS_KEY_ID,
    CREDENTIAL_OPTIONS,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    config_from_seed_client_options,
    identity_rejected,
    is_connection_error,
    is_credentials_error,
    is_plain,
    make_client,
    seed_client_options,
    web_identity_session,
)
from flowstore.storage.base import Shared
from flowstore.storage.errors import (
    AuthFailed,
    FileNotFound,
    InvalidConfig,
    RateLimited,
    RefNotFound,
    Rejected,
    RepositoryNotFound,
    StorageError,
    Unavailable,
)
from flowstore.storage.git.base import GitHosted, is_commit_id, normalize_path
from flowstore.storage.git.tree import DIRECTORY, FILE, SUBMODULE, SYMLINK, TreeEntry, read_tree
from flowstore.storage.git.verify import SignedRef
from flowstore.storage.identity import WorkloadIdentity

#: client defaults; ``client_options["config"]`` (a botocore Config or a dict) is merged over them
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"total_max_attempts": 3, "mode": "standard"},
}
#: seconds to wait after throttling when the answer carries no Retry-After (AWS sends none)
THROTTLE_RETRY_AFTER = 5.0
_THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException",
                               "RequestLimitExceeded"})
_AUTH_CODES = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "AccessDeniedException",
    "ExpiredTokenException", "InvalidClientTokenId", "MissingAuthenticationTokenException",
    "MissingAuthenticationToken", "IncompleteSignature", "NotAuthorized", "SignatureDoesNotMatch",
    "EncryptionKeyAccessDeniedException",
})
_REF_CODES = frozenset({"BranchDoesNotExistException", "InvalidBranchNameException", "CommitDoesNotExistException",
                        "CommitIdDoesNotExistException", "InvalidCommitException", "InvalidCommitIdException"})
_CONFIG_CODES = frozenset({"InvalidRepositoryNameException", "RepositoryNameRequiredException",
                           "InvalidPathException", "PathRequiredException", "EncryptionKeyDisabledException",
                           "EncryptionKeyNotFoundException"})
_TEMPORARY_CODES = frozenset({"ServiceUnavailable", "InternalFailure", "InternalError", "RequestTimeout",
                              "EncryptionKeyUnavailableException", "EncryptionIntegrityChecksFailedException"})



class CodeCommit(GitHosted):
    """Flows kept as ``.py`` files in an AWS CodeCommit repository.

    Args (the seed's):
        repo: the repository name.
        path: the default flow file in the repository.
        commit: commit id, branch or tag to read (the default branch when None).
        client_options: extra keyword arguments for ``session.client("codecommit", ...)``; a
            ``config`` entry (botocore ``Config`` or dict) is merged over the defaults
            (5 s connect / 30 s read timeouts, 3 attempts). Never credentials.
    Args (flowstore's):
        region: the repository's region; None uses the SDK's default.
        endpoint_url: another endpoint (a VPC endpoint, tests).
        credentials: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and optionally
            ``AWS_SESSION_TOKEN``; None uses the SDK's default credential chain.
        identity: act as a Kubernetes ServiceAccount instead (STS AssumeRoleWithWebIdentity for
            the role it names; :mod:`flowstore.storage.identity`), as S3 does.
        **kwargs: the base :class:`Storage` options.
    """

    type_name: ClassVar[str] = "CodeCommit"
    identity_cloud: ClassVar[str | None] = "aws"
    default_label: ClassVar[str | None] = "codecommit-flow-storage"
    ref_key: ClassVar[str] = "commit"

    def __init__(
        self,
        repo: str,
        path: str | None = None,
        commit: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        credentials: Mapping[str, str] | None = None,
        identity: WorkloadIdentity | None = None,
        **kwargs: Any,
    ) -> None:
        if commit is not None and not isinstance(commit, str):
            raise InvalidConfig("CodeCommit `commit` must be a string (a commit id, branch or tag; quote it in YAML)")
        super().__init__(path=path, ref=commit.strip() if commit else None, **kwargs)
        if not isinstance(repo, str) or not repo.strip():
            raise InvalidConfig("CodeCommit storage needs `repo` (spec.codecommit.repo, the repository name)")
        self.repo = repo.strip()
        if client_options is not None and not isinstance(client_options, Mapping):
            raise InvalidConfig("CodeCommit `clientOptions` must be a mapping of boto3 client keyword arguments")
        self.client_options = dict(client_options or {})
        smuggled = sorted(CREDENTIAL_OPTIONS & set(self.client_options))
        if smuggled:  # names only: never echo the values
            raise InvalidConfig(
                f"CodeCommit `clientOptions` must not hold credentials ({', '.join(smuggled)}): put them in the "
                f"referenced Secret as {ACCESS_KEY_ID} / {SECRET_ACCESS_KEY} / {SESSION_TOKEN}")
        self.region = region or None
        self.endpoint_url = endpoint_url or None
        self._credentials = dict(credentials) if credentials is not None else None
        if identity is not None and credentials is not None:
            raise InvalidConfig("CodeCommit storage takes credentials or a workload identity, not both")
        self.identity = identity
        if self._credentials is not None:
            missing = [k for k in (ACCESS_KEY_ID, SECRET_ACCESS_KEY) if not self._credentials.get(k)]
            if missing:
                raise InvalidConfig(
                    f"the CodeCommit credentials lack {', '.join(missing)}; add them to the referenced Secret")
        self._clients = Shared()  # one boto3 client for the storage and its per-pass forks

    def __repr__(self) -> str:  # never shows credentials
        return f"CodeCommit(repo={self.repo!r}, commit={self.ref!r}, region={self.region!r})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None,
                    identity: WorkloadIdentity | None = None) -> GitHosted:
        client_options = config.get("clientOptions") or {}
        if not isinstance(client_options, Mapping):
            raise InvalidConfig("CodeCommit `clientOptions` must be a mapping of boto3 client keyword arguments")
        storage = cls(
            repo=config.get("repo") or "",  # validated by __init__
            path=config.get("path"),
            commit=config.get("commit"),
            client_options=client_options,
            region=config.get("region"),
            endpoint_url=config.get("endpointURL"),
            credentials=credentials,
            identity=identity,
            **cls.common_kwargs(config),
        )
        return storage.finish_config(config)

    @classmethod
    def with_identity(cls, config: Mapping[str, Any], identity: WorkloadIdentity) -> GitHosted:
        return cls.from_config(config, identity=identity)

    @classmethod
    def uses_ambient_identity(cls, config: Mapping[str, Any]) -> bool:
        return True  # boto3's default chain, as for S3

    def _status_config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "repo": self.repo,
            "commit": self.ref,
            "region": self.region,
            "endpointURL": self.endpoint_url,
        }
        # plain data only (what a CRD can hold); a botocore Config object stays in this process
        options = {k: v for k, v in self.client_options.items() if is_plain(v)}
        if options:
            doc["clientOptions"] = options
        return {k: v for k, v in doc.items() if v is not None}

    def _seed_config(self) -> dict[str, Any]:
        """The seed's CodeCommit fields; the region and endpoint travel in ``client_options``
        (boto3's ``region_name`` and ``endpoint_url``), as the seed configures them."""
        return {"repo": self.repo, "path": self.seed_path(), "commit": self.seed_ref(),
                "client_options": seed_client_options(self.client_options, self.endpoint_url, self.region)}

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"repo": doc.get("repo"), "path": doc.get("path"), "commit": doc.get("commit"),
                **config_from_seed_client_options(doc.get("client_options"))}

    # ------------------------------------------------------------------ naming
    def _region_name(self) -> str:
        if self.region:
            return self.region
        try:
            region = self._client().meta.region_name
        except StorageError:
            region = None
        return str(region) if region else "us-east-1"

    def repo_name(self) -> str:
        return f"codecommit::{self._region_name()}://{self.repo}"

    def web_url(self, path: str, commit: str) -> str:
        region = self._region_name()
        return (f"https://{region}.console.aws.amazon.com/codesuite/codecommit/repositories/"
                f"{urllib.parse.quote(self.repo, safe='')}/browse/{urllib.parse.quote(commit, safe='')}/--/"
                f"{urllib.parse.quote(path, safe='/')}?region={region}")

    def _what(self) -> str:
        return f"CodeCommit repository {self.repo}"

    # ------------------------------------------------------------------ provider primitives
    def resolve_ref(self, ref: str | None = None) -> str:
        target = ref if ref is not None else self.ref
        if not target:
            meta = self._call("get_repository", f"read {self._what()}", repositoryName=self.repo)
            branch = (meta.get("repositoryMetadata") or {}).get("defaultBranch")
            if not branch:
                raise RefNotFound(f"{self._what()} has no default branch (is it empty?); push a commit or set "
                                  "spec.codecommit.commit")
            target = str(branch)
        what = f"{self._what()}: resolve {target!r}"
        unknown = (f"{target!r} is not a branch, tag or commit of {self._what()}; push it or fix "
                   "spec.codecommit.commit")
        if is_commit_id(target):
            doc = self._call("get_commit", what, unknown=unknown, repositoryName=self.repo, commitId=target)
            return _commit_id(doc.get("commit", {}).get("commitId"), what)
        branch_name = target.removeprefix("refs/heads/")
        if not target.startswith("refs/") or target.startswith("refs/heads/"):
            try:
                doc = self._call("get_branch", what, unknown=unknown, repositoryName=self.repo,
                                 branchName=branch_name)
                return _commit_id(doc.get("branch", {}).get("commitId"), what)
            except RefNotFound:
                pass  # perhaps a tag: GetFolder takes any commit specifier
        doc = self._call("get_folder", what, unknown=unknown, repositoryName=self.repo,
                         commitSpecifier=target, folderPath="/")
        return _commit_id(doc.get("commitId"), what)

    def signed_ref(self, ref: str | None, *, tag: str | None) -> SignedRef:
        """As :meth:`GitHosted.signed_ref`. CodeCommit's API gives no raw commits (GetCommit has no
        signature), so the objects are fetched over git's smart HTTP from the repository's
        ``cloneUrlHttp`` (https://docs.aws.amazon.com/codecommit/latest/APIReference/API_RepositoryMetadata.html)
        with the same AWS credentials, as the AWS CLI's credential helper presents them: the access
        key id (``%`` and the session token, if any) as the user name, and a SigV4 signature of the
        request as the password (https://docs.aws.amazon.com/codecommit/latest/userguide/setting-up-https-unixes.html)."""
        meta = self._call("get_repository", f"read {self._what()}", repositoryName=self.repo)
        clone = (meta.get("repositoryMetadata") or {}).get("cloneUrlHttp")
        region = self._region_name()
        api = self.endpoint_url or f"https://codecommit.{region}.amazonaws.com"
        username, password = self._git_credentials(str(clone or ""))
        return self.signed_ref_over_git(ref, tag=tag, clone_url=clone, api_url=api,
                                        other_hosts=[f"git-codecommit.{region}.amazonaws.com"],
                                        username=username, password=password)

    def _git_credentials(self, clone_url: str) -> tuple[str, str]:
        """(user name, password) for git over HTTPS to `clone_url`, from this storage's AWS
        credentials: the password is ``<timestamp>Z<SigV4 signature>`` of a ``GIT`` request for the
        URL's path and host, signed for the codecommit service in the storage's region."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        if self._credentials is not None:
            credentials: Any = Credentials(self._credentials[ACCESS_KEY_ID], self._credentials[SECRET_ACCESS_KEY],
                                           self._credentials.get(SESSION_TOKEN) or None)
        elif self.identity is not None:  # the role the ServiceAccount assumes, as the API client does
            credentials = web_identity_session(self.identity, self._region_name()).get_credentials()
        else:  # the SDK's default chain, as the API client uses
            import boto3.session

            credentials = boto3.session.Session().get_credentials()
        if credentials is None:
            raise AuthFailed(f"{self._what()}: no AWS credentials to fetch its commits with (to verify them)")
        frozen = credentials.get_frozen_credentials()
        parts = urllib.parse.urlsplit(clone_url)
        timestamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        request = AWSRequest(method="GIT", url=clone_url)
        request.context["timestamp"] = timestamp
        signer = SigV4Auth(frozen, "codecommit", self._region_name())
        canonical = f"GIT\n{parts.path}\n\nhost:{parts.hostname}\n\nhost\n"
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        username = frozen.access_key + (f"%{frozen.token}" if frozen.token else "")
        return username, f"{timestamp}Z{signature}"

    def read_file(self, path: str, commit: str) -> bytes:
        doc = self._call(
            "get_file", f"{self._what()}: read {path} at commit {commit}",
            unknown=f"commit {commit} is not in {self._what()}; was it rewritten? Fix spec.codecommit.commit",
            missing=(f"{path} is not in {self._what()} at commit {commit}: commit the file there, or fix the "
                     "storage's path / the flow's spec.source.path"),
            repositoryName=self.repo, commitSpecifier=commit, filePath=path)
        content = doc.get("fileContent")
        if not isinstance(content, bytes | bytearray):
            raise Unavailable(f"{self._what()}: GetFile for {path} at {commit} returned no content; will retry")
        return bytes(content)

    def read_path(self, path: str, commit: str, *,
                  keep: Callable[[str], bool] | None = None) -> bytes | dict[str, bytes]:
        path = normalize_path(path)
        try:
            return self.read_file(path, commit)  # a file: this one GetFile, as read_file
        except FileNotFound:
            pass  # a folder, or nothing: GetFile cannot tell
        return read_tree(path, commit, self._folder_entries(path, commit), lambda e: self._read_entry(e, commit),
                         keep=keep)

    def _folder_entries(self, root: str, commit: str) -> Iterator[TreeEntry]:
        """Everything under the folder `root` at `commit`, one GetFolder per folder (the API
        does not paginate it). Files are read by path with GetFile, symlinks by blob with GetBlob."""
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetFolder.html: subFolders,
        # files (fileMode NORMAL | EXECUTABLE | SYMLINK), symbolicLinks and subModules
        missing = (f"{root} is not in {self._what()} at commit {commit}: commit the file there, or fix the "
                   "storage's path / the flow's spec.source.path")
        unknown = f"commit {commit} is not in {self._what()}; was it rewritten? Fix spec.codecommit.commit"
        queue = deque([""])
        while queue:
            relative = queue.popleft()
            folder = f"{root}/{relative}" if relative else root
            doc = self._call("get_folder", f"{self._what()}: list {folder} at commit {commit}", unknown=unknown,
                             missing=missing, repositoryName=self.repo, commitSpecifier=commit, folderPath=folder)
            for key, default in (("subFolders", DIRECTORY), ("files", FILE), ("symbolicLinks", SYMLINK),
                                 ("subModules", SUBMODULE)):
                for item in doc.get(key) or []:
                    name = str(item.get("relativePath") or "").strip("/")
                    if not name:
                        continue
                    child = f"{relative}/{name}" if relative else name
                    kind = SYMLINK if item.get("fileMode") == "SYMLINK" else default
                    if kind == DIRECTORY:
                        queue.append(child)
                    handle = {FILE: f"{root}/{child}", SYMLINK: item.get("blobId"),
                              SUBMODULE: item.get("commitId")}.get(kind)
                    yield TreeEntry(child, kind, str(handle or ""))

    def _read_entry(self, entry: TreeEntry, commit: str) -> bytes:
        if entry.kind != SYMLINK:
            return self.read_file(entry.key, commit)
        # https://docs.aws.amazon.com/codecommit/latest/APIReference/API_GetBlob.html (a symlink's
        # blob holds its target; GetFile would not say which file it is)
        doc = self._call("get_blob", f"{self._what()}: read symlink {entry.key} at commit {commit}",
                         repositoryName=self.repo, blobId=entry.key)
        content = doc.get("content")
        if not isinstance(content, bytes | bytearray):
            raise Unavailable(f"{self._what()}: GetBlob for {entry.key} returned no content; will retry")
        return bytes(content)

    # ------------------------------------------------------------------ client
    def _client(self) -> Any:
        """The instance's boto3 client (created once; boto3 clients are thread-safe)."""
        return self._clients.get(self._make_client)

    @property
    def _client_instance(self) -> Any:
        return self._clients.value

    def _make_client(self) -> Any:
        return make_client(
            "codecommit", credentials=self._credentials, client_options=self.client_options,
            endpoint_url=self.endpoint_url, region=self.region, defaults=DEFAULT_CLIENT_CONFIG,
            extra="codecommit", label="CodeCommit", identity=self.identity,
            failure=lambda exc: (f"cannot create a CodeCommit client ({type(exc).__name__}: "
                                 f"{self._redact(str(exc))}); check spec.codecommit region, endpointURL and "
                                 "clientOptions"))

    def _call(self, operation: str, what: str, *, unknown: str | None = None, missing: str | None = None,
              **params: Any) -> dict[str, Any]:
        """Call one CodeCommit operation; `unknown` is the message for an unknown ref, `missing`
        for a missing file."""
        client = self._client()
        try:
            result: dict[str, Any] = getattr(client, operation)(**params)
        except Exception as exc:
            error = self._translate(exc, what, unknown=unknown, missing=missing)
            raise error from (None if isinstance(error, AuthFailed) else exc)
        return result

    # ------------------------------------------------------------------ errors
    def _endpoint(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        endpoint = getattr(getattr(self._client_instance, "meta", None), "endpoint_url", None)
        return str(endpoint) if endpoint else "the default AWS endpoint"

    def _redact(self, text: str) -> str:
        for value in (self._credentials or {}).values():
            if value and len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def _translate(self, exc: BaseException, what: str, *, unknown: str | None,
                   missing: str | None) -> StorageError:
        """Map one SDK exception to the project's taxonomy, with a message for a person."""
        if isinstance(exc, StorageError):
            return exc
        kind = type(exc).__name__
        if self.identity is not None and getattr(exc, "operation_name", None) == "AssumeRoleWithWebIdentity":
            error = getattr(exc, "response", {}).get("Error") or {}
            status = (getattr(exc, "response", {}).get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return identity_rejected(self.identity, error.get("Code"), str(error.get("Message") or ""), status)
        if is_credentials_error(exc):
            return AuthFailed(f"{what}: no usable AWS credentials were found ({kind}); reference a Secret with "
                              f"{ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}, or give the pod an AWS identity")
        if is_connection_error(exc):
            return Unavailable(f"{what}: CodeCommit at {self._endpoint()} is unreachable or timed out ({kind}); "
                               "will retry")
        if kind == "ParamValidationError":
            return InvalidConfig(f"{what}: the request was invalid: {self._redact(str(exc))}")
        response = getattr(exc, "response", None)
        if not isinstance(response, Mapping):
            return StorageError(f"{what}: {kind}: {self._redact(str(exc))}")
        code = str((response.get("Error") or {}).get("Code") or "")
        detail = self._redact(str((response.get("Error") or {}).get("Message") or ""))
        metadata = response.get("ResponseMetadata") or {}
        status = int(metadata.get("HTTPStatusCode") or 0)
        headers = {str(k).lower(): str(v) for k, v in (metadata.get("HTTPHeaders") or {}).items()}
        label = f"{code or status}: {detail}" if detail else (code or str(status))

        if code == "RepositoryDoesNotExistException":
            return RepositoryNotFound(
                f"{self._what()} does not exist in region {self._region_name()} ({code}); create it, or fix "
                "spec.codecommit.repo / region")
        if code in _THROTTLING_CODES or status == 429:
            retry_after = _retry_after(headers)
            return RateLimited(f"{what}: throttled by CodeCommit ({code or status}); retrying in "
                               f"{retry_after:.0f}s", retry_after=retry_after)
        if (code in _AUTH_CODES or status in (401, 403)) and self.identity is not None:
            return AuthFailed(f"{what}: CodeCommit at {self._endpoint()} denied access ({code or status}) to "
                              f"{self.identity.describe()}; allow that role codecommit:GetRepository, GetBranch, "
                              "GetCommit, GetFolder, GetFile and GetBlob on the repository in its IAM policy")
        if code in _AUTH_CODES or status in (401, 403):
            return AuthFailed(
                f"{what}: CodeCommit at {self._endpoint()} rejected the credentials or denied access "
                f"({code or status}); "
                f"check the keys in the referenced Secret ({ACCESS_KEY_ID}, {SECRET_ACCESS_KEY}, {SESSION_TOKEN}) "
                "and that their IAM policy allows codecommit:GetRepository, GetBranch, GetCommit, GetFolder, "
                "GetFile and (for symlinks in flow directories) GetBlob on the repository")
        if code in ("FileDoesNotExistException", "FolderDoesNotExistException"):
            return FileNotFound(missing or f"{what}: not found ({code})")
        if code in _REF_CODES:
            return RefNotFound(unknown or f"{what}: {label}")
        if code == "FileTooLargeException":
            return Rejected(f"{what}: the file is larger than CodeCommit's GetFile returns ({code}); keep flow "
                            "files small")
        if code in _CONFIG_CODES:
            return InvalidConfig(f"{what}: {label}; fix spec.codecommit")
        if code in _TEMPORARY_CODES or status >= 500:
            return Unavailable(f"{what}: CodeCommit answered a temporary failure ({label}); will retry")
        return Rejected(f"{what}: CodeCommit refused the request (HTTP {status}, {label})")


def _commit_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise RefNotFound(f"{what}: CodeCommit's answer names no commit")
    return value


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return max(1.0, float(headers["retry-after"]))
    except (KeyError, ValueError):
        return THROTTLE_RETRY_AFTER
