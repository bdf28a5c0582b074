"""The seed's ``S3`` storage: flows as objects in an S3 (or S3-compatible) bucket.

A location is the object key. Each object records its sha256 as user metadata
(``x-amz-meta-sha256``) so :meth:`S3.stat` can tell whether a stored flow changed without
downloading it. boto3 is an optional extra and is imported only when a client is needed.
Every SDK exception is translated into :mod:`flowstore.storage.errors`; messages never
contain credential values.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import Any

from flowstore.artifacts.keys import default_key, join_prefix
from flowstore.storage._aws import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    config_from_seed_client_options,
    identity_rejected,
    is_connection_error,
    is_credentials_error,
    make_client,
    seed_client_options,
)
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, read_bounded, sha256_hex
from flowstore.storage.errors import (
    AuthFailed,
    ContainerNotFound,
    IntegrityError,
    InvalidConfig,
    NotFound,
    StorageError,
    Unavailable,
)
from flowstore.storage.identity import WorkloadIdentity

#: objects larger than this are uploaded in parts (boto3's managed transfer)
MULTIPART_THRESHOLD = 8 * 1024 * 1024
#: client defaults; `client_options["config"]` (a botocore Config or a dict) overrides them
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"max_attempts": 3, "mode": "standard"},
}

_AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "InvalidClientTokenId", "AllAccessDisabled",
    "AccountProblem", "UnrecognizedClientException", "Forbidden",
})
_RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "ServiceUnavailable", "InternalError", "RequestLimitExceeded", "TooManyRequestsException",
    "OperationAborted",
})
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# a person must change the spec (wrong region, bad bucket name, ...)
_CONFIG_CODES = frozenset({
    "InvalidBucketName", "KeyTooLongError", "InvalidArgument", "PermanentRedirect",
    "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
})
_CONFIG_ERROR_KINDS = frozenset({
    "ParamValidationError", "InvalidS3AddressingStyleError", "InvalidRegionError",
})




class S3(Storage):
    """Flows stored as objects in an S3 bucket.

    Args:
        bucket: the bucket holding the flows (must exist).
        key: a fixed object key for the flow; like the seed's, only useful for a single flow.
        stored_as_script: flows are kept as ``.py`` source rather than pickled.
        local_script_path: with `stored_as_script`, a local script to upload at :meth:`build`
            for flows added without `source`.
        client_options: extra keyword arguments for ``session.client("s3", ...)``; a
            ``config`` entry (botocore ``Config`` or dict) is merged over the defaults
            (5 s connect / 30 s read timeouts, 3 attempts).
        key_prefix: prefix for generated keys (``<prefix>/<slug>/<timestamp>``).
        region: the bucket's region (``region_name``); None uses the SDK's default.
        endpoint_url: an S3-compatible endpoint (e.g. a local moto server).
        credentials: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and optionally
            ``AWS_SESSION_TOKEN``; None uses the SDK's default credential chain.
        identity: act as a Kubernetes ServiceAccount instead: its token is exchanged for the
            role it names (STS AssumeRoleWithWebIdentity; :mod:`flowstore.storage.identity`).
        **kwargs: the base :class:`Storage` options.
    """

    type_name = "S3"
    default_label = "s3-flow-storage"
    identity_cloud = "aws"

    def __init__(
        self,
        bucket: str,
        key: str | None = None,
        stored_as_script: bool = False,
        local_script_path: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        key_prefix: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        credentials: Mapping[str, str] | None = None,
        identity: WorkloadIdentity | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(stored_as_script=stored_as_script, **kwargs)
        if not bucket or not isinstance(bucket, str):
            raise InvalidConfig("S3 storage needs `bucket` (the bucket flows are stored in)")
        if identity is not None and credentials is not None:
            raise InvalidConfig("S3 storage takes credentials or a workload identity, not both")
        self.identity = identity
        self.bucket = bucket
        self.key = key
        self.local_script_path = local_script_path
        self.client_options = dict(client_options or {})
        self.key_prefix = key_prefix
        self.region = region
        self.endpoint_url = endpoint_url
        self._credentials = dict(credentials) if credentials is not None else None
        if self._credentials is not None:
            missing = [k for k in (ACCESS_KEY_ID, SECRET_ACCESS_KEY) if not self._credentials.get(k)]
            if missing:  # names only: never echo the values
                raise InvalidConfig(
                    f"the S3 credentials lack {', '.join(missing)}; add them to the referenced Secret"
                )
        self._client_lock = threading.Lock()
        self._client_instance: Any = None

    def __repr__(self) -> str:  # never shows credentials
        return (f"S3(bucket={self.bucket!r}, key_prefix={self.key_prefix!r}, "
                f"endpoint_url={self.endpoint_url!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None,
                    identity: WorkloadIdentity | None = None) -> S3:
        bucket = config.get("bucket")
        if not bucket or not isinstance(bucket, str):
            raise InvalidConfig("S3 storage needs `bucket` (spec.s3.bucket)")
        client_options = config.get("clientOptions") or {}
        if not isinstance(client_options, Mapping):
            raise InvalidConfig("S3 `clientOptions` must be a mapping of boto3 client keyword arguments")
        return cls(
            bucket=bucket,
            key=config.get("key"),
            key_prefix=config.get("keyPrefix"),
            region=config.get("region"),
            endpoint_url=config.get("endpointURL"),
            client_options=client_options,
            credentials=credentials,
            identity=identity,
            **cls.common_kwargs(config),
        )

    @classmethod
    def with_identity(cls, config: Mapping[str, Any], identity: WorkloadIdentity) -> S3:
        return cls.from_config(config, identity=identity)

    @classmethod
    def uses_ambient_identity(cls, config: Mapping[str, Any]) -> bool:
        return True  # without keys or an identity, boto3's default chain: whoever the process is

    def _status_config(self) -> dict[str, Any]:
        doc = {
            "bucket": self.bucket,
            "key": self.key,
            "keyPrefix": self.key_prefix,
            "region": self.region,
            "endpointURL": self.endpoint_url,
        }
        return {k: v for k, v in doc.items() if v is not None}

    def _seed_config(self) -> dict[str, Any]:
        """The seed's S3 fields; the endpoint and region travel in ``client_options`` (boto3's
        ``endpoint_url`` and ``region_name``), which is how the seed configures them. The key
        prefix has no field: `flows` holds each flow's full key."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "stored_as_script": self.stored_as_script,
            "client_options": seed_client_options(self.client_options, self.endpoint_url, self.region),
        }

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"bucket": doc.get("bucket"), "key": doc.get("key"),
                **config_from_seed_client_options(doc.get("client_options"))}

    # ------------------------------------------------------------------ locations
    def location_for(self, flow_name: str, key: str | None = None) -> str:
        return key or self.key or join_prefix(self.key_prefix, default_key(flow_name))

    def url_for(self, location: str) -> str:
        return f"s3://{self.bucket}/{location}"

    # ------------------------------------------------------------------ client
    def _client(self) -> Any:
        """The instance's boto3 client (created once; boto3 clients are thread-safe)."""
        with self._client_lock:
            if self._client_instance is None:
                self._client_instance = self._make_client()
            return self._client_instance

    def _make_client(self) -> Any:
        return make_client("s3", credentials=self._credentials, client_options=self.client_options,
                           endpoint_url=self.endpoint_url, region=self.region, defaults=DEFAULT_CLIENT_CONFIG,
                           extra="s3", label="S3", identity=self.identity,
                           failure=lambda exc: f"cannot create an S3 client: {self._redact(str(exc))}")

    # ------------------------------------------------------------------ primitives
    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
        digest = sha256_hex(data)
        content_type = "text/x-python" if self.stored_as_script else "application/octet-stream"
        client = self._client()
        try:
            if len(data) > MULTIPART_THRESHOLD:
                from boto3.s3.transfer import TransferConfig

                client.upload_fileobj(
                    io.BytesIO(data), self.bucket, location,
                    ExtraArgs={"Metadata": {"sha256": digest}, "ContentType": content_type},
                    Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                          multipart_chunksize=MULTIPART_THRESHOLD),
                )
            else:
                client.put_object(Bucket=self.bucket, Key=location, Body=data,
                                  Metadata={"sha256": digest}, ContentType=content_type)
        except Exception as exc:
            raise self._translate(exc, "upload", location) from _cause(exc)
        return StoredArtifact(location=location, url=self.url_for(location), sha256=digest, size=len(data))

    def get_bytes(self, location: str) -> bytes:
        client = self._client()
        try:
            response = client.get_object(Bucket=self.bucket, Key=location)
            data: bytes = response["Body"].read()
        except Exception as exc:
            raise self._translate(exc, "download", location) from _cause(exc)
        return data

    def get_bytes_bounded(self, location: str, max_bytes: int) -> bytes:
        client = self._client()
        try:
            response = client.get_object(Bucket=self.bucket, Key=location)
            body = response["Body"]
            try:
                return read_bounded(body, max_bytes, self.url_for(location))
            finally:
                body.close()
        except IntegrityError:
            raise
        except Exception as exc:
            raise self._translate(exc, "download", location) from _cause(exc)

    def stat(self, location: str) -> ObjectInfo | None:
        client = self._client()
        try:
            response = client.head_object(Bucket=self.bucket, Key=location)
        except Exception as exc:
            if _error_code(exc) in _MISSING_OBJECT_CODES:
                return None
            raise self._translate(exc, "inspect", location) from _cause(exc)
        metadata = response.get("Metadata") or {}
        return ObjectInfo(size=int(response.get("ContentLength", 0)), sha256=metadata.get("sha256"))

    def delete(self, location: str) -> None:
        client = self._client()
        try:
            client.delete_object(Bucket=self.bucket, Key=location)
        except Exception as exc:
            if _error_code(exc) == "NoSuchKey":  # S3 itself answers 204; some compatibles do not
                return
            raise self._translate(exc, "delete", location) from _cause(exc)

    def check_container(self) -> None:
        client = self._client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._translate(exc, "access", None) from _cause(exc)

    # ------------------------------------------------------------------ errors
    def _endpoint(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        client = self._client_instance
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
        return str(endpoint) if endpoint else "the default AWS endpoint"

    def _redact(self, text: str) -> str:
        for value in (self._credentials or {}).values():
            if value and len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def _translate(self, exc: BaseException, action: str, key: str | None) -> StorageError:
        """Map one SDK exception to the project's taxonomy, with a message for a person."""
        if isinstance(exc, StorageError):
            return exc
        code = _error_code(exc)
        status = _http_status(exc)
        target = self.url_for(key) if key is not None else f"bucket {self.bucket}"
        detail = self._redact(_error_message(exc))
        where = self._endpoint()
        kind = type(exc).__name__

        if self.identity is not None and _operation(exc) == "AssumeRoleWithWebIdentity":
            return identity_rejected(self.identity, code, detail, status)
        if is_credentials_error(exc):
            return AuthFailed(
                f"cannot {action} {target}: no usable AWS credentials were found ({kind}); "
                f"reference a Secret with {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}, "
                "or give the pod an AWS identity"
            )
        if is_connection_error(_unwrap(exc)):
            return Unavailable(
                f"cannot {action} {target}: S3 at {where} is unreachable or timed out ({kind}: {detail})"
            )
        if code == "NoSuchBucket" or (key is None and (code in _MISSING_OBJECT_CODES or status == 404)):
            return ContainerNotFound(
                f"bucket {self.bucket} does not exist at {where}; create it or fix spec.s3.bucket"
            )
        if (code in _AUTH_CODES or status == 403) and self.identity is not None:
            return AuthFailed(
                f"cannot {action} {target}: S3 at {where} denied access ({code or status}) to "
                f"{self.identity.describe()}; grant that role access to bucket {self.bucket} in its IAM policy, "
                "or name a ServiceAccount whose role has it"
            )
        if code in _AUTH_CODES or status == 403:
            return AuthFailed(
                f"cannot {action} {target}: S3 at {where} rejected the credentials or denied access "
                f"({code or status}); check the keys in the referenced Secret ({ACCESS_KEY_ID}, "
                f"{SECRET_ACCESS_KEY}) and the bucket policy"
            )
        if code in _MISSING_OBJECT_CODES or status == 404:
            return NotFound(f"no flow artifact at {target} ({code or status}); was the flow built (stored)?")
        if code in _RETRYABLE_CODES or (status is not None and (status >= 500 or status == 429)):
            throttled = code in {"SlowDown", "Throttling", "ThrottlingException"} or status == 429
            return Unavailable(
                f"cannot {action} {target}: S3 at {where} answered a temporary failure "
                f"({code or status}: {detail})",
                retry_after=5.0 if throttled else None,
            )
        if kind in _CONFIG_ERROR_KINDS or code in _CONFIG_CODES:
            return InvalidConfig(f"cannot {action} {target}: {code or kind}: {detail}")
        return StorageError(f"cannot {action} {target} at {where}: {code or kind}: {detail}")


def _operation(exc: BaseException) -> str | None:
    """The AWS operation a ClientError came from (AssumeRoleWithWebIdentity when the
    credentials could not be had)."""
    name = getattr(_unwrap(exc), "operation_name", None)
    return str(name) if name else None


def _cause(exc: BaseException) -> BaseException | None:
    """What to chain the translated error to: nothing for auth failures (their SDK text can
    echo key ids), the SDK exception otherwise (useful when debugging)."""
    if _error_code(exc) in _AUTH_CODES or _http_status(exc) == 403:
        return None
    return exc


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's S3UploadFailedError wraps the ClientError of a managed (multipart) upload."""
    if type(exc).__name__ == "S3UploadFailedError":
        inner = exc.__cause__ or exc.__context__
        if inner is not None:
            return inner
    return exc


def _error_code(exc: BaseException) -> str | None:
    response = getattr(_unwrap(exc), "response", None)
    if isinstance(response, Mapping):
        code = (response.get("Error") or {}).get("Code")
        return str(code) if code else None
    text = str(exc)
    for candidate in ("NoSuchBucket", "NoSuchKey", *sorted(_AUTH_CODES)):
        if f"({candidate})" in text:  # S3UploadFailedError's message when it does not chain
            return candidate
    return None


def _http_status(exc: BaseException) -> int | None:
    response = getattr(_unwrap(exc), "response", None)
    if isinstance(response, Mapping):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return int(status) if status else None
    return None


def _error_message(exc: BaseException) -> str:
    inner = _unwrap(exc)
    response = getattr(inner, "response", None)
    if isinstance(response, Mapping):
        message = (response.get("Error") or {}).get("Message")
        if message:
            return str(message)
    return str(inner)
