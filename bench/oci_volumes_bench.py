#!/usr/bin/env python3
"""Run Pods with the flow mounted as an image volume vs downloading it in the Pod (issue 26).

    python3 bench/oci_volumes_bench.py [--pods 5] [--size-kib 64]

On the local node (``scripts/localcloud up kube docker node``; servers already up are reused).
Each Pod runs ``python3 -m flowstore.mounted check /flow DIGEST`` in the operator image, so the
only difference between the two kinds is how ``/flow`` is filled:

- **mounted**: ``volumes[].image`` by digest, as ``flowstore locate -o pod-volume`` prints it: the
  kubelet pulls the image (cold: a new image for each Pod; warm: the same image again, already
  on the node);
- **download**: an emptyDir filled by an init container that fetches the image by digest from the
  registry and writes its files (``--fallback init``): what every run Pod pays when it downloads.

The time is from creating the Pod to seeing it Succeeded (the check done), one Pod at a time.
The flow is a script plus a data file of ``--size-kib``. No operator: the images are pushed here,
exactly as the oci storage pushes them. Prints a table and writes bench/results/oci-volumes-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # the benches' shared harness: local cloud, machine line  # noqa: E402


def kubectl(*args: str, input: str | None = None) -> str:
    return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, check=True).stdout


def run_pod(namespace: str, name: str, spec: dict[str, Any]) -> float:
    """Seconds from creating the Pod to seeing it Succeeded (polled every 0.1 s; the API's own
    timestamps have whole seconds only); the Pod must succeed."""
    t0 = time.monotonic()
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Pod",
                                                    "metadata": {"name": name, "namespace": namespace}, "spec": spec}))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pod = json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json"))
        phase = pod["status"].get("phase")
        if phase == "Failed":
            raise harness.BenchError(f"Pod {name} failed: {kubectl('logs', name, '-n', namespace, '--all-containers')}")
        if phase == "Succeeded":
            return time.monotonic() - t0
        time.sleep(0.1)
    raise harness.BenchError(f"Pod {name} did not finish in 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=5)
    parser.add_argument("--size-kib", type=int, default=64)
    args = parser.parse_args()
    with harness.cloud(["kube", "docker", "node"]):
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    from flowstore.storage.oci.storage import OCI

    registry = os.environ["FLOWSTORE_REGISTRY"]
    user, password = os.environ["FLOWSTORE_REGISTRY_USERNAME"], os.environ["FLOWSTORE_REGISTRY_PASSWORD"]
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "operator-image.sh"), "oci-bench"],
                          capture_output=True, text=True, check=True)
    reader = done.stdout.strip().splitlines()[-1].split("@")[0]
    namespace = f"bench-oci-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    kubectl("create", "secret", "docker-registry", "registry", "-n", namespace, f"--docker-server={registry}",
            f"--docker-username={user}", f"--docker-password={password}")
    config = {".dockerconfigjson": json.dumps({"auths": {registry: {"username": user, "password": password}}})}
    repository = f"{registry}/bench/oci-{uuid.uuid4().hex[:6]}"
    storage = OCI(repository, plain_http=True, credentials=config, stored_flow=f"{namespace}/etl")
    data = os.urandom(args.size_kib * 1024).hex().encode()[: args.size_kib * 1024]

    def image(i: int) -> tuple[str, str]:
        """A new flow image (its own digest): (reference, flow digest)."""
        stored = storage.put_bytes("flow.py", b"DATA = %r\n# %d\n" % (data, i))
        return storage.reference(str(stored.storage_state["imageDigest"])), "sha256:" + stored.sha256

    def spec(reference: str, digest: str, *, mounted: bool) -> dict[str, Any]:
        check = {"name": "main", "image": reader, "imagePullPolicy": "IfNotPresent",
                 "command": ["python3", "-m", "flowstore.mounted", "check", "/flow", digest],
                 "volumeMounts": [{"name": "flow", "mountPath": "/flow", "readOnly": True}]}
        pod: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                               "imagePullSecrets": [{"name": "registry"}], "containers": [check]}
        if mounted:
            pod["volumes"] = [{"name": "flow", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}]
        else:  # the registry is on the node's 127.0.0.1: the init container needs the node's network
            pod["hostNetwork"] = True
            items = [{"key": ".dockerconfigjson", "path": "config.json"}]
            pod["volumes"] = [{"name": "flow", "emptyDir": {}},
                              {"name": "reg", "secret": {"secretName": "registry", "items": items}}]
            pod["initContainers"] = [{
                "name": "pull", "image": reader, "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-m", "flowstore.mounted", "pull", reference, digest, "/flow", "--plain-http"],
                "env": [{"name": "DOCKER_CONFIG", "value": "/reg"}],
                "volumeMounts": [{"name": "flow", "mountPath": "/flow"}, {"name": "reg", "mountPath": "/reg"}]}]
        return pod

    times: dict[str, list[float]] = {"mounted, cold": [], "mounted, warm": [], "download": []}
    try:
        run_pod(namespace, "warm-up", spec(*image(-1), mounted=True))  # the reader image onto the node
        warm = image(-2)
        run_pod(namespace, "warm-first", spec(*warm, mounted=True))
        for i in range(args.pods):
            reference, digest = image(i)
            times["mounted, cold"].append(run_pod(namespace, f"cold-{i}", spec(reference, digest, mounted=True)))
            times["mounted, warm"].append(run_pod(namespace, f"warm-{i}", spec(*warm, mounted=True)))
            times["download"].append(run_pod(namespace, f"download-{i}", spec(reference, digest, mounted=False)))
    finally:
        subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], capture_output=True, check=False)
    m = harness.machine()
    print(harness.machine_line(m))
    print(f"{'Pod created -> Succeeded (s)':34} {'median':>8} {'min':>8} {'max':>8}   ({args.pods} Pods each, "
          f"flow {args.size_kib} KiB)")
    for kind, values in times.items():
        print(f"{kind:34} {statistics.median(values):8.2f} {min(values):8.2f} {max(values):8.2f}")
    ratio = statistics.median(times["download"]) / statistics.median(times["mounted, cold"])
    warm_ratio = statistics.median(times["download"]) / statistics.median(times["mounted, warm"])
    print(f"download / mounted: {ratio:.2f} (cold image), {warm_ratio:.2f} (image already on the node)")
    out = ROOT / "bench" / "results" / "oci-volumes-latest.json"
    out.write_text(json.dumps({"machine": m, "pods": args.pods, "size_kib": args.size_kib, "seconds": times,
                               "ratio_cold": ratio, "ratio_warm": warm_ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
