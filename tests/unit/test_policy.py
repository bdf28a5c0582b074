"""The operator's policy (issue 20, item 4): what spec.build and a FlowStorage's Secrets may make
the operator do, and that each refusal says what to change. Pure: no cluster."""

from __future__ import annotations

import pytest

from flowstore.api.constants import SECRET_OPT_IN_LABEL
from flowstore.api.models import BuildSpec
from flowstore.cli import build_parser, operator_policy
from flowstore.controller.policy import BuildPolicy, OperatorPolicy, image_allowed

ENABLED = BuildPolicy(enabled=True, images=("registry.example.com/team/*", "python:3.11*"))


def spec(**fields: object) -> BuildSpec:
    parsed = BuildSpec.parse({"image": "registry.example.com/team/runtime:1", **fields})
    assert parsed is not None
    return parsed


def test_builds_are_off_unless_enabled() -> None:
    refusal = BuildPolicy().refusal(spec())
    assert refusal is not None and "--enable-build-jobs" in refusal and "builds.enabled" in refusal
    assert ENABLED.refusal(spec()) is None


@pytest.mark.parametrize(("image", "allowed"), [
    ("registry.example.com/team/runtime:1", True),
    ("registry.example.com/team/runtime@sha256:" + "a" * 64, True),
    ("registry.example.com/team/sub/runtime", True),
    ("registry.example.com/other/runtime:1", False),
    ("registry.example.com.evil.io/team/runtime:1", False),
    ("evil.io/registry.example.com/team/runtime", False),
    ("python:3.11-slim", True),
    ("python:3.12", False),
])
def test_images_must_match_an_allowed_pattern(image: str, allowed: bool) -> None:
    assert image_allowed(image, ENABLED.images) is allowed
    refusal = ENABLED.refusal(spec(image=image))
    assert (refusal is None) is allowed
    if refusal:
        assert image in refusal and "--build-image" in refusal and "builds.allowedImages" in refusal


def test_no_image_is_allowed_by_default() -> None:
    refusal = BuildPolicy(enabled=True).refusal(spec())
    assert refusal is not None and "allowed: none" in refusal


def test_service_accounts_tolerations_and_node_selectors_need_the_admins_leave() -> None:
    sa = ENABLED.refusal(spec(serviceAccountName="deployer"))
    assert sa is not None and "'deployer'" in sa and "--build-service-account" in sa
    assert BuildPolicy(enabled=True, images=ENABLED.images,
                       service_accounts=frozenset({"deployer"})).refusal(spec(serviceAccountName="deployer")) is None
    control_plane = {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
    refusal = ENABLED.refusal(spec(tolerations=[control_plane]))
    assert refusal is not None and "node-role.kubernetes.io/control-plane" in refusal
    everything = ENABLED.refusal(spec(tolerations=[{"operator": "Exists"}]))
    assert everything is not None and "every taint" in everything
    selector = ENABLED.refusal(spec(nodeSelector={"kubernetes.io/hostname": "control-plane-1"}))
    assert selector is not None and "--build-node-selector-key" in selector
    lenient = BuildPolicy(enabled=True, images=ENABLED.images, toleration_keys=frozenset({"pool"}),
                          node_selector_keys=frozenset({"pool"}))
    pooled = spec(tolerations=[{"key": "pool", "operator": "Exists"}], nodeSelector={"pool": "a"})
    assert lenient.refusal(pooled) is None


def test_secrets_need_the_opt_in_label() -> None:
    policy = OperatorPolicy()
    plain = {"metadata": {"labels": {}}, "data": {"k": "v"}}
    refusal = policy.secret_refusal("team", "db-password", plain)
    assert refusal is not None
    assert f"kubectl label secret db-password -n team {SECRET_OPT_IN_LABEL}=true" in refusal
    assert policy.secret_refusal("team", "s", {"metadata": {"labels": {SECRET_OPT_IN_LABEL: "false"}}}) is not None
    assert policy.secret_refusal("team", "s", {"metadata": {"labels": {SECRET_OPT_IN_LABEL: "true"}}}) is None
    assert OperatorPolicy(secret_policy="any").secret_refusal("team", "s", plain) is None


def test_the_defaults_are_the_safe_ones() -> None:
    args = build_parser().parse_args(["operator"])
    assert operator_policy(args) == OperatorPolicy()
    policy = OperatorPolicy()
    assert policy.local_root is None and not policy.allow_private_endpoints and not policy.webhook_env
    assert policy.secret_policy == "opt-in" and not policy.builds.enabled and not policy.allow_unconfined_builds


def test_flags() -> None:
    args = build_parser().parse_args([
        "operator", "--local-root", "/var/lib/flowstore/flows", "--allow-private-endpoints",
        "--webhook-allowed-env", "REGION", "--secret-policy", "any", "--enable-build-jobs",
        "--build-image", "reg/*", "--build-image", "python:*", "--build-service-account", "builder",
        "--build-toleration-key", "pool", "--build-node-selector-key", "pool", "--allow-unconfined-builds"])
    assert operator_policy(args) == OperatorPolicy(
        local_root="/var/lib/flowstore/flows", allow_private_endpoints=True, webhook_env=frozenset({"REGION"}),
        secret_policy="any", allow_unconfined_builds=True,
        builds=BuildPolicy(enabled=True, images=("reg/*", "python:*"), service_accounts=frozenset({"builder"}),
                           toleration_keys=frozenset({"pool"}), node_selector_keys=frozenset({"pool"})))
