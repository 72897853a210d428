"""The client's business clock, vectorised: hours that count only on their business days.

A question a client gets on Friday afternoon and answers on Monday morning took them a few
business hours, not 66; a deal won on Friday evening is contacted on time on Monday morning.
So the rules measure in the client's time zone, on the client's business days (weekends and
their country's public holidays stop the clock), and a clock that starts outside the client's
business hours starts at the next opening of their day.
"""

from __future__ import annotations

from functools import lru_cache

import holidays
import numpy as np
import pandas as pd

from handoff.client_locale import SendingWindow, country_code

_EPOCH = np.datetime64("2000-01-03", "D")  # a Monday: counts are taken from here
_HOUR = pd.Timedelta(hours=1)


@lru_cache(maxsize=256)
def business_calendar(country: str | None, first_year: int, last_year: int) -> np.busdaycalendar:
    """Monday to Friday without the country's public holidays in those years."""
    code = country_code(country)
    days: list[np.datetime64] = []
    if code:
        try:
            found = holidays.country_holidays(code, years=range(first_year, last_year + 1))
            days = [np.datetime64(day, "D") for day in found]
        except NotImplementedError:
            days = []
    return np.busdaycalendar(weekmask="1111100", holidays=days)


def _hours(clock: SendingWindow) -> tuple[float, float]:
    start, end = clock.start, clock.end
    return start.hour + start.minute / 60, end.hour + end.minute / 60


def _business_hour_marks(
    moments: pd.Series, zone: str, calendar: np.busdaycalendar, window: SendingWindow | None
) -> np.ndarray:
    """Each moment as business hours since the epoch; with ``window``, a moment outside the
    client's business hours counts from the next opening."""
    local = moments.dt.tz_convert(zone)
    midnight = local.dt.normalize()
    days = midnight.dt.tz_localize(None).to_numpy().astype("datetime64[D]")
    into_day = ((local - midnight) / _HOUR).to_numpy(dtype=float)
    valid = ~np.isnat(days)
    safe_days = np.where(valid, days, _EPOCH)
    business = np.is_busday(safe_days, busdaycal=calendar)
    counted = np.busday_count(_EPOCH, safe_days, busdaycal=calendar).astype(float) * 24
    marks = counted + np.where(business, into_day, 0.0)
    if window is not None:
        opens, closes = _hours(window)
        early = business & (into_day < opens)
        marks = np.where(early, counted + opens, marks)
        late = ~business | (into_day >= closes)
        next_day = np.busday_offset(
            safe_days, np.where(business, 1, 0), roll="forward", busdaycal=calendar
        )
        next_open = np.busday_count(_EPOCH, next_day, busdaycal=calendar) * 24.0 + opens
        marks = np.where(late, next_open, marks)
    return np.where(valid, marks, np.nan)


def business_hours_between(
    start: pd.Series,
    end: pd.Series,
    zones: pd.Series,
    countries: pd.Series,
    window: SendingWindow,
) -> pd.Series:
    """Business hours from each ``start`` (from the next opening when it falls outside the
    client's hours) to each ``end``, in the row's zone and country; NaN where either is NaT."""
    result = pd.Series(np.nan, index=start.index, dtype=float)
    if start.empty:
        return result
    frame = pd.DataFrame(
        {
            "start": pd.to_datetime(start, utc=True),
            "end": pd.to_datetime(end, utc=True),
            "zone": zones.fillna("UTC"),
            "country": countries.fillna(""),
        }
    )
    years = pd.concat([frame["start"], frame["end"]]).dropna().dt.year
    first, last = (int(years.min()) - 1, int(years.max()) + 1) if len(years) else (2000, 2000)
    for (zone, country), group in frame.groupby(["zone", "country"], sort=False):
        calendar = business_calendar(country or None, first, last)
        began = _business_hour_marks(group["start"], zone, calendar, window)
        ended = _business_hour_marks(group["end"], zone, calendar, None)
        result.loc[group.index] = np.clip(ended - began, 0, None)
    return result
