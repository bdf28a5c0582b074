"""Names other tools rely on (ARCHITECTURE.md "Fixed names"), and condition vocabulary."""

from __future__ import annotations

from typing import Final

GROUP: Final = "flowstore.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

FLOWSTORAGE_KIND: Final = "FlowStorage"
FLOWSTORAGE_PLURAL: Final = "flowstorages"
STOREDFLOW_KIND: Final = "StoredFlow"
STOREDFLOW_PLURAL: Final = "storedflows"

FINALIZER: Final = "flowstore.dev/cleanup"
#: Set to any new value (e.g. a timestamp) to reconcile now, with a full drift check; the
#: value handled last is echoed in status.lastHandledReconcileAt (Flux's requestedAt pattern).
REQUESTED_AT_ANNOTATION: Final = "flowstore.dev/requested-at"

class ConditionType:
    """kstatus condition types."""

    READY: Final = "Ready"
    RECONCILING: Final = "Reconciling"
    STALLED: Final = "Stalled"
    #: present only while spec.suspend (the object's or its FlowStorage's) is true
    SUSPENDED: Final = "Suspended"
    #: git-hosted storages with spec.<backend>.verify: whether the pinned commit (and tag) was
    #: verified, and by which key (Flux's SourceVerified)
    SOURCE_VERIFIED: Final = "SourceVerified"
    #: StoredFlow, present only while spec.pin is set: True while the pinned revision is current,
    #: False (PinNotFound) when it is not in status.history
    PINNED: Final = "Pinned"


class Reason:
    """Condition reasons: the one vocabulary. One per failure a person can tell apart in
    `kubectl describe`. Errors carry one of these (``StorageError.reason``, ``BuildError.reason``,
    ``ReconcileError``); tests/unit/test_vocabulary.py checks that every reason raised anywhere is
    declared here and that every one declared here is used."""

    SUCCEEDED: Final = "Succeeded"
    PROGRESSING: Final = "Progressing"
    SUSPENDED: Final = "Suspended"
    # Spec and references
    STORAGE_NOT_FOUND: Final = "StorageNotFound"
    #: the FlowStorage exists but another operator's shard (label flowstore.dev/shard) serves it
    STORAGE_ON_OTHER_SHARD: Final = "StorageOnOtherShard"
    SOURCE_NOT_FOUND: Final = "SourceNotFound"
    SECRET_NOT_FOUND: Final = "SecretNotFound"  # noqa: S105 - a reason, not a secret
    INVALID_SPEC: Final = "InvalidSpec"
    NAME_CONFLICT: Final = "NameConflict"
    # Revisions (spec.pin): the Pinned condition's reasons
    REVISION_PINNED: Final = "RevisionPinned"
    PIN_NOT_FOUND: Final = "PinNotFound"
    # Building the flow from its source
    SCRIPT_SYNTAX_ERROR: Final = "ScriptSyntaxError"
    SCRIPT_FAILED: Final = "ScriptFailed"
    FLOW_NOT_FOUND: Final = "FlowNotFound"
    FLOW_AMBIGUOUS: Final = "FlowAmbiguous"
    UNPICKLABLE: Final = "Unpicklable"
    BUILD_TIMEOUT: Final = "BuildTimeout"
    BUILD_OUT_OF_MEMORY: Final = "BuildOutOfMemory"
    #: the kernel cannot confine a sandbox build fully, and the operator does not allow less
    SANDBOX_UNAVAILABLE: Final = "SandboxUnavailable"
    # Builder Jobs (spec.build)
    IMAGE_PULL_FAILED: Final = "ImagePullFailed"
    BUILD_IMAGE_UNUSABLE: Final = "BuildImageUnusable"
    BUILD_FORBIDDEN: Final = "BuildForbidden"
    BUILD_TOO_LARGE: Final = "BuildTooLarge"
    #: spec.build asks for what the operator's build policy does not allow (or builds are off)
    BUILD_NOT_ALLOWED: Final = "BuildNotAllowed"
    # Backends
    AUTH_FAILED: Final = "AuthFailed"
    BUCKET_NOT_FOUND: Final = "BucketNotFound"
    BACKEND_UNAVAILABLE: Final = "BackendUnavailable"
    BACKEND_ERROR: Final = "BackendError"
    ARTIFACT_MISSING: Final = "ArtifactMissing"
    INTEGRITY_ERROR: Final = "IntegrityError"
    TEMPLATE_VALUE_MISSING: Final = "TemplateValueMissing"
    REQUEST_REJECTED: Final = "RequestRejected"
    # The operator's policy (docs/security.md): what it lends a spec's author
    #: a Webhook URL reaches an address the operator's endpoint policy refuses
    ENDPOINT_NOT_ALLOWED: Final = "EndpointNotAllowed"
    #: a spec names a Secret the operator's Secret policy does not let it use (not opted in)
    SECRET_NOT_ALLOWED: Final = "SecretNotAllowed"  # noqa: S105 - a reason, not a secret
    #: a Local FlowStorage, and the operator has no Local root (--local-root)
    LOCAL_STORAGE_DISABLED: Final = "LocalStorageDisabled"
    #: spec.local.directory is not under <local root>/<namespace>
    OUTSIDE_LOCAL_ROOT: Final = "OutsideLocalRoot"
    # Git-hosted storages
    RATE_LIMITED: Final = "RateLimited"
    REPOSITORY_NOT_FOUND: Final = "RepositoryNotFound"
    REF_NOT_FOUND: Final = "RefNotFound"
    FILE_NOT_FOUND: Final = "FileNotFound"
    #: spec.<backend>.verify: the commit (or tag) is unsigned, or signed by a key the Secret does not hold
    VERIFICATION_FAILED: Final = "VerificationFailed"
    # Docker storage
    HEALTHCHECK_FAILED: Final = "HealthcheckFailed"
    BASE_IMAGE_NOT_FOUND: Final = "BaseImageNotFound"
    DEPENDENCY_INSTALL_FAILED: Final = "DependencyInstallFailed"
    DOCKERFILE_INVALID: Final = "DockerfileInvalid"
    BUILD_FAILED: Final = "BuildFailed"
    PUSH_FAILED: Final = "PushFailed"
    RUN_FAILED: Final = "RunFailed"
    DAEMON_UNAVAILABLE: Final = "DaemonUnavailable"
    REGISTRY_UNAVAILABLE: Final = "RegistryUnavailable"
    # Cloud identity (spec.serviceAccountName, and the ambient-identity policy)
    AMBIENT_IDENTITY_NOT_ALLOWED: Final = "AmbientIdentityNotAllowed"
    SERVICE_ACCOUNT_NOT_FOUND: Final = "ServiceAccountNotFound"
    IDENTITY_NOT_CONFIGURED: Final = "IdentityNotConfigured"
    TOKEN_REQUEST_FAILED: Final = "TokenRequestFailed"  # noqa: S105 - a reason, not a secret
    IDENTITY_REJECTED: Final = "IdentityRejected"


#: labels of the objects the operator makes (builder Jobs and their ConfigMaps)
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "flowstore"
STOREDFLOW_LABEL: Final = "flowstore.dev/storedflow"
BUILD_LABEL: Final = "flowstore.dev/build"
#: a Secret labelled so (value "true") may be used by FlowStorages (the operator's default
#: --secret-policy opt-in): whoever may label it agrees to lend it (docs/security.md)
SECRET_OPT_IN_LABEL: Final = "flowstore.dev/allow"  # noqa: S105 - a label key, not a secret


class EventReason:
    """Reasons of the Normal Events the operator posts (Warning Events carry a :class:`Reason`)."""

    STORED: Final = "Stored"
    PINNED: Final = "Pinned"
    #: the status was signed again (a new key) without storing anything
    SIGNED: Final = "Signed"
    #: a revision still in history made current again (a revert, a pin, an unpin): nothing uploaded
    REVERTED: Final = "Reverted"
    RETAINED: Final = "Retained"
    DELETED: Final = "Deleted"
    CLEANUP_FAILED: Final = "CleanupFailed"
    #: a status record the operator did not write (no valid seal: ``api/seals.py``) was not acted on
    RECORD_IGNORED: Final = "RecordIgnored"
