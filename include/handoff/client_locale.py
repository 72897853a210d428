"""What makes a client email read right for a client anywhere: names, greetings, time and dates.

CRM names are typed by people and by integrations, so they are cleaned before a client sees them,
and a name that looks like an attempt to inject mail headers or links is reported rather than
sent. Names are ordered and greeted the way the client's language does it. The client's country
and time zone decide when a mail may go out (inside a sending window, on a local business day)
and how a deadline date is written. Emails are written in English; only the regional
conventions (name order, date style, holidays) follow the client.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import holidays
from babel import Locale, UnknownLocaleError
from babel.core import get_global
from babel.dates import format_date, match_skeleton, tokenize_pattern, untokenize_pattern

# --- display names -------------------------------------------------------------------------------

_SCRIPT_OR_STYLE = re.compile(
    r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|$)", re.IGNORECASE | re.DOTALL
)
# Only something shaped like a tag (``<b>``, ``</p>``, ``<!-- -->``): "a < b" is text, not markup.
_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")
# Control characters (C0, DEL, C1), line/paragraph separators and bidi marks: each can reorder or
# break what the client sees, or split a header line.
_INVISIBLE = re.compile(
    "[\u0000-\u001f\u007f-\u009f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_SPACES = re.compile(r"\s+")


def clean_display_name(text: str | None) -> str:
    """The text a client may be shown: no markup, no invisible or reordering characters."""
    if not text:
        return ""
    cleaned = unicodedata.normalize("NFC", text)
    cleaned = _SCRIPT_OR_STYLE.sub(" ", cleaned)
    cleaned = _TAG.sub(" ", cleaned)
    cleaned = html.unescape(cleaned)
    cleaned = _INVISIBLE.sub(" ", cleaned)
    cleaned = _SPACES.sub(" ", cleaned).strip()
    # Entities may have produced decomposed characters.
    return unicodedata.normalize("NFC", cleaned)


_LINE_BREAK = re.compile("[\r\n\u0085\u2028\u2029]")
_HEADER = re.compile(
    r"(?i)\b(content-transfer-encoding|content-type|mime-version|reply-to|subject|bcc|cc|to|from)"
    r"\s*:"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SCRIPT_URL = re.compile(r"(?i)\b(javascript|vbscript)\s*:|\bdata:[\w/+.-]*[;,]")
_WEB_URL = re.compile(r"(?i)\bhttps?://")


def injection_reason(text: str | None) -> str | None:
    """Why a raw CRM name looks like an injection attempt, or None: markup alone is only cleaned."""
    if not text:
        return None
    # Entity-encoded line breaks (``&#13;&#10;``) show the same intent as literal ones.
    for candidate in dict.fromkeys((text, html.unescape(text))):
        if reason := _injection_in(candidate):
            return reason
    return None


def _injection_in(text: str) -> str | None:
    if line_break := _LINE_BREAK.search(text):
        header = _HEADER.search(text, line_break.start())
        if header:
            return f"contains a line break followed by header text ('{header.group(0)}')"
        return "contains a line break"
    if header := _HEADER.search(text):
        return f"contains header text ('{header.group(0)}')"
    if _EMAIL.search(text):
        return "contains an email address"
    if url := _SCRIPT_URL.search(text):
        return f"contains a {url.group(0).split(':')[0].strip().lower()}: URL"
    if _WEB_URL.search(text):
        return "contains a web address"
    return None


# --- name order and greeting ---------------------------------------------------------------------

FAMILY_FIRST = frozenset({"zh", "ja", "ko", "hu", "vi"})
_CJK_LANGUAGES = frozenset({"zh", "ja", "ko"})

DEFAULT_GREETINGS: dict[str, str] = {
    "en": "Hi {given}",
    "de": "Hallo {given}",
    "fr": "Bonjour {given}",
    "es": "Hola {given}",
    "it": "Ciao {given}",
    "nl": "Hallo {given}",
    "pt": "Olá {given}",
    "ja": "{family}様",
    # The email is English: "Dear" with the full name in Chinese order reads right; a
    # "，您好" would clash with the comma the templates put after the greeting.
    "zh": "Dear {full}",
    "ko": "{full}님",
    "default": "Hi {given}",
    # With a salutation field set (how the contact asked to be addressed), in every language.
    "salutation": "Dear {full}",
}
_FALLBACK_GREETING = "Hi {given}"
_PLACEHOLDER = re.compile(r"\{(given|family|full)\}")


def _is_kana(char: str) -> bool:
    return (
        "\u3040" <= char <= "\u30ff" or "\u31f0" <= char <= "\u31ff" or "\uff66" <= char <= "\uff9f"
    )


def _is_hangul(char: str) -> bool:
    return (
        "\uac00" <= char <= "\ud7af" or "\u1100" <= char <= "\u11ff" or "\u3130" <= char <= "\u318f"
    )


def _is_han(char: str) -> bool:
    return (
        "\u4e00" <= char <= "\u9fff"
        or "\u3400" <= char <= "\u4dbf"
        or "\uf900" <= char <= "\ufaff"
        or "\U00020000" <= char <= "\U0003134f"
    )


def _letters(text: str) -> list[str]:
    return [char for char in text if char.isalpha()]


def _is_cjk(text: str) -> bool:
    letters = _letters(text)
    return bool(letters) and all(_is_han(c) or _is_kana(c) or _is_hangul(c) for c in letters)


def _babel_locale(value: str | None) -> Locale | None:
    if not value or not value.strip():
        return None
    try:
        return Locale.parse(value.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def name_language(first: str | None, last: str | None, locale: str | None) -> str:
    """The language whose conventions order and greet this name: the locale's, else the script's."""
    if parsed := _babel_locale(locale):
        return parsed.language
    letters = _letters(clean_display_name(first) + clean_display_name(last))
    if any(_is_kana(c) for c in letters):
        return "ja"
    if any(_is_hangul(c) for c in letters):
        return "ko"
    if letters and all(_is_han(c) for c in letters):
        return "zh"
    return "en"


def _language_code(language: str | None) -> str:
    return re.split(r"[_-]", (language or "").strip().lower(), maxsplit=1)[0]


def display_name(first: str | None, last: str | None, language: str | None) -> str:
    """The full name as the client's language writes it (family first in East Asia and Hungary)."""
    given, family = clean_display_name(first), clean_display_name(last)
    code = _language_code(language)
    parts = [family, given] if code in FAMILY_FIRST else [given, family]
    parts = [part for part in parts if part]
    if code in _CJK_LANGUAGES and len(parts) == 2 and all(_is_cjk(part) for part in parts):
        return "".join(parts)
    return " ".join(parts)


def greeting(
    first: str | None,
    last: str | None,
    *,
    locale: str | None = None,
    salutation: str | None = None,
    greetings: dict[str, str] | None = None,
) -> str:
    """The greeting line (no trailing comma); a salutation from the CRM beats the name parts."""
    language = name_language(first, last, locale)
    patterns = {**DEFAULT_GREETINGS, **(greetings or {})}
    pattern = patterns.get(language, patterns["default"])
    if chosen := clean_display_name(salutation):
        # A salutation is how the contact asked to be addressed ("Frau Dr. Weber", "Dr. Tanaka",
        # "Wei"): it reads right after "Dear" in every language of the name.
        return _fill(patterns["salutation"], {"given": chosen, "family": chosen, "full": chosen})

    given, family = clean_display_name(first), clean_display_name(last)
    values = {"given": given, "family": family, "full": display_name(given, family, language)}
    if _lacks_a_part(pattern, values):
        pattern = patterns["default"]
        if _lacks_a_part(pattern, values):
            pattern = _FALLBACK_GREETING
    values["given"] = given or family or "there"
    return _fill(pattern, values)


def _lacks_a_part(pattern: str, values: dict[str, str]) -> bool:
    """Only ``{given}`` has a fallback of its own (the family name, then "there")."""
    return any(not values[part] for part in _PLACEHOLDER.findall(pattern) if part != "given")


def _fill(pattern: str, values: dict[str, str]) -> str:
    # One pass, so a name that contains "{family}" is never expanded again.
    filled = _PLACEHOLDER.sub(lambda match: values[match.group(1)], pattern)
    return _SPACES.sub(" ", filled).strip()


# --- countries, zones, calendars -----------------------------------------------------------------

# Babel's region codes that are not countries (EU, UN, pseudo-locales, unknown).
_NOT_COUNTRIES = frozenset({"EU", "EZ", "UN", "QO", "XA", "XB", "ZZ"})
_COUNTRY_ALIASES = {
    "usa": "US",
    "u.s.": "US",
    "u.s.a.": "US",
    "america": "US",
    "united states of america": "US",
    "uk": "GB",
    "u.k.": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
}


def _name_key(name: str) -> str:
    """Case, accents, apostrophe style and a leading "the" do not change which country is meant."""
    text = unicodedata.normalize("NFKD", name.replace("\u2019", "'"))
    text = "".join(char for char in text if not unicodedata.combining(char))
    text = _SPACES.sub(" ", text).strip().casefold()
    return text.removeprefix("the ")


@lru_cache(maxsize=1)
def _country_codes() -> frozenset[str]:
    return frozenset(
        code
        for code in Locale("en").territories
        if len(code) == 2 and code.isalpha() and code not in _NOT_COUNTRIES
    )


@lru_cache(maxsize=1)
def _english_country_names() -> dict[str, str]:
    names = {_name_key(name): code for code, name in Locale("en").territories.items()}
    table = {key: code for key, code in names.items() if code in _country_codes()}
    table.update({_name_key(alias): code for alias, code in _COUNTRY_ALIASES.items()})
    return table


@lru_cache(maxsize=1)
def _native_country_names() -> dict[str, str]:
    """Each country's name in its likely language ("Deutschland", "日本"); built only on a miss."""
    likely = get_global("likely_subtags")
    table: dict[str, str] = {}
    for code in sorted(_country_codes()):
        tag = likely.get(f"und_{code}")
        if not tag:
            continue
        try:
            name = Locale(tag.split("_")[0]).territories.get(code)
        except (UnknownLocaleError, ValueError):
            continue
        if name:
            table.setdefault(_name_key(name), code)
    return table


def country_code(value: str | None) -> str | None:
    """The ISO 3166-1 alpha-2 code for a code, an English or native country name, or None."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if len(text) == 2 and text.upper() in _country_codes():
        return text.upper()
    key = _name_key(text)
    return _english_country_names().get(key) or _native_country_names().get(key)


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    canonical = _zone_names_by_lowercase().get(name.lower())
    return ZoneInfo(canonical) if canonical else None


@lru_cache(maxsize=1)
def _zone_names_by_lowercase() -> dict[str, str]:
    """CRM fields hold "asia/tokyo" as often as "Asia/Tokyo"."""
    return {name.lower(): name for name in available_timezones()}


def _read_tz_table(name: str) -> str | None:
    try:
        return resources.files("tzdata.zoneinfo").joinpath(name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        pass
    try:
        return (Path("/usr/share/zoneinfo") / name).read_text(encoding="utf-8")
    except OSError:
        return None


@lru_cache(maxsize=1)
def _zones_by_country() -> dict[str, tuple[str, ...]]:
    """Country -> its zones, principal first.

    zone.tab lists each country's own zones (New York first for the US); zone1970.tab is the
    fallback, where a row may serve several countries, so a country's own rows come first.
    """
    zones: dict[str, list[str]] = {}
    if text := _read_tz_table("zone.tab"):
        for line in text.splitlines():
            if line and not line.startswith("#"):
                code, _coordinates, zone, *_comment = line.split("\t")
                zones.setdefault(code, []).append(zone)
        return {code: tuple(names) for code, names in zones.items()}
    shared: dict[str, list[str]] = {}
    for line in (_read_tz_table("zone1970.tab") or "").splitlines():
        if line and not line.startswith("#"):
            codes, _coordinates, zone, *_comment = line.split("\t")
            first, *others = codes.split(",")
            zones.setdefault(first, []).append(zone)
            for code in others:
                shared.setdefault(code, []).append(zone)
    for code, names in shared.items():
        zones.setdefault(code, []).extend(names)
    return {code: tuple(names) for code, names in zones.items()}


def zone_for(
    zone_name: str | None,
    country: str | None,
    *,
    overrides: dict[str, str] | None = None,
) -> tuple[ZoneInfo | None, str]:
    """The client's IANA zone and where it came from: the zone field, else the country."""
    notes: list[str] = []
    if zone_name and zone_name.strip():
        if zone := _zone(zone_name.strip()):
            return zone, "time zone field"
        notes.append(f"time zone field {zone_name.strip()!r} is not a known zone")

    zone, source = _country_zone(country, overrides or {}, notes)
    notes.append(source)
    return zone, "; ".join(notes)


def _country_zone(
    country: str | None, overrides: dict[str, str], notes: list[str]
) -> tuple[ZoneInfo | None, str]:
    code = country_code(country)
    if not code:
        if country and country.strip():
            return None, f"unknown country {country.strip()!r}"
        return None, "no zone or country"
    configured = {key.strip().upper(): value for key, value in overrides.items()}
    if code in configured:
        if zone := _zone(configured[code].strip()):
            return zone, f"configured zone for {code}"
        notes.append(f"configured zone {configured[code]!r} for {code} is not a known zone")
    names = _zones_by_country().get(code, ())
    for name in names:
        if zone := _zone(name):
            if len(names) == 1:
                return zone, f"only zone of {code}"
            return zone, f"first of {len(names)} zones of {code}"
    return None, f"no zone listed for {code}"


class BusinessCalendar:
    """Which days count as working days for a client: weekends and the country's public holidays."""

    def __init__(self, country: str | None, *, weekend: frozenset[int] = frozenset({5, 6})) -> None:
        if len(set(weekend) & set(range(7))) == 7:
            raise ValueError("a weekend of every day leaves no business day")
        self.country = country_code(country)
        self.weekend = frozenset(weekend)
        self._holidays: holidays.HolidayBase | None = None
        self._has_holidays = self.country is not None

    def _holidays_for(self, day: date) -> holidays.HolidayBase | None:
        # Created for the first year asked; the library adds further years as they are looked up.
        if self._holidays is None and self._has_holidays and self.country:
            try:
                self._holidays = holidays.country_holidays(self.country, years=day.year)
            except NotImplementedError:
                self._has_holidays = False
        return self._holidays

    def holiday_name(self, day: date) -> str | None:
        """The public holiday on that day, or None."""
        calendar = self._holidays_for(day)
        return calendar.get(day) if calendar is not None else None

    def is_business_day(self, day: date) -> bool:
        """Not a weekend day and not a public holiday."""
        return day.weekday() not in self.weekend and self.holiday_name(day) is None

    def next_business_day(self, day: date) -> date:
        """The day itself when it is a business day, else the first one after it."""
        for offset in range(370):
            candidate = day + timedelta(days=offset)
            if self.is_business_day(candidate):
                return candidate
        raise ValueError(f"no business day within a year of {day}")


@dataclass(frozen=True)
class SendingWindow:
    """The local hours in which a client mail may arrive."""

    start: time = time(9)
    end: time = time(17)

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"sending window starts at {self.start}, not before {self.end}")


def window_opening(
    moment: datetime, zone: ZoneInfo, calendar: BusinessCalendar, window: SendingWindow
) -> datetime:
    """``moment`` if the client is inside the window on a business day, else the next opening (UTC).

    The opening is built as local wall time and converted afterwards, so a DST change in between
    still gives 09:00 local.
    """
    if moment.tzinfo is None:
        raise ValueError("moment must be time-zone aware")
    local = moment.astimezone(zone)
    local_time = local.time().replace(tzinfo=None)
    if calendar.is_business_day(local.date()) and window.start <= local_time < window.end:
        return moment
    first_candidate = local.date() if local_time < window.start else local.date() + timedelta(1)
    opening_day = calendar.next_business_day(first_candidate)
    return datetime.combine(opening_day, window.start, tzinfo=zone).astimezone(UTC)


def deadline_date(target: date, not_before: date, calendar: BusinessCalendar) -> date:
    """The target, never earlier than ``not_before``, moved off weekends and holidays."""
    return calendar.next_business_day(max(target, not_before))


def email_locale(locale: str | None, country: str | None, *, language: str = "en") -> Locale:
    """The locale for dates in an email written in ``language``: the client's regional variant."""
    code = country_code(country)
    if code is None and (client := _babel_locale(locale)):
        code = client.territory
    if code:
        try:
            return Locale.parse(f"{language}_{code}")
        except (UnknownLocaleError, ValueError):
            pass
    return Locale.parse(language)


# Text fields whose width follows the requested skeleton; numeric months ("M月") stay numeric.
_WIDTH_FOLLOWS = {"E": ("E", 1), "c": ("E", 3), "e": ("E", 3), "M": ("M", 3), "L": ("M", 3)}


def deadline_text(day: date, locale: Locale | str, *, reference: date) -> str:
    """Weekday, day and month in the locale's style; the year too when it is not ``reference``'s.

    Babel matches the skeleton to the nearest pattern the locale has but, unlike ICU, keeps that
    pattern's widths ("Fri, Nov 27" for en_US); the widths are widened to the full names asked for.
    """
    locale = Locale.parse(locale)
    pattern = _deadline_pattern(locale, with_year=day.year != reference.year)
    return format_date(day, pattern, locale=locale)


@lru_cache(maxsize=256)
def _deadline_pattern(locale: Locale, *, with_year: bool) -> str:
    """The date pattern for a locale, matched once a process (matching is the costly part)."""
    skeleton = "yMMMMEEEEd" if with_year else "MMMMEEEEd"
    available = locale.datetime_skeletons
    matched = skeleton if skeleton in available else match_skeleton(skeleton, available)
    if matched is None:
        return "full"
    pattern = getattr(available[matched], "pattern", str(available[matched]))
    return _widen(pattern, skeleton)


def _widen(pattern: str, skeleton: str) -> str:
    widths: dict[str, int] = {}
    for char in skeleton:
        widths[char] = widths.get(char, 0) + 1
    tokens = []
    for kind, value in tokenize_pattern(pattern):
        if kind == "field":
            char, count = value
            field, min_text_width = _WIDTH_FOLLOWS.get(char, (None, 0))
            if field in widths and count >= min_text_width:
                value = (char, widths[field])
        tokens.append((kind, value))
    return untokenize_pattern(tokens)
