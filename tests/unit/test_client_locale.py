"""Client emails read right anywhere: clean names, local greetings, local hours, holidays, dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from babel import Locale

from handoff.client_locale import (
    BusinessCalendar,
    SendingWindow,
    clean_display_name,
    country_code,
    deadline_date,
    deadline_text,
    display_name,
    email_locale,
    greeting,
    injection_reason,
    name_language,
    window_opening,
    zone_for,
)

ORDINARY_NAMES = [
    *("Zoë O'Brien", "李伟", "Jean-Luc Picard", "Mary-Kate d'Arc", "Dr. Ana María Núñez", "Ng"),
    *("Ōtomo Katsuhiro", "Smith & Sons", "Zoë <script>alert(1)</script>", "a < b"),
]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Zoë <script>alert(1)</script>", "Zoë"),
        ("<b>Ada</b>", "Ada"),
        ("O'Brien & Co", "O'Brien & Co"),
        ("Smith &amp; Sons", "Smith & Sons"),
        ("<style>b{}</style>Ada <i>Lovelace</i>", "Ada Lovelace"),
        ("a < b", "a < b"),
        ("Ada\r\n\tLovelace ", "Ada Lovelace"),
        ("\u202eecilA\u202c \u200fBob", "ecilA Bob"),
        ("Zoe\u0308", "Zoë"),
        (None, ""),
    ],
)
def test_a_name_is_cleaned_of_markup_and_invisible_characters(raw, shown):
    assert clean_display_name(raw) == shown


@pytest.mark.parametrize("name", [*ORDINARY_NAMES, None, ""])
def test_ordinary_names_are_not_taken_for_injection(name):
    assert injection_reason(name) is None


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        ("Gavin\r\nBcc: attacker@evil.example", "'Bcc:'"),
        ("Gavin\nsomething", "line break"),
        ("Gavin Subject: you won", "'Subject:'"),
        ("Gavin reply-to : x", "reply-to"),
        ("Gavin attacker@evil.example", "email address"),
        ("javascript:alert(1)", "javascript"),
        ("data:text/html;base64,PHNjcmlwdD4=", "data"),
        ("Gavin https://evil.example", "web address"),
    ],
)
def test_injected_names_are_caught_with_a_reason(raw, mentions):
    assert mentions in injection_reason(raw)


@pytest.mark.parametrize(
    ("first", "last", "locale", "language"),
    [
        ("Anna", "Schmidt", "de_DE", "de"),
        ("Haruto", "Tanaka", "ja-JP", "ja"),
        ("伟", "李", "zh", "zh"),
        ("はると", "田中", None, "ja"),
        ("민준", "김", None, "ko"),
        ("伟", "李", None, "zh"),
        ("Maria", "Lopez", "not a locale", "en"),
        ("Maria", "李", None, "en"),
    ],
)
def test_name_language_comes_from_the_locale_else_the_script(first, last, locale, language):
    assert name_language(first, last, locale) == language


def test_family_first_languages_put_the_family_name_first():
    assert display_name("伟", "李", "zh") == "李伟"
    assert display_name("Wei", "Li", "zh") == "Li Wei"
    assert display_name("민준", "김", "ko") == "김민준"
    assert display_name("Ferenc", "Puskás", "hu") == "Puskás Ferenc"
    assert display_name("Ada", "Lovelace", "en") == "Ada Lovelace"
    assert display_name("", " <b>Lovelace</b>", "en") == "Lovelace"


@pytest.mark.parametrize(
    ("first", "last", "options", "line"),
    [
        ("Maria", "Lopez", {}, "Hi Maria"),
        ("Anna", "Schmidt", {"locale": "de_DE"}, "Hallo Anna"),
        ("Camille", "Martin", {"locale": "fr_FR"}, "Bonjour Camille"),
        ("伟", "李", {"locale": "zh_CN"}, "Dear 李伟"),
        ("伟", "李", {}, "Dear 李伟"),
        ("Haruto", "Tanaka", {"locale": "ja_JP"}, "Tanaka様"),
        ("はると", "田中", {}, "田中様"),
        ("민준", "김", {"locale": "ko_KR"}, "김민준님"),
        ("", "", {}, "Hi there"),
        (None, "Lopez", {}, "Hi Lopez"),
        ("Haruto", "", {"locale": "ja_JP"}, "Hi Haruto"),
        ("Zoë <script>x</script>", "O'Brien", {}, "Hi Zoë"),
        ("Maria", "Lopez", {"salutation": "Dr. Lopez"}, "Dear Dr. Lopez"),
        ("Anna", "Schmidt", {"locale": "de", "salutation": "Frau Schmidt"}, "Dear Frau Schmidt"),
        ("Haruto", "田中", {"locale": "ja_JP", "salutation": "田中部長"}, "Dear 田中部長"),
        ("伟", "李", {"locale": "zh_CN", "salutation": "<i>李总</i>"}, "Dear 李总"),
        ("Maria", "Lopez", {"salutation": "  "}, "Hi Maria"),
        ("Maria", "Lopez", {"greetings": {"en": "Dear {full}"}}, "Dear Maria Lopez"),
        ("Ana", "Silva", {"locale": "pt_BR", "greetings": {"pt": "Oi {given}"}}, "Oi Ana"),
        ("Ola", "Nordmann", {"locale": "nb_NO"}, "Hi Ola"),
    ],
)
def test_greeting_follows_the_clients_language(first, last, options, line):
    assert greeting(first, last, **options) == line


@pytest.mark.parametrize(
    ("value", "code"),
    [
        *[("us", "US"), ("US", "US"), ("United States", "US"), ("japan", "JP")],
        *[("GERMANY", "DE"), ("USA", "US"), ("U.S.", "US"), ("U.S.A.", "US"), ("UK", "GB")],
        *[("Great Britain", "GB"), ("England", "GB"), ("Deutschland", "DE"), ("日本", "JP")],
        *[("Narnia", None), ("EU", None), ("", None), (None, None)],
    ],
)
def test_country_code_from_codes_names_and_aliases(value, code):
    assert country_code(value) == code


def test_zone_comes_from_the_zone_field_then_the_country():
    assert zone_for("Asia/Tokyo", "US") == (ZoneInfo("Asia/Tokyo"), "time zone field")

    tokyo, note = zone_for(None, "JP")
    assert tokyo == ZoneInfo("Asia/Tokyo")
    assert "JP" in note

    new_york, note = zone_for("", "United States")
    assert new_york == ZoneInfo("America/New_York")
    assert "first of" in note and "zones of US" in note

    pacific, note = zone_for(None, "US", overrides={"US": "America/Los_Angeles"})
    assert pacific == ZoneInfo("America/Los_Angeles")

    berlin, note = zone_for("Mars/Olympus", "DE")
    assert berlin == ZoneInfo("Europe/Berlin")
    assert "Mars/Olympus" in note

    assert zone_for(None, None) == (None, "no zone or country")
    assert zone_for("../../etc/passwd", None)[0] is None


def test_business_days_skip_weekends_and_public_holidays():
    us = BusinessCalendar("US")
    assert us.holiday_name(date(2026, 11, 26)) == "Thanksgiving Day"
    assert not us.is_business_day(date(2026, 11, 26))
    assert us.next_business_day(date(2026, 11, 25)) == date(2026, 11, 25)
    assert us.next_business_day(date(2026, 11, 26)) == date(2026, 11, 27)
    assert us.next_business_day(date(2026, 11, 28)) == date(2026, 11, 30)

    japan = BusinessCalendar("Japan")
    assert japan.holiday_name(date(2026, 11, 23)) is not None
    assert japan.next_business_day(date(2026, 11, 21)) == date(2026, 11, 24)

    germany = BusinessCalendar("DE")
    assert not germany.is_business_day(date(2026, 12, 25))
    assert germany.next_business_day(date(2026, 12, 25)) == date(2026, 12, 28)
    assert germany.next_business_day(date(2027, 1, 1)) == date(2027, 1, 4)

    nowhere = BusinessCalendar(None)
    assert nowhere.is_business_day(date(2026, 11, 26))
    assert nowhere.holiday_name(date(2026, 12, 25)) is None
    assert not BusinessCalendar("AE", weekend=frozenset({4, 5})).is_business_day(date(2026, 11, 27))


def test_a_saturday_morning_in_tokyo_waits_past_a_holiday_monday():
    opening = window_opening(
        datetime(2026, 11, 20, 23, 0, tzinfo=UTC),
        ZoneInfo("Asia/Tokyo"),
        BusinessCalendar("JP"),
        SendingWindow(),
    )
    assert opening == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    assert opening.tzinfo is not None


def test_inside_the_window_a_mail_goes_now():
    moment = datetime(2026, 11, 24, 18, 30, tzinfo=UTC)  # Tuesday 10:30 in Los Angeles
    pacific = ZoneInfo("America/Los_Angeles")
    assert window_opening(moment, pacific, BusinessCalendar("US"), SendingWindow()) is moment
    late = SendingWindow(start=time(8), end=time(10))
    assert window_opening(moment, pacific, BusinessCalendar("US"), late) == datetime(
        2026, 11, 25, 16, 0, tzinfo=UTC
    )


def test_the_opening_after_a_dst_change_is_nine_local_time():
    friday_evening = datetime(2026, 10, 30, 18, 0, tzinfo=ZoneInfo("America/Los_Angeles"))
    opening = window_opening(
        friday_evening.astimezone(UTC),
        ZoneInfo("America/Los_Angeles"),
        BusinessCalendar("US"),
        SendingWindow(),
    )
    assert opening == datetime(2026, 11, 2, 17, 0, tzinfo=UTC)


def test_a_deadline_is_never_early_and_never_on_a_holiday():
    us = BusinessCalendar("US")
    assert deadline_date(date(2026, 11, 20), date(2026, 11, 26), us) == date(2026, 11, 27)
    assert deadline_date(date(2026, 11, 24), date(2026, 11, 20), us) == date(2026, 11, 24)


def test_dates_are_written_in_the_clients_regional_style():
    friday = date(2026, 11, 27)
    assert deadline_text(friday, Locale.parse("en_GB"), reference=friday) == "Friday 27 November"
    assert deadline_text(friday, Locale.parse("en_US"), reference=friday) == "Friday, November 27"
    next_year = date(2027, 1, 4)
    assert "2027" in deadline_text(next_year, Locale.parse("en_GB"), reference=friday)
    assert deadline_text(next_year, Locale.parse("en_US"), reference=friday) == (
        "Monday, January 4, 2027"
    )


@pytest.mark.parametrize(
    ("locale", "country", "expected"),
    [
        (None, "United Kingdom", "en_GB"),
        ("en_AU", None, "en_AU"),
        ("de_DE", "US", "en_US"),
        (None, "JP", "en"),
        (None, None, "en"),
    ],
)
def test_email_locale_is_english_with_the_clients_region(locale, country, expected):
    assert str(email_locale(locale, country)) == expected
