"""`Retry-After` and the back-off of market data, in one place for every HTTP source and venue.

What it owns:

- `parse_retry_after`: the header's two forms (RFC 9110 §10.2.3), delta-seconds ("120") and an
  HTTP date ("Wed, 21 Oct 2026 07:28:00 GMT", also the obsolete RFC 850 and asctime forms), as
  seconds to wait from `now`. "now" comes from the caller's injected clock, never the wall
  clock here, so a test on a `ManualClock` sees the date form exactly.
- `RetryGate`: one per client (the Kalshi REST client, each spot source, the webhook). A 429 or
  503 that carries `Retry-After` closes it until then, bounded by `max_seconds` (`[engine]
  retry_after_max_seconds`, 60 s by default) so a venue cannot silence us for hours; a longer
  request is remembered in `excess` (the owner alerts once, naming the venue and the bound)
  until the venue answers normally again. A closed gate means: do not send, come back at
  `until`.
- `backoff_delay`: the wait between polls (or reconnects) after consecutive failures,
  exponential up to a cap (`[engine] backoff_max_seconds`, 2 s by default) with "equal jitter":
  half the step fixed, half random, so every poller asks again within the cap of the venue
  answering again, and many clients do not come back in lockstep.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = [
    "DEFAULT_BACKOFF_MAX_SECONDS",
    "DEFAULT_RETRY_AFTER_MAX_SECONDS",
    "RETRY_AFTER_STATUSES",
    "RetryAfter",
    "RetryGate",
    "backoff_delay",
    "parse_retry_after",
    "retry_after",
]

DEFAULT_BACKOFF_MAX_SECONDS = 2.0
"""The longest wait between two tries for market data after failures (`[engine]
backoff_max_seconds`): the venue is asked again at most this long after it answers again."""

DEFAULT_RETRY_AFTER_MAX_SECONDS = 60.0
"""The longest `Retry-After` obeyed (`[engine] retry_after_max_seconds`)."""

RETRY_AFTER_STATUSES = frozenset({429, 503})
"""The answers whose `Retry-After` is honoured (RFC 9110: 503, and 429 in RFC 6585)."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from `now` (Unix seconds, the injected clock's), or None.

    None for no header or one that is neither form (the caller then backs off as usual). A date
    in the past, or "0", is 0.0: ask again at once. Fractional seconds ("1.5") are accepted,
    although RFC 9110 says whole ones, because some servers send them.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit():
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        # RFC 9110: an HTTP date is always in GMT; `parsedate_to_datetime` leaves the zone
        # unset for "-0000" and for asctime's zone-less form, which are GMT as well.
        if when is None:
            return None
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """What a venue asked for (`asked` seconds, on HTTP `status`) and what we wait (`wait`)."""

    status: int
    asked: float
    wait: float

    @property
    def capped(self) -> bool:
        """The venue asked for longer than the bound: we come back sooner than it said."""
        return self.asked > self.wait


def retry_after(
    status: int,
    headers: Mapping[str, str],
    now: float,
    max_seconds: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
) -> RetryAfter | None:
    """The `Retry-After` of a 429 / 503 answer, bounded by `max_seconds`; None otherwise."""
    if status not in RETRY_AFTER_STATUSES:
        return None
    raw = headers.get("retry-after")
    if raw is None:
        raw = headers.get("Retry-After")
    asked = parse_retry_after(raw, now)
    if asked is None:
        return None
    return RetryAfter(status, asked, min(asked, max_seconds))


class RetryGate:
    """When one venue (one client) may be asked again after it answered with `Retry-After`.

    `note(status, headers)` after every answer; `remaining()` before every request (0: send).
    `excess` is the last `Retry-After` longer than `max_seconds`, kept until the venue answers
    normally (`ok()`), so its owner can say so in one alert per episode.
    """

    def __init__(
        self,
        name: str,
        *,
        now: Callable[[], float] = time.time,
        max_seconds: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
    ) -> None:
        self.name = name
        self.now = now
        self.max_seconds = max_seconds
        self.until = -math.inf
        self.last: RetryAfter | None = None
        self.excess: RetryAfter | None = None

    def note(self, status: int, headers: Mapping[str, str]) -> RetryAfter | None:
        """Read an answer: a 429/503 with `Retry-After` closes the gate (bounded) and is returned."""
        now = self.now()
        ra = retry_after(status, headers, now, self.max_seconds)
        if ra is None:
            return None
        self.until = max(self.until, now + ra.wait)
        self.last = ra
        if ra.capped:
            self.excess = ra
        return ra

    def ok(self) -> None:
        """The venue answered normally: a long `Retry-After` episode is over."""
        self.excess = None

    def remaining(self) -> float:
        """Seconds until the venue may be asked again (0.0: now)."""
        return max(0.0, self.until - self.now())

    def passed(self) -> None:
        """The caller waited `remaining()` out (on a sleep that does not move this clock)."""
        self.until = -math.inf

    def describe(self) -> str:
        """For an alert or an error: what the venue asked and what we do."""
        ra = self.excess or self.last
        if ra is None:
            return f"{self.name}: no Retry-After"
        text = f"{self.name} answered HTTP {ra.status} with Retry-After {ra.asked:.0f} s"
        if ra.capped:
            text += (
                f", longer than the {self.max_seconds:g} s we wait at most "
                "([engine] retry_after_max_seconds): asking again after that"
            )
        return text


def backoff_delay(
    failures: int,
    *,
    base: float,
    cap: float = DEFAULT_BACKOFF_MAX_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """The wait after `failures` consecutive failures (0 or 1: `base`, the normal interval).

    Doubling from `base`, never above `max(cap, base)`, with equal jitter above `base`: the wait
    is in [step / 2, step], and never below `base`, so polling is never faster than normal.
    """
    if failures <= 1:
        return base
    step = min(max(cap, base), base * 2 ** (failures - 1))
    low = max(base, step / 2)
    if step <= low:
        return step
    return (rng or random).uniform(low, step)
