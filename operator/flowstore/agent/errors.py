"""The errors an agent raises about a StoredFlow's status and where it points. Each message says
what was refused, on what, and what to do; none carries a secret value."""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own refusals (besides the storage, bundle, signature and cache errors)."""


class FlowNotAvailable(AgentError, LookupError):
    """The StoredFlow does not exist or has never been stored."""


class StatusError(AgentError, ValueError):
    """A field of the StoredFlow's status is missing, of the wrong type or malformed: the status
    was not written by this version of the operator (or was edited)."""


class UntrustedLocation(AgentError):
    """The status points somewhere the agent does not trust (not where the StoredFlow's
    FlowStorage, or the agent's own list of trusted storages, says): nothing was sent there."""


class TrustUnavailable(AgentError):
    """The agent cannot read what it trusts (the FlowStorage is missing or forbidden to it, or its
    list of trusted storages is malformed), so it cannot check where the status points."""
