"""One validated configuration for the whole playbook, read once per task.

Nothing here is read at import time: callers ask for :func:`load_settings` when they run, so a
DAG file parses without the configuration, the database or any secret.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, EmailStr, Field, PositiveInt, ValidationError

CONFIG_ENV = "HANDOFF_CONFIG"
HOME_ENV = "HANDOFF_HOME"
STATE_URL_ENV = "HANDOFF_STATE_URL"
RUN_DIR_ENV = "HANDOFF_RUN_DIR"

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "handoff.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectionSettings(_Section):
    lookback_days: PositiveInt = 7
    extract_overlap_seconds: int = Field(300, ge=0)


class SenderSettings(_Section):
    name: str = Field(min_length=1)
    title: str = ""
    email: EmailStr
    company: str = Field(min_length=1)


class UnsubscribeSettings(_Section):
    mailto: EmailStr
    url: str | None = None


class TaskSettings(_Section):
    first_contact_due_hours: PositiveInt = 4
    handoff_meeting_min_amount: float = Field(50000, ge=0)
    handoff_meeting_due_days: int = Field(2, ge=0)


class TimelineSettings(_Section):
    kickoff_by_day: PositiveInt = 5
    first_win_by_day: PositiveInt = 14
    success_review_day: PositiveInt = 30
    formal_review_day: PositiveInt = 90


class HandoffFields(_Section):
    """CRM field names of the rep's handoff document (internal: never shown to the client)."""

    situation: str
    goals: str
    promises: str
    objections: str
    stakeholders: str
    risks: str


class SalesforceSettings(_Section):
    csm_field: str = "Customer_Success_Manager__c"
    handoff_fields: HandoffFields


class StateSettings(_Section):
    url: str = "sqlite:///var/handoff_state.db"


class OutputSettings(_Section):
    run_dir: Path = Path("var/runs")
    templates_dir: Path = Path("templates/emails")


class Settings(_Section):
    detection: DetectionSettings = DetectionSettings()
    sender: SenderSettings
    unsubscribe: UnsubscribeSettings
    tasks: TaskSettings = TaskSettings()
    timeline: TimelineSettings = TimelineSettings()
    salesforce: SalesforceSettings
    state: StateSettings = StateSettings()
    output: OutputSettings = OutputSettings()


class ConfigError(ValueError):
    """The configuration file is missing or invalid; the message names file, setting and value."""


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, validate and resolve the configuration (file from ``HANDOFF_CONFIG`` if set)."""
    config_path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {config_path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {config_path} is not valid TOML: {exc}") from exc
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"configuration file {config_path} is invalid: {problems}") from exc
    return _resolve(settings, config_path)


def _resolve(settings: Settings, config_path: Path) -> Settings:
    """Apply environment overrides and make relative paths absolute against the project root."""
    home = Path(os.environ.get(HOME_ENV) or config_path.resolve().parents[2])
    state_url = os.environ.get(STATE_URL_ENV) or settings.state.url
    state_url = _absolute_sqlite_url(state_url, home)
    run_dir = home / Path(os.environ.get(RUN_DIR_ENV) or settings.output.run_dir)
    templates_dir = home / settings.output.templates_dir
    return settings.model_copy(
        update={
            "state": StateSettings(url=state_url),
            "output": OutputSettings(run_dir=run_dir, templates_dir=templates_dir),
        }
    )


def _absolute_sqlite_url(url: str, home: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        relative = url[len(prefix) :]
        if relative and relative != ":memory:":
            return prefix + str(home / relative)
    return url
