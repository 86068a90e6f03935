"""Feeds a live spot price (a primary venue with a fallback) into the engine.

At start the feed backfills 1-minute closes from the source in use and seeds the engine's spot
history with them (`Engine.seed_spot_history`), so momentum and volatility are available at once
instead of after a 30-60 minute warm-up; if the backfill fails the feed simply starts live.

Then, every `poll_seconds`, it polls the `PrimaryFallback` selector and hands the newest tick of
the source in use to the engine as a `SpotEvent`. Each change of the source in use becomes a
`data_quality` episode through `Engine.source_problem` / `Engine.source_ok` (one alert when it
begins, one when it ends), and `Engine.spot_source` names the source for the market pane.

With `streams` (`[spot] stream = true`: `engine.feeds.spot_streams`), the venues push their
ticks instead: both the primary and the fallback stream all the time, each tick is recorded in
the same selector (`record_ok`; a failed connection is `record_failure`) and wakes the feed, which
then does what a poll does: re-decide the source in use, report switches, hand the new tick of
the source in use to the engine. Between pushes it still wakes every `poll_seconds`, so a silent
stream is noticed as stale. REST is then used only for the backfill. For the first
`stale_after_seconds` after the streams start, a fallback that happens to deliver first does not
count as the primary failing: nothing is switched (or sent) until the primary delivered or that
time is up.

When no source is usable the feed sends nothing: the engine's own staleness check (`spot` older
than `max_spot_age_seconds`) raises the spot alert and keeps the spot rules off, as with any
silent feed. Optionally a `DeribitDvol` is read every `dvol_seconds` into `Engine.implied_vol`
(and its reading time into `implied_vol_ts`): the strike probabilities' sigma with `[signals]
sigma_source = "implied"`; the rules do not use it.

A source that answers 429/503 with `Retry-After` is not asked again before then (its client's
`retry_gate`, `engine.http_retry`): it simply fails meanwhile, and the fallback covers. One that
asks for longer than `[engine] retry_after_max_seconds` is said in one alert ("<source>
Retry-After") until it answers normally again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.clock import Clock
from engine.feeds.deribit import DeribitDvol
from engine.feeds.spot_selector import PrimaryFallback, SourceSwitch
from engine.feeds.spot_sources import SpotSourceError, SpotTick
from engine.http_retry import RetryGate

if TYPE_CHECKING:
    from engine.feeds.spot_streams import SpotStream
    from engine.supervisor import Engine

log = logging.getLogger(__name__)

MIN_BACKFILL_MINUTES = 30


def default_backfill_minutes(engine: Engine) -> int:
    """Enough minutes for the longest momentum (30) and volatility window the config sets."""
    windows = engine.config.signals.volatility_windows_minutes
    return max([MIN_BACKFILL_MINUTES, *windows])


class SpotFeed:
    """Polls (or, with `streams`, is pushed) a primary/fallback pair of spot sources into the
    engine (see the module doc)."""

    name = "spot"

    def __init__(
        self,
        selector: PrimaryFallback,
        clock: Clock,
        symbol: str = "BTC-USD",
        poll_seconds: float = 1.0,
        backfill_minutes: int | None = None,
        dvol: DeribitDvol | None = None,
        dvol_seconds: float = 60.0,
        streams: Sequence[SpotStream] = (),
    ) -> None:
        self.selector = selector
        self.clock = clock
        self.symbol = symbol
        self.poll_seconds = poll_seconds
        self.backfill_minutes = backfill_minutes  # None: from the engine's config at run time
        self.dvol = dvol
        self.dvol_seconds = dvol_seconds
        self.backfilled = 0  # closes the engine took from the backfill
        self._seen_switches = len(selector.switches)
        self._last_dvol = -math.inf
        self._last_sent: tuple[str, float] | None = None
        self.streams = list(streams)
        self._pushed = asyncio.Event()
        self._streams_started: float | None = None
        self._retry_after_alerted: set[str] = set()

    async def run(self, engine: Engine) -> None:
        """Backfill once, then poll (or wait for pushed ticks) forever (cancel to stop)."""
        await self.start(engine)
        while True:
            self._pushed.clear()  # a push while this step runs wakes the next wait at once
            await self.step(engine)
            await self._wait()

    async def _wait(self) -> None:
        """`poll_seconds`; with streams, or until a tick is pushed, whichever comes first."""
        if not self.streams:
            await self.clock.sleep(self.poll_seconds)
            return
        waits = [
            asyncio.ensure_future(self.clock.sleep(self.poll_seconds)),
            asyncio.ensure_future(self._pushed.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def start(self, engine: Engine) -> None:
        """Seed the engine with past minute closes (a failure only means a normal warm-up),
        then start the streams, if any: after the seed, so live ticks come after it."""
        engine.spot_source = self.selector.active
        minutes = self.backfill_minutes or default_backfill_minutes(engine)
        try:
            closes = await self.selector.backfill(minutes)
        except (SpotSourceError, ValueError) as e:
            log.warning("spot backfill failed, starting live: %s", e)
        else:
            self.backfilled = engine.seed_spot_history([(c.ts, c.price) for c in closes])
        if self.streams:
            self._streams_started = self.clock.now()
            for stream in self.streams:
                await stream.start(self._on_push, self._on_push_failure)

    def _on_push(self, tick: SpotTick) -> None:
        self.selector.record_ok(tick)
        self._pushed.set()

    def _on_push_failure(self, source: str, error: SpotSourceError) -> None:
        self.selector.record_failure(source, error)
        self._pushed.set()

    def _warming_up(self) -> bool:
        """Streams just started and the primary has not delivered yet: do not switch yet."""
        sel = self.selector
        return (
            self._streams_started is not None
            and not sel.delivered(sel.primary.name)
            and self.clock.now() - self._streams_started < sel.stale_after_seconds
        )

    async def step(self, engine: Engine) -> None:
        """One poll: the tick of the source in use to the engine, switches to alerts."""
        if self.streams:
            if self._warming_up():
                return
            tick = self.selector.current()  # the ticks were recorded as they were pushed
        else:
            tick = await self.selector.poll()
        self.selector.evaluate()  # poll() evaluates too; this keeps a quiet source noticed
        await self._report_switches(engine)
        # The same tick again (a quiet venue repeats its last trade) is not news: sending it would
        # re-evaluate the rules and end the engine's spot-staleness episode on an old price.
        if tick is not None and (tick.source, tick.ts) != self._last_sent:
            self._last_sent = (tick.source, tick.ts)
            await engine.handle_safely(tick.to_event(self.symbol))
        await self._report_retry_after(engine)
        if self.dvol is not None and self.clock.now() - self._last_dvol >= self.dvol_seconds:
            self._last_dvol = self.clock.now()
            try:
                reading = await self.dvol.latest()
                engine.implied_vol, engine.implied_vol_ts = reading.sigma, reading.ts
            except SpotSourceError as e:
                log.info("DVOL unavailable: %s", e)

    async def _report_retry_after(self, engine: Engine) -> None:
        """One alert per source while it asks for a longer Retry-After than we wait."""
        sel = self.selector
        for src in (getattr(sel, "primary", None), getattr(sel, "fallback", None), self.dvol):
            gate = getattr(src, "retry_gate", None)
            if gate is None:
                gate = getattr(getattr(src, "rest", None), "retry_gate", None)  # a stream's
            if not isinstance(gate, RetryGate):
                continue
            key = f"{gate.name} Retry-After"
            if gate.excess is not None and key not in self._retry_after_alerted:
                self._retry_after_alerted.add(key)
                await engine.source_problem(key, gate.describe())
            elif gate.excess is None and key in self._retry_after_alerted:
                self._retry_after_alerted.discard(key)
                await engine.source_ok(key)

    async def _report_switches(self, engine: Engine) -> None:
        switches = self.selector.switches[self._seen_switches :]
        self._seen_switches = len(self.selector.switches)
        for sw in switches:
            await self._on_switch(engine, sw)
        engine.spot_source = self.selector.active

    async def _on_switch(self, engine: Engine, sw: SourceSwitch) -> None:
        """The primary failing is its problem (a warning: the fallback covers it); with no source
        usable the fallback's failure is alerted too. A source that works again ends its episode;
        back on the primary, the fallback's episode ends as well (it is no longer needed, and it
        is not polled while the primary is healthy, so its state would never clear)."""
        sel = self.selector
        now = self.clock.now()
        where = f"spot from {sw.to_source}" if sw.to_source else "no spot source usable"
        for src in (sel.primary.name, sel.fallback.name):
            if sel.disabled(src):
                continue  # `fallback = "none"`: switched off on purpose, not failing
            problem = sel.problem(src, now)
            if problem is None or sw.to_source == sel.primary.name:
                await engine.source_ok(src)
            elif src == sel.primary.name or sw.to_source is None:
                await engine.source_problem(src, f"{problem}; {where}")
