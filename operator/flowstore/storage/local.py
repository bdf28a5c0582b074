"""The seed's ``Local`` storage: flows as files under a directory (often a mounted volume).

A location is the absolute path of the flow's file, ``<directory>/<key>``; locations that
resolve outside `directory` are refused, so a crafted key cannot write anywhere else.
Writes are atomic (temporary file in the same directory, fsync, rename), so a reader sees
the old file or the whole new one, never a partial write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowstore.artifacts.keys import default_key, slugify
from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact, sha256_hex
from flowstore.storage.errors import AuthFailed, ContainerNotFound, InvalidConfig, NotFound, StorageError

DEFAULT_DIRECTORY = "~/.flowstore/flows"
_CHUNK = 1024 * 1024


class Local(Storage):
    """Flows stored as files in a local (or mounted) directory.

    Args:
        directory: where flows are stored; defaults to ``~/.flowstore/flows``.
        validate: make `directory` absolute and create it (``mkdir -p``).
        path: a fixed file for the flow (relative to `directory`, or absolute inside it);
            like the seed's `path`, only useful for a single flow.
        stored_as_script: flows are kept as ``.py`` source rather than pickled.
        volume_name: the volume holding `directory`; names the default label, so agents that
            mount the same volume pick the flow up (``local-flow-storage-<volume>``).
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

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> Local:
        directory = config.get("directory")
        if not directory or not isinstance(directory, str):
            raise InvalidConfig("local storage needs `directory` (the directory flows are stored in)")
        return cls(
            directory=directory,
            validate=bool(config.get("validate", True)),
            path=config.get("path"),
            volume_name=config.get("volumeName"),
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
        """The normalized file path for `location` (absolute, or relative to `directory`);
        InvalidConfig if it is not strictly inside `directory`."""
        candidate = os.path.normpath(os.path.join(self.directory, location))
        root = os.path.realpath(self.directory)
        real = os.path.realpath(candidate)
        if os.path.commonpath([root, real]) != root or real == root:
            raise InvalidConfig(
                f"flow location {location!r} resolves outside the storage directory {self.directory}; "
                "use a path inside it (no '..')"
            )
        return candidate

    def url_for(self, location: str) -> str:
        return Path(os.path.abspath(self._resolve(location))).as_uri()

    # ------------------------------------------------------------------ primitives
    def put_bytes(self, location: str, data: bytes) -> StoredArtifact:
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
            prefix = f".{os.path.basename(file_path)}."
            fd, tmp_path = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=".tmp")
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
        file_path = self._resolve(location)
        try:
            with open(file_path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise _translate(exc, file_path, "read") from exc

    def stat(self, location: str) -> ObjectInfo | None:
        import hashlib

        file_path = self._resolve(location)
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
        file_path = self._resolve(location)
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
