"""The 90-day playbook: which step happens when, for whom, under which conditions.

One TOML file (``[playbook].file``) lists the steps; it is validated once, with every error
naming the file, the step and the value, before anything is planned or sent. The planner
(``handoff.schedule``) only reads the expanded :class:`Step` list built here; no step is code.

Durations are written the way a person says them: ``"4h"``, ``"2d"``, ``"1d12h"``, ``"90m"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from handoff.errors import ConfigError
from handoff.files import read_toml

Role = Literal["client", "ae", "csm", "executive", "account_owner"]
# New business gets the whole onboarding; a deal for a client we already have (an upgrade, a
# renewal: [<crm>].existing_customer_types) only the steps that name its segment.
Segment = Literal["new_business", "existing_customer"]
ROLE_NAMES = {
    "client": "the client's primary contact",
    "ae": "the rep (deal owner)",
    "csm": "the CSM",
    "executive": "the configured executive",
    "account_owner": "the account owner",
}
TEMPLATE_PARTS = ("subject.txt.j2", "body.txt.j2", "body.html.j2")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


def parse_duration(value: Any) -> timedelta:
    """``"4h"`` / ``"2d"`` / ``"1d12h"`` / ``"30m"``, or a number of days."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return timedelta(days=value)
    text = str(value).strip().replace(" ", "").lower()
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"{value!r} is not a duration like '4h', '2d', '1d12h' or '30m'")
    days, hours, minutes = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def describe(delta: timedelta) -> str:
    """A duration as a person writes it: ``2d``, ``4h``, ``1d12h``."""
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    text = "".join(f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n)
    return text or "0h"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Conditions(_Strict):
    """When a step applies; every condition given must hold (an unknown key is an error)."""

    amount_at_least: float | None = Field(None, ge=0)
    amount_below: float | None = Field(None, gt=0)
    enterprise: bool | None = None
    handoff_doc: Literal["complete", "incomplete"] | None = None
    after: str | None = None  # the id of a step that must be done first


class StepSpec(_Strict):
    """One step as written in the playbook file."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{1,47}$")
    kind: Literal["email", "task"]
    day: int = Field(ge=0)
    hours: float = Field(0, ge=0, lt=24)
    every_days: int | None = Field(None, ge=1)
    until_day: int | None = Field(None, ge=0)
    to: Role | None = None
    owner: Role | None = None
    fallback_owner: Role | None = None
    conditions: Conditions = Conditions()
    template: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$")
    subject: str | None = Field(None, min_length=1, max_length=200)
    ask: str | None = Field(None, min_length=1)
    priority: Literal["High", "Normal", "Low"] = "Normal"
    due: Duration = timedelta(0)
    late_after: Duration | None = None
    timeline: str | None = Field(None, min_length=1, max_length=60)
    description: str = ""
    segments: list[Segment] = Field(["new_business"], min_length=1)
    # Email steps: who the client hears from (and who signs); default the CSM.
    sender: Literal["executive", "csm"] | None = None
    # Marketing rather than a person's relationship note: carries a one-click unsubscribe and
    # stops for a contact who used it.
    promotional: bool = False

    @model_validator(mode="after")
    def _kind_fields(self) -> StepSpec:
        if self.kind == "email":
            if self.to != "client":
                raise ValueError("an email step needs to = 'client' (emails go to the client)")
            if not self.template:
                raise ValueError("an email step needs a template")
            for name in ("owner", "fallback_owner", "subject", "ask"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name!r} belongs to task steps, not to an email step")
        elif self.sender is not None or self.promotional:
            raise ValueError("'sender' and 'promotional' belong to email steps, not to a task step")
        else:
            if self.owner is None or self.owner == "client":
                raise ValueError("a task step needs an owner: ae, csm, executive or account_owner")
            if self.fallback_owner == "client":
                raise ValueError("fallback_owner cannot be the client")
            if not (self.subject and self.ask):
                raise ValueError("a task step needs a subject and an ask")
            if self.template is not None or self.to is not None:
                raise ValueError("'template' and 'to' belong to email steps, not to a task step")
        if (self.every_days is None) != (self.until_day is None):
            raise ValueError("a repeated step needs both every_days and until_day")
        if self.until_day is not None and self.until_day < self.day:
            raise ValueError(f"until_day {self.until_day} is before day {self.day}")
        return self


class PlaybookSpec(_Strict):
    horizon_days: int = Field(90, ge=1, le=366)
    enterprise_min_amount: float = Field(100000, ge=0)
    # Client-facing steps wait (status "held") while the rep's handoff document is incomplete.
    hold_client_steps_until_handoff_complete: bool = True
    default_late_after: Duration = timedelta(days=3)
    steps: list[StepSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Step:
    """One concrete step (a repeated step is expanded into one Step per occurrence)."""

    id: str
    kind: str
    offset: timedelta  # from the win
    due: timedelta  # tasks: due this long after the step fires
    late_after: timedelta  # found later than this after its time: skipped, never sent late
    to: str | None
    owner: str | None
    fallback_owner: str | None
    conditions: Conditions
    template: str | None
    subject: str | None
    ask: str | None
    priority: str
    timeline: str | None
    description: str
    segments: tuple[str, ...] = ("new_business",)
    sender: str | None = None
    promotional: bool = False

    @property
    def is_client_facing(self) -> bool:
        return self.to == "client"


@dataclass(frozen=True)
class Playbook:
    path: Path
    horizon_days: int
    enterprise_min_amount: float
    hold_client_steps: bool
    steps: tuple[Step, ...]

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(sorted({s.template for s in self.steps if s.template}))

    @property
    def last_moment(self) -> timedelta:
        """After this long from the win no step can still happen: onboarding is complete."""
        return max(s.offset + s.late_after for s in self.steps)

    def timeline_milestones(self, segment: str = "new_business") -> list[tuple[Step, timedelta]]:
        """Dates a client of this segment is shown: each labelled task and its due moment."""
        marks = [(s, s.offset + s.due) for s in self.steps if s.timeline and segment in s.segments]
        return sorted(marks, key=lambda mark: mark[1])


def load_playbook(path: Path, templates_dir: Path | None = None) -> Playbook:
    """Read and validate the playbook; every error names the file, the step and the value."""
    raw = read_toml(path, "playbook", "[playbook].file")
    try:
        spec = PlaybookSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"playbook {path} is invalid: {_problems(exc, raw)}") from exc
    playbook = _expand(path, spec)
    _check_references(playbook, templates_dir)
    return playbook


def _problems(exc: ValidationError, raw: dict[str, Any]) -> str:
    steps = raw.get("steps") if isinstance(raw.get("steps"), list) else []
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(part) for part in loc) or "(file)"
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            step = steps[loc[1]] if loc[1] < len(steps) else {}
            name = step.get("id") if isinstance(step, dict) else None
            field = ".".join(str(part) for part in loc[2:]) or "(the step)"
            where = f"step {name!r}" if name else f"step #{loc[1] + 1}"
            where += f": {field}"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message} (got {err.get('input')!r})")
    return "; ".join(problems)


def _expand(path: Path, spec: PlaybookSpec) -> Playbook:
    steps: list[Step] = []
    seen: set[str] = set()
    for item in spec.steps:
        if item.day > spec.horizon_days:
            raise ConfigError(
                f"playbook {path} is invalid: step {item.id!r}: day {item.day} is after the "
                f"playbook's horizon of {spec.horizon_days} days"
            )
        if item.until_day is not None and item.until_day > spec.horizon_days:
            raise ConfigError(
                f"playbook {path} is invalid: step {item.id!r}: until_day {item.until_day} is "
                f"after the playbook's horizon of {spec.horizon_days} days"
            )
        days = (
            list(range(item.day, item.until_day + 1, item.every_days))
            if item.every_days
            else [item.day]
        )
        for day in days:
            step_id = f"{item.id}_day_{day}" if item.every_days else item.id
            if step_id in seen:
                raise ConfigError(
                    f"playbook {path} is invalid: step {step_id!r}: the id is used twice"
                )
            seen.add(step_id)
            steps.append(
                Step(
                    id=step_id,
                    kind=item.kind,
                    offset=timedelta(days=day, hours=item.hours),
                    due=item.due,
                    late_after=item.late_after or spec.default_late_after,
                    to=item.to,
                    owner=item.owner,
                    fallback_owner=item.fallback_owner,
                    conditions=item.conditions,
                    template=item.template,
                    subject=item.subject,
                    ask=item.ask,
                    priority=item.priority,
                    timeline=item.timeline,
                    description=item.description,
                    segments=tuple(item.segments),
                    sender=(item.sender or "csm") if item.kind == "email" else None,
                    promotional=item.promotional,
                )
            )
    return Playbook(
        path=path,
        horizon_days=spec.horizon_days,
        enterprise_min_amount=spec.enterprise_min_amount,
        hold_client_steps=spec.hold_client_steps_until_handoff_complete,
        steps=tuple(steps),
    )


def _check_references(playbook: Playbook, templates_dir: Path | None) -> None:
    ids = {step.id for step in playbook.steps}
    if templates_dir is not None and playbook.templates and not templates_dir.is_dir():
        raise ConfigError(
            f"the email templates folder {templates_dir} does not exist (setting "
            f"[output].templates_dir, relative to the project root); the playbook "
            f"{playbook.path} needs templates {', '.join(playbook.templates)}"
        )
    for step in playbook.steps:
        after = step.conditions.after
        if after is not None and (after not in ids or after == step.id):
            raise ConfigError(
                f"playbook {playbook.path} is invalid: step {step.id!r}: conditions.after "
                f"names {after!r}, which is not another step of the playbook"
            )
        if templates_dir is not None and step.template:
            missing = [
                p for p in TEMPLATE_PARTS if not (templates_dir / step.template / p).is_file()
            ]
            if missing:
                raise ConfigError(
                    f"playbook {playbook.path} is invalid: step {step.id!r}: template "
                    f"{step.template!r} has no {', '.join(missing)} in {templates_dir}"
                )
