"""Local storage: the conformance suite on a temporary directory, plus Local's own rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from flowstore.artifacts.keys import slugify
from flowstore.storage import ContainerNotFound, InvalidConfig, NotFound, from_serialized
from flowstore.storage.local import Local

from .conformance import StorageConformance, StorageFactory, make_flow


class TestLocal(StorageConformance):
    default_label_prefix = "local-flow-storage-"

    @pytest.fixture
    def storage_factory(self, tmp_path: Path) -> StorageFactory:
        def make(**kwargs: Any) -> Local:
            return Local(directory=str(tmp_path / "flows"), **kwargs)

        return make


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    return tmp_path / "flows"


def test_validate_makes_directory_absolute_and_creates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = Local(directory="rel/flows")
    assert storage.directory == str(tmp_path / "rel" / "flows")
    assert (tmp_path / "rel" / "flows").is_dir()


def test_default_directory_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    storage = Local()
    assert storage.directory == str(tmp_path / ".flowstore" / "flows")
    assert os.path.isdir(storage.directory)


def test_location_is_absolute_file_path_inside_directory(flow_dir: Path) -> None:
    storage = Local(directory=str(flow_dir))
    location = storage.add_flow(make_flow("My Flow", 1))
    assert os.path.isabs(location)
    assert location.startswith(str(flow_dir) + os.sep + "my-flow" + os.sep)
    storage.build()
    assert Path(location).is_file()
    assert storage.url_for(location) == Path(location).as_uri()
    assert storage.url_for(location).startswith("file://")


def test_path_argument_fixes_the_file(flow_dir: Path) -> None:
    storage = Local(directory=str(flow_dir), path="team/etl.flow")
    location = storage.add_flow(make_flow("etl", 5))
    assert location == str(flow_dir / "team" / "etl.flow")
    storage.build()
    assert storage.get_flow(location).run() == 5


def test_confined_locations_escaping_the_directory_are_refused(tmp_path: Path, flow_dir: Path) -> None:
    """What the operator uses (a FlowStorage spec): nothing outside the directory."""
    storage = Local.from_config({"directory": str(flow_dir)})
    assert storage.confine
    outside = tmp_path / "outside.bin"
    for bad in ("../outside.bin", "a/../../outside.bin", str(outside), "/etc/passwd", ".", ""):
        with pytest.raises(InvalidConfig, match="outside the storage directory"):
            storage.put_bytes(bad, b"x")
    with pytest.raises(InvalidConfig):
        storage.get_bytes("../outside.bin")
    with pytest.raises(InvalidConfig):
        storage.get_bytes("/etc/hostname")
    with pytest.raises(InvalidConfig):
        Local.from_config({"directory": str(flow_dir), "path": "../escape.flow"}).add_flow(make_flow("x", 1))
    # the seed's in-place script is not the operator's to read either
    scripted = Local.from_config({"directory": str(flow_dir), "path": "/etc/hostname", "storedAsScript": True})
    scripted.add_flow("x")
    with pytest.raises(InvalidConfig):
        scripted.get_flow("/etc/hostname")
    assert not outside.exists()


def test_the_class_writes_where_its_author_says(tmp_path: Path, flow_dir: Path) -> None:
    """The seed's Local, used by the flow's author: an absolute path is used wherever it points."""
    storage = Local(directory=str(flow_dir), path=str(tmp_path / "elsewhere" / "etl.flow"))
    location = storage.add_flow(make_flow("etl", 3))
    assert location == str(tmp_path / "elsewhere" / "etl.flow")
    storage.build()
    assert (tmp_path / "elsewhere" / "etl.flow").is_file()
    assert storage.get_flow(location).run() == 3
    assert Local(directory=str(flow_dir)).put_bytes("../beside.bin", b"x").location == str(tmp_path / "beside.bin")


def test_symlink_out_of_the_directory_is_refused(tmp_path: Path, flow_dir: Path) -> None:
    storage = Local(directory=str(flow_dir), confine=True)
    (tmp_path / "elsewhere").mkdir()
    (flow_dir / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidConfig):
        storage.put_bytes("link/evil.bin", b"x")
    assert not (tmp_path / "elsewhere" / "evil.bin").exists()


def test_relative_location_is_taken_inside_the_directory(flow_dir: Path) -> None:
    storage = Local(directory=str(flow_dir))
    artifact = storage.put_bytes("sub/raw.bin", b"abc")
    assert artifact.location == str(flow_dir / "sub" / "raw.bin")
    assert storage.get_bytes(artifact.location) == b"abc"


def test_writes_are_atomic_and_leave_no_temporary_files(flow_dir: Path) -> None:
    storage = Local(directory=str(flow_dir))
    location = storage.location_for("x", key="a/b.bin")
    storage.put_bytes(location, b"first")
    storage.put_bytes(location, b"second")
    assert sorted(p.name for p in (flow_dir / "a").iterdir()) == ["b.bin"]
    assert oct((flow_dir / "a" / "b.bin").stat().st_mode & 0o777) == oct(0o644)


def test_missing_directory_without_validate(tmp_path: Path) -> None:
    storage = Local(directory=str(tmp_path / "not-there"), validate=False)
    assert not (tmp_path / "not-there").exists()
    with pytest.raises(ContainerNotFound, match="not-there"):
        storage.check_container()
    with pytest.raises(ContainerNotFound):
        storage.put_bytes("a.bin", b"x")
    with pytest.raises(NotFound):
        storage.get_bytes("a.bin")
    assert storage.stat("a.bin") is None
    with pytest.raises(ContainerNotFound):
        storage.run_basic_healthchecks()


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidConfig):
        Local(directory=str(tmp_path / "file"), validate=False).check_container()


def test_unwritable_directory_is_auth_failed(flow_dir: Path) -> None:
    """As a user without write permission (root writes anywhere, so the check runs in a child
    process that drops to uid/gid 65534 when the suite runs as root)."""
    flow_dir.mkdir()
    flow_dir.chmod(0o555)
    script = (
        "import os, tempfile\n"
        "from flowstore.storage import AuthFailed\n"
        "from flowstore.storage.local import Local\n"
        "tempfile.gettempdir()\n"
        "if os.geteuid() == 0:  # import first: the interpreter may live where nobody can read\n"
        "    os.setgid(65534); os.setuid(65534)\n"
        f"storage = Local(directory={str(flow_dir)!r}, validate=False)\n"
        "for call in (storage.check_container, lambda: storage.put_bytes('a.bin', b'x')):\n"
        "    try:\n"
        "        call()\n"
        "    except AuthFailed as exc:\n"
        "        print('AuthFailed:', exc)\n"
        "    else:\n"
        "        raise SystemExit('no AuthFailed')\n"
    )
    import subprocess
    import sys

    parents = [p for p in (flow_dir, *flow_dir.parents) if p != Path("/")]
    modes = {p: p.stat().st_mode for p in parents}
    try:
        for p in parents[1:]:
            p.chmod(modes[p] | 0o011)  # let the unprivileged child reach the directory
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
        flow_dir.chmod(0o700)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("AuthFailed:") == 2


def test_default_label_names_the_volume_not_the_host(flow_dir: Path) -> None:
    assert Local(directory=str(flow_dir), volume_name="Team Flows PVC").labels == [
        "local-flow-storage-team-flows-pvc"
    ]
    assert Local(directory=str(flow_dir)).labels == [f"local-flow-storage-{slugify(str(flow_dir))}"]


def test_from_config_and_serialize(flow_dir: Path) -> None:
    config = {
        "directory": str(flow_dir), "path": "one.flow", "volumeName": "flows", "validate": True,
        "storedAsScript": False, "labels": ["prod"], "addDefaultLabels": True, "secrets": ["S"],
    }
    storage = Local.from_config(config)
    assert (storage.directory, storage.path, storage.volume_name) == (str(flow_dir), "one.flow", "flows")
    assert storage.labels == ["prod", "local-flow-storage-flows"]
    doc = storage.to_status()
    assert {k: doc[k] for k in ("type", "directory", "path", "volumeName")} == {
        "type": "Local", "directory": str(flow_dir), "path": "one.flow", "volumeName": "flows",
    }
    assert "validate" not in doc
    plain = Local(directory=str(flow_dir)).to_status()
    assert "path" not in plain and "volumeName" not in plain
    assert from_serialized(doc).to_status() == doc
    assert storage.serialize() == {"type": "Local", "__version__": "1.4.1", "directory": str(flow_dir),
                                   "path": "one.flow", "stored_as_script": False, "flows": {}, "secrets": ["S"]}


def test_agents_documents_do_not_create_the_directory(tmp_path: Path) -> None:
    """status.storage and the seed's schema name the operator's (or author's) directory: an agent
    reading them neither creates it nor is confined to it; a FlowStorage spec is both."""
    missing = tmp_path / "not-mounted"
    for doc in ({"type": "Local", "directory": str(missing)},
                {"type": "Local", "__version__": "1.4.1", "directory": str(missing)}):
        agent = from_serialized(doc)
        assert isinstance(agent, Local) and not agent.confine
        assert not missing.exists()
    spec = Local.from_config({"directory": str(missing)})
    assert spec.confine and missing.is_dir()


def test_from_config_requires_directory() -> None:
    with pytest.raises(InvalidConfig, match="directory"):
        Local.from_config({})
