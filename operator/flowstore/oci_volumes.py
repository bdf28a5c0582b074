"""What ``flowstore locate NAME -o pod-volume | prefect-job-variables`` prints for a StoredFlow on
an ``oci`` FlowStorage (docs/oci-volumes.md): the Pod spec pieces that mount its current image
read-only, pinned by digest, and the check a run makes of the mount.

- ``pod-volume``: ``volumes`` (an ``image`` volume naming ``repository@sha256:…``) and the
  container's ``volumeMounts``, with ``imagePullSecrets`` when ``--pull-secret`` names one;
- ``prefect-job-variables``: the same as a Prefect Kubernetes work pool's job variables
  (``volumes``, ``volume_mounts``, ``image_pull_secrets``), with the pull step
  ``flowstore.prefect.use_mounted_flow`` that checks the mount;
- ``--fallback init`` (clusters without image volumes): an emptyDir and an init container that
  pulls the image by digest into it and runs the same check (``python -m flowstore.mounted pull``).

Prefect's default Kubernetes base job template has none of those job variables, so a work pool
needs its template changed once: ``python3 -m flowstore.oci_volumes prefect-base-job-template``
reads the default (``prefect work-pool get-default-base-job-template --type kubernetes``) and
prints it with the four variables declared and placed in the Job's Pod spec and first container
(:func:`prefect_base_job_template`).

Everything comes from the status an agent trusts (``flowstore.client.resolve``): the repository
from the FlowStorage's spec, the image digest and the flow digest from the revision.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

#: the ``-o`` values this module prints
OUTPUTS = ("pod-volume", "prefect-job-variables")
DEFAULT_MOUNT_PATH = "/flow"
DEFAULT_VOLUME = "flow"
#: where the fallback's init container finds the pull Secret's config.json
DOCKER_CONFIG_DIR = "/var/run/flowstore/registry"


class NotAnImageVolume(ValueError):
    """The StoredFlow is not stored as an OCI image (said in the message)."""


def add_locate_args(parser: argparse.ArgumentParser) -> None:
    """The options ``locate`` takes for these outputs."""
    parser.add_argument("--mount-path", default=DEFAULT_MOUNT_PATH,
                        help=f"pod-volume / prefect-job-variables: where the flow is mounted "
                             f"(default {DEFAULT_MOUNT_PATH})")
    parser.add_argument("--volume-name", default=DEFAULT_VOLUME, help="the volume's name (default flow)")
    parser.add_argument("--pull-secret", help="a kubernetes.io/dockerconfigjson Secret the kubelet (or the init "
                        "container) pulls the image with")
    parser.add_argument("--fallback", choices=["none", "init"], default="none",
                        help="init: an emptyDir filled by an init container that pulls by digest and checks it, "
                             "for clusters without image volumes (Kubernetes < 1.35, containerd < 2.1)")
    parser.add_argument("--init-image", help="--fallback init: an image with flowstore installed (e.g. the "
                        "operator's) for the init container")


def pinned(storage_doc: dict[str, Any], artifact_digest: str, location: str, what: str) -> dict[str, Any]:
    """{reference, digest, location, plainHTTP} of the current revision's image."""
    if storage_doc.get("type") != "OCI":
        raise NotAnImageVolume(f"{what} is stored in a {storage_doc.get('type')} storage; only an oci FlowStorage "
                               "stores each revision as an image a Pod can mount (docs/oci-volumes.md)")
    image_digest = storage_doc.get("imageDigest")
    if not isinstance(image_digest, str) or not image_digest.startswith("sha256:"):
        raise NotAnImageVolume(f"{what}: its status names no image digest (status.storage.imageDigest)")
    return {"reference": f"{storage_doc['repository']}@{image_digest}", "digest": artifact_digest,
            "location": location, "plainHTTP": bool(storage_doc.get("plainHTTP"))}


def pod_pieces(image: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``volumes``, ``volumeMounts`` (and ``initContainers``, ``imagePullSecrets``) as a Pod spec has them."""
    mount = {"name": args.volume_name, "mountPath": args.mount_path, "readOnly": True}
    pieces: dict[str, Any] = {}
    if args.fallback == "init":
        if not args.init_image:
            raise NotAnImageVolume("--fallback init needs --init-image: an image with flowstore installed")
        init: dict[str, Any] = {
            "name": "flowstore-pull", "image": args.init_image,
            "command": ["python3", "-m", "flowstore.mounted", "pull", image["reference"], image["digest"],
                        args.mount_path, *(["--plain-http"] if image["plainHTTP"] else [])],
            "volumeMounts": [{"name": args.volume_name, "mountPath": args.mount_path}],
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "runAsUser": 65532, "capabilities": {"drop": ["ALL"]}},
        }
        volumes: list[dict[str, Any]] = [{"name": args.volume_name, "emptyDir": {}}]
        if args.pull_secret:
            init["env"] = [{"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR}]
            init["volumeMounts"].append({"name": "flowstore-registry", "mountPath": DOCKER_CONFIG_DIR,
                                         "readOnly": True})
            volumes.append({"name": "flowstore-registry", "secret": {
                "secretName": args.pull_secret, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
        pieces["initContainers"] = [init]
        pieces["volumes"] = volumes
    else:
        pieces["volumes"] = [{"name": args.volume_name,
                              "image": {"reference": image["reference"], "pullPolicy": "IfNotPresent"}}]
        if args.pull_secret:
            pieces["imagePullSecrets"] = [{"name": args.pull_secret}]
    pieces["volumeMounts"] = [mount]
    return pieces


def render(output: str, storage_doc: dict[str, Any], artifact_digest: str, location: str, what: str,
           args: argparse.Namespace) -> str:
    """The YAML ``flowstore locate -o OUTPUT`` prints, with comments naming what it pins."""
    image = pinned(storage_doc, artifact_digest, location, what)
    pieces = pod_pieces(image, args)
    head = [f"# {what}: image {image['reference']}",
            f"# flow digest {image['digest']}, file {location} under {args.mount_path}",
            f"# check the mount before running it: python3 -m flowstore.mounted check {args.mount_path} "
            f"{image['digest']}"]
    if output == "pod-volume":
        return "\n".join(head) + "\n" + yaml.safe_dump(pieces, sort_keys=False, default_flow_style=False)
    variables: dict[str, Any] = {"volumes": pieces["volumes"], "volume_mounts": pieces["volumeMounts"]}
    if "initContainers" in pieces:
        variables["init_containers"] = pieces["initContainers"]
    if "imagePullSecrets" in pieces:
        variables["image_pull_secrets"] = pieces["imagePullSecrets"]
    doc = {"job_variables": variables,
           "pull": [{"flowstore.prefect.use_mounted_flow": {"path": args.mount_path, "digest": image["digest"]}}]}
    head.append("# the work pool's base job template must place {{ volumes }}, {{ volume_mounts }}"
                + (", {{ init_containers }}" if "initContainers" in pieces else "")
                + (", {{ image_pull_secrets }}" if "imagePullSecrets" in pieces else "")
                + " in its job_manifest: python3 -m flowstore.oci_volumes prefect-base-job-template "
                  "(docs/oci-volumes.md)")
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


#: the job variables ``-o prefect-job-variables`` may set: (variable, field, where in the job
#: manifest's Pod template: the Pod spec or its first container, the flow run's)
JOB_VARIABLES = (("volumes", "volumes", "pod"), ("volume_mounts", "volumeMounts", "container"),
                 ("image_pull_secrets", "imagePullSecrets", "pod"), ("init_containers", "initContainers", "pod"))


class TemplateError(ValueError):
    """A base job template this module cannot place the variables in (said in the message)."""


def prefect_base_job_template(template: dict[str, Any]) -> dict[str, Any]:
    """A Prefect Kubernetes work pool's base job template (``{job_configuration: {job_manifest},
    variables: {properties}}``, as ``prefect work-pool get-default-base-job-template --type
    kubernetes`` prints it) with the job variables ``-o prefect-job-variables`` sets: each declared
    (an array, default empty: a run without them gets an empty list) and placed as a whole
    ``"{{ name }}"`` value, which Prefect replaces by the variable's value unchanged. A field the
    template already fills otherwise is refused rather than overwritten. Returns a new template."""
    import copy

    out = copy.deepcopy(template)
    try:
        properties = out["variables"]["properties"]
        pod = out["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise TemplateError(f"not a Prefect Kubernetes base job template: no {exc} (expected job_configuration."
                            "job_manifest.spec.template.spec.containers[0] and variables.properties)") from None
    if not isinstance(properties, dict) or not isinstance(pod, dict) or not isinstance(container, dict):
        raise TemplateError("not a Prefect Kubernetes base job template: variables.properties, the Pod spec and "
                            "its first container must be objects")
    for variable, field, where in JOB_VARIABLES:
        target = pod if where == "pod" else container
        placeholder = "{{ " + variable + " }}"
        if target.get(field, placeholder) != placeholder:
            raise TemplateError(f"the job manifest's {'Pod spec' if where == 'pod' else 'first container'} already "
                                f"sets {field}; merge {placeholder} into it by hand (docs/oci-volumes.md)")
        target[field] = placeholder
        properties.setdefault(variable, {
            "title": variable.replace("_", " ").capitalize(), "type": "array", "items": {"type": "object"},
            "default": [],
            "description": f"The flow run Pod's {field} (flowstore locate NAME -o prefect-job-variables)."})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python3 -m flowstore.oci_volumes prefect-base-job-template [FILE]``: the template in FILE
    (default: standard input, JSON) printed as JSON with the job variables placed."""
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python3 -m flowstore.oci_volumes")
    sub = parser.add_subparsers(dest="cmd", required=True)
    cmd = sub.add_parser("prefect-base-job-template", help="place the image volume's job variables in a Prefect "
                         "Kubernetes work pool's base job template")
    cmd.add_argument("file", nargs="?", help="the template (JSON); default: standard input")
    args = parser.parse_args(argv)
    try:
        if args.file:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        else:
            text = sys.stdin.read()
        template = json.loads(text)
        if not isinstance(template, dict):
            raise TemplateError("the template is not a JSON object")
        sys.stdout.write(json.dumps(prefect_base_job_template(template), indent=2) + "\n")
    except (OSError, ValueError) as exc:  # TemplateError and json's errors are ValueErrors
        print(f"flowstore: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["JOB_VARIABLES", "OUTPUTS", "NotAnImageVolume", "TemplateError", "add_locate_args", "main", "pinned",
           "pod_pieces", "prefect_base_job_template", "render"]


if __name__ == "__main__":
    raise SystemExit(main())
