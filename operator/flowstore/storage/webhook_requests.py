"""The requests a Webhook storage is configured with, checked before any is sent: methods, the
settings ``requests`` may take, where a URL template may take its host from (never from the build
response or the location), and their spellings in the CRD and in the seed's document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowstore.storage import templating
from flowstore.storage.errors import InvalidConfig

BUILD_METHODS = frozenset({"GET", "POST", "PUT", "PATCH"})
DELETE_METHODS = BUILD_METHODS | {"DELETE"}
#: ``requests`` keyword arguments a request may set (python names) and their config spelling
REQUEST_FIELDS: dict[str, str] = {
    "url": "url",
    "headers": "headers",
    "params": "params",
    "timeout": "timeoutSeconds",
    "verify": "verify",
    "allow_redirects": "allowRedirects",
}


def check_method(where: str, method: Any, allowed: frozenset[str]) -> str:
    if not isinstance(method, str) or method.upper() not in allowed:
        raise InvalidConfig(f"Webhook `{where}.method` must be one of {', '.join(sorted(allowed))}, not {method!r}")
    return method.upper()


def check_request(where: str, kwargs: Any) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise InvalidConfig(f"Webhook `{where}` must be a mapping of request settings (url, headers, ...)")
    if "data" in kwargs or "json" in kwargs or "files" in kwargs:
        raise InvalidConfig(f"Webhook `{where}` must not set data/json/files: the flow is the request body")
    unknown = sorted(set(kwargs) - set(REQUEST_FIELDS))
    if unknown:
        raise InvalidConfig(f"Webhook `{where}` has unsupported setting(s) {', '.join(unknown)}; "
                            f"supported: {', '.join(REQUEST_FIELDS)}")
    url = kwargs.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidConfig(f"Webhook `{where}.url` is required (a string; it may use ${{...}} templates)")
    moved = sorted(n for n in templating.template_names(authority(url))
                   if n == templating.LOCATION or n.startswith(templating.RESPONSE_PREFIX) or n == "response")
    if moved:
        raise InvalidConfig(
            f"Webhook `{where}.url` takes its scheme or host from ${{{moved[0]}}}: the build response and the "
            "location may fill in the path and query only (whoever may write a StoredFlow or its status would "
            "otherwise choose where the request, and the Secret values in it, go); write the host out, or take it "
            "from the credentials Secret")
    for field in ("headers", "params"):
        value = kwargs.get(field)
        if value is None:
            continue
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise InvalidConfig(f"Webhook `{where}.{field}` must be a mapping of names to strings")
        for name, item in value.items():
            items = item if field == "params" and isinstance(item, list) else [item]
            if not all(isinstance(i, str | int | float) and not isinstance(i, bool) for i in items):
                raise InvalidConfig(f"Webhook `{where}.{field}.{name}` must be a string")
    timeout = kwargs.get("timeout")
    if timeout is not None:
        parts = list(timeout) if isinstance(timeout, list | tuple) else [timeout]
        if len(parts) not in (1, 2) or not all(
            isinstance(p, int | float) and not isinstance(p, bool) and p > 0 for p in parts
        ):
            raise InvalidConfig(f"Webhook `{where}.timeoutSeconds` must be a positive number of seconds")
    verify = kwargs.get("verify")
    if verify is not None and not isinstance(verify, bool | str):
        raise InvalidConfig(f"Webhook `{where}.verify` must be true, false or a CA bundle path")
    redirects = kwargs.get("allow_redirects")
    if redirects is not None and not isinstance(redirects, bool):
        raise InvalidConfig(f"Webhook `{where}.allowRedirects` must be true or false")
    for name in templating.template_names(dict(kwargs)):
        if not templating.TEMPLATE_NAME.match(name):
            raise InvalidConfig(f"Webhook `{where}`: ${{{name}}} is not a valid template name "
                                "(letters, digits, '_', '-', '.')")
    return dict(kwargs)


def authority(url: str) -> str:
    """The part of a URL template that says where a request goes: up to the first '/', '?' or
    '#' after ``scheme://`` (the whole template when it has no ``://``, e.g. ``${response.json.url}``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return scheme + sep + rest[:cut]


def check_build_response(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("status"), int):
        raise InvalidConfig("Webhook `buildResponse` must be {status: <int>, json: <body or null>}")
    return {"status": value["status"], "json": value.get("json")}


def seed_request(kwargs: Mapping[str, Any], response: Mapping[str, Any] | None,
                  location: str | None) -> dict[str, Any]:
    rendered = templating.render_public(dict(kwargs), response, location)
    return {name: list(value) if isinstance(value, tuple) else value for name, value in rendered.items()}


def request_config(kwargs: Mapping[str, Any], method: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"method": method}
    for name, value in kwargs.items():
        doc[REQUEST_FIELDS[name]] = list(value) if isinstance(value, tuple) else value
    return doc
