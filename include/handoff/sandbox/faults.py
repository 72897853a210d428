"""Fault injection for the sandbox API: latency, error answers, ambiguous failures.

Rules let tests and demos reproduce what a real org does under load or outage
(503, REQUEST_LIMIT_EXCEEDED, an expired session, a slow answer) and the nastiest
cases, a write that commits while the client sees an error or no answer at all
(``after_commit``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

_STATUS_FOR_CODE = {
    "INVALID_SESSION_ID": 401,
    "REQUEST_LIMIT_EXCEEDED": 403,
    "SERVER_UNAVAILABLE": 503,
    "UNKNOWN_EXCEPTION": 500,
    "UNABLE_TO_LOCK_ROW": 400,
    "NOT_FOUND": 404,
}
_CODE_FOR_STATUS = {
    401: "INVALID_SESSION_ID",
    403: "REQUEST_LIMIT_EXCEEDED",
    404: "NOT_FOUND",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "UNKNOWN_EXCEPTION",
    502: "SERVER_UNAVAILABLE",
    503: "SERVER_UNAVAILABLE",
    504: "SERVER_UNAVAILABLE",
}
_MESSAGES = {
    "INVALID_SESSION_ID": "Session expired or invalid",
    "REQUEST_LIMIT_EXCEEDED": "TotalRequests Limit exceeded.",
    "SERVER_UNAVAILABLE": "Server temporarily unavailable. Please try again later.",
    "UNKNOWN_EXCEPTION": "An unexpected error occurred. Please include this ErrorId if you "
    "contact support: 0000000000-00000 (sandbox)",
    "UNABLE_TO_LOCK_ROW": "unable to obtain exclusive access to this record",
    "NOT_FOUND": "The requested resource does not exist",
}


@dataclass
class FaultRule:
    """One injected fault.

    A request matches when its method equals ``method`` ("*" = any) and
    ``path_contains`` is a substring of its path plus decoded query string (so
    ``"FROM Task"`` targets one query). Each match consumes one of ``times``
    (-1 = forever). ``status`` None with no ``error_code`` means latency only.
    ``retry_after`` sets the Retry-After header of the error answer. ``every`` = N fires the
    rule on every Nth matching request only (the others pass untouched): a steady fault rate,
    e.g. 5 % of calls with ``every=20`` and ``times=-1``.

    Without ``after_commit`` the request waits ``delay_seconds`` first, then gets
    the error answer without reaching the handler (nothing is written), or, with
    no status, is handled normally: a slow or refusing server.

    With ``after_commit`` the real handler runs first, so the write commits; then
    the answer is held ``delay_seconds`` and sent: the error answer when the rule
    has one, else the real answer. This reproduces the ambiguous outcomes a client
    must survive: an error for a write that happened (status set), and a write whose
    answer never arrives (no status, a delay longer than the client's read timeout,
    or a client killed during the hold). Such a rule needs a status or a positive
    delay, otherwise it would change nothing.
    """

    method: str = "*"
    path_contains: str = ""
    status: int | None = None
    error_code: str | None = None
    message: str | None = None
    times: int = 1
    after_commit: bool = False
    delay_seconds: float = 0.0
    retry_after: float | None = None
    every: int = 1
    id: int = 0
    hits: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        self.method = (self.method or "*").upper()
        if self.status is None and self.error_code:
            self.status = _STATUS_FOR_CODE.get(self.error_code, 500)
        if self.status is not None and not self.error_code:
            self.error_code = _CODE_FOR_STATUS.get(self.status, "UNKNOWN_EXCEPTION")
        if self.error_code and not self.message:
            self.message = _MESSAGES.get(self.error_code, self.error_code)
        if self.times == 0 or self.times < -1:
            raise ValueError("times must be positive, or -1 for forever")
        if self.every < 1:
            raise ValueError("every must be 1 or more")
        if self.delay_seconds < 0:
            raise ValueError("delay_seconds must not be negative")
        if self.after_commit and self.status is None and not self.delay_seconds:
            raise ValueError(
                "after_commit needs an error answer (status or error_code) or a positive "
                "delay_seconds to hold the real answer"
            )

    @property
    def is_error(self) -> bool:
        """Whether the rule answers with an error (otherwise it only delays the answer)."""
        return self.status is not None

    def body(self) -> list[dict[str, Any]]:
        """The Salesforce-shaped error body this rule answers with."""
        return [{"message": self.message, "errorCode": self.error_code}]

    def headers(self) -> dict[str, str]:
        """Extra response headers, e.g. Retry-After for throttling faults."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": f"{self.retry_after:g}"}

    def matches(self, method: str, target: str) -> bool:
        """Tell whether a request (method, path?query) falls under this rule."""
        return self.method in ("*", method.upper()) and self.path_contains in target

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from JSON, rejecting unknown keys so typos do not pass silently."""
        allowed = {f.name for f in fields(cls)} - {"id", "hits", "seen"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


class FaultPlan:
    """The active fault rules; shared by the server threads, hence locked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1
        self.injected = 0

    def add(self, rule: FaultRule | Mapping[str, Any] | None = None, **kwargs: Any) -> FaultRule:
        """Add a rule (a FaultRule, a mapping, or keyword fields) and return it."""
        if rule is None:
            rule = FaultRule.from_mapping(kwargs)
        elif not isinstance(rule, FaultRule):
            rule = FaultRule.from_mapping(rule)
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self._rules.append(rule)
        return rule

    def clear(self) -> int:
        """Drop every rule; return how many there were."""
        with self._lock:
            count = len(self._rules)
            self._rules.clear()
            return count

    def match(self, method: str, target: str) -> FaultRule | None:
        """Return the first live rule for this request, consuming one of its uses."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, target):
                    rule.seen += 1
                    if rule.seen % rule.every:
                        continue
                    rule.hits += 1
                    if rule.times > 0:
                        rule.times -= 1
                        if rule.times == 0:
                            self._rules.remove(rule)
                    self.injected += 1
                    return rule
        return None

    def rules(self) -> list[dict[str, Any]]:
        """Snapshot of the live rules, as JSON-ready dicts."""
        with self._lock:
            return [asdict(rule) for rule in self._rules]
