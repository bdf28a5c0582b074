"""The seed's ``Local`` storage: flows as files under a directory (often a mounted volume).

A location is the absolute path of the flow's file, ``<directory>/<key>`` for relative keys.
Writes are atomic (temporary file in the same directory, fsync, rename), so a reader sees
the old file or the whole new one, never a partial write.

Two sets of path rules, for two kinds of user:

* The class, as a flow's author uses it, has the seed's semantics: an absolute location (or
  ``path``) is used wherever it points, and with ``stored_as_script`` and a ``path`` the flow is
  the author's own file, left where it is: ``add_flow`` returns ``path`` without needing the
  source, ``build`` copies nothing, ``get_flow(path)`` runs that file (absolute, relative to the
  working directory, or a Python module path ``pkg.module[:attribute]``), as the seed's Local does.
* A storage made from a FlowStorage spec (:meth:`Local.from_config` on a config without
  ``type``) is *confined*: every location must lie strictly inside `directory` (no ``..``, no
  absolute path elsewhere), and every file operation walks there by descriptor without following
  a symbolic link (``_beneath.py``), so no resource, and nobody who may write the volume, can make
  it read or write anywhere else.
* In the operator (:meth:`Local.for_operator`) the directory itself must lie under the
  operator's Local root, in the FlowStorage's namespace: ``<--local-root>/<namespace>/…``. One
  namespace never reaches another's files, and no FlowStorage reaches the operator's own state
  (its temp and git cache directories, its HOME: ``cli`` refuses a root that overlaps them).
"""

from __future__ import annotations

import contextlib
import importlib
import operator
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from flowstore.artifacts import envelope
from flowstore.artifacts.keys import default_key, slugify
from flowstore.storage import _beneath
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, read_bounded, sha256_hex
from flowstore.storage.errors import (
    AuthFailed,
    ContainerNotFound,
    InvalidConfig,
    LocalStorageDisabled,
    NotFound,
    OutsideLocalRoot,
    StorageError,
)
from flowstore.storage.policy import ServePolicy

DEFAULT_DIRECTORY = "~/.flowstore/flows"
_CHUNK = 1024 * 1024
#: the seed's "direct python path" form of a script `path`: ``pkg.module`` or ``pkg.module:attr``
_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")
#: a Kubernetes namespace name (an RFC 1123 label): one safe path component
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Local(Storage):
    """Flows stored as files in a local (or mounted) directory.

    Args:
        directory: where flows are stored; defaults to ``~/.flowstore/flows``.
        validate: make `directory` absolute and create it (``mkdir -p``).
        path: a fixed file for the flow (relative to `directory`, or absolute); like the seed's
            `path`, only useful for a single flow. With `stored_as_script`, flows added without
            their source are the script already at `path` (absolute, relative to the working
            directory, or a module path such as ``myrepo.mymodule.myflow``), as in the seed.
        stored_as_script: flows are kept as ``.py`` source rather than pickled.
        volume_name: the volume holding `directory`; names the default label, so agents that
            mount the same volume pick the flow up (``local-flow-storage-<volume>``).
        confine: refuse every location that does not lie strictly inside `directory`, and reach
            files only by descriptor, following no link (keyword-only; :meth:`from_config` sets
            it for FlowStorage specs). Default False: the seed's semantics, for a flow's author.
        root: with `confine`, where the walk by descriptor starts (the operator's Local root;
            `directory` must lie inside it). Default: `directory` itself.
        **kwargs: the base :class:`Storage` options.
    """

    type_name = "Local"
    #: prefix of the per-instance default label (see :attr:`local_label`)
    label_prefix = "local-flow-storage"

    def __init__(
        self,
        directory: str | None = None,
        validate: bool = True,
        path: str | None = None,
        stored_as_script: bool = False,
        volume_name: str | None = None,
        *,
        confine: bool = False,
        root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(stored_as_script=stored_as_script, **kwargs)
        directory = os.path.expanduser(directory or DEFAULT_DIRECTORY)
        if validate or root is not None:
            directory = os.path.abspath(directory)
        self.directory = directory
        self.validate = validate
        self.path = path
        self.volume_name = volume_name
        self.confine = confine or root is not None
        #: confined storages reach `directory` from here, by descriptor (see _beneath.py)
        self._anchor = os.path.abspath(root) if root is not None else directory
        self._below: list[str] = []
        if root is not None:
            below = os.path.relpath(directory, self._anchor)
            if below == os.curdir or below == os.pardir or below.startswith(os.pardir + os.sep):
                raise OutsideLocalRoot(f"the flow directory {directory} is not inside {self._anchor}")
            self._below = below.split(os.sep)
        if validate:
            try:
                if root is not None:  # below the root, created by descriptor too
                    with _beneath.directory(self._anchor, self._below, create=True):
                        pass
                else:
                    os.makedirs(directory, exist_ok=True)
            except PermissionError:
                raise AuthFailed(f"cannot create the flow directory {directory}: permission denied") from None
            except OSError as exc:
                raise InvalidConfig(f"cannot create the flow directory {directory}: {exc.strerror}") from None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> Local:
        """From a FlowStorage ``spec.local`` block: confined to `directory` (the operator must not
        read or write elsewhere). From a document an agent reads (``type`` is set: status, or
        the seed's schema): the seed's semantics, and the directory is not created here (it is
        the operator's, or the author's; Prefect's schema does not create it either)."""
        directory = config.get("directory")
        if not directory or not isinstance(directory, str):
            raise InvalidConfig("local storage needs `directory` (the directory flows are stored in)")
        agent = "type" in config
        return cls(
            directory=directory,
            validate=False if agent else bool(config.get("validate", True)),
            path=config.get("path"),
            volume_name=config.get("volumeName"),
            confine=not agent,
            **cls.common_kwargs(config),
        )

    @classmethod
    def for_operator(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None,
                     policy: ServePolicy) -> Local:
        """A FlowStorage's Local storage in the operator: only under ``<local root>/<namespace>``
        (``spec.local.directory`` there or below it), reached by descriptor without links."""
        if "type" in config:
            raise InvalidConfig("a FlowStorage spec has no `type`")
        if policy.local_root is None:
            raise LocalStorageDisabled(
                "this operator serves no Local storage: it has no Local root. Store flows in another backend, "
                "or ask the cluster admin to give the operator a volume for them (flag --local-root DIR; chart "
                "values localStorage.enabled and localStorage.mountPath)")
        if not _NAMESPACE.match(policy.namespace):
            raise OutsideLocalRoot(f"namespace {policy.namespace!r} cannot name a directory")
        directory = config.get("directory")
        if not directory or not isinstance(directory, str):
            raise InvalidConfig("local storage needs `directory` (the directory flows are stored in)")
        mine = os.path.join(os.path.abspath(policy.local_root), policy.namespace)
        wanted = os.path.normpath(directory)
        if os.pardir in directory.split("/") or (wanted != mine and not wanted.startswith(mine + os.sep)):
            raise OutsideLocalRoot(
                f"spec.local.directory {directory} is outside this namespace's Local directory {mine}: this "
                f"operator keeps the Local storage of namespace {policy.namespace!r} there and nowhere else (its "
                f"--local-root, one directory per namespace). Use {mine} or a directory inside it (no '..')")
        return cls(directory=wanted, validate=bool(config.get("validate", True)), path=config.get("path"),
                   volume_name=config.get("volumeName"), root=os.path.abspath(policy.local_root),
                   **cls.common_kwargs(config))

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {"directory": doc.get("directory"), "path": doc.get("path")}

    def _status_config(self) -> dict[str, Any]:
        doc = {"directory": self.directory, "path": self.path, "volumeName": self.volume_name}
        return {k: v for k, v in doc.items() if v is not None}

    def _seed_config(self) -> dict[str, Any]:
        return {"directory": self.directory, "path": self.path, "stored_as_script": self.stored_as_script}

    # ------------------------------------------------------------------ labels
    @property
    def local_label(self) -> str:
        """The default label: names the volume (or directory), not this machine, so any agent
        with the same volume mounted qualifies."""
        return f"{self.label_prefix}-{slugify(self.volume_name or self.directory)}"

    @property
    def labels(self) -> list[str]:
        labels = list(self._labels)
        if self.add_default_labels and self.local_label not in labels:
            labels.append(self.local_label)
        return labels

    # ------------------------------------------------------------------ locations
    def location_for(self, flow_name: str, key: str | None = None) -> str:
        return self._resolve(key or self.path or default_key(flow_name))

    def _resolve(self, location: str) -> str:
        """The normalized file path for `location` (absolute, or relative to `directory`); when
        confined, InvalidConfig if it is not strictly inside `directory`."""
        candidate = os.path.normpath(os.path.join(self.directory, location))
        if self.confine:
            self._parts(location)
        return candidate

    def _parts(self, location: str) -> tuple[list[str], str]:
        """(the directories below the anchor, the file name) of `location`, for a confined
        storage's walk by descriptor; InvalidConfig unless it lies strictly inside `directory`."""
        candidate = os.path.normpath(os.path.join(self.directory, location))
        inside = os.path.relpath(candidate, self.directory)
        if inside in (os.curdir, os.pardir) or inside.startswith(os.pardir + os.sep) or os.pardir in \
                location.split("/"):
            raise InvalidConfig(
                f"flow location {location!r} resolves outside the storage directory {self.directory}; "
                "use a path inside it (no '..')"
            )
        *parents, name = inside.split(os.sep)
        return [*self._below, *parents], name

    def _in_place(self, location: str) -> bool:
        """`location` is the author's own script at `path` (the seed's script mode), not a file
        this storage wrote: it is read where the seed reads it, relative to the working directory."""
        return self.stored_as_script and not self.confine and bool(self.path) and location == self.path

    def _file_path(self, location: str) -> str:
        return os.path.abspath(location) if self._in_place(location) else self._resolve(location)

    def url_for(self, location: str) -> str:
        return Path(os.path.abspath(self._file_path(location))).as_uri()

    # ------------------------------------------------------------------ seed interface
    def add_flow(self, flow: Any, source: bytes | None = None) -> str:
        """As the base class; and the seed's script mode: with `stored_as_script`, a `path` and no
        `source`, the flow is the script at `path`, which stays where it is (returns `path`)."""
        if self.stored_as_script and self.path and source is None and not self.local_script_path:
            name = flow if isinstance(flow, str) else flow.name
            if name in self:
                raise ValueError(f'Name conflict: Flow with the name "{name}" is already present in this storage.')
            self.flows[name] = self.path  # nothing to write at build()
            return self.path
        return super().add_flow(flow, source)

    def get_flow(self, flow_location: str | None = None, *, sha256: str | None = None,
                 flow_name: str | None = None, object_name: str | None = None) -> Any:
        """As the base class (default location: `path` in script mode, else the only flow); the
        seed's script at `path` is run from where it is, or imported when `path` names a module."""
        location = flow_location or (self.path if self.stored_as_script and self.path else None) \
            or self._default_location()
        if flow_name is None:
            flow_name = next((n for n, loc in self.flows.items() if loc == location), None)
        if self._in_place(location) and not os.path.isfile(location) and _MODULE_PATH.match(location):
            if self.flows and location not in self.flows.values():
                raise ValueError(f"Flow is not contained in this Storage: {location}")
            if sha256 is not None:
                raise InvalidConfig(f"{location} is a module path: there are no stored bytes to verify")
            return _flow_from_module(location, flow_name=flow_name, object_name=object_name)
        return super().get_flow(location, sha256=sha256, flow_name=flow_name, object_name=object_name)

    # ------------------------------------------------------------------ primitives
    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
        file_path = self._resolve(location)
        if self.confine:
            self._put_beneath(location, file_path, data)
            return StoredArtifact(location=file_path, url=self.url_for(file_path), sha256=sha256_hex(data),
                                  size=len(data))
        if not os.path.isdir(self.directory):
            raise ContainerNotFound(
                f"the flow directory {self.directory} does not exist; create it (or mount the volume) "
                "or fix spec.local.directory"
            )
        parent = os.path.dirname(file_path)
        tmp_path: str | None = None
        try:
            os.makedirs(parent, exist_ok=True)
            _remove_partial_writes(file_path)  # of a writer killed before it renamed (one writer per location)
            fd, tmp_path = tempfile.mkstemp(dir=parent, prefix=_partial_prefix(file_path), suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o644)  # agents may run as another user than the writer
            os.replace(tmp_path, file_path)
            tmp_path = None
            _fsync_dir(parent)
        except OSError as exc:
            raise _translate(exc, file_path, "write") from exc
        finally:
            if tmp_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_path)
        return StoredArtifact(location=file_path, url=self.url_for(file_path), sha256=sha256_hex(data),
                              size=len(data))

    def get_bytes(self, location: str) -> bytes:
        file_path = self._file_path(location)
        try:
            with self._open(location) as fh:
                return fh.read()
        except OSError as exc:
            raise _translate(exc, file_path, "read") from exc

    @contextlib.contextmanager
    def _open(self, location: str) -> Iterator[BinaryIO]:
        """The file at `location`, for reading: by descriptor, no link followed, when confined."""
        if not self.confine:
            with open(self._file_path(location), "rb") as fh:
                yield fh
            return
        parents, name = self._parts(location)
        with _beneath.directory(self._anchor, parents) as dir_fd, \
                os.fdopen(_beneath.open_file(dir_fd, name), "rb") as fh:
            yield fh

    def _put_beneath(self, location: str, file_path: str, data: bytes) -> None:
        """A confined write: temporary file, fsync, rename, all relative to the directory's
        descriptor (no link followed anywhere below the anchor)."""
        parents, name = self._parts(location)
        if not self._exists(self._below):
            raise ContainerNotFound(
                f"the flow directory {self.directory} does not exist; create it (or mount the volume) "
                "or fix spec.local.directory"
            )
        tmp_name: str | None = None
        try:
            with _beneath.directory(self._anchor, parents, create=True) as dir_fd:
                _remove_partial_writes_at(dir_fd, name)  # of a writer killed before it renamed
                tmp_name = f"{_partial_prefix(file_path)}{os.urandom(6).hex()}.tmp"
                with os.fdopen(_beneath.create_exclusive(dir_fd, tmp_name), "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                tmp_name = None
                with contextlib.suppress(OSError):
                    os.fsync(dir_fd)
        except OSError as exc:
            raise _translate(exc, file_path, "write") from exc
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError), _beneath.directory(self._anchor, parents) as dir_fd:
                    os.unlink(tmp_name, dir_fd=dir_fd)

    def _exists(self, parts: list[str]) -> bool:
        try:
            with _beneath.directory(self._anchor, parts):
                return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _translate(exc, os.path.join(self._anchor, *parts), "read") from exc

    def get_bytes_bounded(self, location: str, max_bytes: int) -> bytes:
        file_path = self._file_path(location)
        try:
            with self._open(location) as fh:
                return read_bounded(fh, max_bytes, file_path)
        except OSError as exc:
            raise _translate(exc, file_path, "read") from exc

    def stat(self, location: str) -> ObjectInfo | None:
        import hashlib

        file_path = self._file_path(location)
        digest = hashlib.sha256()
        size = 0
        try:
            with self._open(location) as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _translate(exc, file_path, "read") from exc
        return ObjectInfo(size=size, sha256=digest.hexdigest())

    def delete(self, location: str) -> None:
        """Remove the file, and what an interrupted write of it left (its temporary file)."""
        if self._in_place(location):  # the author's own script: this storage never wrote it
            return
        file_path = self._resolve(location)
        if self.confine:
            parents, name = self._parts(location)
            try:
                with _beneath.directory(self._anchor, parents) as dir_fd:
                    _remove_partial_writes_at(dir_fd, name)
                    os.unlink(name, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError):
                return
            except OSError as exc:
                raise _translate(exc, file_path, "delete") from exc
            return
        _remove_partial_writes(file_path)
        try:
            os.unlink(file_path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _translate(exc, file_path, "delete") from exc

    def check_container(self) -> None:
        if self.confine:
            if not self._exists(self._below):
                raise ContainerNotFound(
                    f"the flow directory {self.directory} does not exist; create it (or mount the volume) "
                    "or fix spec.local.directory"
                )
            if not os.access(self.directory, os.W_OK | os.X_OK):
                raise AuthFailed(
                    f"the flow directory {self.directory} is not writable by this process (uid {os.getuid()})"
                )
            return
        if not os.path.exists(self.directory):
            raise ContainerNotFound(
                f"the flow directory {self.directory} does not exist; create it (or mount the volume) "
                "or fix spec.local.directory"
            )
        if not os.path.isdir(self.directory):
            raise InvalidConfig(f"{self.directory} is not a directory; fix spec.local.directory")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise AuthFailed(
                f"the flow directory {self.directory} is not writable by this process (uid {os.getuid()})"
            )


#: the operator's own files in the temp directory start so (the sandbox's scratch, the git cache,
#: Docker TLS keys); a Local root may lie in the temp directory, never in or above them
STATE_PREFIX = "flowstore-"


def local_root_refusal(root: str) -> str | None:
    """Why `root` cannot be the operator's Local root, or None. A root must not overlap what the
    operator itself reads or writes: no FlowStorage may put a file where the operator keeps its
    git cache (a planted ``config`` there runs commands), its sandbox's scratch, its Python, its
    credentials. It may lie inside the temp directory and HOME (not be them, nor hold them)."""
    import site
    import sys
    import tempfile

    real = os.path.realpath(root)
    if not os.path.isabs(root):
        return f"the Local root {root} must be an absolute path"
    if real == os.sep:
        return "the Local root cannot be /"
    temp = os.path.realpath(tempfile.gettempdir())
    # the root may lie inside these, never be or hold them
    roomy = [temp, os.path.realpath(os.path.expanduser("~")), os.getcwd()]
    # nor lie inside these: Python and the operator's code, its credentials
    strict = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(__file__)),
              *site.getsitepackages(), site.getusersitepackages(), "/var/run/secrets", "/run/secrets",
              *(os.path.dirname(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p)]
    roomy = [os.path.realpath(p) for p in roomy]
    for state in roomy + strict:
        state = os.path.realpath(state)
        if real == state or state.startswith(real.rstrip(os.sep) + os.sep):
            return (f"the Local root {root} holds the operator's own files ({state}); give it a directory of its own, "
                    "e.g. a volume mounted at /var/lib/flowstore/flows")
        if state not in roomy and real.startswith(state.rstrip(os.sep) + os.sep):
            return (f"the Local root {root} lies inside the operator's own files ({state}); give it a directory of "
                    "its own")
    if real.startswith(temp + os.sep) and os.path.relpath(real, temp).split(os.sep)[0].startswith(STATE_PREFIX):
        return (f"the Local root {root} lies inside the operator's working files in {temp} ({STATE_PREFIX}*); "
                "give it a directory of its own")
    return None


def _flow_from_module(module_path: str, *, flow_name: str | None, object_name: str | None) -> Any:
    """The seed's module form of a script path: ``pkg.module`` (the flow is found among its
    globals by name) or ``pkg.module:attribute`` (that object; called first if it is a factory)."""
    module_name, _, attribute = module_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise NotFound(f"{module_path} is neither a file nor an importable module ({exc})") from None
    if not attribute:
        return envelope.find_flow_object(vars(module), flow_name=flow_name, object_name=object_name)
    try:
        obj = operator.attrgetter(attribute)(module)
    except AttributeError:
        raise NotFound(f"module {module_name} has no attribute {attribute}") from None
    if callable(obj) and not hasattr(obj, "name"):
        obj = obj()
    return obj


def _fsync_dir(directory: str) -> None:
    """Persist the rename itself (best effort: not every filesystem supports it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _translate(exc: OSError, file_path: str, action: str) -> StorageError:
    if isinstance(exc, _beneath.LinkRefused):
        return InvalidConfig(f"cannot {action} {file_path}: {exc.strerror}; flowstore follows no symbolic link "
                             "inside a Local storage's directory (remove the link)")
    if action != "write" and isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return NotFound(
            f"no flow artifact at {file_path} ({exc.strerror}); was the flow built (stored) there, "
            "and is the same volume mounted here?"
        )
    if isinstance(exc, PermissionError):
        return AuthFailed(f"cannot {action} {file_path}: permission denied for uid {os.getuid()}")
    return StorageError(f"cannot {action} {file_path}: {exc.strerror or exc}")


def _partial_prefix(file_path: str) -> str:
    """Writes go to ``.<name>.<random>.tmp`` beside the file, then are renamed over it."""
    return f".{os.path.basename(file_path)}."


def _remove_partial_writes_at(dir_fd: int, name: str) -> None:
    """Remove the temporary files of writes of `name`, in the directory `dir_fd`, that never
    reached their rename (a process killed mid-write). Best effort: a directory that cannot be
    listed keeps them."""
    prefix = _partial_prefix(name)
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for entry in names:
        if entry.startswith(prefix) and entry.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=dir_fd)


def _remove_partial_writes(file_path: str) -> None:
    """As :func:`_remove_partial_writes_at`, for a file named by its path."""
    try:
        dir_fd = os.open(os.path.dirname(file_path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        _remove_partial_writes_at(dir_fd, os.path.basename(file_path))
    finally:
        os.close(dir_fd)
