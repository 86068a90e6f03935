"""An exchange's trading hours (holidays and early closes included), from a market calendar.

The calendar comes from `exchange_calendars` (maintained, ~60 exchanges, holidays and early
closes as each exchange publishes them). That library imports pandas: about 2 s and 55 MB the
first time, so nothing here imports it before the first question about the hours. Only the IBKR
wiring builds a `MarketHours`; the sim and Kalshi paths never load pandas.

On first use the calendar's sessions are read once into plain float lists (Unix seconds, UTC)
and every later question is a bisect over them: `is_open` and `next_close` cost microseconds,
so the engine may ask on every snapshot.

Units: timestamps are Unix seconds (float, UTC); an expiry is a "YYYYMMDD" session date in the
exchange's own time zone (as IB writes `lastTradeDateOrContractMonth`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import threading
import warnings
from bisect import bisect_right
from typing import Protocol
from zoneinfo import ZoneInfo

# The time zones whose traders say "ET"/"CT" rather than EST/EDT (the label the market pane shows).
log = logging.getLogger(__name__)

_TZ_LABELS = {"America/New_York": "ET", "America/Chicago": "CT"}


class ExchangeHours(Protocol):
    """What the engine asks of an exchange's hours (`Engine.market_hours`)."""

    def is_open(self, ts: float) -> bool: ...
    def next_close(self, ts: float) -> float: ...
    def close_label(self, close_ts: float, now: float) -> str: ...


class MarketHours:
    """Sessions of one exchange calendar (`calendar`: an ISO MIC such as "XNYS", "XNAS", "XCBO").

    `start`/`end` ("YYYY-MM-DD") bound the sessions loaded; by default the library's range
    (20 years back to one year ahead of today). A question outside the loaded range raises
    ValueError rather than guessing.
    """

    def __init__(
        self, calendar: str = "XNYS", start: str | None = None, end: str | None = None
    ) -> None:
        self.calendar = calendar
        self._start = start
        self._end = end
        self._lock = threading.Lock()
        self._loaded = False
        self._opens: list[float] = []
        self._closes: list[float] = []
        self._breaks: list[tuple[float, float] | None] = []
        self._days: list[str] = []  # "YYYYMMDD" of each session
        self._by_day: dict[str, int] = {}  # "YYYYMMDD" -> session index
        self._early: set[int] = set()  # session indexes closing early
        self._tz: _dt.tzinfo = _dt.UTC
        self._tz_label = "UTC"
        self._regular_close = _dt.time(16, 0)  # local time of day; from the calendar once loaded
        self._beyond: set[str] = set()  # expiries past the horizon already logged

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        if self._loaded:
            return
        # pandas' deprecation notices from inside the library would print over the screen.
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if self._loaded:
                return
            import exchange_calendars  # lazily: pandas is heavy (see the module docstring)

            try:
                cal = exchange_calendars.get_calendar(
                    self.calendar, start=self._start, end=self._end
                )
            except exchange_calendars.errors.InvalidCalendarName as e:
                raise ValueError(f"unknown exchange calendar {self.calendar!r}: {e}") from e
            sched = cal.schedule

            def secs(col: str) -> list[float]:
                return [math.nan if v is None or v != v else v.timestamp() for v in sched[col]]

            self._opens = secs("open")
            self._closes = secs("close")
            bstart, bend = secs("break_start"), secs("break_end")
            self._breaks = [
                (a, b) if math.isfinite(a) and math.isfinite(b) else None
                for a, b in zip(bstart, bend, strict=True)
            ]
            self._days = [d.strftime("%Y%m%d") for d in sched.index]
            self._by_day = {day: i for i, day in enumerate(self._days)}
            early = {d.strftime("%Y%m%d") for d in cal.early_closes}
            self._early = {i for day, i in self._by_day.items() if day in early}
            tz = cal.tz
            self._tz = tz if isinstance(tz, _dt.tzinfo) else ZoneInfo(str(tz))
            key = getattr(self._tz, "key", str(self._tz))
            self._tz_label = _TZ_LABELS.get(key, "")
            self._regular_close = _regular_close(self._closes, self._early, self._tz)
            self._loaded = True

    def _check_range(self, ts: float) -> None:
        if not math.isfinite(ts):
            raise ValueError(f"timestamp {ts!r} is not a number")
        if not self._closes or ts > self._closes[-1]:
            last = self._day_of(len(self._closes) - 1)
            raise ValueError(
                f"{self.calendar}: {_iso(ts)} is past the calendar's last session ({last})"
            )
        if ts < self._opens[0]:
            raise ValueError(
                f"{self.calendar}: {_iso(ts)} is before the calendar's first session "
                f"({self._day_of(0)})"
            )

    def _day_of(self, i: int) -> str:
        return self._days[i] if 0 <= i < len(self._days) else "none"

    # ------------------------------------------------------------------ questions

    def is_open(self, ts: float) -> bool:
        """Whether the exchange trades at `ts` (open <= ts < close, outside a lunch break)."""
        self._load()
        self._check_range(ts)
        i = bisect_right(self._opens, ts) - 1
        if i < 0 or ts >= self._closes[i]:
            return False
        brk = self._breaks[i]
        return not (brk is not None and brk[0] <= ts < brk[1])

    def next_close(self, ts: float) -> float:
        """The close of the session in progress at `ts`, or of the next session when none is
        (nights, weekends, holidays): the time TTC counts to. Early closes included. A `ts`
        exactly at a close gives the next session's close."""
        self._load()
        self._check_range(ts)
        i = bisect_right(self._closes, ts)
        if i >= len(self._closes):
            raise ValueError(f"{self.calendar}: no session closes after {_iso(ts)}")
        return self._closes[i]

    def next_open(self, ts: float) -> float:
        """The open of the first session opening after `ts` (the time an exit waiting for the
        open goes out); ValueError past the calendar's last session."""
        self._load()
        self._check_range(ts)
        i = bisect_right(self._opens, ts)
        if i >= len(self._opens):
            raise ValueError(f"{self.calendar}: no session opens after {_iso(ts)}")
        return self._opens[i]

    def extended_open(self, ts: float) -> bool:
        """Whether `ts` is within a US stock's extended hours on a session day: from 04:00
        local time to 4 hours after the session's close (20:00, 17:00 after an early close);
        IB's outside-RTH window for US stocks. The regular session counts too."""
        self._load()
        self._check_range(ts)
        local = _dt.datetime.fromtimestamp(ts, self._tz)
        i = self._by_day.get(local.strftime("%Y%m%d"))
        if i is None:
            return False
        start = _dt.datetime.combine(local.date(), _dt.time(4, 0), tzinfo=self._tz).timestamp()
        return start <= ts < self._closes[i] + 4 * 3600.0

    def close_of(self, expiry: str) -> float:
        """An option's last trading moment: the close of the session on day `expiry`
        ("YYYYMMDD", the exchange's date), early closes included. ValueError naming the date
        when the exchange has no session that day (weekend, holiday) inside the calendar.

        An expiry past the calendar's last session (a LEAPS: the library knows about a year
        ahead) is never an error: it is the expiry date's regular close (`regular_close_of`,
        16:00 America/New_York for XNYS), with one log line per expiry saying so."""
        self._load()
        day = expiry.strip()[:8]
        i = self._by_day.get(day)
        if i is not None:
            return self._closes[i]
        if self._days and day.isdigit() and len(day) == 8 and day > self._days[-1]:
            ts = self.regular_close_of(day)
            if day not in self._beyond:
                self._beyond.add(day)
                local = _dt.datetime.fromtimestamp(ts, self._tz)
                log.info(
                    "%s: expiry %s is past the calendar's last session (%s); its close is taken "
                    "as the regular close, %s %s (holidays and early closes not known that far)",
                    self.calendar,
                    day,
                    self._days[-1],
                    local.strftime("%H:%M"),
                    getattr(self._tz, "key", str(self._tz)),
                )
            return ts
        raise ValueError(f"{self.calendar} has no session on {expiry} (no close to expire at)")

    def regular_close_of(self, day: str) -> float:
        """The regular close (the exchange's usual closing time of day, in its own time zone:
        16:00 America/New_York for XNYS) on date `day` ("YYYYMMDD"), whatever the calendar
        says of that day: the close of an expiry beyond the calendar's horizon."""
        self._load()
        date = _dt.datetime.strptime(day[:8], "%Y%m%d").date()
        return _dt.datetime.combine(date, self._regular_close, tzinfo=self._tz).timestamp()

    def is_early_close(self, close_ts: float) -> bool:
        """Whether `close_ts` is the close of a session that closes early (e.g. 13:00 ET)."""
        self._load()
        i = bisect_right(self._closes, close_ts) - 1
        return i >= 0 and self._closes[i] == close_ts and i in self._early

    def close_label(self, close_ts: float, now: float) -> str:
        """How the market pane names a close: "16:00 ET", "13:00 ET early close", and with the
        weekday when it is not on `now`'s exchange date ("Mon 16:00 ET")."""
        self._load()
        local = _dt.datetime.fromtimestamp(close_ts, self._tz)
        today = _dt.datetime.fromtimestamp(now, self._tz).date() if math.isfinite(now) else None
        label = self._tz_label or local.strftime("%Z")
        text = f"{local:%H:%M} {label}"
        if local.date() != today:
            text = f"{local:%a} {text}"
        if self.is_early_close(close_ts):
            text += " early close"
        return text


def _regular_close(closes: list[float], early: set[int], tz: _dt.tzinfo) -> _dt.time:
    """The most common local closing time of the sessions that do not close early."""
    counts: dict[_dt.time, int] = {}
    for i, ts in enumerate(closes[-260:], start=max(len(closes) - 260, 0)):
        if i in early or not math.isfinite(ts):
            continue
        t = _dt.datetime.fromtimestamp(ts, tz).time()
        counts[t] = counts.get(t, 0) + 1
    return max(counts, key=lambda t: counts[t]) if counts else _dt.time(16, 0)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
