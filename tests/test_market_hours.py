"""engine.market_hours: the NYSE's real sessions from the market calendar (holidays and early
closes included). Every instant is a UTC timestamp; the comments say what it is in New York."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from engine.market_hours import MarketHours

ROOT = Path(__file__).resolve().parent.parent


def utc(text: str) -> float:
    """'2026-11-27 18:00' (UTC) as Unix seconds."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC).timestamp()


@pytest.fixture(scope="module")
def nyse() -> MarketHours:
    # Bounded so the test means the same in any year the suite runs.
    return MarketHours("XNYS", start="2025-01-02", end="2027-06-30")


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        ("2026-11-25 14:29", False),  # Wed 09:29 ET: before the open
        ("2026-11-25 14:30", True),  # 09:30 ET: the open
        ("2026-11-25 20:59", True),  # 15:59 ET
        ("2026-11-25 21:00", False),  # 16:00 ET: closed at the close
        ("2026-11-26 16:00", False),  # Thanksgiving, 11:00 ET: holiday
        ("2026-11-27 17:59", True),  # the day after, 12:59 ET
        ("2026-11-27 18:00", False),  # 13:00 ET: the early close
        ("2026-11-28 16:00", False),  # Saturday
        ("2026-12-25 16:00", False),  # Christmas
        ("2026-07-06 15:00", True),  # a summer Monday, 11:00 EDT (the open is 13:30 UTC)
        ("2026-07-06 13:29", False),  # 09:29 EDT
    ],
)
def test_is_open(nyse: MarketHours, when: str, open_: bool) -> None:
    assert nyse.is_open(utc(when)) is open_


@pytest.mark.parametrize(
    ("when", "close"),
    [
        ("2026-11-25 15:00", "2026-11-25 21:00"),  # during a session: today's 16:00 ET
        ("2026-11-25 10:00", "2026-11-25 21:00"),  # before the open: today's close
        ("2026-11-25 21:00", "2026-11-27 18:00"),  # at the close: Thanksgiving off, then 13:00 ET
        ("2026-11-26 16:00", "2026-11-27 18:00"),  # on the holiday
        ("2026-11-27 17:00", "2026-11-27 18:00"),  # the early close itself
        ("2026-11-28 12:00", "2026-11-30 21:00"),  # Saturday -> Monday 16:00 ET
        ("2026-12-24 15:00", "2026-12-24 18:00"),  # Christmas Eve closes at 13:00 ET
        ("2026-12-24 19:00", "2026-12-28 21:00"),  # after it: Christmas, a weekend, Monday
        ("2026-07-06 15:00", "2026-07-06 20:00"),  # summer time: 16:00 EDT is 20:00 UTC
    ],
)
def test_next_close(nyse: MarketHours, when: str, close: str) -> None:
    assert nyse.next_close(utc(when)) == utc(close)


def test_close_of_an_expiry(nyse: MarketHours) -> None:
    assert nyse.close_of("20261127") == utc("2026-11-27 18:00")  # early close, 13:00 ET
    assert nyse.close_of("20261120") == utc("2026-11-20 21:00")  # a Friday, 16:00 ET
    assert nyse.close_of("20260618") == utc("2026-06-18 20:00")  # summer: 16:00 EDT


@pytest.mark.parametrize("day", ["20261225", "20261128", "20261126", "20260703", "20260619"])
def test_close_of_a_day_without_a_session_names_the_date(nyse: MarketHours, day: str) -> None:
    # Christmas, a Saturday, Thanksgiving, Independence Day observed (July 4th is a Saturday),
    # Juneteenth (a Friday in 2026).
    with pytest.raises(ValueError, match=day):
        nyse.close_of(day)


def test_an_expiry_past_the_calendar_is_its_regular_close_logged_once(
    nyse: MarketHours, caplog: pytest.LogCaptureFixture
) -> None:
    """A LEAPS expires after the calendar's last session (2027-06-30 here; the library's own
    horizon is about a year ahead): the expiry date's regular close, 16:00 New York time
    (winter and summer), one log line per expiry, never an error."""
    caplog.set_level("INFO", logger="engine.market_hours")
    assert nyse.close_of("20281215") == utc("2028-12-15 21:00")  # 16:00 EST
    assert nyse.close_of("20280616") == utc("2028-06-16 20:00")  # 16:00 EDT
    assert nyse.close_of("20281215") == utc("2028-12-15 21:00")
    notes = [r.getMessage() for r in caplog.records if "20281215" in r.getMessage()]
    assert len(notes) == 1
    assert "regular close, 16:00 America/New_York" in notes[0]
    # inside the calendar a day without a session is still an error naming the date
    with pytest.raises(ValueError, match="20270101"):
        nyse.close_of("20270101")


def test_close_labels(nyse: MarketHours) -> None:
    assert nyse.close_label(utc("2026-11-25 21:00"), utc("2026-11-25 15:00")) == "16:00 ET"
    assert (
        nyse.close_label(utc("2026-11-27 18:00"), utc("2026-11-27 15:00")) == "13:00 ET early close"
    )
    assert nyse.close_label(utc("2026-11-30 21:00"), utc("2026-11-28 12:00")) == "Mon 16:00 ET"
    assert nyse.is_early_close(utc("2026-11-27 18:00"))
    assert not nyse.is_early_close(utc("2026-11-25 21:00"))


def test_outside_the_loaded_calendar_is_an_error(nyse: MarketHours) -> None:
    with pytest.raises(ValueError, match="past the calendar's last session"):
        nyse.next_close(utc("2030-01-02 15:00"))
    with pytest.raises(ValueError, match="before the calendar's first session"):
        nyse.is_open(utc("2024-06-03 15:00"))
    with pytest.raises(ValueError, match="not a number"):
        nyse.is_open(float("nan"))


def test_unknown_calendar() -> None:
    with pytest.raises(ValueError, match="unknown exchange calendar 'NOPE'"):
        MarketHours("NOPE").is_open(utc("2026-11-25 15:00"))


def test_the_calendar_library_is_loaded_only_when_asked() -> None:
    """pandas costs ~2 s and ~55 MB: building a MarketHours, the engine and the sim/Kalshi
    runtime import none of it; the first question does."""
    probe = (
        "import sys, json\n"
        "import engine.supervisor, engine.runtime, engine.kalshi_runtime\n"
        "from engine.market_hours import MarketHours\n"
        "h = MarketHours('XNYS')\n"
        "before = sorted(m for m in ('pandas', 'exchange_calendars') if m in sys.modules)\n"
        "h.is_open(1.79e9)\n"
        "after = sorted(m for m in ('pandas', 'exchange_calendars') if m in sys.modules)\n"
        "print(json.dumps([before, after]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '[[], ["exchange_calendars", "pandas"]]'
