"""A seccomp filter that takes the network away from a build (stdlib + ctypes only).

Landlock (``_confine.py``) limits files, TCP (ABI >= 4) and signals (ABI >= 6) but not UDP,
pathname UNIX sockets or other socket families. A build needs no socket at all, so this filter
makes ``socket()`` fail (EACCES) for every family: no UDP, no TCP, no UNIX socket (pathname or
abstract), no netlink, no raw socket. ``socketpair()`` stays (two connected ends inside the
build reach nothing; multiprocessing uses it). io_uring (which can open and connect sockets
itself) and ``pidfd_getfd`` (which takes a descriptor from another process) fail too, and so does
every system call made through another architecture's entry (i386 ``int 0x80``, x32), where the
numbers above mean something else.

Linux only, on x86_64 and aarch64; elsewhere :func:`install` returns False and the sandbox says
the network is not confined.
"""

from __future__ import annotations

import ctypes
import errno
import platform

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_OFFSET_NR, _OFFSET_ARCH = 0, 4
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000

#: (audit arch, denied system call numbers) per machine: socket, io_uring_setup/enter/register,
#: pidfd_getfd (the io_uring and pidfd numbers are the same on every architecture)
_ARCHES = {
    "x86_64": (0xC000003E, (41, 425, 426, 427, 438)),
    "aarch64": (0xC00000B7, (198, 425, 426, 427, 438)),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def supported() -> bool:
    """This machine's architecture has a filter here."""
    return platform.machine() in _ARCHES


def program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions for `machine` (default: this one)."""
    arch, denied = _ARCHES[machine or platform.machine()]
    deny = _RET_ERRNO | errno.EACCES
    insns: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 1, 0, arch),  # our architecture: go on; any other: refused outright
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if machine in (None, "x86_64") and arch == _ARCHES["x86_64"][0]:
        insns.append((_JGE_K, len(denied) + 1, 0, _X32_BIT))  # x32 numbers: to the final deny
    for i, number in enumerate(denied):
        insns.append((_JEQ_K, len(denied) - i, 0, number))  # to the final deny
    insns += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, deny)]
    return insns


def install() -> bool:
    """Apply the filter to this process and its future children, for good. False when this
    machine has none or the kernel refuses it (no seccomp)."""
    if not supported():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    insns = program()
    array = (_SockFilter * len(insns))(*(_SockFilter(*i) for i in insns))
    prog = _SockFprog(len(insns), ctypes.cast(array, ctypes.POINTER(_SockFilter)))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return bool(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0)

