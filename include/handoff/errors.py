"""Errors that decide what a run does next, shared by every layer of the package.

Two families matter to the orchestrator: a :class:`FatalError` is something no retry can fix
(a wrong setting, an expired credential, a daily API limit, a state store that does not match the
CRM), so the run stops at once with its message; anything else may be retried.
"""

from __future__ import annotations


class HandoffError(Exception):
    """Base of the package's own errors."""


class FatalError(HandoffError):
    """Retrying the same work cannot succeed; a person must act on the message first."""


class ConfigError(FatalError, ValueError):
    """The configuration is missing or invalid; the message names file, setting and value."""


class StoreMismatchError(FatalError):
    """The state store does not belong to this CRM's history (a moved or new store)."""
