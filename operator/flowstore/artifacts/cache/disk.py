"""The agent cache's view of the disk: what counts as this user's, a private root, read-only
trees and their removal. Standard library only."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from flowstore.artifacts.cache.settings import CacheError

WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def own(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & WRITABLE_BY_OTHERS


def own_file(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and own(info)


def check_root(root: Path) -> None:
    """The root exists (made private if missing) and neither it nor any directory above it may
    be written by another user unless sticky: otherwise an entry could be swapped between its
    check and its use."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the agent cache {root}: {exc.strerror or exc}; set FLOWSTORE_CACHE_DIR "
                         "to a directory this user can create") from None
    real = Path(os.path.realpath(root))
    for directory in (real, *real.parents):
        info = os.stat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise CacheError(f"the agent cache {root}: {directory} is not a directory")
        foreign = info.st_uid not in (0, os.geteuid())
        open_to_others = info.st_mode & WRITABLE_BY_OTHERS and not info.st_mode & stat.S_ISVTX
        if foreign or open_to_others:
            raise CacheError(
                f"the agent cache {root} is not private: {directory} "
                f"{'belongs to uid ' + str(info.st_uid) if foreign else 'may be written by other users'} "
                f"(mode {stat.S_IMODE(info.st_mode):04o}), so its entries could be swapped between their check and "
                "their use. Make it this user's and not writable by others (e.g. chmod 1777 a shared mount, or "
                "0755), or set FLOWSTORE_CACHE_DIR to a directory only this user can write")


def listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def read_file(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def tree_size(path: Path) -> int:
    total = 0
    for directory, _, filenames in os.walk(path, followlinks=False):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def make_read_only(tree: Path) -> None:
    """Files 0400 (0500 when executable), directories 0500: Python cannot drop bytecode there
    (this user may not write), so the tree stays exactly the bundle's files."""
    for directory, dirnames, filenames in os.walk(tree, topdown=False):
        for name in filenames:
            path = os.path.join(directory, name)
            os.chmod(path, 0o500 if os.stat(path).st_mode & 0o100 else 0o400)
        for name in dirnames:
            os.chmod(os.path.join(directory, name), 0o500)
    os.chmod(tree, 0o500)


def remove_tree(path: Path) -> None:
    """rmtree for a read-only tree: directories are made writable again on the way down."""
    def writable_then_retry(function: Callable[..., object], failed: str, _: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
        with contextlib.suppress(FileNotFoundError):
            function(failed)

    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for directory, dirnames, _ in os.walk(path, followlinks=False):
        for name in dirnames:
            with contextlib.suppress(OSError):
                target = os.path.join(directory, name)
                if not os.path.islink(target):
                    os.chmod(target, 0o700)
    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=writable_then_retry)
        else:
            shutil.rmtree(path, onerror=writable_then_retry)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
