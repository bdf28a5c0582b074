"""The seed's ``Webhook`` storage: a flow stored and fetched with HTTP requests you describe.

One request stores the flow (the *build request*, the flow bytes as its body), another fetches
it (the *get-flow request*), an optional third deletes it. Every string in their settings may
use ``${NAME}`` templates (:mod:`flowstore.storage.templating`), filled at request time from
the kept build response (``${response.json.id}``), the location (``${location}``), the
referenced Secret's data and, for allowed names only, the environment. Secret values never
leave the request itself: status URLs, :meth:`Webhook.to_status`, :meth:`Webhook.serialize`,
``repr`` and error messages
show the templates, not their values.

Uses ``requests`` (a core dependency); every ``requests`` exception and HTTP failure is
translated into :mod:`flowstore.storage.errors`.
"""

from __future__ import annotations

import copy
import email.utils
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import Any

import requests

from flowstore.storage import templating
from flowstore.storage.base import ObjectInfo, Shared, Storage, StoredArtifact, sha256_hex
from flowstore.storage.endpoints import EndpointNotAllowed, EndpointPolicy, guarded_session
from flowstore.storage.errors import (
    AuthFailed,
    InvalidConfig,
    NotFound,
    Rejected,
    StorageError,
    TemplateValueMissing,
    Unavailable,
)
from flowstore.storage.policy import ServePolicy
from flowstore.storage.webhook_requests import (
    BUILD_METHODS,
    DELETE_METHODS,
    REQUEST_FIELDS,
    check_build_response,
    check_method,
    check_request,
    request_config,
    seed_request,
)

#: (connect, read) seconds, when a request sets no ``timeout``
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 60.0)
#: tries per request on timeouts, connection errors, 5xx and 429
MAX_ATTEMPTS = 3
#: first backoff; doubles per retry (0.2 s, 0.4 s, ...)
BACKOFF_SECONDS = 0.2
#: the longest Retry-After this client sleeps between tries; longer ones end the retries
MAX_RETRY_AFTER_SLEEP = 5.0
#: build response bodies larger than this are not read as JSON (``json`` is None)
MAX_RESPONSE_JSON_BYTES = 64 * 1024
#: an agent's environment variables that templates from a status may use (comma-separated);
#: unset: none (a status is written by others: it must not send the agent's secrets anywhere)
ALLOWED_ENV_VARIABLE = "FLOWSTORE_ALLOWED_ENV"
#: shortest secret value stripped from messages (shorter strings would garble them)
MIN_REDACTED_LENGTH = 4
#: characters of a rejected response's body quoted in the error message
BODY_EXCERPT = 200

_CONFIG_FIELDS = {camel: snake for snake, camel in REQUEST_FIELDS.items()}
#: config key -> (python kwargs attribute, method attribute, methods, required)
_REQUESTS = {
    "buildRequest": ("build_request_kwargs", "build_request_http_method", BUILD_METHODS, True),
    "getFlowRequest": ("get_flow_request_kwargs", "get_flow_request_http_method", BUILD_METHODS, True),
    "deleteRequest": ("delete_request_kwargs", "delete_request_http_method", DELETE_METHODS, False),
}


class Webhook(Storage):
    """A flow stored and retrieved with HTTP requests (the seed's ``Webhook``; one flow each).

    Args (the seed's):
        build_request_kwargs: the request that stores the flow: ``url``, ``headers`` (dict),
            ``params`` (dict), ``timeout`` (seconds, or (connect, read); default (5, 60)),
            ``verify`` (bool, or a CA bundle path), ``allow_redirects`` (bool). The flow bytes
            are its body (``data``; do not set it), sent as ``application/octet-stream``
            unless ``headers`` sets a Content-Type.
        build_request_http_method: GET, POST, PUT or PATCH.
        get_flow_request_kwargs: the request whose response body is the stored flow (same keys).
        get_flow_request_http_method: GET, POST, PUT or PATCH.
        stored_as_script: flows are kept as ``.py`` source rather than pickled.
        flow_script_path: with `stored_as_script`, a local script sent at :meth:`build` for
            flows added without `source`.

    Keyword-only (this project's):
        secret_values: values for templates (the operator passes the referenced Secret's data).
        allowed_env: environment variables templates may read. None (the default when the
            class is constructed directly) allows every variable, as the seed did.
        build_response: a kept build response (``{"status", "json"}``), e.g. from status; only
            the values the get-flow and delete requests use are kept (templating.keep_response).
        endpoint_policy: which addresses requests may reach (:mod:`flowstore.storage.endpoints`);
            default: anything but link-local and cloud metadata addresses.
        delete_request_kwargs / delete_request_http_method: an optional request that removes
            the flow (GET/POST/PUT/PATCH/DELETE); without it :meth:`delete` does nothing, so
            webhook artifacts are never deleted by flowstore unless a deleteRequest is set.
        **kwargs: the base :class:`Storage` options.

    Templates: ``${NAME}`` anywhere in any string of a request, resolved at request time from,
    in order: ``response.status`` / ``response.json.<dotted.path>`` (the kept build response:
    the seed's "store, then read the new ID from the response" pattern, e.g. a getFlowRequest
    url ``https://svc/flows/${response.json.id}``), ``location`` (the location being stored or
    read: the flow name, or the StoredFlow's key; use it for services addressed by name, e.g.
    ``https://svc/objects/${location}``; it is inserted as is, not URL-quoted), `secret_values`,
    then the environment (names in `allowed_env` only, unless it is None). A name found nowhere
    raises :class:`TemplateValueMissing` naming it. Status URLs (``url_for``, artifact ``url``)
    render only ``response.*`` and ``location``: other templates stay as written.

    :meth:`from_config` decides where templates may look (the operator and agents differ):

    * a document an agent reads (it has ``type``: ``status.storage``, or the seed's schema): only
      the variables the agent allows, by the `allowed_env` argument or, without it, the
      ``FLOWSTORE_ALLOWED_ENV`` variable (comma-separated names); none otherwise. Whoever may
      write a status could otherwise point a request at their own server with
      ``${FLOWSTORE_SIGNING_KEY}`` or a cloud key in it. An ``allowedEnv`` in such a document is
      ignored (the document is not the agent's to trust).
    * a FlowStorage spec: ``allowedEnv``, and none without it. In the operator
      (:meth:`for_operator`) only names the operator lends (``--webhook-allowed-env``) count.

    ``allowedEnv`` is operator policy and is not serialized. Requests reach only addresses the
    endpoint policy allows (the operator: no loopback or private address unless
    ``--allow-private-endpoints``; never link-local or metadata addresses).

    Locations are flow names (the seed's ``add_flow`` return value) or the given key. The
    build response is kept per location in this process and as ``storage_state`` /
    ``buildResponse`` for status; with a service that assigns ids, a storage holds one flow
    (``single_flow``; the operator enforces it). :meth:`stat` has no metadata request to use:
    it performs the get-flow request and hashes the body, so every drift check downloads the
    flow once. Timeouts, connection errors, 5xx and 429 are retried (3 tries, backoff 0.2 s,
    0.4 s; Retry-After up to 5 s honoured) and then raise :class:`Unavailable`.
    """

    type_name = "Webhook"
    default_label = "webhook-flow-storage"
    single_flow = True

    def __init__(
        self,
        build_request_kwargs: Mapping[str, Any],
        build_request_http_method: str,
        get_flow_request_kwargs: Mapping[str, Any],
        get_flow_request_http_method: str,
        stored_as_script: bool = False,
        flow_script_path: str | None = None,
        *,
        secret_values: Mapping[str, str] | None = None,
        allowed_env: list[str] | None = None,
        build_response: Mapping[str, Any] | None = None,
        delete_request_kwargs: Mapping[str, Any] | None = None,
        delete_request_http_method: str | None = None,
        endpoint_policy: EndpointPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(stored_as_script=stored_as_script, **kwargs)
        self.build_request_kwargs = check_request("buildRequest", build_request_kwargs)
        self.build_request_http_method = check_method("buildRequest", build_request_http_method, BUILD_METHODS)
        self.get_flow_request_kwargs = check_request("getFlowRequest", get_flow_request_kwargs)
        self.get_flow_request_http_method = check_method(
            "getFlowRequest", get_flow_request_http_method, BUILD_METHODS)
        self.delete_request_kwargs: dict[str, Any] | None = None
        self.delete_request_http_method: str | None = None
        if delete_request_kwargs is not None:
            self.delete_request_kwargs = check_request("deleteRequest", delete_request_kwargs)
            self.delete_request_http_method = check_method(
                "deleteRequest", delete_request_http_method or "DELETE", DELETE_METHODS)
        self.local_script_path = flow_script_path  # the seed calls it flow_script_path here
        self.secret_values: dict[str, str] | None = (
            {str(k): str(v) for k, v in secret_values.items()} if secret_values is not None else None
        )
        if allowed_env is not None and (
            not isinstance(allowed_env, list | tuple) or not all(isinstance(n, str) for n in allowed_env)
        ):
            raise InvalidConfig("Webhook `allowedEnv` must be a list of environment variable names")
        self.allowed_env = list(allowed_env) if allowed_env is not None else None
        #: where the allowed variables are configured, for messages
        self.allowed_env_setting = "allowedEnv"
        self.endpoint_policy = endpoint_policy or EndpointPolicy()
        self.build_response: dict[str, Any] | None = self._keep(check_build_response(build_response))
        # location -> build response of the put_bytes that stored it (this process)
        self._responses: dict[str, dict[str, Any]] = {}
        self._sessions = Shared()  # one HTTP session for the storage and its per-pass forks

    def __repr__(self) -> str:  # templates only, never their values
        return (f"Webhook(build={self.build_request_http_method} {self.build_request_kwargs['url']!r}, "
                f"get={self.get_flow_request_http_method} {self.get_flow_request_kwargs['url']!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None,
                    allowed_env: Collection[str] | None = None) -> Webhook:
        """See the class docstring for where templates may look. `allowed_env` (documents an
        agent reads only): the agent's environment variables its templates may use."""
        requests_kwargs: dict[str, Any] = {}
        for key, (kwargs_name, method_name, methods, required) in _REQUESTS.items():
            block = config.get(key)
            if block is None:
                if required:
                    raise InvalidConfig(f"Webhook storage needs `{key}` (spec.webhook.{key}: method and url)")
                continue
            if not isinstance(block, Mapping):
                raise InvalidConfig(f"Webhook `{key}` must be a mapping with method and url")
            unknown = sorted(set(block) - set(_CONFIG_FIELDS) - {"method"})
            if unknown:
                raise InvalidConfig(
                    f"Webhook `{key}` has unknown field(s) {', '.join(unknown)}; "
                    f"known: method, {', '.join(_CONFIG_FIELDS)}"
                )
            requests_kwargs[kwargs_name] = {_CONFIG_FIELDS[k]: v for k, v in block.items() if k != "method"}
            default_method = "DELETE" if key == "deleteRequest" else None
            requests_kwargs[method_name] = block.get("method") or default_method
            if requests_kwargs[method_name] is None:
                raise InvalidConfig(f"Webhook `{key}` needs `method` (one of {', '.join(sorted(methods))})")

        agent = "type" in config
        if agent:  # a status or the seed's document: only what the agent allows
            names = list(allowed_env) if allowed_env is not None else agent_allowed_env()
            setting = "allowed_env=" if allowed_env is not None else ALLOWED_ENV_VARIABLE
        else:  # a FlowStorage spec: its allowedEnv (the operator narrows it in for_operator)
            names = config["allowedEnv"] if config.get("allowedEnv") is not None else []  # checked by __init__
            setting = "allowedEnv"
        storage = cls(
            secret_values=credentials,
            allowed_env=names,
            build_response=config.get("buildResponse"),
            **requests_kwargs,
            **cls.common_kwargs(config),
        )
        storage.allowed_env_setting = setting
        return storage

    @classmethod
    def for_operator(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None,
                     policy: ServePolicy) -> Webhook:
        """A FlowStorage's Webhook in the operator: its allowedEnv narrowed to the variables the
        operator lends (``--webhook-allowed-env``), its requests to the addresses it allows."""
        if "type" in config:
            raise InvalidConfig("a FlowStorage spec has no `type`")
        storage = cls.from_config(config, credentials=credentials)
        requested = storage.allowed_env or []
        storage.allowed_env = [name for name in requested if name in policy.webhook_env]
        withheld = sorted(set(requested) - policy.webhook_env)
        storage.allowed_env_setting = ("allowedEnv" if not withheld else
                                       f"allowedEnv (the operator lends none of {', '.join(withheld)}: it lends only "
                                       "the variables its --webhook-allowed-env flag names)")
        storage.endpoint_policy = policy.endpoints
        return storage

    def _status_config(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "buildRequest": request_config(self.build_request_kwargs, self.build_request_http_method),
            "getFlowRequest": request_config(self.get_flow_request_kwargs, self.get_flow_request_http_method),
        }
        if self.delete_request_kwargs is not None and self.delete_request_http_method is not None:
            doc["deleteRequest"] = request_config(self.delete_request_kwargs, self.delete_request_http_method)
        if self.build_response is not None:
            doc["buildResponse"] = self.build_response
        return doc

    def _seed_config(self) -> dict[str, Any]:
        """The seed's Webhook fields. The seed's templates are ``${NAME}`` of environment variables
        and Secrets only, so ``${response.…}`` and ``${location}`` are filled in here, from the
        kept build response and the flow's location (the seed's pattern: "after build, put the
        new id in get_flow_request_kwargs"); a response path with no value yet stays as written.
        Every other template is kept for the agent to fill. The delete request, the build
        response itself and ``allowedEnv`` have no field."""
        location = next(iter(self.flows.values()), None)  # a Webhook storage holds one flow
        response = self._response_for(location)
        return {
            "build_request_kwargs": seed_request(self.build_request_kwargs, response, location),
            "build_request_http_method": self.build_request_http_method,
            "get_flow_request_kwargs": seed_request(self.get_flow_request_kwargs, response, location),
            "get_flow_request_http_method": self.get_flow_request_http_method,
            "stored_as_script": self.stored_as_script,
        }

    @classmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for key, (kwargs_name, method_name, _, _) in _REQUESTS.items():
            if doc.get(kwargs_name) is None and doc.get(method_name) is None:
                continue
            # settings flowstore does not support keep their names, so from_config names them
            block = {REQUEST_FIELDS.get(k, k): v for k, v in dict(doc.get(kwargs_name) or {}).items()}
            config[key] = {"method": doc.get(method_name), **block}
        return config

    # ------------------------------------------------------------------ locations
    def location_for(self, flow_name: str, key: str | None = None) -> str:
        """The seed's Webhook location is the flow name; a StoredFlow's key replaces it."""
        return key or flow_name

    def fork(self) -> Webhook:
        """Its own build responses (the HTTP session stays shared, behind its lock)."""
        forked = copy.copy(self)
        forked._responses = dict(self._responses)
        return forked

    def restore_state(self, state: Mapping[str, Any] | None) -> None:
        """Take back the build response recorded in status, so the get, stat and delete
        requests can refer to ``${response.…}`` after a restart. The restored response is
        authoritative: it replaces the responses this process kept per location (a webhook
        flow's location is its name, so a superseded artifact and its replacement share it;
        only their state tells them apart)."""
        if state and state.get("buildResponse") is not None:
            self.build_response = self._keep(check_build_response(state["buildResponse"]))
            self._responses.clear()

    def url_for(self, location: str) -> str:
        """The get-flow URL with only ``response.*`` and ``location`` filled in: never a
        Secret or environment value (other templates stay as written)."""
        return self._public_url(self.get_flow_request_kwargs, location)

    def check_container(self) -> None:
        """Every template that does not come from the build response or the location has a
        value now (no request is sent: a webhook has nothing side-effect free to probe)."""
        for key, kwargs in self._request_blocks():
            for name in sorted(templating.template_names(kwargs)):
                if name.startswith(templating.RESPONSE_PREFIX) or name == templating.LOCATION:
                    continue
                self._render(f"${{{name}}}", key, None, set())

    # ------------------------------------------------------------------ primitives
    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
        """Send the build request. With `idempotency_key` it carries an ``Idempotency-Key``
        header (IETF draft-ietf-httpapi-idempotency-key-header), unless the request sets one
        itself: a service that honours it answers a retry of the same version (after a timeout,
        or after the operator was killed before it recorded the answer) with the object it
        already made, instead of making a second one."""
        kept = self._build(location, data, idempotency_key)
        self.build_response = kept
        self._responses[location] = kept
        return StoredArtifact(
            location=location,
            url=self.url_for(location),
            sha256=sha256_hex(data),
            size=len(data),
            storage_state={"buildResponse": kept},
        )

    def unrecorded_state(self, location: str, *, idempotency_key: str,
                         data: Callable[[], bytes]) -> Mapping[str, Any] | None:
        """A service that assigns ids (the get-flow or delete request reads ``${response.…}``)
        names the object an interrupted build request made only in its answer, which never
        arrived: the location (the flow name) does not tell it from the recorded one. Its
        ``Idempotency-Key`` finds it: the build request is sent again with that key and `data`
        (the bytes of a version status wants). A service that honours the key answers with the
        object it made then; one that never got the first request, or ignores keys, makes a new
        one. Either way no status names the object answered, and the caller deletes it. None
        without a deleteRequest: nothing could be deleted, so nothing is sent."""
        if self.delete_request_kwargs is None:
            return None
        if self.location_names_object:
            return {}  # addressed by ${location} alone
        return {"buildResponse": self._build(location, data(), idempotency_key)}

    @property
    def location_names_object(self) -> bool:
        """False when the get-flow or delete request reads the build response (``${response.…}``:
        the service assigned an id); True for a service addressed by ``${location}`` alone."""
        names = templating.template_names(self.get_flow_request_kwargs)
        if self.delete_request_kwargs is not None:
            names |= templating.template_names(self.delete_request_kwargs)
        return not any(n.startswith(templating.RESPONSE_PREFIX) for n in names)

    def get_bytes(self, location: str) -> bytes:
        response = self._get(location)
        if response.status_code == 404:
            raise NotFound(f"no flow artifact at {self.url_for(location)} (the webhook answered 404); "
                           "was the flow built (stored)?")
        data: bytes = response.content
        return data

    def stat(self, location: str) -> ObjectInfo | None:
        """Size and sha256 of the get-flow response body (one full GET: a webhook has no
        metadata request), or None on 404."""
        response = self._get(location)
        if response.status_code == 404:
            return None
        data: bytes = response.content
        return ObjectInfo(size=len(data), sha256=sha256_hex(data))

    def delete(self, location: str) -> None:
        """Send the deleteRequest (404 counts as deleted). Without one, nothing is deleted."""
        if self.delete_request_kwargs is None or self.delete_request_http_method is None:
            return
        method = self.delete_request_http_method
        response, sensitive = self._send("deleteRequest", method, self.delete_request_kwargs, location)
        if response.status_code == 404:
            return
        public = self._public_url(self.delete_request_kwargs, location)
        self._raise_for_status(response, f"{method} {public}", "deleteRequest", sensitive)

    # ------------------------------------------------------------------ requests
    def _build(self, location: str, data: bytes, idempotency_key: str | None) -> dict[str, Any]:
        """Send the build request; the build response, of it only what later requests use."""
        method = self.build_request_http_method
        response, sensitive = self._send("buildRequest", method, self.build_request_kwargs, location, data=data,
                                         idempotency_key=idempotency_key)
        public = self._public_url(self.build_request_kwargs, location)
        if response.status_code == 404:
            raise Rejected(f"the webhook answered 404 for {method} {public}: the URL does not exist; "
                           "fix buildRequest.url")
        self._raise_for_status(response, f"{method} {public}", "buildRequest", sensitive)
        kept = self._keep({"status": response.status_code, "json": _json_body(response)})
        assert kept is not None
        self._require_response_paths(kept)
        return kept

    def _get(self, location: str) -> requests.Response:
        method = self.get_flow_request_http_method
        response, sensitive = self._send("getFlowRequest", method, self.get_flow_request_kwargs, location)
        if response.status_code != 404:
            public = self._public_url(self.get_flow_request_kwargs, location)
            self._raise_for_status(response, f"{method} {public}", "getFlowRequest", sensitive)
        return response

    def _session(self) -> requests.Session:
        session: requests.Session = self._sessions.get(lambda: guarded_session(self.endpoint_policy))
        return session

    def _keep(self, response: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Of a build response, only what the get-flow and delete requests' templates use."""
        names = templating.template_names(self.get_flow_request_kwargs)
        if self.delete_request_kwargs is not None:
            names |= templating.template_names(self.delete_request_kwargs)
        return templating.keep_response(response, names)

    def _request_blocks(self) -> list[tuple[str, dict[str, Any]]]:
        blocks = [("buildRequest", self.build_request_kwargs), ("getFlowRequest", self.get_flow_request_kwargs)]
        if self.delete_request_kwargs is not None:
            blocks.append(("deleteRequest", self.delete_request_kwargs))
        return blocks

    def _response_for(self, location: str | None) -> dict[str, Any] | None:
        if location is not None and location in self._responses:
            return self._responses[location]
        return self.build_response

    def _render(self, value: Any, where: str, location: str | None, sensitive: set[str]) -> Any:
        return templating.render(
            value,
            response=self._response_for(location),
            location=location,
            secrets=self.secret_values,
            allowed_env=self.allowed_env,
            where=where,
            sensitive=sensitive,
            env_setting=self.allowed_env_setting,
        )

    def _public_url(self, kwargs: Mapping[str, Any], location: str | None) -> str:
        return str(templating.render_public(kwargs["url"], self._response_for(location), location))

    def _require_response_paths(self, response: Mapping[str, Any]) -> None:
        """After a build: the get-flow request's ``${response.*}`` names exist in its response
        (else the stored flow could not be fetched, so storing it did not succeed)."""
        names = templating.template_names(self.get_flow_request_kwargs)
        for name in sorted(n for n in names if n.startswith(templating.RESPONSE_PREFIX)):
            try:
                templating.render(f"${{{name}}}", response=response, where="getFlowRequest")
            except TemplateValueMissing as exc:
                raise TemplateValueMissing(
                    f"the flow was sent, but it cannot be fetched: {exc.message}; make buildRequest's "
                    "service answer it, or fix getFlowRequest"
                ) from None

    def _send(self, where: str, method: str, template: Mapping[str, Any], location: str | None,
              data: bytes | None = None, idempotency_key: str | None = None) -> tuple[requests.Response, set[str]]:
        """Render `template` and send it, retrying temporary failures. Returns the response
        of the last try when it is not a temporary failure, and the Secret and environment
        values the request used (to strip from messages); raises StorageError otherwise."""
        sensitive = {v for v in (self.secret_values or {}).values() if v}
        rendered = self._render(template, where, location, sensitive)
        public = f"{method} {self._public_url(template, location)}"
        headers = {str(k): str(v) for k, v in (rendered.get("headers") or {}).items()}
        if data is not None and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"
        if idempotency_key and not any(k.lower() == "idempotency-key" for k in headers):
            headers["Idempotency-Key"] = f'"{idempotency_key}"'  # an sf-string, as the draft defines it
        timeout = rendered.get("timeout", DEFAULT_TIMEOUT)
        kwargs: dict[str, Any] = {
            "headers": headers,
            "params": rendered.get("params"),
            "timeout": tuple(timeout) if isinstance(timeout, list | tuple) else timeout,
            "verify": rendered.get("verify", True),
            "allow_redirects": rendered.get("allow_redirects", True),
        }
        session = self._session()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            last = attempt == MAX_ATTEMPTS
            backoff = BACKOFF_SECONDS * 2 ** (attempt - 1)
            try:
                response = session.request(method, rendered["url"], data=data, **kwargs)
            except EndpointNotAllowed as exc:
                raise EndpointNotAllowed(
                    f"{where} refused: {public} reaches {_redact(exc.message, sensitive)}; point {where}.url at "
                    "the webhook service's own address"
                ) from None
            except requests.exceptions.SSLError as exc:
                raise StorageError(
                    f"TLS failed for {public}: {_redact(str(exc), sensitive)}; fix the server "
                    f"certificate or {where}.verify (a CA bundle path)"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                if last:
                    kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "is unreachable"
                    raise Unavailable(
                        f"the webhook {kind} for {public} after {MAX_ATTEMPTS} tries "
                        f"({type(exc).__name__}: {_redact(str(exc), sensitive)})"
                    ) from None
                time.sleep(backoff)
                continue
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader, ValueError) as exc:
                raise InvalidConfig(
                    f"cannot send {public}: {type(exc).__name__}: {_redact(str(exc), sensitive)}; fix {where}"
                ) from None
            except requests.exceptions.RequestException as exc:
                raise StorageError(
                    f"cannot send {public}: {type(exc).__name__}: {_redact(str(exc), sensitive)}"
                ) from None
            status = response.status_code
            if status != 429 and status < 500:
                return response, sensitive
            retry_after = _retry_after(response.headers.get("Retry-After"))
            if last or (retry_after is not None and retry_after > MAX_RETRY_AFTER_SLEEP):
                excerpt = _redact(_excerpt(response), sensitive)
                raise Unavailable(
                    f"the webhook answered {status} for {public} "
                    f"({'throttled' if status == 429 else 'a temporary failure'}) after {attempt} "
                    f"tr{'y' if attempt == 1 else 'ies'}" + (f": {excerpt}" if excerpt else ""),
                    retry_after=retry_after,
                )
            response.close()
            time.sleep(retry_after if retry_after is not None else backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_status(self, response: requests.Response, request: str, where: str,
                          sensitive: set[str]) -> None:
        """Raise for any status but 2xx (404s are the callers' to handle first). `request` is
        "METHOD public-url"; the body excerpt is stripped of every value in `sensitive`
        (bodies may echo the request's headers)."""
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in (401, 403):
            raise AuthFailed(
                f"the webhook answered {status} for {request}; check the Secret values the {where} "
                "headers use"
            )
        excerpt = _redact(_excerpt(response), sensitive)
        raise Rejected(f"the webhook answered {status} for {request}" + (f": {excerpt}" if excerpt else ""))


# ---------------------------------------------------------------------- responses
def agent_allowed_env() -> list[str]:
    """The names in ``FLOWSTORE_ALLOWED_ENV`` (comma- or space-separated)."""
    return [name for name in os.environ.get(ALLOWED_ENV_VARIABLE, "").replace(",", " ").split() if name]


def _json_body(response: requests.Response) -> Any:
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not (content_type == "application/json" or content_type.endswith("+json")):
        return None
    body = response.content
    if len(body) > MAX_RESPONSE_JSON_BYTES:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _excerpt(response: requests.Response) -> str:
    try:
        text = response.content[: BODY_EXCERPT * 4].decode("utf-8", "replace")
    except requests.exceptions.RequestException:
        return ""
    text = " ".join(text.split())
    return text[:BODY_EXCERPT] + ("…" if len(text) > BODY_EXCERPT else "")


def _redact(text: str, sensitive: set[str]) -> str:
    """`text` without any of the `sensitive` values (raw or URL-encoded)."""
    for value in sorted(sensitive, key=len, reverse=True):
        if len(value) < MIN_REDACTED_LENGTH:
            continue
        for form in {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
                     urllib.parse.quote(value)}:
            text = text.replace(form, "***")
    return text
