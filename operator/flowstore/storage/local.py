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
  ``type``: the operator, a shared system) is *confined*: every location must resolve strictly
  inside `directory` (no ``..``, no symlink out, no absolute path elsewhere), so no resource can
  make the operator read or write anywhere else.
"""

from __future__ import annotations

import contextlib
import importlib
import operator
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowstore.artifacts import envelope
from flowstore.artifacts.keys import default_key, slugify
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, read_bounded, sha256_hex
from flowstore.storage.errors import AuthFailed, ContainerNotFound, InvalidConfig, NotFound, StorageError

DEFAULT_DIRECTORY = "~/.flowstore/flows"
_CHUNK = 1024 * 1024
#: the seed's "direct python path" form of a script `path`: ``pkg.module`` or ``pkg.module:attr``
_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")


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
        confine: refuse every location that does not resolve strictly inside `directory`
            (keyword-only; :meth:`from_config` sets it for FlowStorage specs, which the operator
            serves). Default False: the seed's semantics, for a flow's author.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(stored_as_script=stored_as_script, **kwargs)
        directory = os.path.expanduser(directory or DEFAULT_DIRECTORY)
        if validate:
            directory = os.path.abspath(directory)
            try:
                os.makedirs(directory, exist_ok=True)
            except PermissionError:
                raise AuthFailed(f"cannot create the flow directory {directory}: permission denied") from None
            except OSError as exc:
                raise InvalidConfig(f"cannot create the flow directory {directory}: {exc.strerror}") from None
        self.directory = directory
        self.validate = validate
        self.path = path
        self.volume_name = volume_name
        self.confine = confine

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
        if not self.confine:
            return candidate
        root = os.path.realpath(self.directory)
        real = os.path.realpath(candidate)
        if os.path.commonpath([root, real]) != root or real == root:
            raise InvalidConfig(
                f"flow location {location!r} resolves outside the storage directory {self.directory}; "
                "use a path inside it (no '..')"
            )
        return candidate

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
            with open(file_path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise _translate(exc, file_path, "read") from exc

    def get_bytes_bounded(self, location: str, max_bytes: int) -> bytes:
        file_path = self._file_path(location)
        try:
            with open(file_path, "rb") as fh:
                return read_bounded(fh, max_bytes, file_path)
        except OSError as exc:
            raise _translate(exc, file_path, "read") from exc

    def stat(self, location: str) -> ObjectInfo | None:
        import hashlib

        file_path = self._file_path(location)
        digest = hashlib.sha256()
        size = 0
        try:
            with open(file_path, "rb") as fh:
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
        _remove_partial_writes(file_path)
        try:
            os.unlink(file_path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _translate(exc, file_path, "delete") from exc

    def check_container(self) -> None:
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


def _remove_partial_writes(file_path: str) -> None:
    """Remove the temporary files of writes of `file_path` that never reached their rename (a
    process killed mid-write). Best effort: a directory that cannot be listed keeps them."""
    parent, prefix = os.path.dirname(file_path), _partial_prefix(file_path)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(parent, name))
