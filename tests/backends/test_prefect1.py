"""`serialize()` is the seed's schema: Prefect 1.4.1's own code reads what flowstore writes.

Prefect runs in a virtualenv of its own (tests/helpers/prefect1.py, built on first use) without
flowstore: flowstore's side produces `serialize()` JSON and stores flows here, Prefect's side
loads the JSON with ``prefect.serialization.storage.StorageSchema`` and, for Local and S3, loads
the flows with its own ``get_flow`` (against the real S3 server of the local cloud).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowstore.artifacts import envelope
from flowstore.storage import Storage
from flowstore.storage.azure import Azure
from flowstore.storage.docker import Docker
from flowstore.storage.gcs import GCS
from flowstore.storage.git.bitbucket import Bitbucket
from flowstore.storage.git.codecommit import CodeCommit
from flowstore.storage.git.github import GitHub
from flowstore.storage.git.gitlab import GitLab
from flowstore.storage.git.plain import Git
from flowstore.storage.local import Local
from flowstore.storage.s3 import S3
from flowstore.storage.webhook import Webhook
from tests.helpers import prefect1

COMMIT = "3f2c9a1d" * 5
#: a connection string of the well-known development account, at an address nothing listens on
AZURITE = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
           "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")

FLOWSTORE_SCRIPT = b"from flowstore.flow import Flow\n\nflow = Flow('etl', lambda: 42)\n"


def prefect_script(flow_name: str, result: str) -> bytes:
    """A Prefect 1 flow script, as its author writes it."""
    return (f"from prefect import Flow, task\n\n\n@task\ndef answer():\n    return {result!r}\n\n\n"
            f"with Flow({flow_name!r}) as flow:\n    answer()\n").encode()


def by_value_flow(name: str, result: str) -> Any:
    """A flow object whose class cloudpickle stores by value (it is defined in a function), so
    Prefect's venv, where flowstore is not installed, can unpickle it."""

    class SeedFlow:
        def __init__(self, flow_name: str) -> None:
            self.name = flow_name

        def run(self) -> str:
            return result

    return SeedFlow(name)


# ---------------------------------------------------------------------- every class, every field
def _local(tmp: Path) -> Storage:
    storage = Local(directory=str(tmp / "flows"), path="etl.py", stored_as_script=True, secrets=["SLACK_TOKEN"])
    storage.add_flow("etl", source=FLOWSTORE_SCRIPT)
    return storage


def _s3(tmp: Path) -> Storage:
    storage = S3(bucket="flows", key="team/etl.py", stored_as_script=True, endpoint_url="http://127.0.0.1:9",
                 region="eu-west-1", client_options={"verify": False}, key_prefix="prod/")
    storage.add_flow("etl", source=FLOWSTORE_SCRIPT)
    return storage


def _gcs(tmp: Path) -> Storage:
    storage = GCS(bucket="flows", key="team/etl.py", project="data-prod", stored_as_script=True)
    storage.add_flow("etl", source=FLOWSTORE_SCRIPT)
    return storage


def _azure(tmp: Path) -> Storage:
    storage = Azure(container="flows", connection_string=AZURITE, blob_name="team/etl.py", stored_as_script=True)
    storage.add_flow("etl", source=FLOWSTORE_SCRIPT)
    return storage


def _webhook(tmp: Path) -> Storage:
    storage = Webhook(
        build_request_kwargs={"url": "https://flows.example.com/flows",
                              "headers": {"Authorization": "Bearer ${WEBHOOK_TOKEN}"}},
        build_request_http_method="POST",
        get_flow_request_kwargs={"url": "https://flows.example.com/flows/${response.json.id}",
                                 "headers": {"Authorization": "Bearer ${WEBHOOK_TOKEN}"}},
        get_flow_request_http_method="GET",
        stored_as_script=True,
        build_response={"status": 201, "json": {"id": "f-123"}},
    )
    storage.add_flow("etl", source=FLOWSTORE_SCRIPT)
    return storage


def _docker(tmp: Path) -> Storage:
    storage = Docker(registry_url="registry.example.com:5000/team", image_name="flows", image_tag="v7",
                     path="/opt/prefect/flows/etl.py", stored_as_script=True, prefect_version="1.4.1",
                     base_image="python:3.11-slim")
    storage.add_flow("etl", source=FLOWSTORE_SCRIPT)
    return storage


def _github(tmp: Path) -> Storage:
    storage = GitHub(repo="acme/flows", path="flows/etl.py", ref="main", host="github.example.com",
                     access_token="ghp-not-a-real-token")
    storage.add_flow("etl")
    storage.pin(COMMIT)
    return storage


def _gitlab(tmp: Path) -> Storage:
    storage = GitLab(repo="acme/flows", path="flows/etl.py", ref="main", host="https://gitlab.example.com")
    storage.add_flow("etl")
    return storage


def _bitbucket_server(tmp: Path) -> Storage:
    storage = Bitbucket(project="DATA", repo="flows", host="https://bitbucket.example.com", path="flows/etl.py",
                        ref="release")
    storage.add_flow("etl")
    return storage


def _bitbucket_cloud(tmp: Path) -> Storage:
    storage = Bitbucket(workspace="acme", repo="flows", path="flows/etl.py", ref=COMMIT)
    storage.add_flow("etl")
    return storage


def _codecommit(tmp: Path) -> Storage:
    storage = CodeCommit(repo="flows", path="flows/etl.py", commit="main", region="eu-west-1",
                         client_options={"verify": False})
    storage.add_flow("etl")
    return storage


def _git_https(tmp: Path) -> Storage:
    storage = Git(url="https://git.example.com/data/flows.git", path="flows/etl.py", ref="main")
    storage.add_flow("etl")
    storage.pin(COMMIT)
    return storage


def _git_ssh(tmp: Path) -> Storage:
    storage = Git(url="git@git.example.com:data/flows.git", path="flows/etl.py", ref="v1.2")
    storage.add_flow("etl")
    return storage


CASES: dict[str, Callable[[Path], Storage]] = {
    "Local": _local, "S3": _s3, "GCS": _gcs, "Azure": _azure, "Webhook": _webhook, "Docker": _docker,
    "GitHub": _github, "GitLab": _gitlab, "Bitbucket (Server)": _bitbucket_server,
    "Bitbucket (Cloud)": _bitbucket_cloud, "CodeCommit": _codecommit, "Git (https)": _git_https,
    "Git (ssh)": _git_ssh,
}

LOAD_EVERY_DOCUMENT = """
from prefect.serialization.storage import StorageSchema

results = {}
for case, doc in payload.items():
    try:
        schema = StorageSchema()
        obj = schema.load(doc)
        fields = sorted(schema.type_schemas[doc["type"]]().fields)
        attrs = {k: getattr(obj, k, "<missing>") for k in doc if k not in ("type", "__version__")}
        results[case] = {"class": type(obj).__name__, "fields": fields, "attrs": attrs, "dump": schema.dump(obj)}
    except Exception as exc:
        results[case] = {"error": f"{type(exc).__name__}: {exc}"}
answer(results)
"""


@pytest.fixture(scope="module")
def loaded_by_prefect(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case's serialize(), and what Prefect 1.4.1's StorageSchema made of it (one child)."""
    tmp = tmp_path_factory.mktemp("seed-schema")
    docs = {case: make(tmp).serialize() for case, make in CASES.items()}
    return {"docs": docs, "prefect": prefect1.run(LOAD_EVERY_DOCUMENT, docs)}


@pytest.mark.parametrize("case", list(CASES))
def test_prefect_storage_schema_loads_every_field(loaded_by_prefect: dict[str, Any], case: str) -> None:
    doc = loaded_by_prefect["docs"][case]
    got = loaded_by_prefect["prefect"][case]
    assert "error" not in got, got
    assert got["class"] == doc["type"]
    assert doc["__version__"] == prefect1.PREFECT_VERSION
    fields = set(doc) - {"type", "__version__"}
    # nothing silently dropped: every key is a field of the class's schema ...
    assert fields <= set(got["fields"]), f"not in Prefect's {doc['type']}Schema: {sorted(fields - set(got['fields']))}"
    # ... and the object Prefect built has every field that was set, as set
    assert got["attrs"] == {k: doc[k] for k in fields}
    # which Prefect serializes back unchanged
    assert {k: got["dump"].get(k) for k in doc} == doc


def test_every_storage_class_with_a_seed_schema_is_covered(loaded_by_prefect: dict[str, Any]) -> None:
    """Prefect 1.4.1 has a schema for these; flowstore has the same classes (Module aside)."""
    covered = {doc["type"] for doc in loaded_by_prefect["docs"].values()}
    assert covered == {"Local", "S3", "GCS", "Azure", "Webhook", "Docker", "GitHub", "GitLab", "Bitbucket",
                       "CodeCommit", "Git"}


def test_the_seed_schema_carries_what_prefect_needs_to_find_the_flow(loaded_by_prefect: dict[str, Any]) -> None:
    docs = loaded_by_prefect["docs"]
    # script mode survives (an agent must not unpickle a script)
    for case in ("Local", "S3", "GCS", "Azure", "Webhook", "Docker"):
        assert docs[case]["stored_as_script"] is True, case
    # S3: flowstore's endpoint and region travel as boto3 client options
    assert docs["S3"]["client_options"] == {"verify": False, "endpoint_url": "http://127.0.0.1:9",
                                            "region_name": "eu-west-1"}
    assert docs["CodeCommit"]["client_options"] == {"verify": False, "region_name": "eu-west-1"}
    # Docker: the image Prefect's agent runs
    assert {k: docs["Docker"][k] for k in ("registry_url", "image_name", "image_tag")} == {
        "registry_url": "registry.example.com:5000/team", "image_name": "flows", "image_tag": "v7"}
    # Webhook: the build response's id is filled in (Prefect's templates know only ${ENV_OR_SECRET})
    assert docs["Webhook"]["get_flow_request_kwargs"]["url"] == "https://flows.example.com/flows/f-123"
    assert docs["Webhook"]["get_flow_request_kwargs"]["headers"] == {"Authorization": "Bearer ${WEBHOOK_TOKEN}"}
    # git-hosted: the pinned commit, never the moving branch
    assert docs["GitHub"]["ref"] == COMMIT
    assert docs["GitHub"]["base_url"] == "https://github.example.com/api/v3"
    assert docs["Git (https)"]["commit"] == COMMIT and "branch_name" not in docs["Git (https)"]
    assert {k: docs["Git (ssh)"][k] for k in ("repo_host", "repo", "use_ssh", "branch_name", "flow_path")} == {
        "repo_host": "git.example.com", "repo": "data/flows", "use_ssh": True, "branch_name": "v1.2",
        "flow_path": "flows/etl.py"}
    assert docs["Bitbucket (Cloud)"]["workspace"] == "acme" and docs["Bitbucket (Cloud)"]["ref"] == COMMIT
    # never a secret value
    assert "ghp-not-a-real-token" not in str(docs) and "a2V5" not in str(docs)


# ---------------------------------------------------------------------- Prefect's get_flow
LOAD_AND_RUN = """
import prefect
from prefect.serialization.storage import StorageSchema

storage = StorageSchema().load(payload["storage"])
flow = storage.get_flow(payload["flow"])
if isinstance(flow, prefect.Flow):
    state = flow.run()
    result = [state.result[task].result for task in flow.tasks][0]
else:
    result = flow.run()
answer({"storage": type(storage).__name__, "script": storage.stored_as_script, "flow": type(flow).__name__,
        "name": flow.name, "result": result})
"""

PICKLE_PREFECT_FLOW = """
import base64, cloudpickle
from prefect.utilities.storage import extract_flow_from_file

flow = extract_flow_from_file(file_contents=payload["script"], flow_name=payload["name"])
answer(base64.b64encode(cloudpickle.dumps(flow)).decode())
"""


def prefect_loads(storage: Storage, flow_name: str) -> dict[str, Any]:
    return dict(prefect1.run(LOAD_AND_RUN, {"storage": storage.serialize(), "flow": flow_name}))


def store_prefect_flow_pickle(storage: Storage, flow_name: str, result: str) -> None:
    """A Prefect Flow pickled in the flow's own runtime (Prefect's venv, as a build Job in the
    flow's image does) and stored by flowstore the way the operator stores it: enveloped, put
    at the storage's location for the flow."""
    pickled = prefect1.run(PICKLE_PREFECT_FLOW, {"script": prefect_script(flow_name, result).decode(),
                                                 "name": flow_name})
    location = storage.location_for(flow_name)
    storage.put_bytes(location, envelope.wrap(base64.b64decode(pickled)))
    storage.flows[flow_name] = location


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex


def test_prefect_local_loads_a_pickle_flowstore_stored(tmp_path: Path, token: str) -> None:
    storage = Local(directory=str(tmp_path / "flows"))
    storage.add_flow(by_value_flow("pickled", token))
    storage.build()
    assert prefect_loads(storage, "pickled") == {"storage": "Local", "script": False, "flow": "SeedFlow",
                                                 "name": "pickled", "result": token}


def test_prefect_local_loads_a_prefect_flow_flowstore_stored(tmp_path: Path, token: str) -> None:
    storage = Local(directory=str(tmp_path / "flows"))
    store_prefect_flow_pickle(storage, "prefect pickled", token)
    assert prefect_loads(storage, "prefect pickled") == {"storage": "Local", "script": False, "flow": "Flow",
                                                         "name": "prefect pickled", "result": token}


def test_prefect_local_loads_a_script_flowstore_stored(tmp_path: Path, token: str) -> None:
    storage = Local(directory=str(tmp_path / "flows"), stored_as_script=True)
    storage.add_flow("scripted", source=prefect_script("scripted", token))
    storage.build()
    assert prefect_loads(storage, "scripted") == {"storage": "Local", "script": True, "flow": "Flow",
                                                  "name": "scripted", "result": token}


def test_prefect_local_loads_the_seeds_script_at_its_path(tmp_path: Path, token: str) -> None:
    """The seed's script mode: the author's file stays where it is; add_flow returns its path."""
    script = tmp_path / "anywhere" / "etl_flow.py"
    script.parent.mkdir()
    script.write_bytes(prefect_script("in place", token))
    storage = Local(directory=str(tmp_path / "flows"), stored_as_script=True, path=str(script))
    assert storage.add_flow("in place") == str(script)
    storage.build()
    assert not (tmp_path / "flows").exists() or not any((tmp_path / "flows").iterdir())  # nothing copied
    assert prefect_loads(storage, "in place") == {"storage": "Local", "script": True, "flow": "Flow",
                                                  "name": "in place", "result": token}


def _s3(s3_endpoint: str, bucket: str, **kwargs: Any) -> S3:
    return S3(bucket=bucket, endpoint_url=s3_endpoint, region="us-east-1", key_prefix="prod/", **kwargs)


def test_prefect_s3_loads_a_pickle_flowstore_stored(s3_endpoint: str, s3_bucket: str, token: str) -> None:
    storage = _s3(s3_endpoint, s3_bucket)
    storage.add_flow(by_value_flow("pickled", token))
    storage.build()
    assert prefect_loads(storage, "pickled") == {"storage": "S3", "script": False, "flow": "SeedFlow",
                                                 "name": "pickled", "result": token}


def test_prefect_s3_loads_a_prefect_flow_flowstore_stored(s3_endpoint: str, s3_bucket: str, token: str) -> None:
    storage = _s3(s3_endpoint, s3_bucket)
    store_prefect_flow_pickle(storage, "prefect pickled", token)
    assert prefect_loads(storage, "prefect pickled") == {"storage": "S3", "script": False, "flow": "Flow",
                                                         "name": "prefect pickled", "result": token}


def test_prefect_s3_loads_a_script_flowstore_stored(s3_endpoint: str, s3_bucket: str, token: str) -> None:
    storage = _s3(s3_endpoint, s3_bucket, stored_as_script=True)
    storage.add_flow("scripted", source=prefect_script("scripted", token))
    storage.build()
    assert prefect_loads(storage, "scripted") == {"storage": "S3", "script": True, "flow": "Flow",
                                                  "name": "scripted", "result": token}
