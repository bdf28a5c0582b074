"""``${NAME}`` templates in the Webhook storage's request settings (the seed's templating).

Any string value, at any depth of dicts and lists, may contain ``${NAME}`` once or several
times, alone or inside a longer string (``"Bearer ${TOKEN}"``). :func:`render` replaces each
one, looking the name up in this order:

1. ``response.<path>``: the kept build response, ``{"status": <int>, "json": <body or None>}``;
   ``${response.status}``, ``${response.json.id}``, ``${response.json.items.0.id}`` (dotted
   path; integers index lists). Objects and lists render as compact JSON.
2. ``location``: the location being stored or read (the flow name, or the StoredFlow's key).
3. `secrets`: the referenced Kubernetes Secret's data (the operator passes it).
4. the process environment, only for names in `allowed_env` (None allows every variable: the
   seed's behaviour, for a flow's author using the class directly; the operator and agents
   reading a status pass the names they allow, see :mod:`flowstore.storage.webhook`).

A name found nowhere raises :class:`~flowstore.storage.errors.TemplateValueMissing`; the
message names the template, where it is used and where it was looked up, never a value.
:func:`render_public` replaces only ``response.*`` and ``location`` (values that are not
secret) and leaves every other ``${...}`` as written: use it for anything shown in status,
events or error messages.

Pure functions: nothing here performs I/O besides reading `environ`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from flowstore.storage.errors import InvalidConfig, TemplateValueMissing

#: ``${...}``: the name is everything up to the closing brace
TEMPLATE = re.compile(r"\$\{([^{}]*)\}")
#: what a name may look like: env/Secret key characters, dots for response paths
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
RESPONSE_PREFIX = "response."
LOCATION = "location"

#: (name, where) -> value, or None to leave the template as written
Lookup = Callable[[str, str], "str | None"]


def template_names(value: Any) -> set[str]:
    """Every ``${NAME}`` name used anywhere in `value` (strings in nested dicts/lists)."""
    if isinstance(value, str):
        return {match.group(1) for match in TEMPLATE.finditer(value)}
    if isinstance(value, Mapping):
        return set().union(*(template_names(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(template_names(v) for v in value)) if value else set()
    return set()


def render(
    value: Any,
    *,
    response: Mapping[str, Any] | None = None,
    location: str | None = None,
    secrets: Mapping[str, str] | None = None,
    allowed_env: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
    where: str = "",
    sensitive: set[str] | None = None,
    env_setting: str = "allowedEnv",
) -> Any:
    """`value` with every ``${NAME}`` replaced (see the module docstring for the lookup order).

    `where` names the setting for error messages (e.g. ``buildRequest``). Values taken from
    `secrets` or the environment are added to `sensitive` (when given), so the caller can
    strip them from anything it reports. Non-string leaves are returned unchanged.
    """
    env = os.environ if environ is None else environ

    def lookup(name: str, path: str) -> str:
        if not TEMPLATE_NAME.match(name):
            raise InvalidConfig(f"{_at(path)}: ${{{name}}} is not a valid template name "
                                "(letters, digits, '_', '-', '.')")
        if name.startswith(RESPONSE_PREFIX) or name == "response":
            return _into_url(path, name, _response_value(name, response, path))
        if name == LOCATION and location is not None:
            return _into_url(path, name, location)
        if secrets is not None and name in secrets:
            found = str(secrets[name])
        elif (allowed_env is None or name in allowed_env) and name in env:
            found = env[name]
        else:
            raise TemplateValueMissing(_missing_message(name, path, secrets, allowed_env, env, env_setting))
        if sensitive is not None and found:
            sensitive.add(found)
        return found

    return _walk(value, where, lookup)


def render_public(value: Any, response: Mapping[str, Any] | None, location: str | None = None) -> Any:
    """`value` with only ``${response.*}`` (and ``${location}`` when given) replaced; every
    other template (Secret values, environment variables) is left as written. A response
    path that cannot be resolved (no build response yet) is also left as written."""

    def lookup(name: str, path: str) -> str | None:
        if name.startswith(RESPONSE_PREFIX):
            try:
                return _response_value(name, response, path)
            except TemplateValueMissing:
                return None
        if name == LOCATION and location is not None:
            return location
        return None

    return _walk(value, "", lookup)


def keep_response(response: Mapping[str, Any] | None, names: Iterable[str]) -> dict[str, Any] | None:
    """What of a build response the templates `names` use (``response.…`` names; others are
    ignored), and nothing else: ``{"status": <int>, "json": <the referenced values>}``. The rest
    of the body (whatever the service or an endpoint posing as one answered) is dropped, so it
    never reaches status, where anyone who may read the StoredFlow would see it.

    A referenced value is kept as it is (an object or list referenced whole stays whole) when it
    renders to at most :data:`MAX_KEPT_VALUE_CHARS`; a longer one is not kept, so its template
    has no value. Lists on a referenced path are kept as objects keyed by the index as written
    (``items.1.id`` keeps ``{"items": {"1": {"id": …}}}``), which renders the same. `response`
    is hostile input: any shape, any depth."""
    if not isinstance(response, Mapping):
        return None
    status = response.get("status")
    kept: dict[str, Any] = {"status": status if isinstance(status, int) and not isinstance(status, bool) else 0,
                            "json": None}
    whole: set[tuple[str, ...]] = set()
    paths = sorted({tuple(n.split(".")[2:]) for n in names
                    if n == RESPONSE_PREFIX + "json" or n.startswith(RESPONSE_PREFIX + "json.")}, key=len)
    for parts in paths:
        if any(parts[:i] in whole for i in range(len(parts))):
            continue  # under a value already kept whole
        try:
            rendered = _response_value(".".join(("response", "json", *parts)), response, "")
        except (TemplateValueMissing, RecursionError, ValueError, TypeError):
            continue
        if len(rendered) > MAX_KEPT_VALUE_CHARS:
            continue
        value = _at_path(response.get("json"), parts)
        whole.add(parts)
        if not parts:
            kept["json"] = value
            continue
        if not isinstance(kept["json"], dict):
            kept["json"] = {}
        node = kept["json"]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return kept


# ---------------------------------------------------------------------- internals
#: characters of one build-response value kept for templates: ids and URLs, not documents
MAX_KEPT_VALUE_CHARS = 2048


def _at_path(value: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        value = value[part] if isinstance(value, Mapping) else value[int(part)]
    return value


def _walk(value: Any, path: str, lookup: Lookup) -> Any:
    if isinstance(value, str):
        def replace(match: re.Match[str]) -> str:
            found = lookup(match.group(1), path)
            return match.group(0) if found is None else str(found)

        return TEMPLATE.sub(replace, value)
    if isinstance(value, Mapping):
        return {k: _walk(v, f"{path}.{k}" if path else str(k), lookup) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(v, f"{path}[{i}]", lookup) for i, v in enumerate(value))
    return value


#: what a build response or location value may not bring into a URL (dot segments are checked
#: apart): a query or fragment of its own, escapes a server would decode, a backslash some
#: servers read as '/', control characters
URL_VALUE_REFUSED = re.compile(r"[?#%\\\x00-\x1f\x7f]")


def _into_url(path: str, name: str, value: str) -> str:
    """`value` unchanged, unless it fills in a ``url`` and could move the request elsewhere on the
    host: a build response is recorded in status and ${location} comes from a StoredFlow, so
    whoever may write either would otherwise choose the path the Secret values are sent to
    (``../admin``) or add a query. Ordinary ids and keys, slashes included, pass."""
    if path != "url" and not path.endswith(".url"):
        return value
    bad = URL_VALUE_REFUSED.search(value)
    what = f"the character {bad.group(0)!r}" if bad else (
        "a '.' or '..' path segment" if any(part in (".", "..") for part in value.split("/")) else None)
    if what is not None:
        raise InvalidConfig(
            f"{path}: the value of ${{{name}}} has {what}; a value from the build response or the location "
            "fills in the path or query as it is and may not move the request elsewhere on the host "
            "(no '.'/'..' segments, '?', '#', '%', backslashes or control characters)")
    return value


def _at(path: str) -> str:
    return path or "template"


def _response_value(name: str, response: Mapping[str, Any] | None, path: str) -> str:
    parts = name.split(".")[1:]
    if response is None:
        raise TemplateValueMissing(
            f"{_at(path)}: ${{{name}}} needs the build response, and there is none yet; "
            "the flow must be stored (built) before it can be read"
        )
    if not parts:
        raise TemplateValueMissing(f"{_at(path)}: ${{{name}}} needs a field: response.status or response.json.<path>")
    current: Any = response
    walked = "response"
    for part in parts:
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit() and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            kind = "no JSON body" if walked == "response.json" and current is None else (
                f"no item {part!r}" if isinstance(current, Mapping | list) else "not an object or a list")
            raise TemplateValueMissing(
                f"{_at(path)}: ${{{name}}} is not in the build response ({walked} has {kind})"
            )
        walked = f"{walked}.{part}"
    if current is None:
        raise TemplateValueMissing(f"{_at(path)}: ${{{name}}} is null in the build response")
    if isinstance(current, Mapping | list):
        return json.dumps(current, separators=(",", ":"), sort_keys=True)
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def _missing_message(name: str, path: str, secrets: Mapping[str, str] | None,
                     allowed_env: Collection[str] | None, env: Mapping[str, str], env_setting: str) -> str:
    looked: list[str] = []
    if secrets is not None:
        keys = ", ".join(sorted(secrets)) or "none"
        looked.append(f"the referenced Secret's keys ({keys})")
    if allowed_env is None:
        looked.append("the environment")
    elif allowed_env:
        looked.append(f"the environment variables {env_setting} lists ({', '.join(sorted(allowed_env))})")
    else:
        looked.append(f"no environment variables ({env_setting} is empty)")
    hint = ""
    if allowed_env is not None and name not in allowed_env and name in env:
        hint = f"; {name} is set in the environment but not listed in {env_setting}"
    elif secrets is None:
        hint = "; set it in the environment, or reference a Secret that has it"
    else:
        hint = f"; add {name} to the Secret"
    return f"{_at(path)}: template ${{{name}}} has no value: looked in {' and '.join(looked)}{hint}"
