"""The seed's ``GCS`` storage: flows as objects (blobs) in a Google Cloud Storage bucket.

A location is the blob name. Each blob records its sha256 as custom metadata (``sha256``) so
:meth:`GCS.stat` can tell whether a stored flow changed without downloading it; after every
upload the checksum the server computed (md5, else crc32c) is compared with the local one.
google-cloud-storage is an optional extra and is imported only when a client is needed.
Every SDK exception is translated into :mod:`flowstore.storage.errors`; messages never
contain key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from flowstore.api.backends import install_hint
from flowstore.storage._objectstore import Failure, ObjectStore, Reading, widen_pools
from flowstore.storage.base import ObjectInfo
from flowstore.storage.errors import (
    AuthFailed,
    ContainerNotFound,
    IdentityRejected,
    IntegrityError,
    InvalidConfig,
    MissingDependency,
    StorageError,
    redact,
)
from flowstore.storage.identity import WorkloadIdentity, gcp_endpoints

#: objects larger than this are uploaded with a resumable upload, in chunks of this size
#: (a multiple of 256 KiB, as the API requires); smaller ones in one multipart request
RESUMABLE_THRESHOLD = 8 * 1024 * 1024
CHUNK_SIZE = 8 * 1024 * 1024
#: the Secret key holding the service-account JSON key when spec.gcs.credentialsSecretRef.key is unset
DEFAULT_CREDENTIALS_KEY = "service-account.json"
#: fields a service-account key file must have (google.oauth2.service_account needs them)
REQUIRED_KEY_FIELDS = ("client_email", "private_key", "token_uri")
#: the project given to the client when talking anonymously to an emulator
ANONYMOUS_PROJECT = "flowstore"
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
#: per-request (connect, read) timeouts in seconds
TIMEOUT = (5.0, 60.0)
#: total time the SDK may spend retrying one call on transient failures; the controller
#: retries Unavailable itself, with backoff, so a short budget keeps reconciles responsive
RETRY_DEADLINE = 4.0


class GCS(ObjectStore):
    """Flows stored as blobs in a Google Cloud Storage bucket.

    Args:
        bucket: the bucket holding the flows (must exist).
        key: a fixed blob name for the flow; like the seed's, only useful for a single flow.
        project: the Google Cloud project; None takes the credentials' project.
        stored_as_script: flows are kept as ``.py`` source rather than pickled.
        local_script_path: with `stored_as_script`, a local script to upload at :meth:`build`
            for flows added without `source`.
        endpoint_url: a GCS-compatible endpoint (e.g. fake-gcs-server); without
            `credentials_info` it is talked to anonymously.
        credentials_info: a service-account JSON key, parsed (a dict); None uses Application
            Default Credentials (workload identity, ``GOOGLE_APPLICATION_CREDENTIALS``, ...).
        identity: act as a Kubernetes ServiceAccount instead: workload identity federation (an
            external-account credential: STS token exchange, then service-account impersonation
            when the identity names one; :mod:`flowstore.storage.identity`). Also with an emulator.
        **kwargs: ``key_prefix`` and the base :class:`Storage` options (:class:`ObjectStore`).
    """

    type_name = "GCS"
    default_label = "gcs-flow-storage"
    identity_cloud = "gcp"
    credentials_noun = "a service-account key"
    status_fields = {"bucket": "bucket", "key": "key", "keyPrefix": "key_prefix", "project": "project",
                     "endpointURL": "endpoint_url"}
    bucket: str

    def __init__(
        self,
        bucket: str,
        key: str | None = None,
        project: str | None = None,
        stored_as_script: bool = False,
        local_script_path: str | None = None,
        endpoint_url: str | None = None,
        credentials_info: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(bucket, stored_as_script=stored_as_script, credentials=credentials_info, **kwargs)
        self.key = key
        self.project = project
        self.local_script_path = local_script_path
        self.endpoint_url = endpoint_url
        self._credentials_info = (
            _check_service_account_info(credentials_info) if credentials_info is not None else None
        )

    def __repr__(self) -> str:  # never shows credentials
        return (f"GCS(bucket={self.bucket!r}, key_prefix={self.key_prefix!r}, project={self.project!r}, "
                f"endpoint_url={self.endpoint_url!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None,
                    identity: WorkloadIdentity | None = None) -> GCS:
        bucket = cls._container_from(config)
        info: dict[str, Any] | None = None
        if credentials is not None:
            info = _parse_service_account_json(credentials, config.get("credentialsKey") or DEFAULT_CREDENTIALS_KEY)
        return cls(
            bucket=bucket,
            key=config.get("key"),
            project=config.get("project"),
            endpoint_url=config.get("endpointURL"),
            credentials_info=info,
            **cls._common_config(config, identity),
        )

    @classmethod
    def uses_ambient_identity(cls, config: Mapping[str, Any]) -> bool:
        # with an endpoint (an emulator) and no key the client is anonymous: nobody's identity
        return not config.get("endpointURL")

    def _seed_config(self) -> dict[str, Any]:
        """The seed's GCS fields. The endpoint and key prefix have none: `flows` holds each flow's
        full blob name, and the seed's client (google-cloud-storage) finds an emulator through
        ``STORAGE_EMULATOR_HOST``."""
        return {"bucket": self.bucket, "key": self.key, "project": self.project,
                "stored_as_script": self.stored_as_script}

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        # like google-cloud-storage (the seed's client), an agent's STORAGE_EMULATOR_HOST names
        # the endpoint a seed document cannot carry
        return {"bucket": doc.get("bucket"), "key": doc.get("key"), "project": doc.get("project"),
                "endpointURL": os.environ.get("STORAGE_EMULATOR_HOST") or None}

    # ------------------------------------------------------------------ locations
    def url_for(self, location: str) -> str:
        return f"gs://{self.bucket}/{location}"

    # ------------------------------------------------------------------ client
    def _make_client(self) -> Any:
        try:
            import google.auth
            from google.auth.credentials import AnonymousCredentials
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage
        except ImportError as exc:
            raise MissingDependency(
                f"GCS storage needs {exc.name or 'google-cloud-storage'}; hint: {install_hint('gcs')}"
            ) from None

        project = self.project
        credentials: Any
        if self.identity is not None:
            credentials = federated_credentials(self.identity)
            project = project or ANONYMOUS_PROJECT  # only bucket listing and creation need one
        elif self._credentials_info is not None:
            from google.oauth2 import service_account

            try:
                credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                    self._credentials_info
                )
            except Exception as exc:  # ValueError, or the RSA library's own errors
                # the SDK's text may quote the key; say what is wrong without it
                raise InvalidConfig(
                    "the GCS service-account key cannot be loaded: its private_key is not a valid PEM "
                    f"private key or a field is malformed ({type(exc).__name__}); download a new JSON key "
                    "for the service account and put it in the referenced Secret"
                ) from None
            project = project or self._credentials_info.get("project_id")
        elif self.endpoint_url is not None:  # an emulator: no Google identity involved
            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
            project = project or ANONYMOUS_PROJECT
        else:
            try:
                credentials, default_project = google.auth.default()
            except DefaultCredentialsError:
                raise AuthFailed(
                    "no Google credentials found: give spec.gcs.credentialsSecretRef or configure workload identity"
                ) from None
            project = project or default_project

        client_options = {"api_endpoint": self.endpoint_url} if self.endpoint_url is not None else None
        try:
            client = storage.Client(project=project, credentials=credentials, client_options=client_options)
        except (ValueError, TypeError) as exc:
            raise InvalidConfig(f"cannot create a GCS client: {self._redact(str(exc))}") from None
        widen_pools(client._http)  # the SDK's own session (AuthorizedSession), made as it makes it
        return client

    def _retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_delay(initial=0.25, maximum=2.0, multiplier=2.0).with_timeout(RETRY_DEADLINE)

    # ------------------------------------------------------------------ SDK calls
    def _blob(self, location: str, chunk_size: int | None = None) -> Any:
        return self._client().bucket(self.bucket).blob(location, chunk_size=chunk_size)

    def _upload(self, location: str, data: bytes, digest: str, content_type: str) -> bool:
        # above the threshold the SDK uploads resumably; a chunk size makes it send the data in
        # several requests (each retried on its own) instead of one huge PUT
        blob = self._blob(location, CHUNK_SIZE if len(data) > RESUMABLE_THRESHOLD else None)
        blob.metadata = {"sha256": digest}
        # overwriting a location with the same bytes is idempotent: retrying is safe
        blob.upload_from_string(data, content_type=content_type, timeout=TIMEOUT, retry=self._retry())
        return self._verify_upload(blob, data, location)

    def _verify_upload(self, blob: Any, data: bytes, location: str) -> bool:
        """Compare what the server says it stored (size, crc32c or md5) with `data`: True when its
        size and a checksum matched, False when it named no checksum, an IntegrityError otherwise.

        crc32c first: it catches corruption in transit as well as md5 and costs ~15x less CPU
        (the bench measured md5 as most of flowstore's overhead on small uploads)."""
        problem = None
        if blob.size is not None and int(blob.size) != len(data):
            problem = f"size {blob.size} bytes, expected {len(data)}"
        elif blob.crc32c:
            import google_crc32c

            local = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
            if blob.crc32c != local:
                problem = f"crc32c {blob.crc32c}, expected {local}"
        elif blob.md5_hash:
            local = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
            if blob.md5_hash != local:
                problem = f"md5 {blob.md5_hash}, expected {local}"
        if problem is None:
            return blob.size is not None and bool(blob.crc32c or blob.md5_hash)
        self._corrupted(location, problem,  # only the generation just written
                        lambda: blob.delete(if_generation_match=blob.generation, timeout=TIMEOUT, retry=None))

    def _download(self, location: str, max_bytes: int | None) -> bytes:
        blob = self._blob(location)
        data: bytes
        if max_bytes is None:
            # checksum="auto": the SDK verifies the server's x-goog-hash (DataCorruption otherwise)
            data = blob.download_as_bytes(timeout=TIMEOUT, retry=self._retry())
        else:  # a ranged download: the caller verifies the sha256
            data = blob.download_as_bytes(start=0, end=max_bytes, checksum=None, timeout=TIMEOUT,
                                          retry=self._retry())
        return data

    def _head(self, location: str) -> ObjectInfo:
        blob = self._blob(location)
        blob.reload(timeout=TIMEOUT, retry=self._retry())
        metadata = blob.metadata or {}
        return ObjectInfo(size=int(blob.size or 0), sha256=metadata.get("sha256"))

    def _remove(self, location: str) -> None:
        self._blob(location).delete(timeout=TIMEOUT, retry=self._retry())

    def _probe_container(self) -> None:
        # listing (at most) one blob needs only storage.objects.list, which the object roles
        # (roles/storage.objectViewer/objectUser/objectAdmin) grant; bucket metadata
        # (storage.buckets.get) would demand more than storing flows needs
        list(self._client().list_blobs(self.bucket, max_results=1, timeout=TIMEOUT, retry=self._retry()))

    def _bucket_missing(self, not_found: BaseException) -> bool:
        """A 404 on a blob means the blob or the whole bucket is missing. GCS says which in its
        message; emulators (fake-gcs-server) answer a bare "Not Found", so ask the bucket."""
        text = str(not_found).lower()
        if "bucket" in text and "not exist" in text:
            return True
        if "no such object" in text:
            return False
        try:
            self.check_container()
        except ContainerNotFound:
            return True
        except StorageError:  # cannot tell (e.g. no list permission): report the object
            return False
        return False

    # ------------------------------------------------------------------ errors
    def _place(self) -> str:
        return self.endpoint_url or DEFAULT_ENDPOINT

    def _redact(self, text: str) -> str:
        return redact(text, (self._credentials_info or {}).values(), shortest=8)

    def _credentials_hint(self) -> str:
        return ("check the service account's roles on the bucket and the key in the referenced Secret "
                "(spec.gcs.credentialsSecretRef)")

    def _identity_hint(self) -> str:
        return (f"grant it a role on bucket {self.bucket} (e.g. roles/storage.objectUser), "
                "or name a ServiceAccount that has one")

    def _read(self, exc: BaseException, action: str, target: str, key: str | None) -> Reading | StorageError:
        exc = _unwrap(exc)
        kind = type(exc).__name__
        status = _http_status(exc)
        detail = self._redact(_short_message(exc))

        if _is_data_corruption(exc) or (status == 400 and "match calculated" in detail.lower()):
            # the SDK's own check (DataCorruption), or the server refusing an upload whose
            # checksum it recomputed ("provided CRC32C/MD5 ... doesn't match calculated ...")
            return IntegrityError(
                f"cannot {action} {target}: the data did not match the checksum GCS reported ({detail}); "
                "it was corrupted in transit"
            )
        if _is_refresh_error(exc) and self.identity is not None:
            return IdentityRejected(
                f"cannot {action} {target}: Google refused to exchange the token of {self.identity.describe()} "
                f"({detail[:300]}); check that the workload identity pool provider "
                f"trusts the cluster's issuer and audience {self.identity.audience}, and that "
                f"principal://…/subject/{self.identity.token_subject} may use the service account "
                "(roles/iam.workloadIdentityUser) or the bucket"
            )
        if _is_refresh_error(exc):
            return AuthFailed(
                f"cannot {action} {target}: the Google credentials could not be turned into an access token "
                f"({kind}); check the service-account key in the referenced Secret (spec.gcs.credentialsSecretRef) "
                "or the pod's workload identity"
            )
        if _is_connection_error(exc):
            return Reading(Failure.UNREACHABLE, detail=detail, kind=kind)
        if status == 404 and (key is None or action == "upload" or self._bucket_missing(exc)):
            return Reading(Failure.CONTAINER_MISSING)
        if status in (401, 403):
            return Reading(Failure.DENIED, f"{status}: {detail}")
        if status == 404:
            return Reading(Failure.MISSING, "404")
        if status == 429:
            return Reading(Failure.THROTTLED, str(status), detail)
        if status is not None and (status >= 500 or status == 408):
            return Reading(Failure.TEMPORARY, str(status), detail)
        if status is not None and 400 <= status < 500:
            return Reading(Failure.REJECTED, str(status), detail)
        return Reading(Failure.OTHER, kind, detail)


# ---------------------------------------------------------------------- credentials
#: RFC 8693's token type of a JWT, as Google's STS takes a Kubernetes ServiceAccount token
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a token type name


def federated_credentials(identity: WorkloadIdentity) -> Any:
    """google-auth's external-account (identity pool) credentials for `identity`: each refresh
    asks its token source for a ServiceAccount token, exchanges it at Google's STS for a
    federated token (audience: the pool provider), and, when the identity names a service
    account, exchanges that for the service account's access token (IAM Credentials
    generateAccessToken). google-auth refreshes before expiry (its refresh threshold)."""
    from google.auth import identity_pool

    class Supplier(identity_pool.SubjectTokenSupplier):  # type: ignore[misc]
        def get_subject_token(self, context: Any, request: Any) -> str:
            return identity.tokens.token()

    token_url, iam_url = gcp_endpoints()
    impersonation = (f"{iam_url}/v1/projects/-/serviceAccounts/{identity.service_account_email}:generateAccessToken"
                     if identity.service_account_email else None)
    return identity_pool.Credentials(  # type: ignore[no-untyped-call]
        audience=identity.provider, subject_token_type=JWT_TOKEN_TYPE, token_url=token_url,
        subject_token_supplier=Supplier(), service_account_impersonation_url=impersonation,
        scopes=["https://www.googleapis.com/auth/devstorage.read_write"])


def _parse_service_account_json(credentials: Mapping[str, str], key: str) -> dict[str, Any]:
    """The service-account key held under `key` of the Secret's data, parsed."""
    if key not in credentials:
        present = ", ".join(sorted(credentials)) or "none"
        raise InvalidConfig(
            f"the GCS credentials Secret has no key {key!r} (keys present: {present}); put the "
            "service-account JSON key under that key or set spec.gcs.credentialsSecretRef.key"
        )
    try:
        info = json.loads(credentials[key])
    except (ValueError, TypeError) as exc:  # the message quotes a position, never the text
        where = f" (line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidConfig(
            f"the GCS credentials under Secret key {key!r} is not valid JSON{where}; it must be a "
            "service-account JSON key file"
        ) from None
    return _check_service_account_info(info, key)


def _check_service_account_info(info: Any, key: str | None = None) -> dict[str, Any]:
    """Validate the shape of a service-account key without echoing any of its values."""
    what = f"the GCS credentials under Secret key {key!r}" if key else "the GCS service-account key"
    if not isinstance(info, Mapping):
        raise InvalidConfig(f"{what} must be a JSON object (a service-account key file), got {type(info).__name__}")
    kind = info.get("type")
    if kind is not None and kind != "service_account":
        raise InvalidConfig(
            f"{what} has type {str(kind)[:40]!r}; only service-account keys (type 'service_account') are supported"
        )
    missing = [f for f in REQUIRED_KEY_FIELDS if not isinstance(info.get(f), str) or not info.get(f)]
    if missing:  # names only: never the values
        raise InvalidConfig(
            f"{what} lacks {', '.join(missing)}; it must be a complete service-account JSON key file"
        )
    return dict(info)


# ---------------------------------------------------------------------- exception helpers
def _unwrap(exc: BaseException) -> BaseException:
    """api_core's RetryError (retry deadline exceeded) carries the last real failure."""
    for _ in range(5):
        cause = getattr(exc, "cause", None) if type(exc).__name__ == "RetryError" else None
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


def _http_status(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)  # google.api_core.exceptions.GoogleAPICallError
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)  # resumable media's InvalidResponse
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _short_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)  # GoogleAPICallError: the server's message only
    text = str(message) if message else str(exc)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _is_data_corruption(exc: BaseException) -> bool:
    return any(cls.__name__ == "DataCorruption" for cls in type(exc).__mro__)


def _is_refresh_error(exc: BaseException) -> bool:
    try:
        from google.auth.exceptions import OAuthError, RefreshError
    except ImportError:
        return False
    return isinstance(exc, RefreshError | OAuthError)  # OAuthError: an STS token exchange refused


def _is_connection_error(exc: BaseException) -> bool:
    """Unreachable endpoint, timeouts, dropped or truncated responses: all worth a retry."""
    try:
        import requests
        from google.auth.exceptions import TransportError
    except ImportError:
        return False
    retryable = (
        requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
        TransportError, ConnectionError, TimeoutError,
    )
    return isinstance(exc, retryable) or type(exc).__name__ == "RetryError"
