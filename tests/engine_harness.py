"""A small driver for engine scenario tests: a real journal, a paper venue, a manual clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.alerts import Alert, AlertBus
from engine.clock import ManualClock
from engine.config import Config, parse_config
from engine.models import (
    Contract,
    ContractEvent,
    OpenEvent,
    Quote,
    QuoteEvent,
    SettleEvent,
    SpotEvent,
)
from engine.store import Store
from engine.supervisor import Engine
from engine.venues.base import OrderRequest, OrderResult
from engine.venues.paper import PaperVenue

T0 = 1_764_000_000.0  # a fixed instant; every scenario runs on the manual clock from here
CID = "KXBTCD-25NOV2415-T97000"


class RecordingVenue(PaperVenue):
    """The paper venue, counting what reaches it; `crash` makes the next submit die."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.submitted: list[OrderRequest] = []
        self.crash: str | None = None  # "before" (never reaches the venue) / "after" (filled)
        self.on_submit: Any = None

    async def submit(self, req: OrderRequest) -> OrderResult:
        if self.on_submit is not None:
            await self.on_submit(req)
        if self.crash == "before":
            raise SystemExit("crash before the order reached the venue")
        self.submitted.append(req)
        res = await super().submit(req)
        if self.crash == "after":
            raise SystemExit("crash after the venue filled the order")
        return res


def config(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {"alerts": {"log_file": "", "cooldown_seconds": 0.0}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return parse_config(data)


class Harness:
    def __init__(self, tmp: Path, cfg: Config | None = None) -> None:
        self.tmp = tmp
        self.cfg = cfg or config(auto_stop={"criteria": {"max_loss_percent": 30}})
        self.clock = ManualClock(T0)
        self.alerts: list[Alert] = []
        self.exits: list[dict[str, Any]] = []

    async def open(self) -> Harness:
        self.store = Store(self.tmp / "trades.db")
        await self.store.open()
        self.quotes: dict[str, Quote] = {}
        self.venue = RecordingVenue(
            self.cfg.paper, self.quotes.get, state_path=self.tmp / "paper.json", name="sim"
        )
        bus = AlertBus(self.cfg.alerts.cooldown_seconds)
        bus.listeners.append(self.alerts.append)
        self.engine = Engine(self.cfg, self.clock, self.store, self.venue, alerts=bus)
        self.engine.quotes = self.quotes
        self.engine.exit_listeners.append(self.exits.append)
        return self

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        """The process ends: nothing more is written (a running checkpoint is let finish)."""
        task = self.engine._checkpoint_task
        if task is not None:
            await task
        await self.store.close()

    def at(self, dt: float) -> float:
        """Move the clock to T0 + dt and return that time."""
        self.clock.set(T0 + dt)
        return T0 + dt

    async def contract(
        self, cid: str = CID, strike: float = 97000.0, close_in: float = 3600.0
    ) -> None:
        c = Contract(
            cid, "BTC-USD", "binary_above", strike, T0 + close_in, event_id=cid.rsplit("-", 1)[0]
        )
        await self.engine.handle(ContractEvent(self.clock.now(), c))

    async def spot(self, price: float, ts: float | None = None) -> None:
        await self.engine.handle(
            SpotEvent(self.clock.now() if ts is None else ts, "BTC-USD", price)
        )

    async def quote(
        self, bid: float | None, ask: float | None, cid: str = CID, ts: float | None = None
    ) -> None:
        ts = self.clock.now() if ts is None else ts
        await self.engine.handle(QuoteEvent(ts, Quote(cid, bid, ask, ts)))

    async def open_trade(
        self,
        tid: str = "t1",
        side: str = "yes",
        qty: float = 10,
        price: float = 0.50,
        cid: str = CID,
        strategy: str = "",
    ) -> None:
        await self.engine.handle(OpenEvent(self.clock.now(), tid, cid, side, qty, price, strategy))  # type: ignore[arg-type]

    async def settle(self, value: float, cid: str = CID) -> None:
        await self.engine.handle(SettleEvent(self.clock.now(), cid, value))

    async def tick(self, dt: float | None = None) -> None:
        if dt is not None:
            self.at(dt)
        await self.engine.tick()

    def kinds(self) -> list[str]:
        return [a.kind.value for a in self.alerts]

    def of_kind(self, kind: str) -> list[Alert]:
        return [a for a in self.alerts if a.kind.value == kind]


async def standard(
    tmp: Path, cfg: Config | None = None, *, bid: float = 0.50, ask: float = 0.52
) -> Harness:
    """An engine with one contract, a spot, a fresh quote and trade t1: YES 10 @ 0.50."""
    h = await Harness(tmp, cfg).open()
    await h.contract()
    await h.spot(97100.0)
    await h.quote(bid, ask)
    await h.start()
    await h.open_trade()
    return h
