"""Rendering client emails from ``templates/emails/<template>/`` with Jinja2.

``StrictUndefined`` turns a missing variable into an error instead of a blank in a client's
inbox; HTML templates are autoescaped, so a company called ``<b>Stark</b>`` stays text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError

from handoff.errors import ConfigError

PARTS = ("subject.txt.j2", "body.txt.j2", "body.html.j2")


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def long_date(value: str | date) -> str:
    """``2026-11-28`` -> ``Saturday 28 November 2026`` (unambiguous in every locale)."""
    day = date.fromisoformat(value) if isinstance(value, str) else value
    return f"{day:%A} {day.day} {day:%B %Y}"


class EmailRenderer:
    def __init__(self, templates_dir: Path, *, common: dict[str, Any] | None = None) -> None:
        self.templates_dir = Path(templates_dir)
        self.common = dict(common or {})
        self.env = Environment(
            loader=FileSystemLoader(self.templates_dir),
            undefined=StrictUndefined,
            autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["longdate"] = long_date

    def check(self, template: str) -> None:
        """Load and compile a step's three templates: a missing or broken one is a config error."""
        if not self.templates_dir.is_dir():
            raise ConfigError(
                f"the email templates folder {self.templates_dir} does not exist (setting "
                "[output].templates_dir, relative to the project root)"
            )
        for part in PARTS:
            try:
                self.env.get_template(f"{template}/{part}")
            except TemplateError as exc:
                raise ConfigError(
                    f"the email template {self.templates_dir / template / part} cannot be "
                    f"used: {type(exc).__name__}: {exc}"
                ) from exc

    def render(self, template: str, context: dict[str, Any]) -> RenderedEmail:
        values = {**self.common, **context}
        subject = self.env.get_template(f"{template}/subject.txt.j2").render(values)
        # A subject is one header line, whatever the data held.
        subject = " ".join(subject.split())
        values["subject"] = subject
        text = self.env.get_template(f"{template}/body.txt.j2").render(values)
        html = self.env.get_template(f"{template}/body.html.j2").render(values)
        return RenderedEmail(subject=subject, text=text.strip() + "\n", html=html)
