"""The seed's interface at the cluster's edge: `flowstore locate -o prefect` gives a Prefect 1 user
the storage Prefect 1.4.1 loads its flow from, and a FlowStorage can never make the operator read
or write outside its Local directory (the seed's Local class, used by a flow's author, may)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from tests.helpers import prefect1
from tests.helpers.kube import apply, condition, kubectl, wait_for, wait_ready
from tests.helpers.manifests import local_storage, s3_storage, script_flow
from tests.helpers.operator import OperatorProcess, local_dir

PREFECT_FLOW = """\
from prefect import Flow, task


@task
def answer():
    return "{token}"


with Flow("etl daily") as flow:
    answer()
"""

LOAD_AND_RUN = """
from prefect.serialization.storage import StorageSchema

storage = StorageSchema().load(payload)
flow = storage.get_flow("etl daily")
state = flow.run()
answer({"storage": type(storage).__name__, "script": storage.stored_as_script,
        "result": [state.result[task].result for task in flow.tasks][0]})
"""


def _stored_flow(namespace: str, script: str, **spec: object) -> str:
    return script_flow(namespace, "etl", "etl daily", script, storedAsScript=True, **spec)


def wait_refused(namespace: str) -> str:
    """Ready=False with reason InvalidSpec for the StoredFlow's current generation; its message."""
    failed = wait_for("storedflow", namespace, "etl", lambda o: condition(o).get("reason") == "InvalidSpec"
                      and condition(o).get("observedGeneration") == o["metadata"]["generation"],
                      what="to be refused (InvalidSpec)")
    return str(condition(failed)["message"])


def locate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowstore.cli", "locate", *args], capture_output=True, text=True)


def test_locate_prefect_is_the_storage_prefect_1_loads_the_flow_from(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    token = uuid.uuid4().hex
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, key_prefix="prod/"))
    apply(_stored_flow(namespace, PREFECT_FLOW.format(token=token)))  # script mode: never run by the operator
    status = wait_ready(namespace, "etl")["status"]
    assert status["storage"]["storedAsScript"] is True and status["storage"]["keyPrefix"] == "prod/"  # camelCase

    done = locate("etl", "-n", namespace, "-o", "prefect")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc == {
        "type": "S3", "__version__": "1.4.1", "bucket": s3_bucket, "stored_as_script": True,
        "client_options": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
        "flows": {"etl daily": status["location"]}, "secrets": [],
    }
    # a Prefect 1 agent, with its own credentials in its environment, loads and runs the flow
    assert prefect1.run(LOAD_AND_RUN, doc) == {"storage": "S3", "script": True, "result": token}
    # the default output is still the status
    assert json.loads(locate("etl", "-n", namespace).stdout)["location"] == status["location"]
    missing = locate("nope", "-n", namespace, "-o", "prefect")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_a_flowstorage_cannot_reach_outside_its_local_directory(
        operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    directory, outside = local_dir(namespace, "flows"), local_dir(namespace, "outside")
    outside.mkdir(parents=True)
    (outside / "secret.py").write_text("TOKEN = 'not for flows'\n")
    apply(local_storage(namespace, "store", directory, path=f"{outside}/written.flow"))
    apply(_stored_flow(namespace, "flow = None\n"))
    assert "outside the storage directory" in wait_refused(namespace)

    apply(local_storage(namespace, "store", directory))
    # a '..' segment never reaches the operator: the API server refuses it (CEL)
    refused = kubectl("apply", "-f", "-", input=_stored_flow(namespace, "flow = None\n", key="../outside/written.flow"),
                      check=False)
    assert refused.returncode != 0 and "must not contain a '..' segment" in refused.stderr
    apply(_stored_flow(namespace, "flow = None\n", key=f"{outside}/written.flow"))
    assert "outside the storage directory" in wait_refused(namespace)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.py"]  # nothing written there

    apply(_stored_flow(namespace, "flow = None\n", key="inside/etl.py"))
    assert wait_ready(namespace, "etl")["status"]["location"] == f"{directory}/inside/etl.py"
