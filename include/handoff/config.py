"""One validated configuration for the whole playbook, read once per task.

Nothing here is read at import time: callers ask for :func:`load_settings` when they run, so a
DAG file parses without the configuration, the database or any secret.

Relative paths in the file (the SQLite state store, the run folder, the templates) resolve
against the project root, never against the file's own location, so moving or copying the
configuration file never points a run at a different state store. The project root is
``HANDOFF_HOME`` when set, else the folder that holds ``include/`` (``dags/`` beside it).
The playbook file it names is read and validated with it, so a broken playbook stops a run
before anything is planned or sent (``HANDOFF_PLAYBOOK`` overrides its path).
"""

from __future__ import annotations

import os
from datetime import time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationError, model_validator

from handoff.errors import ConfigError
from handoff.files import read_toml
from handoff.playbook import Playbook, load_playbook

__all__ = ["ConfigError", "Settings", "load_settings", "project_root"]

CONFIG_ENV = "HANDOFF_CONFIG"
HOME_ENV = "HANDOFF_HOME"
STATE_URL_ENV = "HANDOFF_STATE_URL"
PLAYBOOK_ENV = "HANDOFF_PLAYBOOK"
RUN_DIR_ENV = "HANDOFF_RUN_DIR"
SOURCES_ENV = "HANDOFF_SOURCES"
DIGEST_DIR_ENV = "HANDOFF_DIGEST_DIR"
# "on" / "off": take on, at first install, the clients still inside their 90 days (the demo).
ADOPT_ENV = "HANDOFF_ADOPT_CLIENTS_IN_PROGRESS"
RED_FLAGS_ENV = "HANDOFF_RED_FLAGS"  # "on" / "off": the red-flag steps, whatever the file says

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The folder relative paths resolve against: ``HANDOFF_HOME``, else the checkout root."""
    return Path(os.environ.get(HOME_ENV) or PACKAGE_ROOT).resolve()


def default_config_path() -> Path:
    return project_root() / "include" / "config" / "handoff.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectionSettings(_Section):
    # A year at most: a longer look-back would mail clients about deals long since onboarded.
    lookback_days: int = Field(7, ge=1, le=366)
    extract_overlap_seconds: int = Field(300, ge=0, le=86400)
    # At first install, also take on clients still inside their 90 days (won before the
    # look-back): they get only the steps due from then on, nothing they should have had before.
    adopt_clients_in_progress: bool = False


class SenderSettings(_Section):
    name: str = Field(min_length=1)
    title: str = ""
    email: EmailStr
    company: str = Field(min_length=1)


class UnsubscribeSettings(_Section):
    """Promotional steps only: where a one-click unsubscribe (RFC 8058) lands, and a mailto."""

    mailto: EmailStr
    # The public address of the unsubscribe endpoint the Airflow plugin serves on the API
    # server (``/handoff/unsubscribe``); each email adds its own keyed token.
    url: str | None = Field(None, pattern=r"^https?://")


class TeamContact(_Section):
    """Who a client email introduces when no active CSM can be named."""

    name: str = Field(min_length=1)
    email: EmailStr


class EmailSettings(_Section):
    """Who client email is from, where bounces go, and when it may arrive."""

    # "person": From is the step's sender (the executive, the CSM) at their own address.
    # "via_company": the relay may only send as our domain: From is "Maria Lopez via <company>"
    # at from_address, and replies still reach Maria through Reply-To.
    sender_mode: Literal["person", "via_company"] = "person"
    from_address: EmailStr | None = None
    # The envelope sender (MAIL FROM, Return-Path): bounces go here, not to a person's inbox.
    envelope_sender: EmailStr | None = None
    team: TeamContact
    # A CSM's booking page, by the CSM's email (lower case), shown in every email they sign.
    booking_links: dict[str, str] = {}
    # Client mail arrives inside these local hours on the client's business days (weekends and
    # public holidays of the client's country excluded); false: whenever a step falls due.
    business_hours_only: bool = True
    window_start: time = time(9)
    window_end: time = time(17)
    # The client's zone when neither the contact nor the account gives one or a country.
    default_time_zone: str = "UTC"
    default_country: str | None = None
    # A country with several zones maps to the first in the tz database unless named here.
    country_time_zones: dict[str, str] = {}
    # Greeting patterns by language ({given}, {family}, {full}) over the built-in ones.
    greetings: dict[str, str] = {}

    @model_validator(mode="after")
    def _checked(self) -> EmailSettings:
        if self.sender_mode == "via_company" and self.from_address is None:
            raise ValueError("sender_mode 'via_company' needs from_address")
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        for zone in (self.default_time_zone, *self.country_time_zones.values()):
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"{zone!r} is not a time zone of the tz database") from exc
        return self


class PlaybookSettings(_Section):
    """Where the 90-day playbook is (validated with the settings, see handoff/playbook.py)."""

    file: Path = Path("include/config/playbook.toml")


class SourcesSettings(_Section):
    """The CRMs this installation reads: one DAG each (``handoff_<source>``)."""

    enabled: list[Literal["salesforce", "hubspot"]] = Field(["salesforce"], min_length=1)


class ScheduleSettings(_Section):
    # Hourly by default: a step due at 14:00 goes out in the 14:00-15:00 run, and an hour with
    # nothing due costs one CRM query.
    cron: str = Field("0 * * * *", min_length=9)


class HandoffFields(_Section):
    """CRM field names of the rep's handoff document (internal: never shown to the client)."""

    situation: str
    goals: str
    promises: str
    objections: str
    stakeholders: str
    risks: str


class ClientFields(_Section):
    """Where the CRM keeps who the client is and where: empty means the org has no such field."""

    contact_time_zone: str = ""
    contact_country: str = ""
    contact_locale: str = ""
    salutation: str = ""  # how the contact wants to be greeted; wins over the name
    account_time_zone: str = ""
    account_country: str = ""


class ActivityOutcomes(_Section):
    """The CRM's own values for how a meeting or call ended, mapped onto four outcomes."""

    completed: list[str] = ["Completed", "Held"]
    no_show: list[str] = ["No Show", "No-show"]
    cancelled: list[str] = ["Canceled", "Cancelled", "Rescheduled"]
    scheduled: list[str] = ["Scheduled"]

    def outcome_of(self, value: Any) -> str | None:
        """The canonical outcome of a CRM value (case and spaces ignored); None: not known."""
        text = str(value or "").strip().lower()
        for outcome, values in self.model_dump().items():
            if text and text in {v.strip().lower() for v in values}:
                return outcome
        return None


class SalesforceActivities(_Section):
    """Where a Salesforce org keeps what the red-flag rules read on Task, Event, EmailMessage."""

    # A picklist on Event for how the meeting went (Salesforce has no standard one).
    event_outcome_field: str = "Outcome__c"
    outcomes: ActivityOutcomes = ActivityOutcomes()
    # Task.Type values that are notes (read for scope-creep phrases), not to-dos.
    note_types: list[str] = ["Note"]
    # A checkbox on Opportunity a CSM ticks when the client asks for more than was sold.
    scope_change_field: str = "Scope_Change_Requested__c"


class HubSpotActivities(_Section):
    """Where a HubSpot portal keeps what the red-flag rules read on its engagements."""

    outcomes: ActivityOutcomes = ActivityOutcomes(
        completed=["COMPLETED"],
        no_show=["NO_SHOW"],
        cancelled=["CANCELED", "RESCHEDULED"],
        scheduled=["SCHEDULED"],
    )
    # A deal property (boolean) a CSM sets when the client asks for more than was sold.
    scope_change_property: str = "scope_change_requested"


class SalesforceSettings(_Section):
    csm_field: str = "Customer_Success_Manager__c"
    # Deals for clients we already have (upgrade, renewal): the field and its values.
    deal_type_field: str = "Type"
    existing_customer_types: list[str] = [
        "Existing Customer - Upgrade",
        "Existing Customer - Replacement",
        "Existing Customer - Downgrade",
        "Renewal",
    ]
    client_fields: ClientFields = ClientFields()
    activities: SalesforceActivities = SalesforceActivities()

    def labels(self) -> dict[str, str]:
        """How reasons name each canonical field in this CRM: what RevOps searches for."""
        csm_relationship = self.csm_field.removesuffix("__c") + "__r"
        return {
            "owner": "OwnerId",
            "owner_email": "Owner.Email",
            "csm": self.csm_field,
            "csm_email": f"{csm_relationship}.Email",
            "amount": "Amount",
            "won_at": "LastStageChangeDate",
            "primary_contact": "OpportunityContactRole.IsPrimary",
            "contact_email": "Contact.Email",
            "contact_opt_out": "Contact.HasOptedOutOfEmail",
            "contact_first_name": "Contact.FirstName",
            "contact_last_name": "Contact.LastName",
            "contact_salutation": f"Contact.{self.client_fields.salutation or 'salutation'}",
            "account_name": "Account.Name",
            "account_owner": "Account.OwnerId",
            **{f"doc_{key}": field for key, field in self.handoff_fields.model_dump().items()},
        }

    # A custom text field on Task that holds each task's dedupe key, where free text cannot
    # forge it. Empty: the org has none, and the key is read from the last Description line.
    task_key_field: str = Field("Handoff_Key__c", pattern=r"^(|[A-Za-z][A-Za-z0-9_]*__c)$")
    handoff_fields: HandoffFields


class HubSpotSettings(_Section):
    """A HubSpot portal's property names (custom properties differ per portal)."""

    csm_property: str = "customer_success_manager"
    # A custom task property holding each task's dedupe key; "" reads it from the task body.
    task_key_property: str = "handoff_key"
    deal_type_property: str = "dealtype"
    existing_customer_types: list[str] = ["existingbusiness"]
    # The deal-contact association label that marks the primary contact; without one on a
    # deal, its first associated contact is used (and recorded).
    primary_contact_label: str = "Primary"
    opt_out_property: str = "hs_email_optout"
    client_fields: ClientFields = ClientFields(
        contact_time_zone="hs_timezone",
        contact_country="country",
        contact_locale="hs_language",
        salutation="",
        account_time_zone="",
        account_country="country",
    )
    activities: HubSpotActivities = HubSpotActivities()
    handoff_fields: HandoffFields = HandoffFields(
        situation="handoff_situation",
        goals="handoff_goals",
        promises="handoff_promises",
        objections="handoff_objections",
        stakeholders="handoff_stakeholders",
        risks="handoff_risks",
    )

    def labels(self) -> dict[str, str]:
        """How reasons name each canonical field in HubSpot: property names RevOps can find."""
        return {
            "owner": "deal.hubspot_owner_id",
            "owner_email": "owner.email",
            "csm": f"deal.{self.csm_property}",
            "csm_email": f"deal.{self.csm_property} (owner email)",
            "amount": "deal.amount",
            "won_at": "deal.dealstage (date entered)",
            "primary_contact": f"deal-contact association ({self.primary_contact_label})",
            "contact_email": "contact.email",
            "contact_opt_out": f"contact.{self.opt_out_property}",
            "contact_first_name": "contact.firstname",
            "contact_last_name": "contact.lastname",
            "contact_salutation": f"contact.{self.client_fields.salutation or 'salutation'}",
            "account_name": "company.name",
            "account_owner": "company.hubspot_owner_id",
            **{
                f"doc_{key}": f"deal.{prop}"
                for key, prop in self.handoff_fields.model_dump().items()
            },
        }


class RedFlagSettings(_Section):
    """Thresholds of the red-flag rules (framework section 4) and who hears of a new flag.

    Clocks that measure the client ("hours", "business days") run on the client's business days
    in their time zone: weekends and their country's public holidays do not count.
    """

    enabled: bool = True
    first_contact_hours: float = Field(4, gt=0)
    kickoff_by_day: int = Field(5, ge=1)
    client_response_hours: float = Field(48, gt=0)
    missed_meetings: int = Field(2, ge=1)
    first_win_by_day: int = Field(30, ge=1)
    quiet_days: int = Field(14, ge=1)
    # Phrases in the client's own mail and in notes that mean "more than was sold".
    scope_creep_phrases: list[str] = [
        "additional module",
        "additional users",
        "additional seats",
        "extra users",
        "not in the contract",
        "not in the original",
        "wasn't in the quote",
        "was not in the quote",
        "outside the scope",
        "out of scope",
        "can you also add",
        "could you also add",
        "custom development",
    ]
    # Only phrases this recent count: an old request already handled does not stay a flag.
    scope_creep_days: int = Field(14, ge=1)
    # A meeting is the kickoff when its subject holds one of these (or the playbook's
    # kickoff_call task is completed in the CRM).
    kickoff_phrases: list[str] = ["kickoff", "kick-off", "kick off", "strategic alignment"]
    kickoff_steps: list[str] = ["kickoff_call"]
    # A first win is logged when a completed activity's subject holds one of these (or the
    # playbook's first_visible_win task is completed in the CRM).
    milestone_phrases: list[str] = ["milestone", "first win", "went live", "go-live", "go live"]
    milestone_steps: list[str] = ["first_visible_win"]
    # A meeting in the past whose outcome nobody logged counts as held (most CRMs leave the
    # outcome empty for a meeting that simply happened).
    unlogged_past_meetings_held: bool = True
    # Severity by rule over the built-in ones, e.g. { scope_creep = "high" }.
    severity: dict[str, Literal["high", "medium", "low"]] = {}
    # A new flag: a high-priority task for the account owner (else the rep), due in this many
    # days, and one internal email to these leaders. Never a client address.
    owner_task_due_days: int = Field(1, ge=0)
    notify: list[EmailStr] = []
    # Extra internal domains (the sender's and the From address's always are): a notification
    # to any other domain is refused.
    internal_domains: list[str] = []


class DigestSettings(_Section):
    """The daily RevOps digest: who gets it, when, and the framework's targets it shows."""

    enabled: bool = True
    cron: str = Field("0 7 * * *", min_length=9)  # UTC
    recipients: list[EmailStr] = []
    # Targets beside the red-flag thresholds (first contact, kickoff): kickoff to first value,
    # and the share of due playbook steps done.
    first_value_days: float = Field(14, gt=0)
    milestone_completion: float = Field(0.95, gt=0, le=1)
    # Metrics files (CSV and Parquet) and the digest's HTML go here, one folder a day; relative
    # to the project root.
    output_dir: Path = Path("var/digest")


class DispatchSettings(_Section):
    """How sending and CRM writes share work and settle answers that never arrived."""

    # A claimed row whose worker shows no progress for this long is taken over by the next run:
    # sent if it was never attempted, settled (looked up or held) if it was.
    lease_seconds: int = Field(600, ge=1, le=86400)
    # Before looking up writes whose answer was lost, give the CRM this long to finish them.
    reconcile_delay_seconds: float = Field(5.0, ge=0, le=300)
    # Sending and CRM writes run as this many parallel shards at most (Airflow mapped tasks,
    # spread over the workers), one more for every ``rows_per_shard`` deals due; a quiet run
    # runs one. Shards share one queue: each claims rows the others have not locked.
    shards: int = Field(4, ge=1, le=64)
    rows_per_shard: int = Field(500, ge=1)


class StateSettings(_Section):
    url: str = "sqlite:///var/handoff_state.db"


class OutputSettings(_Section):
    run_dir: Path = Path("var/runs")
    templates_dir: Path = Path("templates/emails")


class Settings(_Section):
    detection: DetectionSettings = DetectionSettings()
    sender: SenderSettings
    unsubscribe: UnsubscribeSettings
    email: EmailSettings
    playbook: PlaybookSettings = PlaybookSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sources: SourcesSettings = SourcesSettings()
    salesforce: SalesforceSettings
    hubspot: HubSpotSettings = HubSpotSettings()
    dispatch: DispatchSettings = DispatchSettings()
    red_flags: RedFlagSettings = RedFlagSettings()
    digest: DigestSettings = DigestSettings()
    state: StateSettings = StateSettings()
    output: OutputSettings = OutputSettings()
    # Not read from the file: the validated playbook that [playbook].file names.
    steps: Playbook | None = Field(None, exclude=True)

    def crm(self, source: str) -> SalesforceSettings | HubSpotSettings:
        """The field map of one CRM: the pipeline and the planner never name a CRM's fields."""
        if source == "salesforce":
            return self.salesforce
        if source == "hubspot":
            return self.hubspot
        raise ConfigError(f"no settings for the CRM {source!r} (known: salesforce, hubspot)")

    @property
    def plan(self) -> Playbook:
        if self.steps is None:
            raise ConfigError("the playbook was not loaded (use load_settings)")
        return self.steps


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, validate and resolve the configuration (file from ``HANDOFF_CONFIG`` if set)."""
    config_path = Path(path or os.environ.get(CONFIG_ENV) or default_config_path())
    raw = read_toml(config_path, "configuration file", f"{CONFIG_ENV} or the default path")
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"configuration file {config_path} is invalid: {problems}") from exc
    return _resolve(settings)


def _resolve(settings: Settings) -> Settings:
    """Apply environment overrides and make relative paths absolute against the project root."""
    home = project_root()
    state_url = os.environ.get(STATE_URL_ENV) or settings.state.url
    state_url = _absolute_sqlite_url(state_url, home)
    run_dir = home / Path(os.environ.get(RUN_DIR_ENV) or settings.output.run_dir)
    templates_dir = home / settings.output.templates_dir
    playbook_file = home / Path(os.environ.get(PLAYBOOK_ENV) or settings.playbook.file)
    sources = settings.sources
    if os.environ.get(SOURCES_ENV):  # e.g. the demo: "salesforce,hubspot"
        names = [name.strip() for name in os.environ[SOURCES_ENV].split(",") if name.strip()]
        try:
            sources = SourcesSettings(enabled=names)
        except ValidationError as exc:
            raise ConfigError(
                f"{SOURCES_ENV}={os.environ[SOURCES_ENV]!r} is invalid: {exc}"
            ) from exc
    red_flags = settings.red_flags
    if (switch := _switch(RED_FLAGS_ENV)) is not None:
        red_flags = red_flags.model_copy(update={"enabled": switch})
    detection = settings.detection
    if (switch := _switch(ADOPT_ENV)) is not None:
        detection = detection.model_copy(update={"adopt_clients_in_progress": switch})
    digest_dir = home / Path(os.environ.get(DIGEST_DIR_ENV) or settings.digest.output_dir)
    return settings.model_copy(
        update={
            "sources": sources,
            "detection": detection,
            "red_flags": red_flags,
            "digest": settings.digest.model_copy(update={"output_dir": digest_dir}),
            "state": StateSettings(url=state_url),
            "output": OutputSettings(run_dir=run_dir, templates_dir=templates_dir),
            "playbook": PlaybookSettings(file=playbook_file),
            "steps": load_playbook(playbook_file, templates_dir),
        }
    )


def _switch(name: str) -> bool | None:
    """An on/off environment override; None when unset."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value not in {"on", "off", "true", "false", "1", "0"}:
        raise ConfigError(f"{name}={value!r} is invalid: use on or off")
    return value in {"on", "true", "1"}


def _absolute_sqlite_url(url: str, home: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        relative = url[len(prefix) :]
        if relative and relative != ":memory:":
            return prefix + str(home / relative)
    return url
