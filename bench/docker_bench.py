"""Docker storage benchmark: cold build + push of one image holding 1 and 20 flows, then a
rebuild after changing one of the 20 (target: under 30% of the cold time, and only the changed
layer pushed).

    python3 bench/docker_bench.py              # private local cloud in bench/results/localcloud-docker

Runs against the real Engine API (podman) and registry of `scripts/localcloud up docker` in its
own state directory (started by the bench and stopped again at the end if it started them).
"Cold" means nothing of the image is in the daemon's build cache or the registry, and no
healthcheck container of it runs: each storage puts a value of its own in the image's
environment, before the runtime layer. Bytes pushed are the growth of the registry's blob store
(what the registry received and kept), so a layer the registry already holds counts zero.
Prints a table and writes bench/results/docker-latest.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, ROOT, cloud, machine  # the benches' shared harness

sys.path.insert(0, str(ROOT / "operator"))

from flowstore.artifacts import envelope
from flowstore.flow import Flow
from flowstore.storage.docker import Docker, ImageFlow


def blob_sizes(state_dir: Path) -> dict[str, int]:
    """The registry's blobs (layers, configurations and manifests): digest -> size."""
    blobs = state_dir / "registry" / "data" / "docker" / "registry" / "v2" / "blobs"
    return {p.parent.name: p.stat().st_size for p in blobs.rglob("data")} if blobs.exists() else {}


def flows(n: int, version: int = 0, changed: int | None = None) -> list[ImageFlow]:
    out = []
    for i in range(n):
        answer = i + (1000 * version if i == changed else 0)
        payload = envelope.dumps(Flow(f"flow {i:02d}", lambda answer=answer: answer))
        out.append(ImageFlow(name=f"flow {i:02d}", location=f"/opt/prefect/flows/flow-{i:02d}.prefect", data=payload))
    return out


def timed_build(storage: Docker, image_flows: list[ImageFlow], state_dir: Path) -> dict[str, Any]:
    before = blob_sizes(state_dir)
    started = time.monotonic()
    built = storage.build_image(image_flows)
    seconds = time.monotonic() - started
    new = sorted(size for digest, size in blob_sizes(state_dir).items() if digest not in before)
    return {"seconds": round(seconds, 2), "pushed_bytes": sum(new), "new_blobs": new, "digest": built.digest,
            "pushed": built.pushed}


def measure(env: dict[str, str], state_dir: Path, changed: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]

    def storage(name: str) -> Docker:
        creds = {".dockerconfigjson": json.dumps({"auths": {env["FLOWSTORE_REGISTRY"]: {
            "username": env["FLOWSTORE_REGISTRY_USERNAME"], "password": env["FLOWSTORE_REGISTRY_PASSWORD"]}}})}
        return Docker.from_config({"registryURL": env["FLOWSTORE_REGISTRY"], "imageName": f"bench/{name}-{run}",
                                   "baseImage": env["FLOWSTORE_BASE_IMAGE"], "daemonURL": env["DOCKER_HOST"],
                                   "envVars": {"FLOWSTORE_BENCH_RUN": f"{run}-{name}"}}, credentials=creds)

    m = machine()
    results: dict[str, Any] = {"machine": f"{platform.node()} {m['nproc']} CPUs ({m['cpu']}), {platform.platform()}, "
                                          f"load average {m['loadavg_at_start'][0]}",
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    results["cold_1"] = timed_build(storage("one"), flows(1), state_dir)
    many = storage("twenty")
    results["cold_20"] = timed_build(many, flows(20), state_dir)
    results["unchanged_20"] = timed_build(many, flows(20), state_dir)
    results["one_changed_of_20"] = timed_build(many, flows(20, version=1, changed=changed), state_dir)
    results["last_changed_of_20"] = timed_build(many, flows(20, version=2, changed=19), state_dir)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=RESULTS / "localcloud-docker")
    parser.add_argument("--changed", type=int, default=10, help="which of the 20 flows changes (0-19)")
    args = parser.parse_args()
    with cloud(["docker"], state_dir=args.state_dir) as lc:
        results = measure(lc.exports(), args.state_dir.resolve(), args.changed)
    cold = results["cold_20"]["seconds"]
    ratio = results["one_changed_of_20"]["seconds"] / cold
    results["rebuild_ratio"] = round(ratio, 3)

    print(f"\nDocker storage: one image per storage; {results['machine']}\n")
    print(f"{'case':38} {'seconds':>8} {'pushed':>12}  {'new blobs':>9}  pushed?")
    rows = [("cold, 1 flow", "cold_1"), ("cold, 20 flows", "cold_20"),
            ("20 flows, nothing changed", "unchanged_20"),
            (f"20 flows, flow {args.changed:02d} changed", "one_changed_of_20"),
            ("20 flows, the last flow changed", "last_changed_of_20")]
    for label, key in rows:
        r = results[key]
        print(f"{label:38} {r['seconds']:8.1f} {r['pushed_bytes']:>10,} B  {len(r['new_blobs']):>9}  {r['pushed']}")
    changed = results["one_changed_of_20"]["new_blobs"]
    print(f"\nblobs the registry received for the changed flow (layer, configuration, manifest; bytes): {changed}")
    print(f"\nrebuild after changing flow {args.changed:02d} of 20: {ratio:.0%} of the cold build (target < 30%)")
    print("the base image's layers in the registry are shared by every bench image; the first cold build of a "
          "state directory also pushes the Python base layer")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "docker-latest.json").write_text(json.dumps(results, indent=2))
    print(f"JSON: {RESULTS / 'docker-latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
