"""A flow of several files: the deterministic bundle, the builder importing its entrypoint and
pickling its own modules by value, agents extracting it once into a digest-keyed cache."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import cloudpickle
import pytest

from flowstore.artifacts import bundle, loading
from flowstore.artifacts.bundle import BundleError, Entrypoint
from flowstore.artifacts.cache import Settings
from flowstore.sandbox import BuildError, build_pickle

MAIN = textwrap.dedent("""\
    from pathlib import Path

    from flowstore.flow import Flow

    from etl import helpers

    QUERY = (Path(__file__).parent / "sql" / "daily.sql").read_text()


    def run():
        return helpers.shout(QUERY.strip())


    flow = Flow("etl daily", run)
""").encode()
HELPERS = b"def shout(text):\n    return text.upper() + '!'\n"
SQL = b"select 1\n"
FILES = {"etl/main.py": MAIN, "etl/helpers.py": HELPERS, "etl/sql/daily.sql": SQL, "etl/__init__.py": b""}


def packed(files: dict[str, bytes] = FILES, entrypoint: str = "etl/main.py:flow") -> bytes:
    return bundle.pack(files, Entrypoint.parse(entrypoint))


# --------------------------------------------------------------------------- the format
def test_the_same_files_give_the_same_bytes_in_any_order() -> None:
    first = packed()
    assert packed(dict(reversed(list(FILES.items())))) == first
    header = first[:10]
    assert header[4:8] == b"\0\0\0\0", "the gzip header carries no time"
    assert header[3] & 0x08 == 0, "the gzip header carries no file name"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        members = tar.getmembers()
    assert members[0].name == bundle.MANIFEST
    files = [m.name for m in members if m.isfile()][1:]
    assert files == sorted(files)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.mode for m in members if m.isfile()} == {0o644} and {m.mode for m in members if m.isdir()} == {0o755}


def test_unpack_checks_every_file_against_the_manifest() -> None:
    unpacked = bundle.unpack(packed())
    assert unpacked.files == FILES and str(unpacked.entrypoint) == "etl/main.py:flow"
    raw = gzip.decompress(packed())
    tampered = raw.replace(b"return text.upper()", b"return text.lower()")
    assert tampered != raw
    with pytest.raises(BundleError, match=r"etl/helpers\.py in the bundle does not match its manifest"):
        bundle.unpack(gzip.compress(tampered))


def _tar(*members: tarfile.TarInfo, manifest: bool = True) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        if manifest:
            doc = json.dumps({"format": bundle.FORMAT, "entrypoint": "main.py", "files": {}}).encode()
            info = tarfile.TarInfo(bundle.MANIFEST)
            info.size = len(doc)
            tar.addfile(info, io.BytesIO(doc))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize("name,kind", [("../escape.py", tarfile.REGTYPE), ("/etc/passwd", tarfile.REGTYPE),
                                       ("link.py", tarfile.SYMTYPE), ("dev", tarfile.CHRTYPE)])
def test_unpack_refuses_what_is_not_a_file_inside_the_bundle(name: str, kind: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.size = 1 if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        member.linkname = "/etc/passwd"
    with pytest.raises(BundleError):
        bundle.unpack(_tar(member))


@pytest.mark.parametrize("path", ["../x.py", "/abs.py", "a/../../x.py", "a/../b.py", "", bundle.MANIFEST])
def test_pack_refuses_paths_outside_the_flow(path: str) -> None:
    with pytest.raises(BundleError):
        bundle.pack({path: b"x", "main.py": b""}, Entrypoint("main.py"))


def test_pack_limits_files_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle, "MAX_FILES", 3)
    with pytest.raises(BundleError, match="4 files, more than 3"):
        packed()
    monkeypatch.setattr(bundle, "MAX_FILES", 1000)
    monkeypatch.setattr(bundle, "MAX_BYTES", 100)
    with pytest.raises(BundleError, match="more than 100"):
        packed()


def test_entrypoints() -> None:
    assert Entrypoint.parse("etl/main.py:flow") == Entrypoint("etl/main.py", "flow")
    assert Entrypoint.parse("main.py").module == "main"
    assert Entrypoint.parse("etl/__init__.py").module == "etl"
    for bad in ("etl/main:flow", "main.py:1x", "../main.py", "my-etl/main.py"):
        with pytest.raises(BundleError):
            Entrypoint.parse(bad).module  # noqa: B018 - the property checks the module name


# --------------------------------------------------------------------------- building
def test_a_bundle_builds_and_its_own_modules_are_pickled_by_value(tmp_path: Path) -> None:
    """The pickle loads and runs in a process where the helper modules do not exist."""
    built = build_pickle(bundle=packed(), flow_name="etl daily", object_name=None)
    assert built.versions["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert built.versions["cloudpickle"] == cloudpickle.__version__
    (tmp_path / "flow.pickle").write_bytes(built.pickle)
    program = ("import cloudpickle, sys; flow = cloudpickle.load(open(sys.argv[1], 'rb'));"
               "assert 'etl' not in sys.modules and 'etl.helpers' not in sys.modules;"
               "print(flow.name, flow.run())")
    done = subprocess.run([sys.executable, "-I", "-c", program, str(tmp_path / "flow.pickle")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "etl daily SELECT 1!"


def test_bundle_build_failures_name_the_file() -> None:
    broken = {**FILES, "etl/helpers.py": b"def shout(text:\n"}
    with pytest.raises(BuildError) as info:
        build_pickle(bundle=packed(broken), flow_name="etl daily", object_name=None)
    assert info.value.reason == "ScriptSyntaxError" and "of etl/helpers.py" in info.value.message
    failing = {**FILES, "etl/helpers.py": b"raise RuntimeError('no database here')\n"}
    with pytest.raises(BuildError) as info:
        build_pickle(bundle=packed(failing), flow_name="etl daily", object_name=None)
    assert info.value.reason == "ScriptFailed" and "no database here" in info.value.message
    assert "helpers.py" in info.value.message
    with pytest.raises(BuildError) as info:
        build_pickle(bundle=packed(entrypoint="etl/main.py:nope"), flow_name="etl daily", object_name=None)
    assert info.value.reason == "FlowNotFound"


# --------------------------------------------------------------------------- agents
def test_agents_extract_once_and_import_the_entrypoint(tmp_path: Path) -> None:
    data = packed()
    flow = loading.load(data, "bundle", flow_name="etl daily", cache_dir=tmp_path)
    assert flow.name == "etl daily" and flow.run() == "SELECT 1!"
    entries = [p for p in (tmp_path / "bundles").iterdir()]
    assert [p.name for p in entries] == [__import__("hashlib").sha256(data).hexdigest()]
    assert (entries[0] / "etl" / "sql" / "daily.sql").read_bytes() == SQL
    again = loading.load(data, "bundle", flow_name="etl daily", cache_dir=tmp_path)
    assert again.run() == "SELECT 1!" and len(list((tmp_path / "bundles").iterdir())) == 1


def test_two_bundles_with_the_same_module_names_each_get_their_own(tmp_path: Path) -> None:
    other = {**FILES, "etl/helpers.py": b"def shout(text):\n    return 'other: ' + text\n"}
    assert loading.load(packed(), "bundle", flow_name="etl daily", cache_dir=tmp_path).run() == "SELECT 1!"
    assert loading.load(packed(other), "bundle", flow_name="etl daily", cache_dir=tmp_path).run() == "other: select 1"


def test_a_module_imported_from_elsewhere_does_not_shadow_the_bundles(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # An agent process that already imported a package `etl` of its own (another project's, a
    # flow loaded some other way) still gets this bundle's etl.helpers, and keeps the standard
    # library it imported.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "etl").mkdir(parents=True)
    (elsewhere / "etl" / "__init__.py").write_text("")
    (elsewhere / "etl" / "helpers.py").write_text("def shout(text):\n    return 'elsewhere'\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    for name in [n for n in sys.modules if n == "etl" or n.startswith("etl.")]:
        del sys.modules[name]  # loaded by the tests before
    import etl.helpers  # type: ignore[import-not-found]

    assert etl.helpers.shout("x") == "elsewhere"
    json_module = sys.modules["json"]
    flow = loading.load(packed(), "bundle", flow_name="etl daily", cache_dir=tmp_path / "cache")
    assert flow.run() == "SELECT 1!"
    assert sys.modules["json"] is json_module
    for name in [n for n in sys.modules if n == "etl" or n.startswith("etl.")]:
        del sys.modules[name]


def test_eight_processes_loading_at_once_share_one_extraction(tmp_path: Path) -> None:
    data = packed()
    (tmp_path / "flow.tar.gz").write_bytes(data)
    cache = tmp_path / "cache"
    program = ("import sys; from flowstore.artifacts import loading; from pathlib import Path;"
               "data = open(sys.argv[1], 'rb').read();"
               "print(loading.load(data, 'bundle', flow_name='etl daily', cache_dir=Path(sys.argv[2])).run())")
    procs = [subprocess.Popen([sys.executable, "-c", program, str(tmp_path / "flow.tar.gz"), str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in results]
    assert {out.strip() for out, _ in results} == {"SELECT 1!"}
    assert [p.name for p in (cache / "bundles").iterdir()] == [__import__("hashlib").sha256(data).hexdigest()]


def test_the_cache_is_where_the_environment_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path / "here"))
    assert Settings.from_environment().root == tmp_path / "here"
    monkeypatch.delenv("FLOWSTORE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings.from_environment().root == tmp_path / "xdg" / "flowstore" / "agent"
    assert os.path.isabs(Settings.from_environment().root)
    flow = loading.load(packed(), "bundle", flow_name="etl daily")
    assert flow.run() == "SELECT 1!"
    assert len(list((tmp_path / "xdg" / "flowstore" / "agent" / "bundles").iterdir())) == 1


# --------------------------------------------------------------------------- hostile bundles
def _gzip_of_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return gzip.compress(raw.getvalue())


def _file(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def _manifest(files: dict[str, bytes], entrypoint: str = "main.py") -> tuple[tarfile.TarInfo, bytes]:
    doc = json.dumps({"format": bundle.FORMAT, "entrypoint": entrypoint,
                      "files": {p: "sha256:" + __import__("hashlib").sha256(d).hexdigest() for p, d in files.items()}})
    return _file(bundle.MANIFEST, doc.encode())


def test_a_small_gzip_that_expands_to_a_gibibyte_is_refused_without_inflating_it() -> None:
    """A 1 GiB member of zeros compresses to about 1 MiB: the declared size is refused before any
    of it is read, and a stream that keeps inflating past the bound stops at the bound."""
    import tracemalloc

    huge = tarfile.TarInfo("main.py")
    huge.size = 2**30
    header = io.BytesIO()
    with tarfile.open(fileobj=header, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info, content = _manifest({"main.py": b""})
        tar.addfile(info, io.BytesIO(content))
        tar.addfile(huge)  # header only: the content follows, streamed below
    compressor = __import__("zlib").compressobj(9, __import__("zlib").DEFLATED, 31)
    parts = [compressor.compress(header.getvalue()[:-1024])]  # without the end-of-archive blocks
    zeros = bytes(2**20)
    for _ in range(1024):
        parts.append(compressor.compress(zeros))
    bomb = b"".join(parts) + compressor.flush()
    assert len(bomb) < 2 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="more than"):
            bundle.unpack(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"unpack held {peak} bytes at once"

    # a tar whose members each claim little but whose stream never ends: stopped at the bound
    endless = b"".join([gzip.compress(bytes(2**20))] * 64)  # 64 MiB of zero blocks, no end-of-archive
    with pytest.raises(BundleError):
        bundle.unpack(endless)


def test_the_file_limit_is_enforced_when_unpacking() -> None:
    files = {f"f{i}.py": b"" for i in range(bundle.MAX_FILES + 1)}
    members = [_manifest(files, "f0.py")] + [_file(p, d) for p, d in files.items()]
    with pytest.raises(BundleError, match=f"more than {bundle.MAX_FILES} files"):
        bundle.unpack(_gzip_of_tar(members))


@pytest.mark.parametrize("manifest", [b"{not json", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b"[]", b"null",
                                      b'{"format": "flowstore-bundle/1", "entrypoint": 3, "files": {}}',
                                      b'{"format": "flowstore-bundle/1", "entrypoint": "main.py", "files": []}'])
def test_a_malformed_manifest_is_a_bundle_error(manifest: bytes) -> None:
    with pytest.raises(BundleError):
        bundle.unpack(_gzip_of_tar([_file(bundle.MANIFEST, manifest), _file("main.py", b"")]))


@pytest.mark.parametrize("data", [b"\x1f\x8b" + b"\x00" * 20, b"\x1f\x8b\x08\x00" + os.urandom(200),
                                  gzip.compress(b"not a tar at all" * 100), gzip.compress(b"")[:-4],
                                  gzip.compress(os.urandom(5000))[:100], b"", b"\x1f"])
def test_deflate_and_tar_errors_are_bundle_errors_and_is_bundle_never_raises(data: bytes) -> None:
    with pytest.raises(BundleError):
        bundle.unpack(data)
    assert bundle.is_bundle(data) is False


def test_is_bundle_is_false_for_anything_that_is_not_a_bytes_bundle() -> None:
    for junk in (None, 3, "text", b"x" * 10, bytearray(b"\x1f\x8bjunk")):
        assert bundle.is_bundle(junk) is False  # type: ignore[arg-type]
    assert bundle.is_bundle(packed()) is True


@pytest.mark.parametrize("path", ["/".join(["d"] * 40) + "/main.py", "x" * 300 + ".py",
                                  "/".join(["abcdefghij"] * 100) + ".py"])
def test_deep_or_long_paths_are_refused_on_both_sides(path: str) -> None:
    with pytest.raises(BundleError, match="too long or too deep"):
        bundle.pack({path: b"", "main.py": b""}, Entrypoint("main.py"))
    members = [_manifest({path: b"", "main.py": b""}), _file(path, b""), _file("main.py", b"")]
    with pytest.raises(BundleError):
        bundle.unpack(_gzip_of_tar(members))


def test_an_entrypoint_missing_from_the_files_is_refused() -> None:
    files = {"helpers.py": b"X = 1\n"}
    members = [_manifest(files, "main.py:flow"), _file("helpers.py", files["helpers.py"])]
    with pytest.raises(BundleError, match=r"entrypoint main\.py is not one of its files"):
        bundle.unpack(_gzip_of_tar(members))


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.GNUTYPE_SPARSE, tarfile.CONTTYPE])
def test_links_fifos_and_sparse_members_are_refused(kind: bytes) -> None:
    member = tarfile.TarInfo("main.py")
    member.type = kind
    member.linkname = "other.py"
    with pytest.raises(BundleError):
        bundle.unpack(_gzip_of_tar([_manifest({"main.py": b""}), (member, None)]))


def test_a_truncated_bundle_is_refused() -> None:
    data = packed()
    raw = gzip.decompress(data)
    with pytest.raises(BundleError):
        bundle.unpack(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(BundleError):
        bundle.unpack(data[: len(data) // 2])
