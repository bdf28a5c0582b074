"""A small Docker Registry HTTP API V2 client: manifests, blobs, and files inside image layers.

Enough to read a flow straight out of a pushed image without a Docker daemon, verifying every
byte against its digest, and to push blobs and manifests (the Docker storage's flow layers).
Authentication: HTTP basic, or the Bearer token flow the registry asks
for in ``WWW-Authenticate`` (``Bearer realm=…,service=…,scope=…``). Errors are the storage
taxonomy: 401/403 → AuthFailed, 404 → NotFound, connection errors, 5xx and the refusals a later
attempt may not meet → RegistryUnavailable (:func:`registry_error`).
Messages never contain the password.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import io
import ipaddress
import json
import posixpath
import re
import tarfile
import threading
from collections.abc import Container, Iterable, Mapping
from typing import Any

import requests

from flowstore.storage.docker.errors import RegistryUnavailable
from flowstore.storage.endpoints import EndpointPolicy, guarded_session
from flowstore.storage.errors import AuthFailed, IntegrityError, NotFound, Rejected, StorageError

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ", ".join([MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX])
_INDEX_TYPES = frozenset({MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX})
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
#: connect / read timeouts (seconds)
TIMEOUT = (5.0, 120.0)
#: symlinks followed when reading a file, at most
MAX_SYMLINKS = 16
#: verified blobs up to this size are kept in memory (they are content-addressed), up to the total
BLOB_CACHE_ITEM = 8 * 1024 * 1024
BLOB_CACHE_TOTAL = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Manifest:
    """An image manifest (never an index: indexes are resolved to their linux/amd64 entry)."""

    digest: str  # sha256:… of `raw`
    media_type: str
    raw: bytes
    doc: Mapping[str, Any]

    @property
    def config_digest(self) -> str:
        return str(self.doc["config"]["digest"])

    @property
    def layers(self) -> list[dict[str, Any]]:
        return [dict(layer) for layer in self.doc.get("layers") or []]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def split_registry(registry_url: str) -> tuple[str, str, str]:
    """``[scheme://]host[:port][/path]`` -> (scheme or "", host[:port], path prefix without slashes)."""
    scheme, sep, rest = registry_url.partition("://")
    if not sep:
        scheme, rest = "", registry_url
    host, _, prefix = rest.strip("/").partition("/")
    return scheme.lower(), host, prefix.strip("/")


def default_scheme(host: str) -> str:
    """Docker's rule: loopback registries are plain HTTP, everything else HTTPS."""
    hostname = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if hostname == "localhost":
        return "http"
    try:
        return "http" if ipaddress.ip_address(hostname).is_loopback else "https"
    except ValueError:
        return "https"


class RegistryClient:
    """A client for one registry. `auth_hint` is appended to authentication errors (e.g. which
    Secret holds the credentials). With `endpoints` (the operator's policy for a FlowStorage's
    registry), every connection goes only to an address the policy allows, pinned after the check:
    the registry itself, each redirect hop (blob downloads), the token service its challenge
    names and the upload locations it answers — all chosen by whoever runs the registry."""

    def __init__(self, registry: str, username: str | None = None, password: str | None = None, *,
                 scheme: str | None = None, auth_hint: str = "", timeout: tuple[float, float] = TIMEOUT,
                 verify: bool | str = True, endpoints: EndpointPolicy | None = None) -> None:
        given_scheme, host, _ = split_registry(registry)
        if not host:
            raise ValueError(f"registry {registry!r} has no host")
        self.host = host
        self.base = f"{scheme or given_scheme or default_scheme(host)}://{host}"
        self.username = username
        self._password = password
        self.auth_hint = auth_hint
        self.timeout = timeout
        self._session = guarded_session(endpoints) if endpoints is not None else requests.Session()
        self._session.verify = verify
        self.endpoints = endpoints
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._basic = False  # the registry asked for basic auth: send it up front from now on
        self._blobs: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # digest -> verified bytes

    def __repr__(self) -> str:
        return f"RegistryClient({self.base!r}, username={self.username!r})"

    def restrict(self, endpoints: EndpointPolicy) -> None:
        """From now on, connect only where `endpoints` allows (as if given to the constructor)."""
        verify = self._session.verify
        self._session = guarded_session(endpoints)
        self._session.verify = verify
        self.endpoints = endpoints

    # ------------------------------------------------------------------ HTTP
    def _auth_error(self, status: int, what: str) -> AuthFailed:
        if status == 401:
            verb = f"rejected the credentials of {self.username!r}" if self.username else "requires credentials"
        else:
            verb = f"denied {self.username!r} access" if self.username else "denied anonymous access"
        hint = f"; {self.auth_hint}" if self.auth_hint else ""
        return AuthFailed(f"registry {self.host} {verb} (HTTP {status}) to {what}{hint}")

    def _send(self, method: str, url: str, headers: Mapping[str, str], what: str, *,
              auth: Any = None, stream: bool = False, data: bytes | None = None) -> requests.Response:
        try:
            return self._session.request(method, url, headers=dict(headers), auth=auth, timeout=self.timeout,
                                         stream=stream, allow_redirects=True, data=data)
        except requests.exceptions.SSLError as exc:
            raise RegistryUnavailable(f"registry {self.host}: TLS failed for {what}: {type(exc).__name__}") from None
        except requests.exceptions.RequestException as exc:
            raise RegistryUnavailable(f"registry {self.host} is unreachable ({what}): "
                                      f"{type(exc).__name__}: {_short(exc)}") from None

    def _token(self, challenge: Mapping[str, str], scope: str, what: str) -> str:
        realm = challenge.get("realm")
        if not realm:
            raise Rejected(f"registry {self.host} sent a Bearer challenge without a realm ({what})")
        params = {"service": challenge.get("service", ""), "scope": challenge.get("scope", scope)}
        auth = (self.username, self._password) if self.username and self._password is not None else None
        try:
            resp = self._session.get(realm, params={k: v for k, v in params.items() if v}, auth=auth,
                                     timeout=self.timeout)
        except requests.exceptions.RequestException as exc:
            raise RegistryUnavailable(f"token service {realm} of registry {self.host} is unreachable: "
                                      f"{type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            raise self._auth_error(resp.status_code, f"a token ({what})")
        if resp.status_code >= 500:
            raise RegistryUnavailable(f"token service {realm} answered HTTP {resp.status_code} ({what})")
        if resp.status_code != 200:
            raise Rejected(f"token service {realm} answered HTTP {resp.status_code} ({what})")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise Rejected(f"token service {realm} of registry {self.host} returned no token ({what})")
        return token

    def request(self, method: str, path: str, *, repo: str, what: str, headers: Mapping[str, str] | None = None,
                stream: bool = False, ok: tuple[int, ...] = (200,), data: bytes | None = None,
                push: bool = False, delete: bool = False) -> requests.Response:
        """One authenticated request; answers 401 challenges once (basic or bearer). `path` may
        be a full URL (upload locations). `push` asks bearer registries for a push token,
        `delete` for one that may delete too."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        actions = "pull,push,delete" if delete else "pull,push" if push else "pull"
        scope = f"repository:{repo}:{actions}" if repo else ""
        hdrs = dict(headers or {})
        basic = (self.username, self._password) if self.username and self._password is not None else None
        with self._lock:
            token = self._tokens.get(scope)
            use_basic = self._basic
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        resp = self._send(method, url, hdrs, what, auth=basic if use_basic and not token else None, stream=stream,
                          data=data)
        if resp.status_code == 401:
            kind, challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            resp.close()
            if kind == "bearer":
                token = self._token(challenge, scope, what)
                with self._lock:
                    self._tokens[scope] = token
                hdrs["Authorization"] = f"Bearer {token}"
                resp = self._send(method, url, hdrs, what, stream=stream, data=data)
            elif kind == "basic" and basic is not None and not use_basic:
                with self._lock:
                    self._basic = True
                resp = self._send(method, url, hdrs, what, auth=basic, stream=stream, data=data)
        if resp.status_code in ok:
            return resp
        status = resp.status_code
        text = "" if method == "HEAD" else resp.text
        resp.close()
        if status in (401, 403):
            raise self._auth_error(status, what)
        raise registry_error(self.host, status, text, what)

    # ------------------------------------------------------------------ API
    def ping(self) -> None:
        """Check that the registry answers and accepts the credentials (GET /v2/)."""
        self.request("GET", "/v2/", repo="", what="the API root")

    def manifest_digest(self, repo: str, tag: str) -> str | None:
        """The manifest digest `repo:tag` points to (HEAD), or None when it does not exist."""
        what = f"manifest {repo}:{tag}"
        try:
            resp = self.request("HEAD", f"/v2/{repo}/manifests/{tag}", repo=repo, what=what,
                                headers={"Accept": MANIFEST_ACCEPT})
        except NotFound:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if digest and _DIGEST.match(digest):
            return digest
        return self.manifest(repo, tag, resolve_index=False).digest  # no header: hash the bytes

    def manifest(self, repo: str, ref: str, *, resolve_index: bool = True) -> Manifest:
        """The manifest `ref` (tag or digest). A digest ref is verified against the bytes; an index
        or manifest list resolves to its linux/amd64 image manifest (unless `resolve_index` is off)."""
        what = f"manifest {repo}@{ref}" if ref.startswith("sha256:") else f"manifest {repo}:{ref}"
        resp = self.request("GET", f"/v2/{repo}/manifests/{ref}", repo=repo, what=what,
                            headers={"Accept": MANIFEST_ACCEPT})
        raw = resp.content
        actual = sha256_digest(raw)
        header = resp.headers.get("Docker-Content-Digest")
        if ref.startswith("sha256:") and actual != ref:
            raise IntegrityError(f"registry {self.host}: {what} has digest {actual}; refusing it")
        if header and header.startswith("sha256:") and header != actual:
            raise IntegrityError(f"registry {self.host}: {what} bytes hash to {actual}, the registry says {header}")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise Rejected(f"registry {self.host}: {what} is not JSON") from None
        media_type = str(doc.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0])
        if media_type in _INDEX_TYPES or "manifests" in doc:
            if not resolve_index:
                return Manifest(actual, media_type, raw, doc)
            entry = pick_platform(doc.get("manifests") or [])
            if entry is None:
                raise NotFound(f"registry {self.host}: {what} has no linux/amd64 image")
            return self.manifest(repo, str(entry["digest"]))
        if "layers" not in doc or "config" not in doc:
            raise Rejected(f"registry {self.host}: {what} is not an image manifest (media type {media_type!r}; "
                           "schema 1 manifests are not supported)")
        return Manifest(actual, media_type, raw, doc)

    def blob(self, repo: str, digest: str) -> bytes:
        """The blob `digest`, verified."""
        if not _DIGEST.match(digest):
            raise Rejected(f"unsupported blob digest {digest!r} (sha256 only)")
        key = f"{repo}@{digest}"  # per repository: reading it again must stay authorised there
        with self._lock:
            if key in self._blobs:
                self._blobs.move_to_end(key)
                return self._blobs[key]
        what = f"blob {repo}@{digest}"
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, what=what, stream=True)
        hasher = hashlib.sha256()
        buf = io.BytesIO()
        try:
            for chunk in resp.iter_content(1 << 20):
                hasher.update(chunk)
                buf.write(chunk)
        except requests.exceptions.RequestException as exc:
            raise RegistryUnavailable(f"registry {self.host}: reading {what} failed: {type(exc).__name__}") from None
        finally:
            resp.close()
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise IntegrityError(f"registry {self.host}: {what} hashes to {actual} ({buf.tell()} bytes); refusing it")
        data = buf.getvalue()
        if len(data) <= BLOB_CACHE_ITEM:
            with self._lock:
                self._blobs[key] = data
                while sum(len(v) for v in self._blobs.values()) > BLOB_CACHE_TOTAL:
                    self._blobs.popitem(last=False)
        return data

    def config(self, repo: str, manifest: Manifest) -> dict[str, Any]:
        """The image configuration (verified) of `manifest`."""
        try:
            doc = json.loads(self.blob(repo, manifest.config_digest))
        except ValueError:
            raise Rejected(f"registry {self.host}: the image config of {repo}@{manifest.digest} is not JSON") from None
        return dict(doc)

    # ------------------------------------------------------------------ push
    def has_blob(self, repo: str, digest: str) -> bool:
        """Whether `repo` has the blob `digest` (HEAD)."""
        try:
            self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo, what=f"blob {repo}@{digest}", push=True)
        except NotFound:
            return False
        return True

    def push_blob(self, repo: str, data: bytes) -> int:
        """Upload `data` as a blob of `repo` unless the registry has it; the bytes sent (0 when
        it was there). A monolithic upload: POST for a location, then PUT with the digest
        (https://distribution.github.io/distribution/spec/api/#monolithic-upload)."""
        digest = sha256_digest(data)
        if self.has_blob(repo, digest):
            return 0
        what = f"blob upload {repo}@{digest}"
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo, what=what, ok=(202,), push=True)
        location = resp.headers.get("Location", "")
        resp.close()
        if not location:
            raise Rejected(f"registry {self.host} started {what} without a Location")
        if location.startswith("/"):
            location = self.base + location
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        self.request("PUT", location, repo=repo, what=what, ok=(201, 204), data=data, push=True,
                     headers={"Content-Type": "application/octet-stream"}).close()
        return len(data)

    def push_manifest(self, repo: str, tag: str, raw: bytes, media_type: str) -> str:
        """Store the manifest `raw` as `repo:tag`; its digest, checked against the registry's."""
        digest = sha256_digest(raw)
        what = f"manifest {repo}:{tag}"
        resp = self.request("PUT", f"/v2/{repo}/manifests/{tag}", repo=repo, what=what, ok=(201, 200), data=raw,
                            push=True, headers={"Content-Type": media_type})
        header = resp.headers.get("Docker-Content-Digest")
        resp.close()
        if header and header != digest:
            raise IntegrityError(f"registry {self.host} stored {what} as {header}, but its bytes hash to {digest}")
        return digest

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete manifest `repo@digest` (and the tags on it); 404 counts as deleted
        (https://distribution.github.io/distribution/spec/api/#deleting-an-image). A registry
        that does not allow deletes answers 405: Rejected, saying so."""
        what = f"manifest {repo}@{digest}"
        try:
            self.request("DELETE", f"/v2/{repo}/manifests/{digest}", repo=repo, what=what, ok=(202, 200, 204),
                         push=True, delete=True).close()
        except NotFound:
            return
        except Rejected as exc:
            if "HTTP 405" in exc.message:
                raise Rejected(f"registry {self.host} does not allow deleting {what} (HTTP 405); enable deletes "
                               "(distribution: storage.delete.enabled: true) or delete it there") from None
            raise

    def read_file(self, repo: str, manifest_digest: str, path: str) -> bytes:
        """The content of the file at absolute `path` in image `repo@manifest_digest`, from the
        topmost layer that has it (whiteouts and opaque directories honoured; symlinks followed).
        Raises NotFound when the image has no such file."""
        manifest = self.manifest(repo, manifest_digest)
        layers = manifest.layers
        cache: dict[int, tarfile.TarFile] = {}
        target = _norm(path)
        try:
            for _ in range(MAX_SYMLINKS):
                found = self._find(repo, layers, cache, target)
                if found is None:
                    raise NotFound(f"{path} is not in image {self.host}/{repo}@{manifest.digest}")
                tar, member = found
                if member.issym():
                    link = member.linkname
                    target = _norm(link if link.startswith("/") else posixpath.join(posixpath.dirname(target), link))
                    continue
                if not (member.isfile() or member.islnk()):
                    raise NotFound(f"{path} in image {self.host}/{repo}@{manifest.digest} is not a regular file")
                fh = tar.extractfile(member)
                if fh is None:
                    raise NotFound(f"{path} in image {self.host}/{repo}@{manifest.digest} has no content")
                return fh.read()
            raise NotFound(f"{path} in image {self.host}/{repo}@{manifest.digest}: too many symlinks")
        finally:
            for tar in cache.values():
                tar.close()

    def directory_entries(self, repo: str, manifest_digest: str, paths: Iterable[str]) -> dict[str, tarfile.TarInfo]:
        """The tar headers (owner, mode, time) of those absolute `paths` that are directories in
        image `repo@manifest_digest`, each from the topmost layer that has it (whiteouts and
        opaque directories honoured). Layers are streamed from the top down, headers only, and
        only until every path is settled: memory stays flat whatever the layers' size, and the
        directories flows go in are usually made by the image's last layers. Each layer read is
        checked against its digest."""
        manifest = self.manifest(repo, manifest_digest)
        wanted = {_norm(path): path for path in paths}
        out: dict[str, tarfile.TarInfo] = {}
        for layer in reversed(manifest.layers):
            if not wanted:
                break
            found: dict[str, tarfile.TarInfo] = {}
            whiteouts: set[str] = set()  # all _hidden_below needs of the layer's names
            for member in self._stream_members(repo, layer):
                name = _norm(member.name)
                if posixpath.basename(name).startswith(".wh."):
                    whiteouts.add(name)
                elif name in wanted:
                    found[name] = member
            for name in list(wanted):
                if name in found:
                    if found[name].isdir():
                        out[wanted[name]] = found[name]
                elif not _hidden_below(name, whiteouts):
                    continue  # not settled by this layer: look below
                del wanted[name]
        return out

    def _stream_members(self, repo: str, layer: Mapping[str, Any]) -> Iterable[tarfile.TarInfo]:
        """The tar headers of the layer blob, streamed (content skipped), then its digest checked."""
        digest, media_type = str(layer["digest"]), str(layer.get("mediaType", ""))
        if not _DIGEST.match(digest):
            raise Rejected(f"unsupported blob digest {digest!r} (sha256 only)")
        _check_layer_type(media_type)
        what = f"blob {repo}@{digest}"
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, what=what, stream=True)
        reader = _HashingReader(resp.iter_content(1 << 20))
        raw = io.BufferedReader(reader, 1 << 20)
        try:
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if raw.peek(2)[:2] == b"\x1f\x8b" else raw
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                yield from tar
            while raw.read(1 << 20):  # what follows the tar (padding) counts for the digest too
                pass
        except requests.exceptions.RequestException as exc:
            raise RegistryUnavailable(f"registry {self.host}: reading {what} failed: {type(exc).__name__}") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise Rejected(f"an image layer ({media_type or 'unknown type'}) is not a tar archive: {exc}") from None
        finally:
            resp.close()
        actual = "sha256:" + reader.hasher.hexdigest()
        if actual != digest:
            raise IntegrityError(f"registry {self.host}: {what} hashes to {actual}; refusing it")

    def _find(self, repo: str, layers: list[dict[str, Any]], cache: dict[int, tarfile.TarFile],
              target: str) -> tuple[tarfile.TarFile, tarfile.TarInfo] | None:
        for index in range(len(layers) - 1, -1, -1):
            if index not in cache:
                cache[index] = _open_layer(self.blob(repo, str(layers[index]["digest"])),
                                           str(layers[index].get("mediaType", "")))
            tar = cache[index]
            names = {_norm(m.name): m for m in tar.getmembers()}
            member = names.get(target)
            if member is not None:
                return tar, member
            if _hidden_below(target, names):
                return None
        return None


def _hidden_below(name: str, layer_names: Container[str]) -> bool:
    """Whether a layer with these (normalized) entry names hides the lower layers' `name`: a
    whiteout of it or of a directory above it, or an opaque marker in a directory above it
    (the OCI image spec's layer changesets)."""
    for path in (name, *_parents(name)):
        if _norm(posixpath.join(posixpath.dirname(path), ".wh." + posixpath.basename(path))) in layer_names:
            return True  # deleted in this layer
    # a directory above replaced in this layer: lower layers are hidden
    return any(_norm(posixpath.join(directory, ".wh..wh..opq")) in layer_names for directory in _parents(name))


class _HashingReader(io.RawIOBase):
    """A readable stream over `chunks` that hashes what passes through it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self.hasher.update(chunk)
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _check_layer_type(media_type: str) -> None:
    if "zstd" in media_type:
        raise Rejected(f"zstd-compressed layers ({media_type}) are not supported")


def _open_layer(data: bytes, media_type: str) -> tarfile.TarFile:
    _check_layer_type(media_type)
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    try:
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    except tarfile.TarError as exc:
        raise Rejected(f"an image layer ({media_type or 'unknown type'}) is not a tar archive: {exc}") from None


def _norm(path: str) -> str:
    """A tar member name or image path as ``a/b/c`` (no leading ``/`` or ``./``)."""
    return posixpath.normpath("/" + path).lstrip("/")


def _parents(path: str) -> list[str]:
    out, parent = [], posixpath.dirname(path)
    while parent:
        out.append(parent)
        parent = posixpath.dirname(parent)
    return out


#: error codes of the OCI distribution spec
#: (https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes) that name
#: something the registry lost or has not finished, not something wrong with the request: a blob
#: or upload gone under a concurrent push, garbage collection or an expired upload session. The
#: same request may succeed later (an HTTP 400 MANIFEST_BLOB_UNKNOWN is the usual one).
TRANSIENT_CODES = frozenset({"BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID", "MANIFEST_BLOB_UNKNOWN",
                             "TOOMANYREQUESTS"})
#: HTTP statuses worth retrying whatever the body: Request Timeout, Conflict (a concurrent
#: update), Too Early, Too Many Requests
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})


def error_codes(text: str) -> list[str]:
    """The ``errors[].code`` values of a registry's error body (``{"errors": [{"code": …}]}``);
    none when the body is something else."""
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return []
    return [str(e["code"]) for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)]


def registry_error(host: str, status: int, text: str, what: str) -> StorageError:
    """The storage error for a registry's answer `status` with body `text` to `what` (auth
    refusals aside): retryable (:class:`RegistryUnavailable`) for 5xx, the statuses in
    :data:`TRANSIENT_STATUSES` and the codes in :data:`TRANSIENT_CODES`; :class:`NotFound` for
    other 404s; else :class:`Rejected`, which a person must fix."""
    codes = error_codes(text)
    said = f" ({', '.join(codes)})" if codes else ""
    body = _short(text)
    if status == 404 and "BLOB_UPLOAD_UNKNOWN" not in codes:
        return NotFound(f"registry {host}: {what} not found (HTTP 404{said})")
    if status >= 500 or status in TRANSIENT_STATUSES or TRANSIENT_CODES.intersection(codes):
        return RegistryUnavailable(f"registry {host} answered HTTP {status}{said} for {what}: {body}; "
                                   "a refusal that passes: the operator retries")
    return Rejected(f"registry {host} answered HTTP {status}{said} for {what}: {body}")


def _short(exc: object, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` -> ("bearer", {"realm": …, "service": …})."""
    kind, _, rest = header.strip().partition(" ")
    return kind.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def pick_platform(entries: list[Mapping[str, Any]], os_name: str = "linux",
                  architecture: str = "amd64") -> Mapping[str, Any] | None:
    for entry in entries:
        platform = entry.get("platform") or {}
        if platform.get("os") == os_name and platform.get("architecture") == architecture:
            return entry
    return None


__all__ = [
    "MANIFEST_ACCEPT",
    "Manifest",
    "RegistryClient",
    "RegistryUnavailable",
    "parse_challenge",
    "pick_platform",
    "sha256_digest",
    "split_registry",
]
