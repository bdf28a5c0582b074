"""File operations strictly beneath a directory, by descriptor: no symbolic link is followed and
no ``..`` is taken below the anchor, so a name cannot be made to point elsewhere between a check
and its use (a volume others can write: an agent, another namespace, a flow's author).

Each directory below the anchor is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its
parent's descriptor, and files are opened, written, renamed and removed relative to the last
one; a link anywhere below the anchor fails with :class:`LinkRefused`. The anchor itself (the
operator's ``--local-root``, a path its admin chose) is opened as given.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: reads never block on a FIFO planted where a file should be, and never follow a link
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class LinkRefused(OSError):
    """A symbolic link (or a non-directory) where a directory of the path should be."""


def check_name(part: str) -> str:
    if not part or part in (".", "..") or "/" in part or "\0" in part:
        raise ValueError(f"{part!r} is not a file or directory name")
    return part


@contextlib.contextmanager
def directory(anchor: str, parts: Sequence[str], *, create: bool = False, mode: int = 0o755) -> Iterator[int]:
    """A descriptor of ``anchor/parts...`` (created when `create`), walked one name at a time
    without following links; closed on exit. FileNotFoundError when a part is missing."""
    fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            check_name(part)
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LinkRefused(exc.errno, f"{part} is a symbolic link or not a directory") from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def open_file(dir_fd: int, name: str) -> int:
    """A regular file beneath `dir_fd`, for reading (never a link, a FIFO or a device)."""
    try:
        fd = os.open(check_name(name), _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused(exc.errno, f"{name} is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkRefused(errno.EINVAL, f"{name} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def create_exclusive(dir_fd: int, name: str, mode: int = 0o644) -> int:
    """A new file beneath `dir_fd` (fails if anything, a link included, has the name)."""
    fd = os.open(check_name(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                 dir_fd=dir_fd)
    os.fchmod(fd, mode)  # whatever the umask: agents may run as another user than the writer
    return fd
