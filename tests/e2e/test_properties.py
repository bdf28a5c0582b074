"""Property-based end to end: hypothesis generates FlowStorage and StoredFlow specs over the
whole schema surface (every backend block, weird strings, missing and extra fields, unicode
names, garbage sources, dangling references) and creates them on the real kube-apiserver.

Whatever the API server rejects (schema, CEL) is fine and only counted. Whatever it accepts,
the real operator must handle: within a bounded time every accepted object has a Ready
condition with a non-empty reason, written for its current generation and not merely
"in progress", and the operator process is still alive with no handler errors logged.

Nothing leaves the machine: endpoints are the local S3 server or closed local ports
(127.0.0.1:9), local directories live under the operators' Local root (tests/helpers/operator.py).

The examples are derandomized (the same specs on every run, for CI), bounded to
`max_examples` and generated first; the operator then works on all of them at once, so the
wait is paid once. Counts of accepted/rejected objects and the reasons seen are printed.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.kube import condition
from tests.helpers.operator import OperatorProcess, local_dir

GROUP, VERSION = "flowstore.dev", "v1alpha1"
CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens (connection refused)
# CI: 40 derandomized examples. Exploring: FLOWSTORE_PROPERTY_EXAMPLES=300 FLOWSTORE_PROPERTY_RANDOM=1.
MAX_EXAMPLES = int(os.environ.get("FLOWSTORE_PROPERTY_EXAMPLES", "40"))
DERANDOMIZE = not os.environ.get("FLOWSTORE_PROPERTY_RANDOM")
SETTLE_TIMEOUT = 90.0 + MAX_EXAMPLES / 4

# ---------------------------------------------------------------------------- strategies
def mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` nine times in ten, else `wild` (what the schema may or may not accept)."""
    return st.integers(0, 9).flatmap(lambda n: wild if n == 9 else valid)  # shrinks to valid


weird_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=40)
safe_segment = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"),
                                              exclude_characters="/\x00"),
                       min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
dns_name = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z", fullmatch=True)
any_name = mostly(dns_name, weird_text)  # names of referenced objects: valid or not
bucketish = mostly(st.from_regex(r"\A[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]\Z", fullmatch=True), weird_text)
durations = mostly(
    st.one_of(st.sampled_from(["10m", "1h", "30s", "1h30m", "0s", "0ms", "1ms", "500ms", "2.5s"]),
              st.from_regex(r"\A([0-9]{1,3}(ms|s|m|h)){1,3}\Z", fullmatch=True)),
    st.one_of(st.sampled_from(["10x", "", "-1s", "m"]), weird_text),
)


string_map = st.dictionaries(weird_text, weird_text, max_size=3)
template_urls = mostly(st.one_of(
    st.sampled_from([CLOSED + "/flows", CLOSED + "/flows/${response.json.id}", CLOSED + "/${TOKEN}",
                     CLOSED + "/${UNSET_NAME}", "https://127.0.0.1:9/x?y=${response.status}", "${TOKEN}",
                     "http://127.0.0.1:9/${response.json.a.b.c}", "ftp://127.0.0.1:9/x"]),
    weird_text.map(lambda s: CLOSED + "/" + s)), weird_text)
endpoints = mostly(st.one_of(st.sampled_from([CLOSED, "https://127.0.0.1:9", CLOSED + "/sub/path",
                                              "http://[::1]:9"]), weird_text.map(lambda s: CLOSED + s)),
                   weird_text)

SOURCES = [
    "from flowstore.flow import Flow\n\ndef main():\n    return 42\n\nflow = Flow({name!r}, main)\n",
    "from flowstore.flow import Flow\nflow = Flow('another name', lambda: 1)\n",
    "def broken(:\n    pass\n",
    "raise RuntimeError('boom')\n",
    "import sys\nsys.exit(3)\n",
    "flow = 42\n",
    "from flowstore.flow import Flow\na = Flow({name!r}, print)\nb = Flow({name!r}, print)\n",
    "import threading\nfrom flowstore.flow import Flow\nflow = Flow({name!r}, print)\nflow.lock = threading.Lock()\n",
    "while True:\n    pass\n",
    "\x00\x01garbage\xff",
    "# only a comment\n",
    "x = 'é' * 100000\n",
]


def block(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]],
          required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Draw a dict: required fields are left out rarely (1 in 8), optional ones often (2 in 3);
    sometimes an unknown field is added (the API server prunes or rejects it)."""
    out = {}
    for key, strategy in fields.items():
        if draw(st.integers(0, 7)) != 7 if key in required else draw(st.integers(0, 2)) == 0:
            out[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.sampled_from(["extra", "bucketName", "endpoint_url"]))] = draw(weird_text)
    return out


def secret_ref(with_key: bool) -> st.SearchStrategy[dict[str, Any]]:
    name = st.one_of(st.just("creds"), any_name)
    if not with_key:
        return st.fixed_dictionaries({"name": name})
    return st.fixed_dictionaries({"name": name}, optional={"key": st.one_of(st.sampled_from(
        ["service-account.json", "AZURE_STORAGE_CONNECTION_STRING", "AWS_ACCESS_KEY_ID"]), any_name)})


@st.composite
def webhook_request(draw: st.DrawFn, methods: list[str]) -> dict[str, Any]:
    return block(draw, {
        "method": mostly(st.sampled_from(methods), weird_text),
        "url": template_urls,
        "headers": string_map,
        "params": string_map,
        "timeoutSeconds": mostly(st.floats(0.1, 3.0), st.one_of(
            st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5000))),
        "verify": st.booleans(),
    }, required=("method", "url"))


@st.composite
def backend_block(draw: st.DrawFn, kind: str, ctx: dict[str, str]) -> dict[str, Any]:
    if kind == "local":
        directory = draw(mostly(
            st.lists(safe_segment, min_size=1, max_size=3).map(lambda p: str(Path(ctx["tmp"], *p))),
            st.one_of(safe_segment, st.just("")),  # relative or empty: the schema rejects it
        ))
        return block(draw, {"directory": st.just(directory), "path": st.one_of(safe_segment, weird_text),
                            "validate": st.booleans(), "volumeName": any_name},
                     required=("directory",))
    if kind == "s3":
        return block(draw, {
            "bucket": mostly(st.just(ctx["bucket"]), bucketish),
            "key": st.one_of(safe_segment, weird_text), "keyPrefix": weird_text,
            "region": mostly(st.just("us-east-1"), weird_text),
            "endpointURL": mostly(st.just(ctx["s3"]), endpoints),
            "clientOptions": st.one_of(st.just({"verify": "false"}), string_map),
            "credentialsSecretRef": secret_ref(False),
        }, required=("bucket", "endpointURL", "credentialsSecretRef"))
    if kind == "gcs":
        return block(draw, {
            "bucket": bucketish, "key": weird_text, "keyPrefix": weird_text, "project": weird_text,
            "endpointURL": endpoints, "credentialsSecretRef": secret_ref(True),
        }, required=("bucket", "endpointURL"))
    if kind == "azure":
        return block(draw, {
            "container": mostly(st.from_regex(r"\A[a-z0-9]{3,10}(-[a-z0-9]{1,5})?\Z", fullmatch=True),
                                   weird_text),
            "blobName": weird_text, "keyPrefix": weird_text,
            "accountURL": endpoints, "credentialsSecretRef": secret_ref(True),
        }, required=("container",))
    assert kind == "webhook"
    return block(draw, {
        "buildRequest": webhook_request(["GET", "POST", "PUT", "PATCH"]),
        "getFlowRequest": webhook_request(["GET", "POST", "PUT", "PATCH"]),
        "deleteRequest": webhook_request(["DELETE", "POST", "PUT", "PATCH"]),
        "credentialsSecretRef": secret_ref(False),
        "allowedEnv": st.lists(st.one_of(st.sampled_from(["HOME", "TOKEN", "NOT_SET_ANYWHERE"]), weird_text),
                               max_size=3),
    }, required=("buildRequest", "getFlowRequest"))


@st.composite
def flowstorage_spec(draw: st.DrawFn, ctx: dict[str, str]) -> dict[str, Any]:
    kinds = draw(mostly(
        st.lists(st.sampled_from(["local", "s3", "s3", "gcs", "azure", "webhook"]), min_size=1, max_size=1),
        st.lists(st.sampled_from(["local", "s3", "gcs", "azure", "webhook"]), min_size=0, max_size=2, unique=True),
    ))
    spec = {kind: draw(backend_block(kind, ctx)) for kind in kinds}
    spec.update(block(draw, {
        "storedAsScript": st.booleans(), "labels": st.lists(weird_text, max_size=3),
        "addDefaultLabels": st.booleans(), "secrets": st.lists(weird_text, max_size=3),
        "deletionPolicy": mostly(st.sampled_from(["Retain", "Delete"]), weird_text),
        "interval": durations, "suspend": mostly(st.just(False), st.booleans()),
    }))
    return spec


@st.composite
def storedflow_spec(draw: st.DrawFn, storage: str) -> dict[str, Any]:
    flow_name = draw(mostly(st.one_of(st.sampled_from(["etl daily", "ünïcødé flow ✓", "a", "x" * 253]),
                                     weird_text.filter(bool)), weird_text))
    sources = {
        "inline": st.one_of(st.sampled_from(SOURCES).map(lambda s: s.format(name=flow_name)), weird_text),
        "configMapRef": st.fixed_dictionaries({
            "name": st.one_of(st.just("flows"), any_name),
            "key": st.one_of(st.sampled_from(["good.py", "bad.py", "missing.py"]), any_name)}),
        "path": weird_text,
    }
    chosen = draw(mostly(st.lists(st.sampled_from(["inline", "inline", "configMapRef", "path"]), min_size=1,
                                  max_size=1),
                         st.lists(st.sampled_from(sorted(sources)), max_size=2, unique=True)))
    spec: dict[str, Any] = block(draw, {
        "storageRef": st.fixed_dictionaries({"name": mostly(st.just(storage), any_name)}),
        "flowName": st.just(flow_name),
        "source": st.fixed_dictionaries({k: sources[k] for k in chosen}),
        "objectName": st.one_of(st.sampled_from(["flow", "a", "nope"]), weird_text),
        "storedAsScript": st.one_of(st.booleans(), st.just("null")),
        "key": st.one_of(safe_segment, weird_text),
        "suspend": mostly(st.just(False), st.booleans()),
    }, required=("storageRef", "flowName", "source"))
    if spec.get("storedAsScript") == "null":
        spec["storedAsScript"] = None  # explicitly null: "use the storage's default"
    return spec


metadata_labels = mostly(
    st.dictionaries(st.from_regex(r"\A[a-z]{1,8}\Z", fullmatch=True),
                    st.from_regex(r"\A[a-z0-9]{0,8}\Z", fullmatch=True), max_size=2),
    st.dictionaries(weird_text, weird_text, max_size=2))


# ---------------------------------------------------------------------------- the test
def _settled(obj: dict[str, Any]) -> bool:
    """Ready with a final reason, or Suspended (a suspended object that was never Ready has no
    Ready condition: docs/kstatus.md), for the object's current generation."""
    ready = condition(obj)
    gen = obj["metadata"].get("generation")
    final = (bool(ready.get("reason")) and ready.get("reason") != "Progressing") \
        or condition(obj, "Suspended").get("status") == "True"
    return final and (obj.get("status") or {}).get("observedGeneration") == gen


def _error_lines(log: str, namespace: str) -> list[str]:
    """Errors logged about our objects, and any handler or daemon that crashed (kopf's
    "failed with an exception": the operator's own code raised)."""
    return [line for line in log.splitlines() if re.search(r"\[(ERROR|CRITICAL)\s*\]", line)
            and (namespace in line or "failed with an exception" in line)]


def _reconciles(operator: OperatorProcess) -> float:
    import urllib.request

    with urllib.request.urlopen(operator.metrics_url, timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("flowstore_reconciles_total{"))


def test_generated_specs_are_rejected_or_handled(operator: OperatorProcess, namespace: str, s3_endpoint: str,
                                                 s3_bucket: str, tmp_path: Path) -> None:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    config.load_kube_config()
    api = client.ApiClient()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds", labels={"flowstore.dev/allow": "true"}),
        string_data={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "TOKEN": "t0k3n",
                     "service-account.json": "{not json", "AZURE_STORAGE_CONNECTION_STRING": "garbage"}))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="flows"),
        data={"good.py": SOURCES[0].format(name="etl daily"), "bad.py": SOURCES[2]}))
    ctx = {"tmp": str(local_dir(namespace, "local")), "bucket": s3_bucket, "s3": s3_endpoint}
    log_start = len(operator.logs())

    accepted: list[tuple[str, str, dict[str, Any]]] = []  # (plural, name, spec)
    rejected: collections.Counter[str] = collections.Counter()
    seq = iter(range(10**6))

    def create(plural: str, kind: str, spec: dict[str, Any], labels: dict[str, str]) -> str | None:
        name = f"{plural[:2]}-{next(seq):03d}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec}
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        except ApiException as exc:
            assert exc.status in (400, 422), f"unexpected HTTP {exc.status} for {json.dumps(body)}: {exc.body}"
            causes = (json.loads(exc.body or "{}").get("details") or {}).get("causes") or [{}]
            rejected[f"{kind}: {causes[0].get('reason') or exc.reason} {causes[0].get('field', '')}".strip()] += 1
            return None
        accepted.append((plural, name, spec))
        return name

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
    @given(data=st.data())
    def apply_one(data: st.DataObject) -> None:
        fs_spec = data.draw(flowstorage_spec(ctx), label="FlowStorage.spec")
        fs_name = create("flowstorages", "FlowStorage", fs_spec, data.draw(metadata_labels)) or "store-missing"
        for _ in range(data.draw(st.integers(1, 2))):
            create("storedflows", "StoredFlow", data.draw(storedflow_spec(fs_name), label="StoredFlow.spec"),
                   data.draw(metadata_labels))
        assert operator.alive(), operator.logs()[-5000:]

    apply_one()
    assert accepted, "the API server rejected every generated object: the strategies are too wild"

    # The operator works on all of them at once; each must settle within the bound.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    pending = {(plural, name) for plural, name, _ in accepted}
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    while pending and time.monotonic() < deadline:
        for plural in ("flowstorages", "storedflows"):
            for obj in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]:
                key = (plural, obj["metadata"]["name"])
                objects[key] = obj
                if key in pending and _settled(obj):
                    pending.discard(key)
        assert operator.alive(), operator.logs()[-5000:]
        time.sleep(0.5)

    reasons = collections.Counter(f"{plural[:-1]}: {condition(objects[(plural, name)]).get('status')} "
                                  f"{condition(objects[(plural, name)]).get('reason')}"
                                  for plural, name, _ in accepted if (plural, name) in objects)
    kinds = collections.Counter(plural for plural, _, _ in accepted)
    print(f"\nproperty test: {len(accepted)} accepted ({dict(kinds)}), {sum(rejected.values())} rejected")
    print("rejections: " + json.dumps(dict(rejected.most_common()), ensure_ascii=False, indent=1))
    print("Ready reasons: " + json.dumps(dict(reasons.most_common()), ensure_ascii=False, indent=1))
    specs = {name: spec for _, name, spec in accepted}
    unsettled = {f"{plural}/{name}": {"spec": specs[name], "status": (objects.get((plural, name)) or {}).get("status")}
                 for plural, name in sorted(pending)}
    assert not unsettled, "accepted but without a settled Ready condition after " \
        f"{SETTLE_TIMEOUT:.0f}s:\n{json.dumps(unsettled, indent=1, ensure_ascii=False, default=str)[:20000]}"
    assert operator.alive(), operator.logs()[-5000:]
    errors = _error_lines(operator.logs()[log_start:], namespace)
    assert not errors, "operator handler errors:\n" + "\n".join(errors[:30])

    # No busy loop: whatever the interval (the schema accepts "0s" and "1ms"), a settled object is
    # reconciled at most once a second, and most (10m interval, backoff, waiting for a change) not
    # at all. A spinning loop makes hundreds of passes in the window.
    window = 5.0
    before = _reconciles(operator)
    time.sleep(window)
    spent = _reconciles(operator) - before
    print(f"reconciles in a {window:.0f} s window after settling: {spent:.0f} for {len(accepted)} objects")
    assert spent <= len(accepted) + 20, f"{spent:.0f} reconciles in {window:.0f} s: a loop spins"

    # Leave nothing behind for later tests: delete while the operator runs (it releases finalizers).
    for plural in ("storedflows", "flowstorages"):
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            custom.list_namespaced_custom_object(GROUP, VERSION, namespace, p)["items"]
            for p in ("storedflows", "flowstorages")):
        time.sleep(0.5)
