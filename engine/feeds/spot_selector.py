"""Which spot source the engine uses: the primary until it is stale or failing, then the fallback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.clock import Clock
from engine.feeds.spot_sources import (
    MinuteClose,
    SpotSource,
    SpotSourceError,
    SpotTick,
)

# --- primary / fallback selection -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceSwitch:
    """The selector moved from one source to another (`None`: no source is usable)."""

    ts: float
    from_source: str | None
    to_source: str | None
    reason: str


@dataclass(slots=True)
class _Health:
    last_ok_ts: float | None = None  # the data time of the last good tick
    last_tick: SpotTick | None = None
    error: SpotSourceError | None = None  # the last failure, until a good tick clears it
    good_streak: int = 0


class PrimaryFallback:
    """Picks the primary spot source while it is healthy, else the fallback.

    Healthy: the last attempt succeeded and its data is at most `stale_after_seconds` old by the
    injected clock. The primary is taken back after `recover_after` consecutive good updates (1:
    at once; more damps flapping). Each change of the source in use is reported once, through
    `on_switch` and `switches`, which the engine turns into one `data_quality` alert per episode.

    REST sources are driven by `poll()`; a streaming source reports through `record_ok` /
    `record_failure` as its messages (or its disconnects) arrive, and the engine calls
    `evaluate()` from its tick so staleness is noticed even when nothing arrives.

    A source with `disabled = True` (the fallback of `[spot] fallback = "none"`) is never asked
    and is never "failing": `problem` says it is switched off, and `disabled(name)` lets the feed
    leave it out of its alerts.
    """

    def __init__(
        self,
        primary: SpotSource,
        fallback: SpotSource,
        clock: Clock,
        stale_after_seconds: float = 10.0,
        recover_after: int = 1,
        on_switch: Callable[[SourceSwitch], None] | None = None,
    ) -> None:
        if primary.name == fallback.name:
            raise ValueError("primary and fallback need different names")
        self.primary = primary
        self.fallback = fallback
        self.clock = clock
        self.stale_after_seconds = stale_after_seconds
        self.recover_after = max(1, recover_after)
        self.on_switch = on_switch
        self.switches: list[SourceSwitch] = []
        self._health = {primary.name: _Health(), fallback.name: _Health()}
        self._active: str | None = primary.name

    @property
    def active(self) -> str | None:
        """The name of the source in use (for the market pane), or None when none is usable."""
        return self._active

    def record_ok(self, tick: SpotTick) -> None:
        h = self._health[tick.source]
        h.last_ok_ts = tick.ts if h.last_ok_ts is None else max(h.last_ok_ts, tick.ts)
        h.last_tick = tick
        h.error = None
        h.good_streak += 1

    def record_failure(self, source: str, error: SpotSourceError) -> None:
        h = self._health[source]
        h.error = error
        h.good_streak = 0

    def disabled(self, source: str) -> bool:
        """Whether `source` is switched off on purpose (no fallback configured)."""
        src = self.primary if source == self.primary.name else self.fallback
        return source == src.name and bool(getattr(src, "disabled", False))

    def problem(self, source: str, now: float) -> str | None:
        """Why `source` is not usable now, or None when it is."""
        if self.disabled(source):
            return "no fallback configured"
        h = self._health[source]
        if h.error is not None:
            return f"{source} failing: {h.error.detail}"
        if h.last_ok_ts is None:
            return f"{source} has not delivered yet"
        age = now - h.last_ok_ts
        if age > self.stale_after_seconds:
            return f"{source} stale: last good update {age:.0f}s ago (limit {self.stale_after_seconds:g}s)"
        return None

    def evaluate(self) -> str | None:
        """Re-decide the source in use; returns it. Reports a switch once when it changes."""
        now = self.clock.now()
        p, f = self.primary.name, self.fallback.name
        p_problem = self.problem(p, now)
        primary_back = p_problem is None and (
            self._active == p or self._health[p].good_streak >= self.recover_after
        )
        if primary_back:
            choice: str | None = p
            reason = f"{p} recovered" if self._active != p else ""
        elif self.problem(f, now) is None:
            choice = f
            reason = p_problem or f"{p} recovering"
        else:
            choice = None
            reason = p_problem or f"{p} recovering"
            if not self.disabled(f):
                reason += f"; {self.problem(f, now)}"
        if choice != self._active:
            switch = SourceSwitch(now, self._active, choice, reason)
            self._active = choice
            self.switches.append(switch)
            if self.on_switch is not None:
                self.on_switch(switch)
        return self._active

    def delivered(self, source: str) -> bool:
        """Whether `source` has given a good tick yet."""
        return self._health[source].last_ok_ts is not None

    def current(self) -> SpotTick | None:
        """For pushed ticks: re-decide the source in use and return its newest tick, or None."""
        active = self.evaluate()
        return None if active is None else self._health[active].last_tick

    async def _poll_one(self, source: SpotSource) -> None:
        if getattr(source, "disabled", False):
            return
        try:
            tick = await source.latest()
        except SpotSourceError as e:
            self.record_failure(source.name, e)
        else:
            self.record_ok(tick)

    async def poll(self) -> SpotTick | None:
        """Ask the primary (always: that is how its recovery is seen) and, while it is not usable,
        the fallback; returns the newest tick of the source in use, or None."""
        await self._poll_one(self.primary)
        if self.problem(self.primary.name, self.clock.now()) is not None or (
            self._active != self.primary.name
        ):
            await self._poll_one(self.fallback)
        return self.current()

    async def backfill(self, minutes: int = 30) -> list[MinuteClose]:
        """Closes from the primary, or the fallback when the primary cannot give them."""
        try:
            return await self.primary.backfill(minutes)
        except SpotSourceError as e:
            self.record_failure(self.primary.name, e)
            if self.disabled(self.fallback.name):
                raise
            return await self.fallback.backfill(minutes)
