"""Registry credentials of a Docker storage: a ``kubernetes.io/dockerconfigjson`` Secret's data
(the operator), or the Docker config file (an agent, or the seed's local use)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path

from flowstore.storage.docker.oci import split_registry
from flowstore.storage.errors import InvalidConfig


def _normalize_host(key: str) -> str:
    _, host, _ = split_registry(key)
    return host.lower()


def registry_credentials(registry_url: str, credentials: Mapping[str, str] | None
                         ) -> tuple[str | None, str | None, str | None]:
    """(username, password, where they came from) for `registry_url`.

    `credentials` is the decoded data of a ``kubernetes.io/dockerconfigjson`` Secret (key
    ``.dockerconfigjson``; ``.dockercfg`` too). None: the Docker config file
    (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``); else anonymous."""
    host = split_registry(registry_url)[1].lower()
    if credentials is not None:
        raw = credentials.get(".dockerconfigjson") or credentials.get(".dockercfg")
        if not raw:
            raise InvalidConfig("the registry credentials Secret has no .dockerconfigjson key "
                                "(it must be of type kubernetes.io/dockerconfigjson)")
        source = "the kubernetes.io/dockerconfigjson Secret referenced by the FlowStorage (.dockerconfigjson)"
        user, password = _auth_entry(raw, host, source, strict=True)
        return user, password, source
    directory = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(directory) / "config.json"
    try:
        raw = path.read_text()
    except OSError:
        return None, None, None
    user, password = _auth_entry(raw, host, str(path), strict=False)
    return user, password, (str(path) if user else None)


def _auth_entry(raw: str, host: str, source: str, *, strict: bool) -> tuple[str | None, str | None]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise InvalidConfig(f"{source} is not valid JSON") from None
    auths = doc.get("auths", doc) if isinstance(doc, dict) else {}
    if not isinstance(auths, dict):
        raise InvalidConfig(f"{source}: `auths` must be a mapping of registry hosts")
    aliases = {host}
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        aliases |= {"docker.io", "index.docker.io", "registry-1.docker.io"}
    entry = next((v for k, v in auths.items() if _normalize_host(str(k)) in aliases), None)
    if entry is None:
        if strict:
            known = ", ".join(sorted(_normalize_host(str(k)) for k in auths)) or "none"
            raise InvalidConfig(f"{source} has no entry for registry {host} (entries: {known})")
        return None, None
    if not isinstance(entry, dict):
        raise InvalidConfig(f"{source}: the entry for {host} is not a mapping")
    if entry.get("username") and entry.get("password") is not None:
        return str(entry["username"]), str(entry["password"])
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"])).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            sep, user, password = "", "", ""
        if not sep:
            raise InvalidConfig(f"{source}: the `auth` of {host} is not base64 of username:password")
        return user, password
    if entry.get("identitytoken") or entry.get("registrytoken"):
        raise InvalidConfig(f"{source}: token entries for {host} are not supported; give username and password")
    if strict:
        raise InvalidConfig(f"{source}: the entry for {host} has neither username/password nor auth")
    return None, None


