"""Git-hosted flows end to end: the real operator and kube-apiserver against the real git
server (git http-backend behind basic auth, `scripts/localcloud up git`). Commits are pushed
during the test; the StoredFlow follows the file, never a commit that leaves it alone, and
agents load the file at the pinned commit."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore import client
from tests.backends.git_conformance import flow_script
from tests.helpers.gitrepo import LocalGitRepo
from tests.helpers.kube import (
    apply,
    condition,
    delete_flows,
    get,
    kubectl,
    kubectl_json,
    wait_for,
    wait_ready,
    wait_reason,
)
from tests.helpers.manifests import manifests, secret, stored_flow
from tests.helpers.operator import OperatorProcess


def git_storage(namespace: str, url: str, *, name: str = "repo", secret: str = "git-creds",  # noqa: S107
                **block: Any) -> dict[str, Any]:
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"git": {"url": url, "credentialsSecretRef": {"name": secret}, **block},
                     "interval": "1s", "labels": ["prod"]}}


def git_flow(namespace: str, name: str, flow_name: str, path: str, storage: str = "repo") -> dict[str, Any]:
    return stored_flow(namespace, name, flow_name, {"path": path}, storage)


def git_creds(namespace: str, username: str, password: str, name: str = "git-creds") -> dict[str, Any]:
    return secret(namespace, name, {"GIT_USERNAME": username, "GIT_PASSWORD": password})


def events(namespace: str, reason: str) -> list[str]:
    out = kubectl("get", "events", "-n", namespace, "--field-selector", f"reason={reason}",
                  "-o", "jsonpath={range .items[*]}{.message}{'\\n'}{end}").stdout
    return [line for line in out.splitlines() if line]


@pytest.fixture
def repo(git_server: dict[str, str]) -> LocalGitRepo:
    return LocalGitRepo(Path(git_server["root"]))


@pytest.fixture
def url(git_server: dict[str, str], repo: LocalGitRepo) -> str:
    return f"{git_server['url']}/{repo.name}.git"


@pytest.fixture
def agent_env(git_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent's own git credentials (the status never carries them)."""
    monkeypatch.setenv("GIT_USERNAME", git_server["username"])
    monkeypatch.setenv("GIT_PASSWORD", git_server["password"])


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    delete_flows(namespace)


def test_pins_follows_the_file_and_agents_load_the_pinned_commit(
        operator: OperatorProcess, namespace: str, git_server: dict[str, str], repo: LocalGitRepo, url: str,
        agent_env: None) -> None:
    first = repo.commit({"flows/etl.py": flow_script("etl daily", 1), "flows/report.py": flow_script("report", 5)})
    apply(manifests(git_creds(namespace, git_server["username"], git_server["password"]),
                    git_storage(namespace, url, ref="main"),
                    git_flow(namespace, "etl", "etl daily", "flows/etl.py"),
                    git_flow(namespace, "report", "report", "/flows/report.py")))
    etl = wait_ready(namespace, "etl")["status"]
    print(f"pinned: {etl['git']}")
    assert etl["git"] == {"repo": url, "path": "flows/etl.py", "ref": "main", "commit": first,
                          "url": f"git+{url}@{first}#path=flows/etl.py"}
    assert etl["location"] == "flows/etl.py" and etl["artifact"]["format"] == "script"
    assert etl["storage"]["type"] == "Git" and etl["storage"]["ref"] == first
    assert etl["storage"]["requestedRef"] == "main" and etl["labels"] == ["prod", "git-flow-storage"]
    assert "Pinned to commit" in condition(get("storedflow", namespace, "etl"))["message"]
    assert client.load_flow("etl", namespace).run() == 1
    report = wait_ready(namespace, "report")["status"]
    assert report["location"] == "flows/report.py" and report["git"]["commit"] == first
    storage = wait_for("flowstorage", namespace, "repo", lambda o: len((o.get("status") or {}).get("flows", {})) == 2)
    assert storage["status"]["flows"] == {"etl daily": "flows/etl.py", "report": "flows/report.py"}

    # A commit that changes another file: neither the etl flow's pin nor its status moves.
    unrelated = repo.commit({"README.md": b"flows\n"})
    time.sleep(3)  # three intervals
    assert get("storedflow", namespace, "etl")["status"]["git"]["commit"] == first
    # A commit that changes the file: the flow moves to it; agents get the new code.
    second = repo.commit({"flows/etl.py": flow_script("etl daily", 2)})
    moved = wait_for("storedflow", namespace, "etl",
                     lambda o: (o.get("status") or {}).get("git", {}).get("commit") == second, timeout=20)
    print(f"moved to {second[:12]} (skipped {unrelated[:12]})")
    assert moved["status"]["artifact"]["sourceDigest"] != etl["artifact"]["sourceDigest"]
    assert client.load_flow("etl", namespace).run() == 2
    assert get("storedflow", namespace, "report")["status"]["git"]["commit"] == first
    assert any(f"from commit {first[:12]} to commit {second[:12]}" in m for m in events(namespace, "Pinned"))

    # The branch is force-pushed to history without the file: FileNotFound, the last good pin stays.
    repo.force("main", repo.commit({"other.py": b"x = 1\n"}, branch="rewritten"))
    broken = wait_reason(namespace, "etl", "FileNotFound", timeout=20)
    print(f"force-push: {condition(broken)['message']}")
    assert broken["status"]["git"]["commit"] == second and "flows/etl.py" in condition(broken)["message"]
    assert client.load_flow("etl", namespace).run() == 2  # still loadable at the pinned commit

    # The file comes back: Ready again at the new commit.
    back = repo.commit({"flows/etl.py": flow_script("etl daily", 3)}, branch="main")
    wait_for("storedflow", namespace, "etl",
             lambda o: condition(o).get("status") == "True" and o["status"]["git"]["commit"] == back, timeout=20)
    assert client.load_flow("etl", namespace).run() == 3
    assert git_server["password"] not in json.dumps(kubectl_json("get", "storedflows,flowstorages", "-n", namespace))
    assert git_server["password"] not in operator.logs()


def test_agent_refuses_a_file_that_does_not_match_the_pin(
        operator: OperatorProcess, namespace: str, git_server: dict[str, str], repo: LocalGitRepo, url: str,
        agent_env: None) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    apply(manifests(git_creds(namespace, git_server["username"], git_server["password"]),
                    git_storage(namespace, url), git_flow(namespace, "etl", "etl", "flows/etl.py")))
    wait_ready(namespace, "etl")
    status = client.locate("etl", namespace)
    assert status["git"]["ref"] == "(default branch)"
    # Someone edits the status to point agents at other bytes: refused before anything runs.
    kubectl("patch", "storedflow", "etl", "-n", namespace, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {"artifact": {"digest": "sha256:" + "0" * 64}}}))
    with pytest.raises(Exception, match="does not match"):
        client.load_flow("etl", namespace)


@pytest.mark.parametrize("case", ["no-repo", "bad-password", "no-ref", "no-file", "syntax", "no-flow-object"])
def test_bad_input_gets_its_own_reason(operator: OperatorProcess, namespace: str, git_server: dict[str, str],
                                       repo: LocalGitRepo, url: str, case: str) -> None:
    repo.commit({"flows/etl.py": flow_script("etl", 1), "flows/broken.py": b"def run(:\n",
                 "flows/empty.py": b"x = 1\n"})
    password = "wrong" if case == "bad-password" else git_server["password"]
    block: dict[str, Any] = {"ref": "no-such-branch"} if case == "no-ref" else {}
    storage_url = f"{git_server['url']}/missing.git" if case == "no-repo" else url
    path = {"no-file": "flows/nope.py", "syntax": "flows/broken.py", "no-flow-object": "flows/empty.py"}.get(
        case, "flows/etl.py")
    expected = {"no-repo": "RepositoryNotFound", "bad-password": "AuthFailed", "no-ref": "RefNotFound",
                "no-file": "FileNotFound", "syntax": "ScriptSyntaxError", "no-flow-object": "FlowNotFound"}[case]
    apply(manifests(git_creds(namespace, git_server["username"], password),
                    git_storage(namespace, storage_url, **block),
                    git_flow(namespace, "flow", "etl", path),
                    git_flow(namespace, "good-elsewhere", "etl", "flows/etl.py", storage="other"),
                    git_storage(namespace, url, name="other", secret="good-creds"),
                    git_creds(namespace, git_server["username"], git_server["password"], name="good-creds")))
    failed = wait_reason(namespace, "flow", expected)
    print(f"{case}: {expected}: {condition(failed)['message']}")
    assert git_server["password"] not in condition(failed)["message"]
    wait_ready(namespace, "good-elsewhere")  # one broken resource never stops the others


def test_apply_time_validation(crds: None, namespace: str) -> None:
    bad = [
        ({"git": {"url": "https://user:secret@git.example.com/flows.git"}}, "do not put credentials in the url"),
        ({"git": {"url": "ftp://git.example.com/flows.git"}}, "url must be"),
        ({"bitbucket": {"workspace": "team", "project": "DATA", "repo": "flows"}}, "exactly one of workspace"),
        ({"bitbucket": {"project": "DATA", "repo": "flows"}}, "needs host"),
        ({"github": {"repo": "not a repo"}}, "spec.github.repo"),
        ({"github": {"repo": "o/r"}, "git": {"url": "https://x/y.git"}}, "exactly one backend block"),
    ]
    for spec, message in bad:
        doc = {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
               "metadata": {"name": "bad", "namespace": namespace}, "spec": spec}
        done = kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
        assert done.returncode != 0 and message in done.stderr, (spec, done.stderr)


def test_inline_source_on_a_git_storage_is_invalid(operator: OperatorProcess, namespace: str, url: str) -> None:
    apply(manifests(git_storage(namespace, url),
                    {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
                     "metadata": {"name": "inline", "namespace": namespace},
                     "spec": {"storageRef": {"name": "repo"}, "flowName": "x",
                              "source": {"inline": "print(1)"}}}))
    failed = wait_reason(namespace, "inline", "InvalidSpec")
    assert "spec.source.path" in condition(failed)["message"]


def test_no_secret_means_anonymous_never_the_operators_own_credentials(
        own_operators_only: None, crds: None, namespace: str, git_server: dict[str, str], repo: LocalGitRepo,
        url: str, tmp_path: Path) -> None:
    """The operator's environment holds git credentials (as an agent's would); a FlowStorage
    without credentialsSecretRef must not read with them."""
    repo.commit({"flows/etl.py": flow_script("etl", 1)})
    op = OperatorProcess(tmp_path, {**os.environ, "GIT_USERNAME": git_server["username"],
                                    "GIT_PASSWORD": git_server["password"]})
    op.start("--namespace", namespace)
    try:
        storage = git_storage(namespace, url)
        del storage["spec"]["git"]["credentialsSecretRef"]
        apply(manifests(storage, git_flow(namespace, "etl", "etl", "flows/etl.py")))
        failed = wait_reason(namespace, "etl", "AuthFailed")
        assert "status" in failed and "git" not in failed["status"]
    finally:
        op.stop()


def test_git_server_outage_retries_then_pins_each_flow_once(
        operator: OperatorProcess, namespace: str, git_server: dict[str, str], repo: LocalGitRepo,
        url: str) -> None:
    """Fault injection (issue 7, extended to git): the git server stops while 10 StoredFlows
    are being pinned; they say so (temporary, retrying), and after it is back every flow is
    pinned at the right commit, each exactly once."""
    import subprocess
    import sys

    from tests.helpers.localcloud import LOCALCLOUD, ROOT

    def localcloud(action: str) -> None:
        subprocess.run([sys.executable, str(LOCALCLOUD), action, "git"], check=True, cwd=ROOT, env=os.environ,
                       capture_output=True)

    names = [f"flow-{i:02d}" for i in range(10)]
    head = repo.commit({f"flows/{n}.py": flow_script(n, i) for i, n in enumerate(names)})
    localcloud("stop")
    try:
        apply(manifests(git_creds(namespace, git_server["username"], git_server["password"]),
                        git_storage(namespace, url),
                        *[git_flow(namespace, n, n, f"flows/{n}.py") for n in names]))
        down = [wait_reason(namespace, n, "BackendUnavailable", timeout=30) for n in names]
        print(f"outage: {len(down)} flows BackendUnavailable, e.g. {condition(down[0])['message']}")
        assert all(condition(o, "Stalled") == {} for o in down), "an outage is temporary, never Stalled"
    finally:
        localcloud("start")
    started = time.monotonic()
    for n in names:
        status = wait_ready(namespace, n, timeout=60)["status"]
        assert status["git"]["commit"] == head
    print(f"outage: all {len(names)} Ready {time.monotonic() - started:.1f}s after the git server came back")
    pinned = events(namespace, "Pinned")
    for n in names:
        assert sum(f"flow {n!r}" in m for m in pinned) == 1, f"{n} pinned more or less than once: {pinned}"


def test_a_directory_is_a_flow_of_several_files_pinned_and_remade_by_agents(
        operator: OperatorProcess, namespace: str, git_server: dict[str, str], repo: LocalGitRepo, url: str,
        agent_env: None, tmp_path: Path) -> None:
    """spec.source.path names a directory: its files at the pinned commit (the example's sales
    report: the flow, a helper module, a SQL file), less what .flowstoreignore and
    spec.source.ignore leave out, are one bundle; an agent reads the same commit and makes the
    same bundle (the digest in status) without the operator."""
    from tests.helpers.localcloud import ROOT

    sales = ROOT / "examples" / "multifile" / "flows" / "sales"
    files = {f"flows/sales/{p.relative_to(sales)}": p.read_bytes() for p in sales.rglob("*") if p.is_file()}
    first = repo.commit({**files, "flows/sales/.flowstoreignore": b"*.ipynb\n",
                         "flows/sales/scratch.ipynb": b"{}", "flows/sales/tests/test_report.py": b"assert 0\n",
                         "flows/etl.py": flow_script("etl daily", 1)})
    flow = git_flow(namespace, "sales", "sales report", "flows/sales/")
    flow["spec"].update(entrypoint="sales_report.py:flow", source={"path": "flows/sales", "ignore": ["tests/"]})
    apply(manifests(git_creds(namespace, git_server["username"], git_server["password"]),
                    git_storage(namespace, url, ref="main"), flow))
    status = wait_ready(namespace, "sales", timeout=60)["status"]
    artifact = status["artifact"]
    assert (artifact["format"], artifact["fileCount"], artifact["entrypoint"]) == \
        ("bundle", 3, "sales_report.py:flow")
    assert status["git"]["commit"] == first and status["location"] == "flows/sales"
    os.environ["FLOWSTORE_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        data = client.load_artifact("sales", namespace).data  # remade by the agent, digest-verified
        assert client.load_flow("sales", namespace).run() == ["east: 45", "north: 150", "south: 80"]
    finally:
        del os.environ["FLOWSTORE_CACHE_DIR"]
    from flowstore.artifacts import bundle

    assert sorted(bundle.unpack(data).files) == ["helpers.py", "queries/daily_sales.sql", "sales_report.py"]

    # a commit elsewhere leaves the flow alone; one to its helper moves it
    repo.commit({"flows/etl.py": flow_script("etl daily", 2)})
    time.sleep(3)
    assert get("storedflow", namespace, "sales")["status"]["artifact"]["digest"] == artifact["digest"]
    helper = files["flows/sales/helpers.py"].replace(b'("east", 45)', b'("east", 46)')
    third = repo.commit({"flows/sales/helpers.py": helper})
    moved = wait_for("storedflow", namespace, "sales", lambda o: o["status"].get("git", {}).get("commit") == third,
                     timeout=30, what="to move to the commit that changed its helper")["status"]
    assert moved["artifact"]["digest"] != artifact["digest"] and moved["artifact"]["fileCount"] == 3
