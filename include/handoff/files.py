"""Reading the project's TOML files with errors that name the file and say what it is."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from handoff.errors import ConfigError


def read_toml(path: Path, what: str, setting: str) -> dict[str, Any]:
    """The parsed file; a missing or malformed one is a :class:`ConfigError` naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist ({setting})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc
