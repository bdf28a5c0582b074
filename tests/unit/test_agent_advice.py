"""An agent refused by a storage is told what an agent can change: the names of its own
environment, from the backend table, never the FlowStorage's Secret (which only the operator reads).
"""

from __future__ import annotations

import pytest

from flowstore import client
from flowstore.agent import trust
from flowstore.agent.status import parse
from flowstore.api.backends import BACKENDS
from flowstore.storage import AuthFailed, TemplateValueMissing


def test_a_webhook_template_the_agent_cannot_fill_names_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBHOOK_TOKEN", raising=False)
    block = {"buildRequest": {"method": "POST", "url": "http://127.0.0.1:9/flows"},
             "getFlowRequest": {"method": "GET", "url": "http://127.0.0.1:9/flows/x",
                                "headers": {"Authorization": "Bearer ${WEBHOOK_TOKEN}"}}}
    status = {"location": "x", "artifact": {"digest": "sha256:" + "0" * 64, "size": 1, "format": "script"},
              "storage": {"type": "Webhook", **block}}
    view = parse({"spec": {"storageRef": {"name": "store"}}, "status": status}, namespace="data", name="etl")
    located = client.check_location(view, api=None, sources=[
        lambda _: [trust.from_flowstorage({"spec": {"webhook": block}}, namespace="data", name="store")]])
    with pytest.raises(TemplateValueMissing) as refused:
        client.download(located)  # refused before any request: nothing listens on port 9
    message = str(refused.value)
    assert message.startswith("getFlowRequest.headers.Authorization: template ${WEBHOOK_TOKEN} has no value")
    assert "set it in this agent's environment" in message and "reference a Secret" not in message


@pytest.mark.parametrize(("storage_type", "names"), [
    ("S3", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]),
    ("CodeCommit", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]),
    ("GCS", ["GOOGLE_APPLICATION_CREDENTIALS"]),
    ("Azure", ["AZURE_STORAGE_CONNECTION_STRING"]),
    ("GitHub", ["GITHUB_ACCESS_TOKEN"]),
    ("GitLab", ["GITLAB_ACCESS_TOKEN"]),
    ("Bitbucket", ["BITBUCKET_USERNAME", "BITBUCKET_APP_PASSWORD", "BITBUCKET_ACCESS_TOKEN"]),
    ("Git", ["GIT_USERNAME", "GIT_PASSWORD", "GIT_TOKEN"]),
    ("Docker", ["DOCKER_CONFIG"]),
])
def test_refused_credentials_get_agent_side_advice(storage_type: str, names: list[str]) -> None:
    # the shape of the storages' own messages: the problem, then advice for the FlowStorage's owner
    refused = AuthFailed("cannot read s3://flows/k: S3 at http://127.0.0.1:1 rejected the credentials or denied "
                         "access (InvalidAccessKeyId); check the keys in the referenced Secret (AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY) and the bucket policy")
    advice = client.agent_advice(storage_type, refused)
    assert advice.startswith("cannot read s3://flows/k: S3 at http://127.0.0.1:1 rejected the credentials or denied "
                             "access (InvalidAccessKeyId); this agent uses its own credentials, not the FlowStorage's "
                             "Secret: give it ")
    assert "referenced Secret" not in advice
    for name in names:
        assert name in advice


def test_every_backend_that_takes_credentials_says_where_an_agent_gets_them() -> None:
    assert {b.class_name for b in BACKENDS if not b.agent_credentials} == {"Local"}
