"""The flow image writer (flowstore.storage.oci.image): one layer with the flow's files and their
manifest, a labelled image configuration, the same bytes for the same input."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap

import pytest

from flowstore.storage.oci.image import (
    LABEL_FLOW_DIGEST,
    LABEL_MANIFEST_DIGEST,
    LABEL_STORED_FLOW,
    MANIFEST_PATH,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER_TAR,
    MEDIA_OCI_MANIFEST,
    FlowImageError,
    build_flow_image,
)

DIGEST = "sha256:" + "ab" * 32
FILES = {"flow.py": b"print('hello')\n", "pkg/__init__.py": b"", "pkg/data/table.csv": b"a,b\n1,2\n"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def members(layer: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_the_layer_holds_the_files_and_their_manifest() -> None:
    image = build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST)
    entries = members(image.layer)
    assert set(entries) == {"flow.py", "pkg", "pkg/__init__.py", "pkg/data", "pkg/data/table.csv", MANIFEST_PATH}
    with tarfile.open(fileobj=io.BytesIO(image.layer), mode="r:") as tar:
        for path, data in FILES.items():
            fh = tar.extractfile(path)
            assert fh is not None and fh.read() == data
        fh = tar.extractfile(MANIFEST_PATH)
        assert fh is not None and fh.read() == image.files_manifest
    # readable by any user of a Pod, owned by root, never executable or writable by others
    for name, info in entries.items():
        assert (info.uid, info.gid) == (0, 0), name
        assert info.mode == (0o755 if info.isdir() else 0o644), (name, oct(info.mode))
    manifest = json.loads(image.files_manifest)
    assert manifest == {"schema": 1, "storedFlow": "team-a/etl", "flowDigest": DIGEST,
                        "files": {path: sha(data) for path, data in FILES.items()}}


def test_the_config_and_manifest_are_a_proper_oci_image() -> None:
    image = build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST)
    manifest = json.loads(image.manifest)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MEDIA_OCI_MANIFEST
    assert manifest["config"] == {"mediaType": MEDIA_OCI_CONFIG, "digest": sha(image.config),
                                  "size": len(image.config)}
    assert manifest["layers"] == [{"mediaType": MEDIA_OCI_LAYER_TAR, "digest": sha(image.layer),
                                   "size": len(image.layer)}]
    config = json.loads(image.config)
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha(image.layer)]}  # uncompressed: diff ID = digest
    assert config["config"]["Labels"] == {LABEL_STORED_FLOW: "team-a/etl", LABEL_FLOW_DIGEST: DIGEST,
                                          LABEL_MANIFEST_DIGEST: sha(image.files_manifest)}
    assert image.digest == sha(image.manifest)
    assert (image.layer_digest, image.config_digest) == (sha(image.layer), sha(image.config))


def test_the_same_input_gives_the_same_digest_and_any_change_another() -> None:
    first = build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST)
    again = build_flow_image(dict(reversed(list(FILES.items()))), stored_flow="team-a/etl", flow_digest=DIGEST)
    assert again == first
    changed = [
        build_flow_image({**FILES, "flow.py": b"print('bye')\n"}, stored_flow="team-a/etl", flow_digest=DIGEST),
        build_flow_image({**FILES, "extra.txt": b""}, stored_flow="team-a/etl", flow_digest=DIGEST),
        build_flow_image(FILES, stored_flow="team-b/etl", flow_digest=DIGEST),
        build_flow_image(FILES, stored_flow="team-a/etl", flow_digest="sha256:" + "cd" * 32),
    ]
    assert len({first.digest, *(c.digest for c in changed)}) == 5


def test_the_digest_does_not_depend_on_the_process() -> None:
    """Another interpreter (other hash seed, other time, other working directory) writes the
    same bytes: nothing of the machine's state enters the image."""
    script = textwrap.dedent(f"""
        from flowstore.storage.oci.image import build_flow_image
        print(build_flow_image({FILES!r}, stored_flow="team-a/etl", flow_digest={DIGEST!r}).digest)
    """)
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "TZ": tz}, cwd=cwd).stdout.strip()
               for seed, tz, cwd in (("1", "UTC", "/"), ("2", "Asia/Tokyo", "/tmp"))}
    assert digests == {build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST).digest}


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../up", "a/../../b", "a//b", "./a", "a/", ".", "..",
                                  "a\\b", "nul\x00", MANIFEST_PATH, "x" * 1025])
def test_file_names_that_could_escape_or_clash_are_refused(path: str) -> None:
    with pytest.raises(FlowImageError):
        build_flow_image({path: b"x"}, stored_flow="team-a/etl", flow_digest=DIGEST)


def test_a_name_that_is_both_a_file_and_a_directory_is_refused() -> None:
    with pytest.raises(FlowImageError, match="both a file and a directory"):
        build_flow_image({"pkg": b"x", "pkg/mod.py": b"y"}, stored_flow="team-a/etl", flow_digest=DIGEST)


@pytest.mark.parametrize(("stored_flow", "digest"), [
    ("etl", DIGEST), ("team-a/", DIGEST), ("Team/etl", DIGEST), ("a/b/c", DIGEST), ("team-a/etl", "sha256:ab"),
    ("team-a/etl", "md5:" + "ab" * 16), ("team-a/etl", DIGEST.upper()),
])
def test_bad_names_and_digests_are_refused(stored_flow: str, digest: str) -> None:
    with pytest.raises(FlowImageError):
        build_flow_image(FILES, stored_flow=stored_flow, flow_digest=digest)


def test_an_empty_flow_or_non_bytes_content_is_refused() -> None:
    with pytest.raises(FlowImageError, match="at least one file"):
        build_flow_image({}, stored_flow="team-a/etl", flow_digest=DIGEST)
    with pytest.raises(FlowImageError, match="must be bytes"):
        build_flow_image({"flow.py": "text"}, stored_flow="team-a/etl", flow_digest=DIGEST)  # type: ignore[dict-item]
