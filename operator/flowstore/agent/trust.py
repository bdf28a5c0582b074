"""Where an agent's credentials may go: a StoredFlow's status checked against what the agent
trusts, before any request that carries them.

``status.storage`` says where a flow lives — a bucket and its endpoint, a git host, a registry, a
webhook URL — and the agent then talks to that place with *its own* credentials (``GIT_TOKEN``,
cloud keys, a registry login, environment values in webhook templates). Whoever may write
``storedflows/status`` is not the tenant who wrote the spec, so the place is only believed when
something that status writer cannot edit names the same one:

- the StoredFlow's FlowStorage (``spec.storageRef``), its spec read from the API: the default,
  for agents allowed to ``get flowstorages`` in the namespace;
- or the agent's own list, ``FLOWSTORE_TRUSTED_STORAGES``: for agents that cannot read
  FlowStorages (or should trust less than every FlowStorage of a namespace);
- (later: a statement signed by the operator that binds the place to the artifact — a
  :data:`TrustSource` like the two above).

"The same place" is declared per backend (:data:`flowstore.api.backends.STATUS_FIELDS`): every
*place* field (type, endpoint, bucket / container / repository / URL / host, key prefix) equal
after light normalization (whitespace, a trailing ``/``), and the StoredFlow's location under the
trusted key prefix. A mismatch is :class:`UntrustedLocation`, naming both places and what to do.
The document the agent then builds its storage from (:func:`agent_storage`) keeps only the
place fields just checked and the per-revision fields; anything else a status adds (client
options, ``allowedEnv``, …) is dropped, so it cannot steer a request either.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from flowstore.agent.errors import StatusError, TrustUnavailable, UntrustedLocation
from flowstore.agent.status import StoredFlowView
from flowstore.api.backends import BACKEND_KEYS, STATUS_COMMON_FIELDS, STATUS_FIELDS, StatusFields, backend

#: the environment variable naming the storages an agent trusts (YAML text, or a file's path)
ALLOWLIST_ENV = "FLOWSTORE_TRUSTED_STORAGES"
#: place fields that are URLs or hosts: compared without a trailing "/" or surrounding spaces
_URL_FIELDS = frozenset({"endpointURL", "accountURL", "apiURL", "host", "registryURL", "url"})
_REQUEST_FIELDS = frozenset({"buildRequest", "getFlowRequest", "deleteRequest"})
#: revision fields handed to git or a registry as a ref, a commit or a tag
_REF_FIELDS = frozenset({"ref", "commit", "requestedRef", "imageTag", "imageDigest"})
_COMMIT = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_MAX_ALLOWLIST_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TrustedLocation:
    """A place the agent trusts for a StoredFlow: a storage type and its place fields, spelled as
    a FlowStorage spec block spells them, and what vouches for it (named in messages)."""

    type: str  # the storage class name: S3, Local, Git, ...
    place: Mapping[str, Any]
    source: str  # e.g. "FlowStorage data/team-s3 (spec.s3)"
    #: the namespaces this location is trusted for (None: the StoredFlow's own, as for a FlowStorage)
    namespaces: frozenset[str] | None = None
    #: what to do when a status names another place (said in UntrustedLocation's message)
    remedy: str = ("If the FlowStorage was just changed, wait until the StoredFlow is stored again (kubectl wait "
                   "--for=condition=Ready storedflow/NAME -n NAMESPACE); otherwise the status was edited: check who "
                   "may write storedflows/status")


#: asks one thing the agent trusts: the locations it vouches for this StoredFlow, or None when it
#: has nothing to say (the next source is asked)
TrustSource = Callable[[StoredFlowView], Sequence[TrustedLocation] | None]


def trusted_location(view: StoredFlowView, sources: Sequence[TrustSource], *,
                     environ: Mapping[str, str] | None = None) -> TrustedLocation:
    """The trusted location `view`'s status matches, from the first of `sources` that answers;
    UntrustedLocation when it matches none, TrustUnavailable when no source answers."""
    for source in sources:
        locations = source(view)
        if locations is not None:
            return check(view, locations, environ=environ)
    raise TrustUnavailable(f"{view.what}: nothing this agent trusts says where the flow may be; give it "
                           f"get on flowstorages in namespace {view.namespace}, or set {ALLOWLIST_ENV}")


# ---------------------------------------------------------------------- sources
def from_flowstorage(obj: Any, *, namespace: str, name: str) -> TrustedLocation:
    """The location a FlowStorage object's spec names (the tenant's word; the status writer
    cannot change a spec)."""
    what = f"FlowStorage {namespace}/{name}"
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    if not isinstance(spec, Mapping):
        raise TrustUnavailable(f"{what} has no spec; cannot tell where its flows may be")
    key, block = _backend_block(spec, what)
    return TrustedLocation(type=_class_name(key), place=block, source=f"{what} (spec.{key})")


def from_allowlist(text: str, *, origin: str = ALLOWLIST_ENV) -> list[TrustedLocation]:
    """The entries of an agent's list of trusted storages: YAML, a list of FlowStorage spec
    blocks, each optionally limited to some namespaces::

        - s3: {bucket: flows, region: eu-west-1, keyPrefix: prod/}
          namespaces: [data]
        - git: {url: https://git.example.com/team/flows.git}
    """
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrustUnavailable(f"{origin} is not valid YAML ({str(exc)[:200]}); it lists trusted storages, e.g. "
                               "[{s3: {bucket: flows, region: eu-west-1}}]") from None
    if not isinstance(entries, list):
        raise TrustUnavailable(f"{origin} must be a list of storage blocks, e.g. [{{s3: {{bucket: flows}}}}]")
    locations = []
    for index, entry in enumerate(entries, 1):
        what = f"entry {index} of {origin}"
        if not isinstance(entry, Mapping):
            raise TrustUnavailable(f"{what} is not a mapping such as {{s3: {{bucket: flows}}}}")
        unknown = sorted(str(k) for k in entry if k not in BACKEND_KEYS and k != "namespaces")
        if unknown:
            raise TrustUnavailable(f"{what} has unknown field(s) {', '.join(unknown)}; known: "
                                   f"{', '.join(BACKEND_KEYS)}, namespaces")
        namespaces = entry.get("namespaces")
        if namespaces is not None and (not isinstance(namespaces, list)
                                       or not all(isinstance(n, str) and n for n in namespaces)):
            raise TrustUnavailable(f"{what}: namespaces must be a list of namespace names")
        key, block = _backend_block(entry, what)
        locations.append(TrustedLocation(
            type=_class_name(key), place=block, source=what,
            namespaces=frozenset(namespaces) if namespaces is not None else None,
            remedy=f"If this agent should use that storage, add it to {origin}; otherwise the status was edited: "
                   "check who may write storedflows/status"))
    return locations


def allowlist_source(environ: Mapping[str, str] | None = None) -> TrustSource:
    """A source answering from ``FLOWSTORE_TRUSTED_STORAGES`` (YAML text, or the absolute path of
    a YAML file) when it is set: then it alone decides. Unset: it has nothing to say."""
    env = os.environ if environ is None else environ

    def source(view: StoredFlowView) -> Sequence[TrustedLocation] | None:
        value = env.get(ALLOWLIST_ENV)
        if value is None:
            return None
        if not value.strip():
            raise TrustUnavailable(f"{ALLOWLIST_ENV} is set but empty: unset it (the FlowStorage is then read) or "
                                   "list the storages this agent trusts")
        origin = ALLOWLIST_ENV
        if value.startswith("/"):
            origin = f"{ALLOWLIST_ENV} ({value})"
            try:
                with open(value, "rb") as fh:
                    value = fh.read(_MAX_ALLOWLIST_BYTES + 1).decode("utf-8")
            except (OSError, UnicodeError) as exc:
                raise TrustUnavailable(f"cannot read {origin}: {exc}") from None
        return [loc for loc in from_allowlist(value, origin=origin)
                if loc.namespaces is None or view.namespace in loc.namespaces]

    return source


def _backend_block(spec: Mapping[str, Any], what: str) -> tuple[str, Mapping[str, Any]]:
    present = [k for k in BACKEND_KEYS if k in spec]
    if len(present) != 1 or not isinstance(spec[present[0]], Mapping):
        raise TrustUnavailable(f"{what} names {'no' if not present else 'more than one'} storage backend "
                               f"({', '.join(BACKEND_KEYS)}); cannot tell where its flows may be")
    return present[0], spec[present[0]]


def _class_name(key: str) -> str:
    row = backend(key)
    assert row is not None
    return row.class_name


# ---------------------------------------------------------------------- the check
def check(view: StoredFlowView, trusted: Sequence[TrustedLocation], *,
          environ: Mapping[str, str] | None = None) -> TrustedLocation:
    """The first of `trusted` whose place `view`'s status names (same type, same place fields,
    the location under its key prefix). UntrustedLocation otherwise, naming the differences."""
    fields = _fields(view)
    mismatches: list[tuple[TrustedLocation, list[str]]] = []
    for location in trusted:
        if location.type != view.storage_type:
            mismatches.append((location, [f"the type is {view.storage_type} in the status but {location.type} "
                                          f"in {location.source}"]))
            continue
        differences = _differences(view, location, fields, environ)
        if not differences:
            return location
        mismatches.append((location, differences))
    if not trusted:
        raise UntrustedLocation(
            f"{view.what}: its status names {_describe(view.storage_type, view.storage, fields)}, and nothing "
            f"this agent trusts names any storage for namespace {view.namespace}. Refusing to send this agent's "
            f"credentials there: nothing was requested. Add the storage to {ALLOWLIST_ENV}, or unset it to check "
            "against the StoredFlow's FlowStorage")
    location, differences = next(((loc, d) for loc, d in mismatches if loc.type == view.storage_type),
                                 mismatches[0])
    others = f" (and {len(mismatches) - 1} other trusted storage(s))" if len(mismatches) > 1 else ""
    remedy = location.remedy.replace("storedflow/NAME -n NAMESPACE", f"storedflow/{view.name} -n {view.namespace}")
    raise UntrustedLocation(
        f"{view.what}: its status points where {location.source}{others} does not: "
        f"{'; '.join(differences)}. Refusing to send this agent's credentials there: nothing was requested. {remedy}")


def _fields(view: StoredFlowView) -> StatusFields:
    fields = STATUS_FIELDS.get(view.storage_type)
    if fields is None:
        raise StatusError(f"{view.what}: status.storage.type {view.storage_type[:40]!r} is no storage this agent "
                          f"knows ({', '.join(STATUS_FIELDS)}); upgrade flowstore on the agent")
    return fields


def _differences(view: StoredFlowView, location: TrustedLocation, fields: StatusFields,
                 environ: Mapping[str, str] | None) -> list[str]:
    status, place = view.storage, dict(location.place)
    if view.storage_type == "Azure" and not place.get("accountURL"):
        # the account is in the FlowStorage's Secret, which the agent cannot see: only the
        # account of the agent's own connection string is trusted
        place["accountURL"] = _own_azure_account(environ)
    differences = []
    for field in fields.place:
        if field == "imageName" and view.storage_type == "Docker":
            ours, theirs = _docker_repository(status), _docker_repository(place)
        else:
            ours, theirs = _normal(field, status.get(field)), _normal(field, place.get(field))
        if ours != theirs:
            differences.append(f"{field} is {_show(field, ours)} in status.storage but {_show(field, theirs)} in "
                               f"{location.source}")
    if not differences:
        reason = _location_outside(view, place, fields)
        if reason:
            differences.append(reason)
    return differences


def _location_outside(view: StoredFlowView, place: Mapping[str, Any], fields: StatusFields) -> str | None:
    """Why status.location is not where the trusted place keeps this flow, or None."""
    location = view.location
    if view.storage_type == "Local":
        directory = posixpath.normpath(str(place.get("directory") or ""))
        resolved = posixpath.normpath(posixpath.join(directory, location))
        if not resolved.startswith(directory.rstrip("/") + "/"):
            return f"status.location {location[:200]!r} is outside the directory {directory}"
        return None
    if fields.key is None:
        return None  # git paths, image paths, webhook ids: within the place already checked
    if view.key:  # spec.key: the tenant chose the location
        expected = view.key
    elif place.get(fields.key):
        expected = str(place[fields.key])
    else:
        prefix = str(place.get(fields.prefix or "") or "").strip("/")
        if prefix and not location.startswith(prefix + "/"):
            return f"status.location {location[:200]!r} is not under the key prefix {prefix}/"
        return None
    if location != expected:
        return f"status.location {location[:200]!r} is not the key {expected!r}"
    return None


def _normal(field: str, value: Any) -> Any:
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, str):
        value = value.strip()
        return (value.rstrip("/") if field in _URL_FIELDS else value) or None
    if field in _REQUEST_FIELDS and isinstance(value, Mapping):
        request = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in value.items() if v is not None}
        method = request.get("method") or ("DELETE" if field == "deleteRequest" else "")
        request["method"] = str(method).upper()
        return request
    return value


def _docker_repository(place: Mapping[str, Any]) -> tuple[str, str] | None:
    """(registry host, repository path) of a Docker storage's image: the status carries the full
    repository (``host/prefix/name``), a spec the name under ``registryURL``."""
    registry = str(place.get("registryURL") or "").strip()
    if not registry:
        return None
    rest = registry.partition("://")[2] if "://" in registry else registry
    host, _, prefix = rest.strip("/").partition("/")
    name = str(place.get("imageName") or "").strip() or _default_image_name()
    if name.startswith(host + "/"):
        return host, name[len(host) + 1:]
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, name.partition("/")[2]  # another registry: never equal to the trusted one
    return host, f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


def _default_image_name() -> str:
    from flowstore.storage.docker.base import DEFAULT_IMAGE_NAME  # only for Docker statuses

    return DEFAULT_IMAGE_NAME


def _own_azure_account(environ: Mapping[str, str] | None) -> str | None:
    from flowstore.storage.azure import CONNECTION_STRING_ENV, endpoint_of
    from flowstore.storage.errors import InvalidConfig

    value = (os.environ if environ is None else environ).get(CONNECTION_STRING_ENV)
    if not value:
        return None
    try:
        return endpoint_of(value)
    except InvalidConfig:
        return None


def _show(field: str, value: Any) -> str:
    if value is None:
        return "not set"
    if field in _REQUEST_FIELDS and isinstance(value, Mapping):  # headers may hold literal tokens: never shown
        return f"{value.get('method', '')} {str(value.get('url', ''))[:200]!r}".strip()
    if isinstance(value, tuple):
        return repr("/".join(value))[:200]
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(storage_type: str, doc: Mapping[str, Any], fields: StatusFields) -> str:
    shown = ", ".join(f"{f} {_show(f, _normal(f, doc.get(f)))}" for f in fields.place if doc.get(f) is not None)
    return f"{storage_type} storage ({shown})" if shown else f"{storage_type} storage"


# ---------------------------------------------------------------------- what the agent then uses
def agent_storage(view: StoredFlowView, trusted: TrustedLocation) -> dict[str, Any]:
    """The storage document the agent builds its storage from (``from_serialized``): the type,
    the place fields just checked, the per-revision fields (type-checked), the format flags and
    the one flow. Nothing else of ``status.storage`` reaches a request."""
    fields = _fields(view)
    if trusted.type != view.storage_type:
        raise UntrustedLocation(f"{view.what}: the trusted location is {trusted.type}, not {view.storage_type}")
    status = view.storage
    doc: dict[str, Any] = {"type": view.storage_type}
    for field in fields.place:
        if status.get(field) is not None:
            doc[field] = status[field]
    for field in fields.revision:
        value = status.get(field)
        if value is None:
            continue
        if field == "buildResponse":
            ok = isinstance(value, Mapping)
        elif field == "bundleIgnore":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str) and len(value) <= 4096
        if ok and field in _REF_FIELDS:  # handed to git or a registry: never an option, never two words
            ok = bool(value) and not value.startswith("-") and value.isprintable() and not any(c.isspace()
                                                                                              for c in value)
        if not ok:
            raise StatusError(f"{view.what}: status.storage.{field} is {type(value).__name__} {str(value)[:60]!r}, "
                              "not what the operator writes there; the status was edited or written by an "
                              "incompatible version")
        doc[field] = value
    pinned = doc.get("commit" if view.storage_type == "CodeCommit" else "ref")
    if "requestedRef" in doc and not (isinstance(pinned, str) and _COMMIT.match(pinned)):
        raise StatusError(f"{view.what}: status.storage pins {str(pinned)[:60]!r}, not a commit id; the operator "
                          "pins git-hosted flows to full commit ids (the status was edited)")
    stored_as_script = status.get("storedAsScript")
    doc["storedAsScript"] = stored_as_script if isinstance(stored_as_script, bool) else view.artifact.format != "pickle"
    for field in ("labels", "secrets"):
        value = status.get(field)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            doc[field] = value
    doc["flows"] = {view.flow_name: view.location}
    assert set(doc) <= {"type", *fields.place, *fields.revision, *STATUS_COMMON_FIELDS}
    return doc

