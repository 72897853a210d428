"""The one object client email templates receive: client-safe fields only, by construction.

A template cannot reach what is not here. The rep's handoff document, internal notes, amounts,
the deal's name and every CRM id stay out, so no template change can leak them into a client's
inbox. Every value is display-ready: names cleaned, dates already worded for the client's
locale and moved to their business days.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Milestone:
    """A date the client reads: a deadline ("by Friday 27 November"), never an appointment."""

    label: str
    deadline: str  # "Friday 27 November", in the client's locale, a business day


@dataclass(frozen=True)
class ClientEmailContext:
    greeting: str  # "Hi Maria", "Dear 李伟": the contact's locale and name order, no comma
    contact_name: str  # display name in the contact's name order
    account_name: str  # the client company
    company: str  # our company
    # The person the email is from and who signs it (an executive, the CSM, or the team).
    signer_name: str
    signer_title: str
    # The client's customer success manager, or the team contact when nobody active is set.
    csm_name: str
    csm_email: str
    csm_is_team: bool  # True: no named CSM could be introduced; csm_name is the team's name
    csm_booking_url: str | None = None
    rep_name: str | None = None  # the rep who sold, when active and copied
    executive_name: str = ""
    executive_title: str = ""
    existing_customer: bool = False  # an expansion, renewal or upgrade of a current client
    timeline: tuple[Milestone, ...] = field(default_factory=tuple)
    day: int = 0  # days since the signature
    week: int = 0
    # Promotional steps only (the referral ask): RFC 8058 one-click link and a mailto fallback.
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClientEmailContext:
        """Rebuild from an outbox payload; an unknown key is an error, never a new variable."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"not client-safe email context fields: {sorted(unknown)}")
        timeline = tuple(
            m if isinstance(m, Milestone) else Milestone(**m) for m in values.get("timeline", ())
        )
        return cls(**{**values, "timeline": timeline})

    def for_template(self) -> dict[str, Any]:
        """The variables templates see (the milestones stay objects with attributes)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["promotional"] = self.unsubscribe_url is not None or bool(self.unsubscribe_mailto)
        return values
