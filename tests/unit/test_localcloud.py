"""The local cloud's program (scripts/lib/localcloud) without starting a server: the table of
services, the order rules of up/down/env, the exact text `env` and `status` print, the files the
node is configured with, and the command line's refusals."""

from __future__ import annotations

import json
import tarfile
import tomllib
from io import BytesIO
from pathlib import Path

import pytest

from localcloud import cli, commands, kube, node, pause, table
from localcloud.cloud import DEFAULT_KUBE_VERSION, Cloud, LocalCloudError
from localcloud.node_files import Node, Runtime

ROOT = Path(__file__).resolve().parents[2]

#: the servers `status` lists, in its order (scripts and tests parse these names)
SERVERS = ["etcd", "kube-apiserver", "s3", "gcs", "azure", "webhook", "git", "registry", "docker",
           "containerd", "kubelet", "kube-scheduler", "kube-controller-manager"]


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    return Cloud(root=ROOT, state_dir=tmp_path / "state", cache=tmp_path / "cache", kube_version="v1.0.0")


def state_with_ports() -> dict[str, dict[str, dict[str, int]]]:
    return {"servers": {name: {"port": 40000 + i, "pid": 0} for i, name in enumerate(SERVERS)}}


# ---------------------------------------------------------------------- the table


def test_the_table_lists_every_server_once_in_status_order() -> None:
    assert [s.name for s in table.servers()] == SERVERS
    assert table.names() == ["kube", "s3", "gcs", "azure", "webhook", "git", "docker", "node"]
    assert sorted(table.EXPORT_ORDER) == sorted(table.names())
    for svc in table.SERVICES:
        assert svc.servers and svc.summary
        assert all(need in table.names() for need in svc.needs), svc.name
        for server in svc.servers:
            assert server.exe_hint, server.name
            assert table.service_of(server.name) is svc


def test_up_starts_what_a_service_needs_first() -> None:
    assert [s.name for s in table.for_up([])] == table.names()
    assert [s.name for s in table.for_up(["node"])] == ["kube", "node"]
    assert [s.name for s in table.for_up(["node", "kube", "s3"])] == ["kube", "node", "s3"]
    assert [s.name for s in table.for_up(["s3", "s3", "git"])] == ["s3", "git"]


def test_down_takes_the_services_that_need_one_first() -> None:
    assert [s.name for s in table.for_down(["kube"])] == ["node", "kube"]
    assert [s.name for s in table.for_down(["s3", "kube"])] == ["node", "s3", "kube"]
    assert [s.name for s in table.for_down([])] == ["node", "kube", "s3", "gcs", "azure", "webhook", "git",
                                                   "docker"]
    assert [s.name for s in table.for_down(["node"])] == ["node"]


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(LocalCloudError, match=r"unknown service\(s\) kub, nodes; choose from kube, s3, "):
        table.for_up(["kub", "s3", "nodes"])
    with pytest.raises(LocalCloudError, match="unknown server etcd2; choose from etcd, kube-apiserver"):
        table.server("etcd2")


def test_down_forgets_the_api_servers_secrets_and_data() -> None:
    assert set(kube.SERVICE.forget) == {"etcd", "certs", "kubeconfig", "tokens.csv", "admin-token", "sa.key",
                                        "sa.pub"}


# ---------------------------------------------------------------------- env and status


def test_env_prints_every_running_services_exports_in_the_usual_order(cloud: Cloud) -> None:
    cloud.state_dir.mkdir()
    (cloud.state_dir / "webhook-token").write_text("tok\n")
    (cloud.state_dir / "registry-credentials").write_text("flows:regpass")
    (cloud.state_dir / "git-credentials").write_text("flows:gitpass")
    state = state_with_ports()
    port = {name: 40000 + i for i, name in enumerate(SERVERS)}
    text = commands.render_exports(commands.exports(cloud, state, set(table.names())))
    d = cloud.state_dir
    assert text == (
        f"export KUBECONFIG={d}/kubeconfig\n"
        f"export FLOWSTORE_KUBE_SERVER=https://127.0.0.1:{port['kube-apiserver']}\n"
        "export FLOWSTORE_NODE_NAME=127.0.0.1\n"
        f"export FLOWSTORE_NODE_CTR={cloud.cache}/containerd/{node.CONTAINERD_VERSION}/ctr\n"
        f"export FLOWSTORE_NODE_CONTAINERD={d}/node/run/containerd.sock\n"
        f"export FLOWSTORE_S3_ENDPOINT=http://127.0.0.1:{port['s3']}\n"
        "export AWS_ACCESS_KEY_ID=testing\n"
        "export AWS_SECRET_ACCESS_KEY=testing\n"
        "export AWS_DEFAULT_REGION=us-east-1\n"
        f"export STORAGE_EMULATOR_HOST=http://127.0.0.1:{port['gcs']}\n"
        f"export FLOWSTORE_GCS_ENDPOINT=http://127.0.0.1:{port['gcs']}\n"
        "export AZURE_STORAGE_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint=http://127.0.0.1:{port['azure']}/devstoreaccount1;'\n"
        f"export FLOWSTORE_AZURE_BLOB_ENDPOINT=http://127.0.0.1:{port['azure']}/devstoreaccount1\n"
        f"export FLOWSTORE_WEBHOOK_URL=http://127.0.0.1:{port['webhook']}\n"
        "export FLOWSTORE_WEBHOOK_TOKEN=tok\n"
        "export WEBHOOK_TOKEN=tok\n"  # the name agents fill the examples' Webhook template from
        f"export DOCKER_HOST=tcp://127.0.0.1:{port['docker']}\n"
        f"export FLOWSTORE_DOCKER_HOST=tcp://127.0.0.1:{port['docker']}\n"
        f"export FLOWSTORE_REGISTRY=127.0.0.1:{port['registry']}\n"
        "export FLOWSTORE_REGISTRY_USERNAME=flows\n"
        "export FLOWSTORE_REGISTRY_PASSWORD=regpass\n"
        "export FLOWSTORE_BASE_IMAGE=localhost/flowstore-python:3.11\n"
        f"export FLOWSTORE_GIT_URL=http://127.0.0.1:{port['git']}\n"
        f"export FLOWSTORE_GIT_ROOT={d}/git-repos\n"
        "export FLOWSTORE_GIT_USERNAME=flows\n"
        "export FLOWSTORE_GIT_PASSWORD=gitpass\n"
        "export GIT_USERNAME=flows\n"  # the names a git storage's agent reads
        "export GIT_PASSWORD=gitpass\n"
    )


def test_env_leaves_out_what_is_down_and_a_node_without_its_api_server(cloud: Cloud) -> None:
    state = state_with_ports()
    assert commands.exports(cloud, state, {"node"}) == []
    assert [name for name, _ in commands.exports(cloud, state, {"s3", "node"})] == [
        "FLOWSTORE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"]
    assert commands.exports(cloud, state, set()) == []


def test_exports_are_shell_quoted() -> None:
    assert commands.render_exports([("A", "x y"), ("B", "it's"), ("C", "")]) == (
        "export A='x y'\nexport B='it'\"'\"'s'\nexport C=''\n")


def test_status_lines_keep_their_columns() -> None:
    assert commands.status_line("kube-controller-manager", {"pid": 123, "port": 4567}, True) == (
        "kube-controller-manager pid=123      port=4567   up")
    assert commands.status_line("s3", {}, False) == "s3                      pid=-        port=-      down"


def test_nothing_is_up_in_a_fresh_state_directory(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"], cloud=cloud) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == SERVERS
    assert all(line.endswith(" down") for line in lines)
    assert cli.main(["env"], cloud=cloud) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(["down"], cloud=cloud) == 0
    assert not cloud.state_dir.exists()


# ---------------------------------------------------------------------- the command line


def test_bad_arguments_are_refused_before_anything_starts(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "kube", "bogus"], cloud=cloud) == 1
    assert "localcloud: error: unknown service(s) bogus; choose from kube" in capsys.readouterr().err
    assert cli.main(["start", "etcd"], cloud=cloud) == 1
    assert "nothing is up; run `localcloud up kube`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["stop", "nope"], cloud=cloud)
    assert exited.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert not cloud.state_dir.exists()


def test_a_node_whose_socket_path_cannot_fit_is_refused_first(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    long = Cloud(root=ROOT, state_dir=tmp_path / ("d" * 120), cache=tmp_path / "cache", kube_version="v1.0.0")
    assert cli.main(["up", "s3", "node"], cloud=long) == 1
    err = capsys.readouterr().err
    assert "containerd socket path" in err and "shorter FLOWSTORE_LOCALCLOUD_DIR" in err
    assert not long.state_dir.exists()


def test_the_cloud_comes_from_the_environment(tmp_path: Path) -> None:
    default = Cloud.from_environ({"HOME": str(tmp_path)})
    assert default.state_dir == ROOT / ".localcloud"
    assert default.cache == tmp_path / ".cache" / "flowstore"
    assert default.kube_version == DEFAULT_KUBE_VERSION
    assert default.kube_bin == tmp_path / ".cache" / "flowstore" / "kube" / DEFAULT_KUBE_VERSION
    mine = Cloud.from_environ({"HOME": str(tmp_path), "FLOWSTORE_LOCALCLOUD_DIR": str(tmp_path / "x" / ".." / "lc"),
                               "FLOWSTORE_KUBE_VERSION": "v1.99.0"})
    assert mine.state_dir == tmp_path / "lc"
    assert mine.kube_version == "v1.99.0"


def test_help_lists_every_service() -> None:
    text = cli.parser().format_help()
    for svc in table.SERVICES:
        assert f"  {svc.name} " in text


# ---------------------------------------------------------------------- what servers are started with


def test_kubeconfig_verifies_tls_when_it_can() -> None:
    with_ca = kube.kubeconfig_text(6443, "t0k", Path("/s/certs/apiserver.crt"))
    assert "    server: https://127.0.0.1:6443\n" in with_ca
    assert '    certificate-authority: "/s/certs/apiserver.crt"\n' in with_ca
    assert '    token: "t0k"\n' in with_ca and "insecure" not in with_ca
    assert "    insecure-skip-tls-verify: true\n" in kube.kubeconfig_text(6443, "t0k", None)


def test_servers_restart_when_their_upstream_moved() -> None:
    state = state_with_ports()
    apiserver = table.server("kube-apiserver")
    kubelet = table.server("kubelet")
    assert apiserver.wired and kubelet.wired
    state["servers"]["kube-apiserver"]["argv"] = ["kube-apiserver", "--etcd-servers=http://127.0.0.1:40000"]
    assert apiserver.wired(state)
    state["servers"]["etcd"]["port"] = 41000
    assert not apiserver.wired(state)
    state["servers"]["kubelet"]["apiserver_port"] = 40001
    assert kubelet.wired(state)
    state["servers"]["kube-apiserver"]["port"] = 41001
    assert not kubelet.wired(state)


def test_the_node_keeps_its_files_to_itself(tmp_path: Path) -> None:
    """containerd 2's config (version 3) carries what REAL-NODE.md says mattered, runs our own
    runc and shim, and names only the node's own paths (two local clouds never share one)."""
    runtime = Runtime(containerd=Path("/c/containerd"), ctr=Path("/c/ctr"), shim=Path("/c/shim"), runc=Path("/r/runc"))
    node = Node(tmp_path / "a", tmp_path / "cache", runtime)
    other = Node(tmp_path / "b", tmp_path / "cache", runtime)
    assert node.bridge != other.bridge and node.network != other.network
    node.write_files(5000)
    config = tomllib.loads(node.containerd_config(1234).read_text())
    assert config["version"] == 3
    assert (config["root"], config["state"]) == (str(node.containerd_root), str(node.containerd_state))
    assert config["grpc"]["address"] == str(node.socket)
    assert config["metrics"]["address"] == "127.0.0.1:1234"
    plugins = config["plugins"]
    assert plugins["io.containerd.nri.v1.nri"]["disable"] is True  # its socket is machine-wide
    images, runtime_config = plugins["io.containerd.cri.v1.images"], plugins["io.containerd.cri.v1.runtime"]
    assert images["pinned_images"]["sandbox"] == pause.PAUSE_IMAGE
    assert images["registry"]["config_path"] == str(node.certs_d)
    assert runtime_config["restrict_oom_score_adj"] is True
    assert runtime_config["netns_mounts_under_state_dir"] is True
    assert runtime_config["cni"] == {"bin_dirs": ["/usr/lib/cni"], "conf_dir": str(node.cni_conf_dir),
                                     "max_conf_num": 1}
    runc = runtime_config["containerd"]["runtimes"]["runc"]
    assert runc["runtime_path"] == "/c/shim"
    assert runc["options"] == {"BinaryName": "/r/runc", "Root": str(node.containerd_state / "runc"),
                               "SystemdCgroup": False}
    assert plugins["io.containerd.grpc.v1.cri"]["stream_server_address"] == "127.0.0.1"
    hosts = tomllib.loads((node.certs_d / "127.0.0.1:5000" / "hosts.toml").read_text())
    assert hosts == {"server": "http://127.0.0.1:5000",
                     "host": {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}}
    cni = json.loads((node.cni_conf_dir / "10-flowstore.conflist").read_text())
    bridge = cni["plugins"][0]
    assert (bridge["bridge"], bridge["isGateway"], bridge["ipMasq"]) == (node.bridge, False, False)
    kubelet = json.loads(node.kubelet_config(10250).read_text())
    assert kubelet["address"] == "127.0.0.1" and kubelet["containerRuntimeEndpoint"] == f"unix://{node.socket}"
    assert kubelet["cgroupDriver"] == "cgroupfs" and kubelet["failSwapOn"] is False
    assert kubelet["failCgroupV1"] is False  # these machines run cgroup v1 (the kubelet refuses it by default)


def test_the_pause_image_layout_is_reproducible() -> None:
    files = {"pause": (b"\x7fELF...", 0o755)}
    first = pause.oci_layout(files, pause.PAUSE_IMAGE, {"Entrypoint": ["/pause"]})
    assert first == pause.oci_layout(files, pause.PAUSE_IMAGE, {"Entrypoint": ["/pause"]})
    with tarfile.open(fileobj=BytesIO(first)) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        names = tar.getnames()
    (manifest,) = index["manifests"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == pause.PAUSE_IMAGE
    assert f"blobs/sha256/{manifest['digest'].removeprefix('sha256:')}" in names
