"""Flow sources in the reconcile core, offline: one script stays exactly as it was; a ConfigMap
of several files (every key, or items at paths) becomes a bundle, with ignore rules and an
entrypoint, stored as is (script mode) or pickled with its own modules by value."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from flowstore.artifacts import bundle, envelope, loading
from flowstore.reconcile import reconcile_stored_flow
from tests.fakes.ports import FakeCluster

ONE_FILE = "from flowstore.flow import Flow\n\ndef main():\n    return 42\n\nflow = Flow('etl daily', main)\n"
# what the reconcile core recorded for ONE_FILE in a Local storage at /tmp/flowstore-golden before
# flows could have several files (commit d41d155): a one-file flow must not be stored again
GOLDEN = {
    True: {"inputsDigest": "sha256:e858753e287e07b555faf5198d4b1aae1f927fd68a8d6b9f46238476c543a4df",
           "digest": "sha256:4baecbe0b8955c96174db1e50927aa4c65adb3b4eded5cb0ba99df66ea2cbfe2"},
    False: {"inputsDigest": "sha256:3a2a0226040242350205da77d9ce3ee971fe938906cce5a8dfc88665c548fbab"},
}
MAIN = textwrap.dedent("""\
    from flowstore.flow import Flow

    from etl.helpers import greet
    from etl.sql import QUERY


    flow = Flow("etl daily", lambda: greet(QUERY))
""")
FILES = {"main.py": MAIN, "helpers.py": "def greet(q):\n    return 'ran ' + q\n",
         "sql.py": "QUERY = open(__file__[:-6] + 'daily.sql').read().strip()\n", "daily.sql": "select 1\n"}
ITEMS = [{"key": "main.py", "path": "etl/main.py"}, {"key": "helpers.py", "path": "etl/helpers.py"},
         {"key": "sql.py", "path": "etl/sql.py"}, {"key": "daily.sql", "path": "etl/daily.sql"}]


def cluster_with(directory: Path, data: dict[str, str], binary: dict[str, bytes] | None = None) -> FakeCluster:
    c = FakeCluster()
    c.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                           "spec": {"local": {"directory": str(directory)}, "interval": "10m"}}
    c.configmaps["flows"] = {"metadata": {"name": "flows", "resourceVersion": "1"}, "data": data,
                             "binaryData": {k: base64.b64encode(v).decode() for k, v in (binary or {}).items()}}
    return c


def flow(source: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "etl", "namespace": "ns", "uid": "f1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"storageRef": {"name": "store"}, "flowName": "etl daily", "source": source, **spec}}


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize("as_script", [True, False])
def test_a_one_file_flow_is_recorded_exactly_as_before(as_script: bool) -> None:
    directory = Path("/tmp/flowstore-golden")
    directory.mkdir(exist_ok=True)
    cluster = cluster_with(directory, {"etl_daily.py": ONE_FILE})
    status = reconcile_stored_flow(flow({"configMapRef": {"name": "flows", "key": "etl_daily.py"}},
                                        storedAsScript=as_script), cluster).status
    artifact = status["artifact"]
    assert ready(status)["status"] == "True", ready(status)
    assert artifact["inputsDigest"] == GOLDEN[as_script]["inputsDigest"], "a one-file flow would be stored again"
    assert artifact["format"] == ("script" if as_script else "pickle")
    if as_script:
        assert artifact["digest"] == GOLDEN[True]["digest"] and artifact["fileName"] == "etl_daily.py"
    else:  # the envelope records what it always did
        _, versions = envelope.unwrap(Path(status["location"]).read_bytes())
        assert set(versions) == {"python", "cloudpickle", "flowstore"} and "fileName" not in artifact
    assert "entrypoint" not in artifact and "fileCount" not in artifact


def stored(tmp_path: Path, source: dict[str, Any], data: dict[str, str] = FILES, **spec: Any) -> dict[str, Any]:
    status = reconcile_stored_flow(flow(source, **spec), cluster_with(tmp_path, data)).status
    assert ready(status)["status"] == "True", ready(status)["message"]
    return status


def test_items_place_files_and_the_bundle_is_stored_as_is(tmp_path: Path) -> None:
    status = stored(tmp_path, {"configMapRef": {"name": "flows", "items": ITEMS}}, storedAsScript=True,
                    entrypoint="etl/main.py:flow")
    artifact = status["artifact"]
    assert (artifact["format"], artifact["fileCount"], artifact["entrypoint"]) == ("bundle", 4, "etl/main.py:flow")
    data = Path(status["location"]).read_bytes()
    assert sorted(bundle.unpack(data).files) == ["etl/daily.sql", "etl/helpers.py", "etl/main.py", "etl/sql.py"]
    assert loading.load(data, "bundle", flow_name="etl daily", cache_dir=tmp_path / "cache").run() == "ran select 1"


def test_the_same_files_store_the_same_bundle(tmp_path: Path) -> None:
    first = stored(tmp_path / "a", {"configMapRef": {"name": "flows", "items": ITEMS}}, storedAsScript=True,
                   entrypoint="etl/main.py")
    second = stored(tmp_path / "b", {"configMapRef": {"name": "flows", "items": list(reversed(ITEMS))}},
                    storedAsScript=True, entrypoint="etl/main.py")
    assert first["artifact"]["digest"] == second["artifact"]["digest"]


def test_a_pickled_bundle_runs_where_its_helpers_do_not_exist(tmp_path: Path) -> None:
    status = stored(tmp_path, {"configMapRef": {"name": "flows", "items": ITEMS}}, entrypoint="etl/main.py:flow")
    assert (status["artifact"]["format"], status["artifact"]["fileCount"]) == ("pickle", 4)
    program = ("import sys; from flowstore.artifacts import envelope;"
               "flow = envelope.loads(open(sys.argv[1], 'rb').read()); assert 'etl' not in sys.modules;"
               "print(flow.run())")
    done = subprocess.run([sys.executable, "-c", program, status["location"]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran select 1"


def test_every_key_of_a_configmap_with_ignore_rules(tmp_path: Path) -> None:
    data = {"flow.py": "from flowstore.flow import Flow\nfrom helper import X\nflow = Flow('etl daily', lambda: X)\n",
            "helper.py": "X = 7\n", "notes.ipynb": "{}", "test_flow.py": "assert False\n",
            ".flowstoreignore": "*.ipynb\n"}
    status = stored(tmp_path, {"configMapRef": {"name": "flows"}, "ignore": ["test_*.py"]}, data=data,
                    storedAsScript=True, entrypoint="flow.py")
    files = bundle.unpack(Path(status["location"]).read_bytes()).files
    assert sorted(files) == ["flow.py", "helper.py"], "ignored files and the ignore file itself stay out"
    assert status["artifact"]["fileCount"] == 2


def test_binary_data_is_a_file_too(tmp_path: Path) -> None:
    cluster = cluster_with(tmp_path, {"main.py": "from flowstore.flow import Flow\nflow = Flow('etl daily', "
                                      "lambda: open(__file__[:-7] + 'blob.bin', 'rb').read())\n"},
                           binary={"blob.bin": b"\x00\xffbinary"})
    status = reconcile_stored_flow(flow({"configMapRef": {"name": "flows"}}, storedAsScript=True), cluster).status
    assert ready(status)["status"] == "True", ready(status)["message"]
    assert bundle.unpack(Path(status["location"]).read_bytes()).files["blob.bin"] == b"\x00\xffbinary"


@pytest.mark.parametrize("source,spec,reason,words", [
    ({"configMapRef": {"name": "flows"}}, {}, "InvalidSpec", "has 3 Python files"),
    ({"configMapRef": {"name": "flows"}}, {"entrypoint": "etl/main.py"}, "InvalidSpec", "not among the flow's files"),
    ({"configMapRef": {"name": "flows"}}, {"entrypoint": "main.py:flow", "objectName": "other"}, "InvalidSpec",
     "keep one of them"),
    ({"configMapRef": {"name": "flows", "items": [{"key": "nope.py", "path": "a.py"}]}}, {}, "SourceNotFound",
     "has no key 'nope.py'"),
    ({"configMapRef": {"name": "flows", "items": [{"key": "main.py", "path": "../main.py"}]}}, {}, "InvalidSpec",
     "escapes the flow's directory"),
    # pathspec raises re.error (not its own error) for some patterns: a spec error, not a crash
    ({"configMapRef": {"name": "flows"}, "ignore": ["[z-a]"]}, {"entrypoint": "main.py"}, "InvalidSpec",
     "is not valid"),
])
def test_what_is_wrong_with_several_files_is_said(tmp_path: Path, source: dict[str, Any], spec: dict[str, Any],
                                                  reason: str, words: str) -> None:
    outcome = reconcile_stored_flow(flow(source, **spec), cluster_with(tmp_path, FILES))
    assert outcome.failure is not None and outcome.failure.reason == reason
    assert words in outcome.failure.message and outcome.failure.stalled


def test_an_invalid_ignore_pattern_for_a_git_directory_is_a_spec_error() -> None:
    from flowstore.api.models import FlowSpec, SpecError
    from flowstore.reconcile.sources import ignore_rules

    spec = FlowSpec.parse({"storageRef": {"name": "repo"}, "flowName": "etl",
                           "source": {"path": "flows/etl", "ignore": ["tests/", "[z-a]"]}})
    with pytest.raises(SpecError, match=r"spec.source.ignore cannot be used: .*\[z-a\]|not valid"):
        ignore_rules(spec)
    assert ignore_rules(FlowSpec.parse({"storageRef": {"name": "repo"}, "flowName": "etl",
                                        "source": {"path": "flows/etl", "ignore": ["tests/"]}}))("main.py")
