"""The timed part of ui_reaction.py, run on the engine's loop wherever the engine lives.

Module-level functions (not closures), so a `ProcessEngineHost` can send them to the engine
process by reference (`host.call(partial(sample, i, new_id))`); a thread `EngineHost` runs the same
ones. The probe's state lives in this module, in the process that runs the engine.
"""

from __future__ import annotations

import time
from typing import Any

from engine.commands import Command
from engine.models import Quote, QuoteEvent
from engine.supervisor import Engine
from engine.venues.base import OrderRequest, OrderResult

FIRE_FACTOR = 0.59  # held bid = entry x this: P&L -41%, past max_loss 40%
SPREAD = 0.02

submits: list[tuple[float, OrderRequest]] = []
slots: list[dict[str, Any]] = []  # trade payloads (trade_id replaced as they exit)


async def install(e: Engine) -> int:
    """Time-stamp the venue's `submit` on entry; remember the open trades as sample slots."""
    venue = e.venue
    submit = venue.submit
    submits.clear()
    slots.clear()

    async def timed_submit(req: OrderRequest) -> OrderResult:
        submits.append((time.perf_counter(), req))
        return await submit(req)

    venue.submit = timed_submit  # type: ignore[method-assign]
    for t in e.trades.values():
        slots.append(
            {
                "trade_id": t.trade_id,
                "contract_id": t.contract_id,
                "side": t.side,
                "qty": t.qty,
                "price": t.entry_price,
            }
        )
    return len(slots)


async def sample(i: int, new_id: str, e: Engine) -> tuple[float, float]:
    """Fire slot i's trade with a max_loss quote; returns (quote -> submit, handle()) seconds.

    Untimed afterwards: the market's quote put back and a fresh trade opened in the slot.
    """
    slot = slots[i % len(slots)]
    cid, tid = slot["contract_id"], slot["trade_id"]
    now = e.clock.now()
    held = slot["price"] * FIRE_FACTOR
    if slot["side"] == "yes":
        bid, ask = held, held + SPREAD
    else:  # NO bid = 1 - YES ask
        bid, ask = 1.0 - held - SPREAD, 1.0 - held
    before_q = e.quotes.get(cid)
    q = Quote(cid, bid, ask, now, bid_size=50.0, ask_size=50.0, volume=1000.0)
    n = len(submits)

    t0 = time.perf_counter()
    await e.handle(QuoteEvent(now, q))
    t1 = time.perf_counter()

    sent = submits[n:]
    if len(sent) != 1 or sent[0][1].contract_id != cid or tid in e.trades:
        raise RuntimeError(
            f"expected exactly {tid} to exit on {cid}, got {len(sent)} orders "
            f"({[r.contract_id for _, r in sent]})"
        )
    if before_q is not None:
        await e.handle(QuoteEvent(now, before_q))
    r = await e.command(Command("add_trade", payload={**slot, "trade_id": new_id}))
    if not r.ok:
        raise RuntimeError(f"re-opening {new_id}: {r.message}")
    slot["trade_id"] = new_id
    return sent[0][0] - t0, t1 - t0


async def count_open(e: Engine) -> int:
    return len(e.trades)
