"""The seed's ``S3`` storage: flows as objects in an S3 (or S3-compatible) bucket.

A location is the object key. Each object records its sha256 as user metadata
(``x-amz-meta-sha256``) so :meth:`S3.stat` can tell whether a stored flow changed without
downloading it. boto3 is an optional extra and is imported only when a client is needed.
Every SDK exception is translated into :mod:`flowstore.storage.errors`; messages never
contain credential values.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Mapping
from typing import Any

from flowstore.storage._aws import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    config_from_seed_client_options,
    describe_endpoint,
    identity_rejected,
    is_connection_error,
    is_credentials_error,
    make_client,
    seed_client_options,
)
from flowstore.storage._objectstore import POOL_CONNECTIONS, Failure, ObjectStore, Reading
from flowstore.storage.base import ObjectInfo, read_bounded
from flowstore.storage.errors import AuthFailed, InvalidConfig, StorageError, redact
from flowstore.storage.identity import WorkloadIdentity

#: objects larger than this are uploaded in parts (boto3's managed transfer)
MULTIPART_THRESHOLD = 8 * 1024 * 1024
#: client defaults; `client_options["config"]` (a botocore Config or a dict) overrides them
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"max_attempts": 3, "mode": "standard"},
    # one client serves every pass on the FlowStorage's flows (the forks share it): _objectstore.py
    "max_pool_connections": POOL_CONNECTIONS,
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
_THROTTLING_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException"})


class S3(ObjectStore):
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
        region: the bucket's region (``region_name``); None uses the SDK's default.
        endpoint_url: an S3-compatible endpoint (e.g. a local moto server).
        credentials: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and optionally
            ``AWS_SESSION_TOKEN``; None uses the SDK's default credential chain.
        identity: act as a Kubernetes ServiceAccount instead: its token is exchanged for the
            role it names (STS AssumeRoleWithWebIdentity; :mod:`flowstore.storage.identity`).
        **kwargs: ``key_prefix`` and the base :class:`Storage` options (:class:`ObjectStore`).
    """

    type_name = "S3"
    default_label = "s3-flow-storage"
    identity_cloud = "aws"
    status_fields = {"bucket": "bucket", "key": "key", "keyPrefix": "key_prefix", "region": "region",
                     "endpointURL": "endpoint_url"}
    bucket: str

    def __init__(
        self,
        bucket: str,
        key: str | None = None,
        stored_as_script: bool = False,
        local_script_path: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        credentials: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(bucket, stored_as_script=stored_as_script, credentials=credentials, **kwargs)
        self.key = key
        self.local_script_path = local_script_path
        self.client_options = dict(client_options or {})
        self.region = region
        self.endpoint_url = endpoint_url
        self._credentials = dict(credentials) if credentials is not None else None
        if self._credentials is not None:
            missing = [k for k in (ACCESS_KEY_ID, SECRET_ACCESS_KEY) if not self._credentials.get(k)]
            if missing:  # names only: never echo the values
                raise InvalidConfig(
                    f"the S3 credentials lack {', '.join(missing)}; add them to the referenced Secret"
                )

    def __repr__(self) -> str:  # never shows credentials
        return (f"S3(bucket={self.bucket!r}, key_prefix={self.key_prefix!r}, "
                f"endpoint_url={self.endpoint_url!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None,
                    identity: WorkloadIdentity | None = None) -> S3:
        bucket = cls._container_from(config)
        client_options = config.get("clientOptions") or {}
        if not isinstance(client_options, Mapping):
            raise InvalidConfig("S3 `clientOptions` must be a mapping of boto3 client keyword arguments")
        return cls(
            bucket=bucket,
            key=config.get("key"),
            region=config.get("region"),
            endpoint_url=config.get("endpointURL"),
            client_options=client_options,
            credentials=credentials,
            **cls._common_config(config, identity),
        )

    @classmethod
    def uses_ambient_identity(cls, config: Mapping[str, Any]) -> bool:
        return True  # without keys or an identity, boto3's default chain: whoever the process is

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
    def url_for(self, location: str) -> str:
        return f"s3://{self.bucket}/{location}"

    # ------------------------------------------------------------------ client
    def _make_client(self) -> Any:
        return make_client("s3", credentials=self._credentials, client_options=self.client_options,
                           endpoint_url=self.endpoint_url, region=self.region, defaults=DEFAULT_CLIENT_CONFIG,
                           extra="s3", label="S3", identity=self.identity,
                           failure=lambda exc: f"cannot create an S3 client: {self._redact(str(exc))}")

    # ------------------------------------------------------------------ SDK calls
    def _upload(self, location: str, data: bytes, digest: str, content_type: str) -> bool:
        """A single PUT carries Content-MD5 (S3 refuses a body that does not match it) and is
        verified by its answer: the ETag of a single-part object stored without SSE-KMS or SSE-C
        is the MD5 of the bytes S3 stored. Any other ETag (KMS, multipart) is not proof, and the
        publisher reads the object's size and sha256 metadata back instead."""
        client = self._client()
        if len(data) > MULTIPART_THRESHOLD:
            from boto3.s3.transfer import TransferConfig

            client.upload_fileobj(
                io.BytesIO(data), self.bucket, location,
                ExtraArgs={"Metadata": {"sha256": digest}, "ContentType": content_type},
                Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                      multipart_chunksize=MULTIPART_THRESHOLD),
            )
            return False
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        response = client.put_object(Bucket=self.bucket, Key=location, Body=data, Metadata={"sha256": digest},
                                     ContentType=content_type, ContentMD5=base64.b64encode(md5).decode())
        return str(response.get("ETag", "")).strip('"') == md5.hex()

    def _download(self, location: str, max_bytes: int | None) -> bytes:
        body = self._client().get_object(Bucket=self.bucket, Key=location)["Body"]
        try:
            if max_bytes is None:
                data: bytes = body.read()
                return data
            return read_bounded(body, max_bytes, self.url_for(location))
        finally:
            body.close()

    def _head(self, location: str) -> ObjectInfo:
        response = self._client().head_object(Bucket=self.bucket, Key=location)
        metadata = response.get("Metadata") or {}
        return ObjectInfo(size=int(response.get("ContentLength", 0)), sha256=metadata.get("sha256"))

    def _remove(self, location: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=location)  # S3 itself answers 204 when absent

    def _probe_container(self) -> None:
        self._client().head_bucket(Bucket=self.bucket)

    # ------------------------------------------------------------------ errors
    def _place(self) -> str:
        return describe_endpoint(self.endpoint_url, self._client_instance)

    def _redact(self, text: str) -> str:
        return redact(text, (self._credentials or {}).values())

    def _credentials_hint(self) -> str:
        return (f"check the keys in the referenced Secret ({ACCESS_KEY_ID}, {SECRET_ACCESS_KEY}) "
                "and the bucket policy")

    def _identity_hint(self) -> str:
        return (f"grant that role access to bucket {self.bucket} in its IAM policy, "
                "or name a ServiceAccount whose role has it")

    def _read(self, exc: BaseException, action: str, target: str, key: str | None) -> Reading | StorageError:
        code = _error_code(exc)
        status = _response_field(exc, "ResponseMetadata", "HTTPStatusCode")
        status = int(status) if status else None
        shown = str(code or status)
        detail = self._redact(_error_message(exc))
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
            return Reading(Failure.UNREACHABLE, detail=detail, kind=kind)
        if code == "NoSuchBucket" or (key is None and (code in _MISSING_OBJECT_CODES or status == 404)):
            return Reading(Failure.CONTAINER_MISSING)
        if code in _AUTH_CODES or status == 403:
            return Reading(Failure.DENIED, shown)
        if code in _MISSING_OBJECT_CODES or status == 404:
            return Reading(Failure.MISSING, shown)
        if code in _THROTTLING_CODES or status == 429:
            return Reading(Failure.THROTTLED, shown, detail)
        if code in _RETRYABLE_CODES or (status is not None and status >= 500):
            return Reading(Failure.TEMPORARY, shown, detail)
        if kind in _CONFIG_ERROR_KINDS or code in _CONFIG_CODES:
            return Reading(Failure.INVALID, str(code or kind), detail)
        return Reading(Failure.OTHER, str(code or kind), detail)


def _operation(exc: BaseException) -> str | None:
    """The AWS operation a ClientError came from (AssumeRoleWithWebIdentity when the
    credentials could not be had)."""
    name = getattr(_unwrap(exc), "operation_name", None)
    return str(name) if name else None


def _unwrap(exc: BaseException) -> BaseException:
    """boto3's S3UploadFailedError wraps the ClientError of a managed (multipart) upload."""
    if type(exc).__name__ == "S3UploadFailedError":
        inner = exc.__cause__ or exc.__context__
        if inner is not None:
            return inner
    return exc


def _response_field(exc: BaseException, section: str, name: str) -> Any:
    """``response[section][name]`` of a botocore ClientError (None for other exceptions)."""
    response = getattr(_unwrap(exc), "response", None)
    if isinstance(response, Mapping):
        return (response.get(section) or {}).get(name)
    return None


def _error_code(exc: BaseException) -> str | None:
    code = _response_field(exc, "Error", "Code")
    if code:
        return str(code)
    text = str(exc)
    for candidate in ("NoSuchBucket", "NoSuchKey", *sorted(_AUTH_CODES)):
        if f"({candidate})" in text:  # S3UploadFailedError's message when it does not chain
            return candidate
    return None


def _error_message(exc: BaseException) -> str:
    message = _response_field(exc, "Error", "Message")
    return str(message) if message else str(_unwrap(exc))
