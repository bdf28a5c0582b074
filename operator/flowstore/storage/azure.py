"""The seed's ``Azure`` storage: flows as block blobs in an Azure Blob Storage container.

A location is the blob name. Each blob records its sha256 as blob metadata (``sha256``) so
:meth:`Azure.stat` can tell whether a stored flow changed without downloading it.
azure-storage-blob (and azure-identity, for account-URL authentication) are an optional extra
and are imported only when a client is needed. Every SDK exception is translated into
:mod:`flowstore.storage.errors`; messages never contain the account key or a SAS token.

Authentication, in order:

* a connection string: the ``connection_string`` argument, or (operator) the
  ``credentialsKey`` entry of the referenced Secret;
* an account URL with a Kubernetes ServiceAccount's workload identity (``identity``: the token
  as a client assertion, azure-identity's ``ClientAssertionCredential``; the operator's
  ``spec.serviceAccountName``);
* an account URL (``account_url`` / ``accountURL``) with azure-identity's
  ``DefaultAzureCredential`` (workload identity, managed identity, environment, …);
* like the seed, the ``AZURE_STORAGE_CONNECTION_STRING`` environment variable, when the class is
  used directly or rebuilt by an agent (from ``status.storage`` or the seed's schema). The
  operator never uses its own environment: :meth:`Azure.from_config` on a FlowStorage spec needs
  a Secret or an ``accountURL``.

As in the seed, credentials are needed to upload or download, not to construct or serialize:
``Azure(container="c")`` with none in reach works until a client is needed, which then raises
InvalidConfig saying what to provide.

:meth:`to_status` records the account's blob endpoint as ``accountURL`` (derived from the
connection string when not given explicitly; never the key), so an agent knows where to look.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowstore.api.backends import install_hint
from flowstore.storage._objectstore import Failure, ObjectStore, Reading, widen_pools
from flowstore.storage.base import ObjectInfo
from flowstore.storage.errors import (
    AuthFailed,
    IdentityRejected,
    InvalidConfig,
    MissingDependency,
    StorageError,
    redact,
)
from flowstore.storage.identity import WorkloadIdentity

#: the environment variable the seed (and Azure tooling) reads the connection string from
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
#: the key of the referenced Secret holding the connection string, unless `credentialsKey` says otherwise
DEFAULT_CREDENTIALS_KEY = CONNECTION_STRING_ENV
#: blobs larger than this are uploaded in blocks (committed atomically by the SDK)
MAX_SINGLE_PUT_SIZE = 8 * 1024 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024
#: short timeouts and few, quick retries: an unreachable endpoint fails within ~10 s
CONNECTION_TIMEOUT = 5
READ_TIMEOUT = 60
RETRY_TOTAL = 2
RETRY_BACKOFF = 1  # seconds between attempts (linear; the SDK's default starts at 15 s)
RETRY_JITTER = 1

_AUTH_CODES = frozenset({
    "AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
    "AuthorizationSourceIPMismatch", "AuthorizationProtocolMismatch", "AuthorizationServiceMismatch",
    "AuthorizationResourceTypeMismatch", "InsufficientAccountPermissions", "InvalidAuthenticationInfo",
    "KeyBasedAuthenticationNotPermitted", "NoAuthenticationInformation",
})
_RETRYABLE_CODES = frozenset({"ServerBusy", "InternalError", "OperationTimedOut"})
_CONFIG_CODES = frozenset({
    "InvalidResourceName", "InvalidUri", "OutOfRangeInput", "InvalidQueryParameterValue",
    "AccountIsDisabled", "UnsupportedHeader",
})
# connection-string fields that are secret: never serialized, logged or echoed
_SECRET_FIELDS = frozenset({"accountkey", "sharedaccesssignature"})


class Azure(ObjectStore):
    """Flows stored as blobs in an Azure Blob Storage container.

    Args:
        container: the container holding the flows (must exist).
        connection_string: the storage account's connection string. When neither it nor
            `account_url` is given, ``AZURE_STORAGE_CONNECTION_STRING`` from the environment is
            used (the seed's behaviour).
        blob_name: a fixed blob name for the flow; like the seed's, only useful for a single flow.
        stored_as_script: flows are kept as ``.py`` source rather than pickled.
        account_url: the account's blob endpoint (``https://<account>.blob.core.windows.net``),
            authenticated with azure-identity's ``DefaultAzureCredential``. Not together with
            `connection_string`.
        use_environment: fall back to ``AZURE_STORAGE_CONNECTION_STRING`` (default True; the
            operator passes False so it never uses its own environment).
        credentials_source: where the connection string came from, for error messages
            (e.g. ``key X of the referenced Secret``).
        identity: with `account_url`, act as a Kubernetes ServiceAccount (Azure workload
            identity: its token is the client assertion of the identity's client and tenant).
        **kwargs: ``key_prefix`` and the base :class:`Storage` options (:class:`ObjectStore`).
    """

    type_name = "Azure"
    default_label = "azure-flow-storage"
    identity_cloud = "azure"
    container_field = "container"
    container_noun = "blob container"
    status_fields = {"container": "container", "blobName": "blob_name", "keyPrefix": "key_prefix",
                     "accountURL": "_endpoint"}  # where to look; never the key or a SAS
    container: str

    def __init__(
        self,
        container: str,
        connection_string: str | None = None,
        blob_name: str | None = None,
        stored_as_script: bool = False,
        account_url: str | None = None,
        *,
        use_environment: bool = True,
        credentials_source: str | None = None,
        identity: WorkloadIdentity | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(container, stored_as_script=stored_as_script, identity=identity, **kwargs)
        if connection_string is not None and account_url is not None:
            raise InvalidConfig(
                "Azure storage: give either a connection string or an account URL, not both "
                "(the connection string already names the account)"
            )
        if identity is not None and (connection_string is not None or not account_url):
            raise InvalidConfig("Azure storage with a workload identity (spec.serviceAccountName) needs accountURL "
                                "(the account's blob endpoint) and no connection string")
        self.blob_name = blob_name
        self.account_url = account_url.rstrip("/") if account_url else None
        self._credentials_source = credentials_source or "the connection string"
        self._use_environment = use_environment
        self._connection_string = connection_string
        #: the account's blob endpoint (non-secret): explicit, or derived from the connection string
        self._endpoint = self.account_url or (_endpoint_of(connection_string) if connection_string else None)
        # Credentials are needed to upload or download, not to describe the storage: like the
        # seed, the environment is read now if it has the connection string, and again when a
        # client is first needed; only then does their absence fail.
        self._connection_string_from_environment()

    def __repr__(self) -> str:  # never shows the connection string
        return (f"Azure(container={self.container!r}, key_prefix={self.key_prefix!r}, "
                f"account_url={self._endpoint!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        credentials: Mapping[str, str] | None = None,
        connection_string: str | None = None,
        identity: WorkloadIdentity | None = None,
    ) -> Azure:
        """From a FlowStorage ``spec.azure`` block (the operator: the connection string comes
        from `credentials`, the Secret, never the operator's environment) or from
        :meth:`to_status` output (an agent: `connection_string`, else its own
        ``AZURE_STORAGE_CONNECTION_STRING`` for the recorded account, else DefaultAzureCredential)."""
        container = cls._container_from(config)
        key = str(config.get("credentialsKey") or DEFAULT_CREDENTIALS_KEY)
        source: str | None = None
        if connection_string is None and credentials is not None:
            value = credentials.get(key)
            if not value:  # names only: never echo the values
                present = ", ".join(sorted(credentials)) or "none"
                raise InvalidConfig(
                    f"the referenced Secret has no key {key} (keys present: {present}); put the storage "
                    "account's connection string under that key or set credentialsSecretRef.key"
                )
            connection_string = value
            source = f"key {key} of the referenced Secret"
        account_url = config.get("accountURL") or None
        if connection_string is not None and account_url is not None:
            # to_status() records the connection string's own endpoint as accountURL: that is no conflict
            if _same_url(_endpoint_of(connection_string), str(account_url)):
                account_url = None
        return cls(
            container=container,
            connection_string=connection_string,
            blob_name=config.get("blobName"),
            account_url=account_url,
            # only an agent reading status or the seed's schema ("type" is set) may use its own environment
            use_environment="type" in config and identity is None,
            credentials_source=source,
            **cls._common_config(config, identity),
        )

    @classmethod
    def uses_ambient_identity(cls, config: Mapping[str, Any]) -> bool:
        # an account URL without a Secret: DefaultAzureCredential, whoever the process is
        return bool(config.get("accountURL"))

    def _seed_config(self) -> dict[str, Any]:
        """The seed's Azure fields. The account has none (the seed's agent takes it from its
        connection string: ``AZURE_STORAGE_CONNECTION_STRING``), nor has the key prefix (`flows`
        holds each flow's full blob name)."""
        return {"container": self.container, "blob_name": self.blob_name,
                "stored_as_script": self.stored_as_script}

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"container": doc.get("container"), "blobName": doc.get("blob_name")}

    # ------------------------------------------------------------------ locations
    def _fixed_key(self) -> str | None:
        return self.blob_name

    def url_for(self, location: str) -> str:
        """The blob's URL (as the SDK's ``BlobClient.url``, without any SAS)."""
        name = quote(location, safe="~/")
        if self._endpoint is None:
            return f"azure://{self.container}/{name}"
        return f"{self._endpoint}/{quote(self.container)}/{name}"

    # ------------------------------------------------------------------ client
    def _connection_string_from_environment(self) -> None:
        """Take ``AZURE_STORAGE_CONNECTION_STRING`` (when the environment may be used and no
        connection string was given): the seed's fallback, or the agent's own key for the account
        an account URL names."""
        if self._connection_string is not None or not self._use_environment:
            return
        env_value = os.environ.get(CONNECTION_STRING_ENV)
        if env_value and (self.account_url is None or _same_url(_endpoint_of(env_value), self.account_url)):
            self._connection_string = env_value
            self._credentials_source = f"the environment variable {CONNECTION_STRING_ENV}"
            self._endpoint = self._endpoint or _endpoint_of(env_value)

    def _make_client(self) -> Any:
        self._connection_string_from_environment()
        try:
            from azure.storage.blob import BlobServiceClient, LinearRetry
        except ImportError as exc:
            raise MissingDependency(
                f"Azure storage needs {exc.name or 'azure-storage-blob'}; hint: {install_hint('azure')}"
            ) from None
        from azure.core.pipeline.transport import RequestsTransport

        # the SDK's transport, opened here so that its session's pools hold as many connections
        # as the operator's workers may use at once (_objectstore.POOL_CONNECTIONS)
        transport = RequestsTransport(connection_timeout=CONNECTION_TIMEOUT, read_timeout=READ_TIMEOUT)
        transport.open()
        widen_pools(transport.session)
        options: dict[str, Any] = {
            "transport": transport,
            "connection_timeout": CONNECTION_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
            "retry_policy": LinearRetry(backoff=RETRY_BACKOFF, retry_total=RETRY_TOTAL,
                                        random_jitter_range=RETRY_JITTER),
            "max_single_put_size": MAX_SINGLE_PUT_SIZE,
            "max_block_size": MAX_BLOCK_SIZE,
        }
        if self._connection_string is not None:
            try:
                return BlobServiceClient.from_connection_string(self._connection_string, **options)
            except (ValueError, TypeError):  # the SDK's text may quote the string: do not chain it
                raise InvalidConfig(
                    f"{self._credentials_source} is not a valid Azure Storage connection string "
                    "(expected `DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…;…` or a BlobEndpoint)"
                ) from None
        if self.account_url is None:
            if self._use_environment:
                raise InvalidConfig(
                    f"Azure storage needs credentials to reach container {self.container}: a connection string "
                    f"(the connection_string argument, or {CONNECTION_STRING_ENV} in the environment) or an "
                    "account URL (account_url, authenticated with DefaultAzureCredential)"
                )
            raise InvalidConfig(
                "Azure storage needs credentials: reference a Secret with the storage account's connection "
                f"string (credentialsSecretRef, key {DEFAULT_CREDENTIALS_KEY} unless `key` says otherwise) "
                "or set accountURL to use the pod's Azure identity"
            )
        try:
            from azure.identity import ClientAssertionCredential, DefaultAzureCredential
        except ImportError as exc:
            raise MissingDependency(
                f"Azure storage with an account URL needs {exc.name or 'azure-identity'}; "
                f"hint: {install_hint('azure')}"
            ) from None
        if self.identity is not None:
            # the authority is the SDK's default (login.microsoftonline.com), or AZURE_AUTHORITY_HOST
            credential: Any = ClientAssertionCredential(
                tenant_id=str(self.identity.tenant_id), client_id=str(self.identity.client_id),
                func=self.identity.tokens.token)
        else:
            credential = DefaultAzureCredential()
        try:
            return BlobServiceClient(self.account_url, credential=credential, **options)
        except (ValueError, TypeError) as exc:
            raise InvalidConfig(f"cannot create an Azure Blob client for {self.account_url}: {exc}") from None

    def _blob(self, location: str) -> Any:
        return self._client().get_blob_client(self.container, location)

    # ------------------------------------------------------------------ SDK calls
    def _upload(self, location: str, data: bytes, digest: str, content_type: str) -> bool:
        from azure.storage.blob import ContentSettings

        # Block uploads are committed whole by Put Block List, so readers never see part of
        # one. Up to MAX_SINGLE_PUT_SIZE the SDK sends one Put Blob, whose answer carries the MD5
        # Blob Storage computed over what it stored: equal to ours, it proves the bytes; another
        # means they changed on the way. Put Block List's answer is the MD5 of the block list, not
        # of the content: the publisher then reads size and sha256 back.
        blob = self._blob(location)
        answer = blob.upload_blob(data, overwrite=True, metadata={"sha256": digest},
                                  content_settings=ContentSettings(content_type=content_type), max_concurrency=4)
        stored_md5 = (answer or {}).get("content_md5")
        if len(data) > MAX_SINGLE_PUT_SIZE or not stored_md5:
            return False
        local = hashlib.md5(data, usedforsecurity=False).digest()
        if bytes(stored_md5) == local:
            return True
        from azure.core import MatchConditions

        unchanged = MatchConditions.IfNotModified  # the blob just written, unless replaced since
        self._corrupted(location, f"md5 {bytes(stored_md5).hex()}, expected {local.hex()}",
                        lambda: blob.delete_blob(etag=answer.get("etag"), match_condition=unchanged))

    def _download(self, location: str, max_bytes: int | None) -> bytes:
        blob = self._blob(location)
        if max_bytes is None:
            data: bytes = blob.download_blob(max_concurrency=4).readall()
        else:  # a ranged download: the caller verifies the sha256
            data = blob.download_blob(offset=0, length=max_bytes + 1, max_concurrency=1).readall()
        return data

    def _head(self, location: str) -> ObjectInfo:
        props = self._blob(location).get_blob_properties()
        metadata = props.metadata or {}
        return ObjectInfo(size=int(props.size), sha256=metadata.get("sha256"))

    def _remove(self, location: str) -> None:
        self._blob(location).delete_blob()

    def _probe_container(self) -> None:
        self._client().get_container_client(self.container).get_container_properties()

    # ------------------------------------------------------------------ errors
    def _place(self) -> str:
        return f"Azure Blob Storage at {self._endpoint}" if self._endpoint else "Azure Blob Storage"

    def _service_at(self) -> str:
        return self._place()

    def _redact(self, text: str) -> str:
        fields = _parse(self._connection_string or "")
        return redact(text, [self._connection_string, *(fields[name] for name in _SECRET_FIELDS if name in fields)])

    def _credentials_hint(self) -> str:
        if self._connection_string is not None:
            return (f"check {self._credentials_source} (the account name and key, or the SAS and its "
                    "permissions) and that it is allowed to use the container")
        return ("check the Azure identity DefaultAzureCredential found (workload/managed identity, "
                "AZURE_CLIENT_ID…) and its role on the container (e.g. Storage Blob Data Contributor)")

    def _identity_hint(self) -> str:
        return f"give it a role on container {self.container} (e.g. Storage Blob Data Contributor)"

    def _from_account(self, exc: BaseException) -> bool:
        """The error is the storage account's answer (not the token endpoint's)."""
        request = getattr(getattr(exc, "response", None), "request", None)
        url = str(getattr(request, "url", "") or "")
        return bool(self._endpoint) and url.lower().startswith(str(self._endpoint).lower())

    def _read(self, exc: BaseException, action: str, target: str, key: str | None) -> Reading | StorageError:
        try:
            from azure.core import exceptions as az
        except ImportError:  # pragma: no cover - the SDK raised it, so it is installed
            return StorageError(f"cannot {action}: {type(exc).__name__}")
        code = _error_code(exc)
        status = getattr(exc, "status_code", None)
        kind = type(exc).__name__
        detail = self._redact(_first_line(exc))

        if isinstance(exc, az.ClientAuthenticationError) and self.identity is not None and not self._from_account(exc):
            # raised by the credential (Microsoft Entra ID refused the assertion), not by the account
            return IdentityRejected(
                f"cannot {action} {target}: Microsoft Entra ID refused the token of {self.identity.describe()} "
                f"({detail[:300]}); check that the application has a federated identity credential for the "
                f"cluster's issuer, subject {self.identity.token_subject} and audience {self.identity.audience}"
            )
        if kind == "CredentialUnavailableError" and self.identity is None:  # azure-identity found no identity
            return AuthFailed(
                f"cannot {action} {target}: no usable Azure identity for {self.account_url} "
                f"({kind}); reference a Secret with the connection string or give the pod an Azure identity"
            )
        if isinstance(exc, az.ClientAuthenticationError) or code in _AUTH_CODES or status in (401, 403):
            return Reading(Failure.DENIED, str(code or status or kind))
        if isinstance(exc, az.ServiceRequestError) and "non-TLS" in str(exc):
            return InvalidConfig(
                f"cannot {action} {target}: token (DefaultAzureCredential) authentication needs an https "
                f"account URL, not {self.account_url}; use https or a connection string"
            )
        if isinstance(exc, az.ServiceRequestError | az.ServiceResponseError | az.IncompleteReadError):
            return Reading(Failure.UNREACHABLE, detail=detail, kind=kind)
        if code == "ContainerNotFound" or (key is None and status == 404):
            return Reading(Failure.CONTAINER_MISSING)
        if code == "BlobNotFound" or isinstance(exc, az.ResourceNotFoundError) or status == 404:
            return Reading(Failure.MISSING, str(code or status))
        if code == "ServerBusy" or status in (429, 503):
            return Reading(Failure.THROTTLED, str(code or status), detail)
        if code in _RETRYABLE_CODES or (isinstance(status, int) and (status >= 500 or status == 408)):
            return Reading(Failure.TEMPORARY, str(code or status), detail)
        if code in _CONFIG_CODES:
            return Reading(Failure.INVALID, str(code), detail)
        if isinstance(exc, az.HttpResponseError) and isinstance(status, int) and 400 <= status < 500:
            return Reading(Failure.REJECTED, f"{status} {code}", detail)
        return Reading(Failure.OTHER, str(code or kind), detail)


# ---------------------------------------------------------------------- helpers
def _parse(connection_string: str) -> dict[str, str]:
    """``Name=value;…`` into lowercase names -> values (values may contain '=')."""
    fields: dict[str, str] = {}
    for part in connection_string.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            fields[name.strip().lower()] = value.strip()
    return fields


def _endpoint_of(connection_string: str) -> str:
    """The blob endpoint a connection string names (non-secret). InvalidConfig if it names none."""
    fields = _parse(connection_string)
    parts = [p for p in connection_string.split(";") if p.strip()]
    if not fields or any("=" not in p for p in parts):
        raise InvalidConfig(
            "the Azure Storage connection string is malformed: expected `Name=value` pairs separated by ';' "
            "(e.g. DefaultEndpointsProtocol=https;AccountName=…;AccountKey=…)"
        )
    if fields.get("blobendpoint"):
        return fields["blobendpoint"].rstrip("/")
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    account = fields.get("accountname")
    if not account:
        raise InvalidConfig(
            "the Azure Storage connection string names no account: it needs AccountName (or BlobEndpoint)"
        )
    protocol = fields.get("defaultendpointsprotocol") or "https"
    suffix = fields.get("endpointsuffix") or "core.windows.net"
    return f"{protocol}://{account}.blob.{suffix}"


def endpoint_of(connection_string: str) -> str:
    """The blob endpoint (non-secret) a connection string names: where an agent holding it sends
    its requests. InvalidConfig if it names none."""
    return _endpoint_of(connection_string)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    if code:  # a StorageErrorCode (a str enum) or a plain string
        return str(getattr(code, "value", code))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        value = headers.get("x-ms-error-code")
        if value:
            return str(value)
    return None


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    line = str(message).strip().splitlines()[0] if str(message).strip() else type(exc).__name__
    return line[:300]
