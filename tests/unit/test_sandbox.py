"""The build sandbox runs real child processes: no mocks."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import pytest

from flowstore.api.constants import Reason
from flowstore.sandbox import BuildError, build_pickle, check_script


def _src(text: str) -> bytes:
    return textwrap.dedent(text).encode("utf-8")


def _build(text: str, flow_name: str = "etl", object_name: str | None = None) -> bytes:
    return build_pickle(_src(text), flow_name=flow_name, object_name=object_name).pickle


def _fails(
    text: str,
    reason: str,
    *,
    object_name: str | None = None,
    timeout: float = 60.0,
    memory_limit_bytes: int = 512 * 2**20,
) -> BuildError:
    with pytest.raises(BuildError) as info:
        build_pickle(_src(text), flow_name="etl", object_name=object_name, timeout=timeout,
                     memory_limit_bytes=memory_limit_bytes)
    assert info.value.reason == reason, info.value.message
    assert str(info.value) == info.value.message
    return info.value


GOOD = """
    from flowstore.flow import Flow

    class Greeter:
        def __init__(self, greeting):
            self.greeting = greeting

        def greet(self, who):
            return f"{self.greeting}, {who}"

    def main(who="world"):
        return Greeter("hello").greet(who)

    etl = Flow("etl", main)

    if __name__ == "__main__":
        raise SystemExit("main blocks must not run at build time")
"""


def test_good_script_pickles_by_value() -> None:
    data = _build(GOOD)
    assert b"Greeter" in data  # the class travels by value, not as a reference to a module
    flow = cloudpickle.loads(data)
    assert type(flow).__module__ == "flowstore.flow"
    assert flow.name == "etl"
    assert flow.run(who="agents") == "hello, agents"
    assert "__flowstore_flow__" not in sys.modules  # loads without the script's module


def test_script_defined_flow_class_loads_in_parent() -> None:
    data = _build("""
        import dataclasses

        @dataclasses.dataclass
        class MyFlow:
            name: str
            factor: int
            def run(self, x):
                return x * self.factor

        the_flow = MyFlow("mine", 3)
    """, flow_name="mine")
    flow = cloudpickle.loads(data)
    assert type(flow).__name__ == "MyFlow"
    assert flow.run(5) == 15


def test_object_name_selects() -> None:
    text = """
        from flowstore.flow import Flow
        a = Flow("etl", lambda: "a")
        b = Flow("etl", lambda: "b")
    """
    assert cloudpickle.loads(_build(text, object_name="b")).run() == "b"
    err = _fails(text, Reason.FLOW_NOT_FOUND, object_name="c")
    assert "'c'" in err.message


def test_flow_not_found_and_ambiguous() -> None:
    err = _fails("from flowstore.flow import Flow\nx = Flow('other', print)\n", Reason.FLOW_NOT_FOUND)
    assert "'etl'" in err.message
    err = _fails("""
        from flowstore.flow import Flow
        a = Flow("etl", print)
        b = Flow("etl", print)
    """, Reason.FLOW_AMBIGUOUS)
    assert "a, b" in err.message


def test_syntax_error_has_line_number() -> None:
    err = _fails("x = 1\ny = 2\ndef f(:\n    pass\n", Reason.SCRIPT_SYNTAX_ERROR)
    assert "line 3" in err.message
    assert "def f(:" in err.message


def test_exception_at_import_is_script_failed() -> None:
    err = _fails("""
        print("starting up")
        def helper():
            raise RuntimeError("boom")
        helper()
    """, Reason.SCRIPT_FAILED)
    assert "RuntimeError: boom" in err.message
    assert "line 4, in helper" in err.message  # traceback lines point into the script
    assert 'raise RuntimeError("boom")' in err.message
    assert "_runner.py" not in err.message
    assert "starting up" in err.message  # the tail of what the script printed
    assert len(err.message) < 4000


def test_sys_exit_is_script_failed() -> None:
    _fails("import sys\nsys.exit(3)\n", Reason.SCRIPT_FAILED)
    err = _fails("import os\nos._exit(0)\n", Reason.SCRIPT_FAILED)
    assert "without a result" in err.message


@pytest.mark.parametrize("holder", [
    "import threading\nthing = threading.Lock()",
    "thing = (i for i in range(3))",
    "import socket\nthing = socket.socketpair()[0]",  # socket() itself is refused: no network
])
def test_unpicklable(holder: str) -> None:
    err = _fails(holder + "\nfrom flowstore.flow import Flow\netl = Flow('etl', lambda: thing)\n",
                 Reason.UNPICKLABLE)
    assert "'etl'" in err.message
    assert "cannot pickle" in err.message
    assert "etl.fn.thing" in err.message


def test_timeout() -> None:
    start = time.monotonic()
    err = _fails("while True:\n    pass\n", Reason.BUILD_TIMEOUT, timeout=2)
    assert time.monotonic() - start < 4
    assert "2 s" in err.message


def test_timeout_kills_the_scripts_subprocesses(tmp_path: Path) -> None:
    marker = tmp_path / "survivor"
    _fails(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c",
                          "import time; time.sleep(3); open({str(marker)!r}, 'w').close()"])
        while True:
            pass
    """, Reason.BUILD_TIMEOUT, timeout=1)
    time.sleep(3.5)
    assert not marker.exists()


def test_out_of_memory() -> None:
    start = time.monotonic()
    err = _fails('data = b"x" * (2 * 2**30)\n', Reason.BUILD_OUT_OF_MEMORY,
                 memory_limit_bytes=256 * 2**20)
    assert "256 MiB" in err.message
    assert time.monotonic() - start < 10


def test_script_output_does_not_corrupt_the_reply() -> None:
    data = _build("""
        import os, sys
        for i in range(20000):
            print("noise", i, "x" * 40)
        os.write(1, b"raw fd 1 noise\\n")
        sys.stdout.buffer.write(b"\\x80binary\\n")
        from flowstore.flow import Flow
        etl = Flow("etl", lambda: "quiet")
    """)
    assert cloudpickle.loads(data).run() == "quiet"


def test_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-123")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    flow = cloudpickle.loads(_build("""
        import os
        from flowstore.flow import Flow
        etl = Flow(os.environ.get("AWS_SECRET_ACCESS_KEY", "absent"), print)
    """, flow_name="absent"))
    assert flow.name == "absent"
    env_flow = cloudpickle.loads(_build("""
        import os
        from flowstore.flow import Flow
        names = sorted(os.environ)
        where = (os.getcwd(), os.environ["HOME"])
        etl = Flow("etl", lambda: (names, where))
    """))
    names, (cwd, home) = env_flow.run()
    assert set(names) <= {"PATH", "LANG", "LC_ALL", "HOME", "MALLOC_ARENA_MAX", "LC_CTYPE"}
    assert "flowstore-build-" in cwd and "flowstore-build-" in home
    assert not Path(cwd).exists()  # the temp dir is gone after the build


def test_concurrent_builds_from_threads() -> None:
    scripts = [f"from flowstore.flow import Flow\netl = Flow('etl', lambda: {i})\n" for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(_build, scripts))
    assert [cloudpickle.loads(r).run() for r in results] == list(range(6))


def test_check_script_ok_and_syntax_error() -> None:
    check_script(_src(GOOD))
    with pytest.raises(BuildError) as info:
        check_script(b"x = (1,\n", filename="etl.py")
    assert info.value.reason == Reason.SCRIPT_SYNTAX_ERROR
    assert "line 1" in info.value.message
    with pytest.raises(BuildError) as info:
        check_script(b"return 5\n")  # a compiler error, not a parser one
    assert info.value.reason == Reason.SCRIPT_SYNTAX_ERROR


def test_check_script_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    check_script(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(1)\n".encode())
    assert not marker.exists()


# ---------------------------------------------------------------------- confinement (Landlock)
PROBE = """
import os, socket
from flowstore.flow import Flow

seen = {}
for label, path in PATHS.items():
    try:
        with open(path, "rb") as fh:
            fh.read()
        seen[label] = "read"
    except OSError as exc:
        seen[label] = type(exc).__name__
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
    seen["network"] = "connected"
except OSError as exc:
    seen["network"] = type(exc).__name__
import json, yaml  # the standard library and site-packages stay importable
with open("scratch.txt", "w") as fh:
    fh.write("ok")
seen["scratch"] = open("scratch.txt").read()
flow = Flow("probe", lambda: seen)
"""


def test_build_cannot_read_credentials_or_use_the_network(tmp_path: Path) -> None:
    """A script can read Python and write its scratch directory, and nothing else: not a token
    file, not another process's environment, not the operator's files; no TCP connections."""
    import socket

    import cloudpickle

    from flowstore.sandbox import _confine

    assert _confine.abi_version() >= 4, "this kernel has no Landlock network rules; the test needs them"
    token = tmp_path / "token"
    token.write_text("operator-credential")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    paths = {"token": str(token), "parent_environ": f"/proc/{os.getpid()}/environ",
             "operator_source_tree": str(Path(__file__).resolve())}
    source = PROBE.replace("PATHS", repr(paths)).replace("PORT", str(listener.getsockname()[1]))
    try:
        seen = cloudpickle.loads(build_pickle(source.encode(), flow_name="probe", object_name=None).pickle).run()
    finally:
        listener.close()
    assert seen == {"token": "PermissionError", "parent_environ": "PermissionError",
                    "operator_source_tree": "PermissionError", "network": "PermissionError", "scratch": "ok"}
