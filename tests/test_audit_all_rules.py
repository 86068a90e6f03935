"""Every exit's audit carries every rule's numbers, on or off, and time to close / time value."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.rules import RULE_ORDER
from tests.engine_harness import config, standard


async def _exit_context(h) -> dict:  # type: ignore[no-untyped-def]
    rows = await h.store.audit_for_trade("t1")
    with_rules = [r["data"] for r in rows if r["data"].get("all_rules")]
    assert with_rules, [r["event"] for r in rows]
    return with_rules[0]


async def test_an_exit_audit_has_every_rule_whether_on_or_off(tmp_path: Path) -> None:
    # Only max_loss is on; the trade (YES 10 @ 0.50) falls to a 0.30 bid: P&L -40 %.
    h = await standard(tmp_path, config(auto_stop={"criteria": {"max_loss_percent": 30}}))
    await h.quote(0.30, 0.32)
    assert h.exits and h.exits[0]["rule"] == "max_loss"
    ctx = await _exit_context(h)
    rows = {r["rule"]: r for r in ctx["all_rules"]}
    assert tuple(rows) == RULE_ORDER
    ml = rows["max_loss"]
    assert ml["on"] and ml["fired"] and ml["threshold"] == -30 and ml["distance"] == 0
    assert ml["value"] == pytest.approx(-40)
    pt = rows["profit_target"]  # off: measured all the same, no threshold, no distance
    assert (pt["on"], pt["fired"], pt["threshold"], pt["distance"]) == (False, False, None, None)
    assert pt["value"] == pytest.approx(-40)
    assert rows["max_holding_time"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rows["ttc_cutoff"]["value"] == pytest.approx(3600.0, abs=1)  # the contract's close
    assert rows["min_time_value"]["value"] is None  # a binary has no time value
    assert ctx["ttc_seconds"] == pytest.approx(3600.0, abs=1)
    assert "time_value" in ctx and ctx["time_value"] is None
    await h.close()


async def test_a_manual_close_carries_the_numbers_too(tmp_path: Path) -> None:
    from engine.commands import Command

    h = await standard(tmp_path, config(auto_stop={"criteria": {"profit_target_percent": 50}}))
    await h.engine.command(Command("close", "t1"))
    ctx = await _exit_context(h)
    rows = {r["rule"]: r for r in ctx["all_rules"]}
    assert rows["profit_target"]["on"] and rows["profit_target"]["distance"] == pytest.approx(50)
    assert rows["max_loss"]["on"] is False and rows["max_loss"]["value"] == pytest.approx(0)
    await h.close()


async def test_an_option_exit_audit_has_its_time_value(tmp_path: Path) -> None:
    from engine.models import Contract, ContractEvent, Quote, QuoteEvent
    from tests.engine_harness import T0, Harness

    cid = "SPY 20261218 150C"
    h = await Harness(tmp_path, config(auto_stop={"criteria": {"max_loss_percent": 30}})).open()
    await h.engine.handle(
        ContractEvent(T0, Contract(cid, "SPY", "option_call", 150.0, T0 + 86400, multiplier=100))
    )
    await h.engine.handle(QuoteEvent(T0, Quote(cid, 4.00, 4.20, T0, und_price=151.0)))
    await h.start()
    await h.open_trade("t1", side="long", qty=1, price=4.00, cid=cid)
    h.at(1)
    await h.engine.handle(QuoteEvent(T0 + 1, Quote(cid, 2.50, 2.60, T0 + 1, und_price=151.0)))
    assert h.exits and h.exits[0]["rule"] == "max_loss"
    ctx = await _exit_context(h)
    assert ctx["time_value"] == pytest.approx(1.55)  # mid 2.55 - 1.00 intrinsic
    tv = {r["rule"]: r for r in ctx["all_rules"]}["min_time_value"]
    assert (tv["on"], tv["value"], tv["unit"]) == (False, pytest.approx(1.55), "$")
    await h.close()


def test_qty_holds_the_open_rest_after_a_partial_close_as_the_schema_says() -> None:
    # docs/trades-schema.md: qty is the quantity still open; once closed, the opened size.
    from engine.models import Trade
    from engine.pricing import apply_fill, close_record

    t = Trade("t1", "C", "yes", 10.0, 0.40, 1.0e9, fees=0.10)
    apply_fill(t, 4.0, 0.50, 0.02)
    assert (t.qty, t.closed_qty) == (6.0, 4.0)
    assert t.realized_pnl == pytest.approx(4 * 0.10 - 0.10 - 0.02)  # net of every fee
    apply_fill(t, 6.0, 0.60, 0.0)
    assert t.exit_price == pytest.approx((4 * 0.50 + 6 * 0.60) / 10)  # the average fill
    close_record(t, None, "profit_target", 1.0e9 + 60)
    assert (t.qty, t.closed_qty) == (10.0, 10.0)
