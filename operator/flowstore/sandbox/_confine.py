"""Landlock confinement for the build sandbox's child (Linux >= 5.13; stdlib + ctypes only).

After the child has imported what it needs, it restricts itself for good:

* **files**: read and execute only the Python installation (``sys.prefix`` and friends), the
  directories holding flowstore and cloudpickle, and the system directories a Python program
  needs (``/usr``, ``/lib*``, ``/bin``, ``/etc``); read and write only its own scratch directory.
  Everything else is invisible: the ServiceAccount token under ``/var/run/secrets``, kubeconfig
  and cloud credential files, other processes' ``/proc/<pid>/environ``.
* **network** (Landlock ABI >= 4): no TCP connect or bind — a build cannot reach the API server,
  a cloud metadata endpoint or the internet. (UDP and UNIX sockets are not Landlock's: the
  seccomp filter in ``_seccomp.py`` takes every socket away.)
* **scope** (ABI >= 6): no signals to, and no abstract UNIX sockets of, processes outside (the
  operator, the sandbox's supervisor).

:func:`confine` returns the ABI version it applied, 0 where Landlock is missing (old kernel,
disabled LSM); the sandbox reports what that leaves out and refuses to build unless the operator
allows unconfined builds.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Iterable

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # the same on every arch
_PR_SET_NO_NEW_PRIVS = 38
_RULE_PATH_BENEATH = 1
_CREATE_RULESET_VERSION = 1

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FILE_RIGHTS_V1 = _EXECUTE | _WRITE_FILE | _READ_FILE
_ALL_FS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

READ_ONLY = _EXECUTE | _READ_FILE | _READ_DIR
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when unavailable."""
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def confine(read_dirs: Iterable[str], write_dirs: Iterable[str], *, max_abi: int | None = None) -> int:
    """Restrict this process (and its future children) as described above. Irreversible.
    Returns the Landlock ABI version applied (0: none). `max_abi` applies no more than that
    version gives (to see what an older kernel leaves out: tests, and admins checking)."""
    abi = abi_version() if max_abi is None else min(abi_version(), max_abi)
    if abi < 1:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    handled_fs = _ALL_FS[min(abi, 5)]
    attr = _RulesetAttr(handled_access_fs=handled_fs,
                        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    file_rights = _FILE_RIGHTS_V1 | (handled_fs & (_TRUNCATE | _IOCTL_DEV))
    try:
        for path, rights in [*((p, READ_ONLY) for p in read_dirs), *((p, handled_fs) for p in write_dirs),
                             *((d, _READ_FILE | _WRITE_FILE) for d in DEVICES)]:
            _allow(libc, ruleset, path, rights, file_rights)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return 0
        return abi if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0 else 0
    finally:
        os.close(ruleset)


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int, file_rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent paths need no rule
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= file_rights  # directory rights on a file are invalid
        beneath = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                     ctypes.byref(beneath), ctypes.c_uint32(0))
    finally:
        os.close(fd)


def python_dirs(*modules_files: str) -> list[str]:
    """The Python installation and the directories of the given modules' files."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.update(os.path.dirname(os.path.realpath(f)) for f in modules_files)
    return sorted(d for d in dirs if d and d != "/")
