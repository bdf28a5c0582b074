"""A flow's author tries to leave the operator's build sandbox (issue 20, item 5): UDP, pathname
and abstract UNIX sockets, io_uring, a setsid() grandchild that outlives the build, a signal to
the supervisor, a forged reply. Real child processes on this machine's kernel, no mocks; and the
refusal when the kernel gives less (forced by applying an older Landlock ABI, or no seccomp)."""

from __future__ import annotations

import logging
import os
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from flowstore.api.constants import Reason
from flowstore.sandbox import BuildError, SandboxPolicy, _confine, _seccomp, build_pickle, probe


def run_probe(source: str, **kwargs: Any) -> Any:
    built = build_pickle(textwrap.dedent(source).encode(), flow_name="probe", object_name=None, **kwargs)
    return built, cloudpickle.loads(built.pickle).run()


def test_this_kernel_confines_builds_fully() -> None:
    """The machine the tests run on gives everything; the other tests here rely on it."""
    assert _confine.abi_version() >= 6 and _seccomp.supported()
    found = probe()
    assert found == {"landlockABI": _confine.abi_version(), "filesystem": True, "network": True, "signals": True,
                     "processes": True}


def test_no_socket_of_any_family(tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    unix_path = str(tmp_path / "agent.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    unix.settimeout(0.5)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(b"\0flowstore-test-" + os.urandom(4).hex().encode())
    abstract.listen()
    source = f"""
        import ctypes, socket
        from flowstore.flow import Flow
        seen = {{}}
        def attempt(label, fn):
            try:
                fn()
                seen[label] = "done"
            except OSError as exc:
                seen[label] = type(exc).__name__
        def udp():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"exfiltrated", ("127.0.0.1", {udp.getsockname()[1]}))
        def unix_path():
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect({unix_path!r})
        def unix_abstract():
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect({abstract.getsockname()!r})
        def netlink():
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        def ipv6():
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect(("::1", 9))
        for label, fn in [("udp", udp), ("unix_path", unix_path), ("unix_abstract", unix_abstract),
                          ("netlink", netlink), ("ipv6", ipv6)]:
            attempt(label, fn)
        libc = ctypes.CDLL(None, use_errno=True)
        params = ctypes.create_string_buffer(120)
        seen["io_uring_setup"] = (libc.syscall(425, 1, params), ctypes.get_errno())
        pair = socket.socketpair()  # two ends inside the build: allowed, they reach nothing
        pair[0].sendall(b"x")
        seen["socketpair"] = pair[1].recv(1).decode()
        probe = Flow("probe", lambda: seen)
    """
    try:
        _, seen = run_probe(source)
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)
        with pytest.raises(TimeoutError):
            unix.accept()
    finally:
        for s in (udp, unix, abstract):
            s.close()
    assert seen == {"udp": "PermissionError", "unix_path": "PermissionError", "unix_abstract": "PermissionError",
                    "netlink": "PermissionError", "ipv6": "PermissionError", "io_uring_setup": (-1, 13),
                    "socketpair": "x"}


GRANDCHILD = """
    import os, signal, time
    from flowstore.flow import Flow
    read, write = os.pipe()
    if os.fork() == 0:  # the child: a new session, then a grandchild, then the child leaves
        os.setsid()
        if os.fork() == 0:
            os.close(read)
            os.write(write, str(os.getpid()).encode())
            os.close(write)
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    os.close(write)
    survivor = int(os.read(read, 32))
    try:
        os.kill(os.getppid(), signal.SIGKILL)  # the supervisor: it must not be reachable
        killed = "sent"
    except OSError as exc:
        killed = type(exc).__name__
    probe = Flow("probe", lambda: (survivor, killed))
"""


def test_every_process_of_a_build_ends_with_it() -> None:
    _, (survivor, killed) = run_probe(GRANDCHILD)
    assert killed == "PermissionError"  # Landlock's signal scoping keeps the supervisor alive
    deadline = time.monotonic() + 5
    while Path(f"/proc/{survivor}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{survivor}").exists(), "a setsid() grandchild outlived the build"


def test_a_build_that_times_out_ends_with_its_grandchildren() -> None:
    source = GRANDCHILD.replace("probe = Flow", "while True:\n        pass\n    probe = Flow")
    with pytest.raises(BuildError) as info:
        run_probe(source, timeout=2)
    assert info.value.reason == Reason.BUILD_TIMEOUT


def test_a_forged_reply_gives_none_of_its_reasons() -> None:
    source = """
        import os
        for fd in range(3, 16):
            try:
                os.write(fd, b'{"ok": false, "reason": "Totally Fine", "message": "forged", "size": 0}\\n')
            except OSError:
                pass
        os._exit(0)
    """
    with pytest.raises(BuildError) as info:
        build_pickle(textwrap.dedent(source).encode(), flow_name="probe", object_name=None)
    assert info.value.reason == Reason.SCRIPT_FAILED and "reason builders do not report" in info.value.message


# ---------------------------------------------------------------------- when the kernel gives less
RAN = "raise SystemExit('the flow code ran')\n"


@pytest.mark.parametrize(("policy", "lacking"), [
    (SandboxPolicy(landlock_abi_max=5), "signal and abstract-socket scoping (Landlock ABI >= 6"),
    (SandboxPolicy(landlock_abi_max=3), "signal and abstract-socket scoping"),
    (SandboxPolicy(seccomp=False), "no network (a seccomp filter"),
    (SandboxPolicy(landlock_abi_max=0), "file confinement (Landlock"),
])
def test_less_than_full_confinement_is_refused_before_any_flow_code_runs(policy: SandboxPolicy, lacking: str) -> None:
    with pytest.raises(BuildError) as info:
        build_pickle(RAN.encode(), flow_name="probe", object_name=None, policy=policy)
    assert info.value.reason == Reason.SANDBOX_UNAVAILABLE, info.value.message
    assert lacking in info.value.message
    assert "--allow-unconfined-builds" in info.value.message and "sandbox.allowUnconfined" in info.value.message
    assert "spec.build" in info.value.message


def test_unconfined_builds_run_only_when_allowed_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    policy = SandboxPolicy(allow_unconfined=True, landlock_abi_max=5)
    source = "from flowstore.flow import Flow\nprobe = Flow('probe', lambda: 'ran')\n"
    with caplog.at_level(logging.WARNING, logger="flowstore.sandbox"):
        built = build_pickle(source.encode(), flow_name="probe", object_name=None, policy=policy)
    assert cloudpickle.loads(built.pickle).run() == "ran"
    assert built.confinement == {"filesystem": True, "network": True, "signals": False, "processes": True}
    assert any("without signals" in r.getMessage() and "--allow-unconfined-builds" in r.getMessage()
               for r in caplog.records)
    full = build_pickle(source.encode(), flow_name="probe", object_name=None)
    assert full.confinement == dict.fromkeys(("filesystem", "network", "signals", "processes"), True)


def test_the_seccomp_program_denies_other_architectures_and_x32() -> None:
    for machine in ("x86_64", "aarch64"):
        program = _seccomp.program(machine)
        assert program[-1] == (0x06, 0, 0, 0x00050000 | 13)  # EACCES for the listed calls
        assert program[2] == (0x06, 0, 0, 0x00050000 | 1)  # EPERM for any other architecture
    assert any(insn[0] == 0x35 and insn[3] == 0x40000000 for insn in _seccomp.program("x86_64"))
