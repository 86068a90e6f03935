"""Engine scenarios on the manual clock: the money-safety rules a trader relies on."""

from __future__ import annotations

import math

import pytest

from engine.commands import Command
from engine.models import Quote, QuoteEvent, TradeState
from tests.engine_harness import CID, T0, Harness, config, standard

# --- exits ---------------------------------------------------------------------------------


async def test_rule_fires_exit_is_journaled_before_it_is_sent(tmp_path):
    h = await standard(tmp_path)
    seen_in_journal = []

    async def check(req):
        # At the moment the order reaches the venue, the journal already holds intent and order.
        intent = await h.store.get_intent(req.client_order_id)
        order = await h.store.get_order(req.client_order_id)
        seen_in_journal.append((intent is not None, order is not None))

    h.venue.on_submit = check
    await h.quote(0.36, 0.38)  # mark 0.36: P&L -28% — not yet
    assert h.venue.submitted == []
    await h.quote(0.35, 0.37)  # mark 0.35: -30% exactly: fires
    assert seen_in_journal == [(True, True)]
    intent = (await h.store.intents_for_trade("t1"))[0]
    assert [r.client_order_id for r in h.venue.submitted] == [intent["intent_id"]]
    assert intent["status"] == "filled"
    t = await h.store.get_trade("t1")
    assert t.state == TradeState.CLOSED and t.exit_reason == "max_loss"
    assert t.exit_price == pytest.approx(0.35)
    assert t.realized_pnl == pytest.approx(10 * (0.35 - 0.50))
    assert t.qty == 10 and t.closed_qty == 10
    fills = await h.store.fills_for_trade("t1")
    assert [(f["qty"], f["price"]) for f in fills] == [(10, pytest.approx(0.35))]
    audit = [a["event"] for a in await h.store.audit_for_trade("t1")]
    assert audit.index("exit_intent") < audit.index("exit_filled")
    assert h.of_kind("auto_stop")[0].trade_id == "t1"
    assert "t1" not in h.engine.trades
    await h.close()


async def test_exit_intent_records_the_market_context(tmp_path):
    h = await standard(tmp_path)
    await h.quote(0.30, 0.32)
    intents = await h.store.intents_for_trade("t1")
    assert len(intents) == 1
    ctx = intents[0]["context"]
    assert ctx["rule"] == "max_loss" and ctx["threshold"] == -30
    assert ctx["mark"] == pytest.approx(0.30) and ctx["quote"]["bid"] == 0.30
    assert ctx["spot"] == 97100.0 and ctx["mode"] == "dry_run"
    await h.close()


async def test_no_position_mark_uses_one_minus_yes_ask(tmp_path):
    h = await standard(tmp_path)
    await h.open_trade("n1", side="no", qty=10, price=0.50)
    # YES ask 0.66 -> NO bid 0.34: -32% for the NO holder; the YES holder gains.
    await h.quote(0.64, 0.66)
    assert [e["trade_id"] for e in h.exits] == ["n1"]
    assert h.exits[0]["mark"] == pytest.approx(0.34)
    assert "t1" in h.engine.trades
    await h.close()


async def test_first_rule_in_table_order_is_the_recorded_reason(tmp_path):
    cfg = config(auto_stop={"criteria": {"max_loss_percent": 30, "max_holding_time_minutes": 1}})
    h = await standard(tmp_path, cfg)
    h.at(120)
    await h.quote(0.20, 0.22)  # both max_loss and max_holding_time fire: max_loss comes first
    assert h.exits[0]["rule"] == "max_loss"
    await h.close()


async def test_time_rule_fires_on_the_tick_without_new_quotes(tmp_path):
    cfg = config(auto_stop={"criteria": {"max_holding_time_minutes": 0.1}})
    h = await standard(tmp_path, cfg)
    await h.tick(5)
    assert h.exits == []
    await h.quote(0.50, 0.52, ts=T0 + 5)  # keep the quote fresh
    await h.tick(6)
    assert [e["rule"] for e in h.exits] == ["max_holding_time"]
    await h.close()


async def test_manual_close_and_close_all(tmp_path):
    h = await standard(tmp_path)
    await h.open_trade("t2")
    res = await h.engine.command(Command("close", "t1"))
    assert res.ok and [e["rule"] for e in h.exits] == ["manual"]
    assert h.of_kind("trade_closed")[-1].trade_id == "t1"
    res = await h.engine.command(Command("close_all"))
    assert res.ok and [e["rule"] for e in h.exits] == ["manual", "close_all"]
    assert h.engine.trades == {}
    await h.close()


# --- the data guard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bid", "ask", "why"),
    [
        (0.40, 0.20, "crossed"),
        (math.nan, 0.30, "not a number"),
        (-0.1, 0.30, "negative"),
        (0.30, 1.20, "outside 0..1"),
        (None, 0.30, "one-sided"),
    ],
)
async def test_invalid_quote_never_exits_and_alerts_once(tmp_path, bid, ask, why):
    h = await standard(tmp_path)
    for _ in range(3):
        await h.quote(bid, ask)
    assert h.venue.submitted == []
    dq = h.of_kind("data_quality")
    assert len(dq) == 1 and why in dq[0].message and "t1" in dq[0].message
    assert h.engine.snapshot().trades[0].state == "stale"
    await h.quote(0.50, 0.52)  # recovery: one more alert, trade evaluable again
    assert len(h.of_kind("data_quality")) == 2
    assert "recovered" in h.of_kind("data_quality")[1].message
    assert h.engine.snapshot().trades[0].state == "armed"
    await h.close()


async def test_stale_quote_suspends_rules_until_a_fresh_one(tmp_path):
    h = await standard(tmp_path)
    h.at(11)
    await h.spot(97100.0)  # the spot stays fresh; only the quote ages
    await h.tick()  # the quote from T0 is now 11 s old (limit 10 s)
    await h.tick(12)
    dq = h.of_kind("data_quality")
    assert len(dq) == 1 and "quote 11s old" in dq[0].message
    # A quote that would fire, but stamped 11 s ago: still stale, nothing sent.
    await h.quote(0.10, 0.12, ts=T0 + 1)
    assert h.venue.submitted == []
    await h.quote(0.10, 0.12, ts=T0 + 12)  # fresh: data recovers and the rule fires
    assert "recovered" in h.of_kind("data_quality")[-1].message
    assert [e["rule"] for e in h.exits] == ["max_loss"]
    await h.close()


async def test_out_of_order_quote_is_dropped(tmp_path):
    h = await standard(tmp_path)
    h.at(5)
    await h.quote(0.50, 0.52)
    await h.quote(0.10, 0.12, ts=T0 + 3)  # older than the last one seen: ignored
    assert h.venue.submitted == []
    assert h.engine.quotes[CID].bid == 0.50
    await h.close()


async def test_stale_spot_withholds_spot_based_rules(tmp_path):
    cfg = config(auto_stop={"criteria": {"price_gap_threshold_percent": 0.5}})
    h = await standard(tmp_path, cfg)
    h.at(30)
    await h.quote(0.50, 0.52)
    await h.tick()
    assert any("spot" in a.message for a in h.of_kind("data_quality"))
    await h.quote(0.49, 0.51)
    assert h.venue.submitted == []  # no spot-based verdict on a 30 s old spot
    await h.spot(96000.0)  # fresh spot, -1.1 % from the stale one: an outage, not a gap
    assert h.exits == []
    h.at(31)
    await h.spot(95400.0)  # -0.6 % between two fresh prices, against a YES-above holder
    assert [e["rule"] for e in h.exits] == ["price_gap"]
    await h.close()


# --- modes, arming, pausing ----------------------------------------------------------------


async def test_alert_only_signals_and_never_sends(tmp_path):
    cfg = config(auto_stop={"mode": "alert_only", "criteria": {"max_loss_percent": 30}})
    h = await standard(tmp_path, cfg)
    await h.quote(0.30, 0.32)
    await h.quote(0.29, 0.31)
    assert h.venue.submitted == []
    sig = h.of_kind("exit_signal")
    assert len(sig) == 1 and "max_loss" in sig[0].message and "alert_only" in sig[0].message
    res = await h.engine.command(Command("close", "t1"))
    assert not res.ok and "alert_only" in res.message
    assert h.venue.submitted == []
    await h.close()


async def test_disarmed_signals_then_arming_exits(tmp_path):
    h = await standard(tmp_path)
    await h.engine.command(Command("disarm"))
    await h.quote(0.30, 0.32)
    assert h.venue.submitted == []
    assert any("disarmed" in a.message for a in h.of_kind("exit_signal"))
    assert h.engine.snapshot().trades[0].state == "disarmed"
    await h.engine.command(Command("arm"))
    assert [e["rule"] for e in h.exits] == ["max_loss"]
    await h.close()


async def test_paused_trade_is_not_closed_while_its_rule_fires(tmp_path):
    h = await standard(tmp_path)
    await h.open_trade("t2")
    await h.engine.command(Command("pause", "t1"))
    await h.quote(0.30, 0.32)
    assert [e["trade_id"] for e in h.exits] == ["t2"]  # t2 is protected as usual
    assert "t1" in h.engine.trades
    assert h.engine.snapshot().trades[0].state == "paused"
    await h.engine.command(Command("resume", "t1"))
    assert [e["trade_id"] for e in h.exits] == ["t2", "t1"]
    await h.close()


async def test_kill_switch_stops_every_automatic_exit(tmp_path):
    h = await standard(tmp_path)
    await h.open_trade("t2")
    await h.engine.command(Command("pause_all"))
    await h.quote(0.30, 0.32)
    assert h.venue.submitted == []
    # A manual close still works while paused: the trader asked for it.
    assert (await h.engine.command(Command("close", "t2"))).ok
    await h.engine.command(Command("resume_all"))
    assert [e["rule"] for e in h.exits] == ["manual", "max_loss"]
    await h.close()


async def test_arm_and_pause_states_survive_a_restart(tmp_path):
    h = await standard(tmp_path)
    await h.engine.command(Command("disarm"))
    await h.engine.command(Command("pause_all"))
    await h.engine.command(Command("pause", "t1"))
    await h.close()
    h2 = await Harness(tmp_path, h.cfg).open()
    await h2.start()
    assert h2.engine.armed is False and h2.engine.paused_all is True
    assert h2.engine.trades["t1"].paused is True
    await h2.close()


# --- crash recovery and idempotency --------------------------------------------------------


async def _crash_during_exit(tmp_path, when: str) -> Harness:
    h = await standard(tmp_path)
    h.venue.crash = when
    with pytest.raises(SystemExit):
        await h.quote(0.30, 0.32)
    await h.close()  # the process "dies": nothing more is written
    return h


async def _restart(tmp_path, cfg) -> Harness:
    h = await Harness(tmp_path, cfg).open()
    h.at(5)
    await h.contract()
    await h.spot(97100.0)
    await h.quote(0.30, 0.32)
    await h.start()
    await h.tick()
    return h


async def test_crash_between_journal_and_send_sends_exactly_once_after_restart(tmp_path):
    h1 = await _crash_during_exit(tmp_path, "before")
    assert h1.venue.submitted == []
    h2 = await _restart(tmp_path, h1.cfg)
    # The journaled intent is re-sent once, with the same client order id.
    assert len(h2.venue.submitted) == 1
    intent = (await h2.store.intents_for_trade("t1"))[0]
    assert h2.venue.submitted[0].client_order_id == intent["intent_id"]
    assert intent["status"] == "filled"
    t = await h2.store.get_trade("t1")
    assert t.state == TradeState.CLOSED and t.exit_reason == "max_loss"
    await h2.tick(10)
    assert len(h2.venue.submitted) == 1
    await h2.close()


async def test_crash_after_the_venue_filled_adopts_the_fill_without_resending(tmp_path):
    h1 = await _crash_during_exit(tmp_path, "after")
    assert len(h1.venue.submitted) == 1
    h2 = await _restart(tmp_path, h1.cfg)
    assert h2.venue.submitted == []  # found by client order id: nothing sent again
    t = await h2.store.get_trade("t1")
    assert t.state == TradeState.CLOSED and t.exit_price == pytest.approx(0.30)
    assert len(await h2.store.fills_for_trade("t1")) == 1
    await h2.close()


async def test_unsent_intent_is_not_resent_when_the_engine_is_now_disarmed(tmp_path):
    h1 = await _crash_during_exit(tmp_path, "before")
    h2 = await Harness(tmp_path, h1.cfg).open()
    await h2.store.set_state("armed", False)
    await h2.contract()
    await h2.quote(0.30, 0.32)
    await h2.start()
    await h2.tick(1)
    assert h2.venue.submitted == []
    assert any("not re-sent" in a.message for a in h2.of_kind("execution_failure"))
    assert h2.engine.trades["t1"].state == TradeState.OPEN
    await h2.close()


async def test_partial_fills_are_retried_with_new_client_ids_until_closed(tmp_path):
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "ladder_max_attempts": 20,
            "ladder_step_seconds": 1,
        },
        paper={"partial_fill_probability": 1.0},
    )
    h = await standard(tmp_path, cfg)
    await h.quote(0.30, 0.32)
    for i in range(1, 30):
        if "t1" not in h.engine.trades:
            break
        await h.quote(0.30, 0.32, ts=T0 + i)
        await h.tick(i)
    ids = [r.client_order_id for r in h.venue.submitted]
    assert len(ids) >= 2 and len(set(ids)) == len(ids)
    t = await h.store.get_trade("t1")
    assert t.state == TradeState.CLOSED and t.closed_qty == pytest.approx(10)
    fills = await h.store.fills_for_trade("t1")
    assert sum(f["qty"] for f in fills) == pytest.approx(10)
    assert t.realized_pnl == pytest.approx(sum(f["qty"] * (f["price"] - 0.5) for f in fills))
    await h.close()


async def test_rejected_exits_give_up_after_the_limit_and_say_so(tmp_path):
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "ladder_max_attempts": 3,
            "ladder_step_seconds": 1,
        },
        paper={"reject_probability": 1.0},
    )
    h = await standard(tmp_path, cfg)
    await h.quote(0.30, 0.32)
    for i in range(1, 6):
        await h.quote(0.30, 0.32, ts=T0 + i)
        await h.tick(i)
    assert len(h.venue.submitted) == 3
    critical = [a for a in h.of_kind("execution_failure") if a.severity.value == "critical"]
    assert len(critical) == 1 and "left OPEN" in critical[0].message
    assert h.engine.trades["t1"].state == TradeState.OPEN
    intent = (await h.store.intents_for_trade("t1"))[0]
    assert intent["status"] == "failed"
    await h.close()


# --- venue positions, settlement, journal ----------------------------------------------------


async def test_positions_appearing_and_vanishing_at_the_venue(tmp_path):
    h = await standard(tmp_path)
    h.venue.open_position(CID, "no", 7, 0.45)  # opened by hand at the broker
    await h.tick(5)
    detected = [t for t in h.engine.trades.values() if t.side == "no"]
    assert len(detected) == 1 and detected[0].qty == 7 and detected[0].entry_price == 0.45
    assert any("tracking" in a.message for a in h.of_kind("trade_detected"))
    h.venue.settle(CID, 1.0)  # everything vanishes at the venue without our exit
    await h.quote(0.50, 0.52, ts=T0 + 10)
    await h.tick(10)
    t = await h.store.get_trade("t1")
    assert t.state == TradeState.CLOSED and t.exit_reason == "external"
    assert h.venue.submitted == []
    await h.close()


async def test_a_positions_answer_read_before_an_exit_filled_adopts_nothing(tmp_path):
    """The venue is read (t1 still held), then max_loss closes t1 while the answer is on its
    way: the stale answer must not bring t1's position back as a new trade."""
    h = await standard(tmp_path)
    read = h.venue.positions

    async def slow_positions():
        answer = await read()  # t1: YES 10, as before the exit
        await h.quote(0.30, 0.32)  # meanwhile max_loss fires and the exit fills
        return answer

    h.venue.positions = slow_positions  # type: ignore[method-assign]
    await h.tick(5)  # the positions poll
    assert [e["rule"] for e in h.exits] == ["max_loss"]
    assert h.engine.trades == {}  # nothing adopted
    assert len(h.of_kind("trade_detected")) == 1  # t1's own, when it opened
    h.venue.positions = read  # type: ignore[method-assign]
    await h.quote(0.30, 0.32, ts=T0 + 10)
    await h.tick(10)  # the next poll sees the account as it is
    assert h.engine.trades == {}
    [t] = await h.store.all_trades()
    assert (t.trade_id, t.exit_reason) == ("t1", "max_loss")
    await h.close()


async def test_settlement_closes_trades_at_the_payout(tmp_path):
    h = await standard(tmp_path)
    await h.open_trade("n1", side="no", qty=4, price=0.40)
    await h.settle(1.0)
    t1, n1 = await h.store.get_trade("t1"), await h.store.get_trade("n1")
    assert (t1.exit_reason, t1.exit_price, t1.realized_pnl) == ("settled", 1.0, pytest.approx(5.0))
    assert (n1.exit_price, n1.realized_pnl) == (0.0, pytest.approx(-1.6))
    assert h.exits == [] and len(h.of_kind("trade_closed")) == 2
    await h.close()


async def test_trades_inserted_by_another_program_are_picked_up(tmp_path):
    from engine.models import Trade

    h = await standard(tmp_path)
    await h.store.add_trade(Trade("ext1", CID, "yes", 3, 0.50, T0, venue="sim"), source="bot")
    await h.tick(1)
    await h.tick(2)  # the journal is polled on its own tick, every few seconds
    assert "ext1" in h.engine.trades
    await h.quote(0.30, 0.32, ts=T0 + 6)
    assert {e["trade_id"] for e in h.exits} == {"t1", "ext1"}
    await h.close()


async def test_queued_journal_close_from_the_cli_is_applied(tmp_path):
    h = await standard(tmp_path)
    await h.store.add_command("journal_close", "t1", {"price": 0.6}, T0)
    await h.tick(1)
    await h.tick(2)
    t = await h.store.get_trade("t1")
    assert t.state == TradeState.CLOSED and t.exit_reason == "manual"
    assert t.realized_pnl == pytest.approx(1.0)
    assert h.venue.submitted == []  # closed elsewhere: nothing sent
    # The simulated account follows the journal: no phantom position is detected afterwards.
    assert await h.venue.positions() == []
    await h.tick(10)
    assert h.engine.trades == {}
    await h.close()


async def test_restart_aligns_the_simulated_account_with_the_journal(tmp_path):
    h = await standard(tmp_path)
    await h.close()
    # `trades close` while no engine ran: the journal says closed, the paper account still holds.
    from engine.pricing import close_record

    h2 = await Harness(tmp_path, h.cfg).open()
    t = await h2.store.get_trade("t1")
    close_record(t, 0.55, "manual", T0 + 1)  # what the CLI does: close, and release the position
    await h2.store.save_trade(t)
    await h2.store.add_command(
        "release_position", "t1", {"contract_id": CID, "side": "yes", "qty": 10, "venue": "sim"}, T0
    )
    assert len(await h2.venue.positions()) == 1
    await h2.start()
    await h2.tick(6)
    assert await h2.venue.positions() == []
    assert h2.engine.trades == {} and h2.of_kind("trade_detected") == []
    await h2.close()


# --- risk, reload, overrides ---------------------------------------------------------------


async def test_risk_limits_alert_once_per_breach(tmp_path):
    cfg = config(risk={"max_open_positions": 1, "max_total_risk": 6.0})
    h = await standard(tmp_path, cfg)
    await h.open_trade("t2", qty=4)
    await h.tick(1)
    await h.tick(2)
    risk = h.of_kind("risk_limit")
    assert len(risk) == 2
    assert any("open positions 2 > 1" in a.message for a in risk)
    assert any("total at risk $7.00 > $6.00" in a.message for a in risk)
    await h.close()


async def test_reload_applies_thresholds_and_keeps_running_config_on_error(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text(
        '[alerts]\nlog_file = ""\ncooldown_seconds = 0\n[auto_stop.criteria]\nmax_loss_percent = 50\n'
    )
    from engine.config import load_config

    h = await standard(tmp_path, load_config(path))
    h.engine.config_path = path
    await h.quote(0.30, 0.32)  # -40 %: below the 50 % limit
    assert h.exits == []
    path.write_text("[auto_stop.criteria]\nmax_loss_percent = -5\n")
    res = await h.engine.command(Command("reload"))
    assert not res.ok and "max_loss_percent" in res.message
    assert any("reload failed" in a.message for a in h.of_kind("data_quality"))
    assert h.engine.config.auto_stop.criteria.max_loss_percent == 50
    path.write_text('[alerts]\nlog_file = ""\n[auto_stop.criteria]\nmax_loss_percent = 35\n')
    assert (await h.engine.command(Command("reload"))).ok
    assert [e["rule"] for e in h.exits] == ["max_loss"]  # re-evaluated under the new limit
    await h.close()


async def test_reload_names_the_sections_that_need_a_restart(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('[alerts]\nlog_file = ""\n')
    from engine.config import load_config

    h = await standard(tmp_path, load_config(path))
    h.engine.config_path = path
    path.write_text('[alerts]\nlog_file = ""\n[spot]\nprimary = "kraken"\nfallback = "none"\n')
    res = await h.engine.command(Command("reload"))
    assert res.ok and res.message.endswith("restart to apply [spot]")
    await h.close()


async def test_per_trade_overrides_are_validated_and_stored(tmp_path):
    h = await standard(tmp_path)
    bad = await h.engine.command(Command("set_overrides", "t1", {"max_loss_percent": -1}))
    assert not bad.ok
    ok = await h.engine.command(Command("set_overrides", "t1", {"max_loss_percent": 10}))
    assert ok.ok
    assert (await h.store.get_trade("t1")).overrides == {"max_loss_percent": 10}
    await h.quote(0.44, 0.46)  # -12 %: fires only under the trade's own 10 % limit
    assert [e["rule"] for e in h.exits] == ["max_loss"]
    await h.close()


async def test_strategy_overrides_apply_to_tagged_trades(tmp_path):
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "strategies": {"scalp": {"criteria": {"max_loss_percent": 10}}},
        }
    )
    h = await standard(tmp_path, cfg)
    await h.open_trade("s1", strategy="scalp")
    await h.quote(0.44, 0.46)
    assert [e["trade_id"] for e in h.exits] == ["s1"]
    await h.close()


# --- the snapshot --------------------------------------------------------------------------


async def test_snapshot_shows_trades_rules_and_strikes(tmp_path):
    cfg = config(auto_stop={"criteria": {"max_loss_percent": 30, "profit_target_percent": 50}})
    h = await Harness(tmp_path, cfg).open()
    await h.contract("KXBTCD-25NOV2415-T96750", 96750)
    await h.contract(CID, 97000)
    await h.contract("KXBTCD-25NOV2415-T97250", 97250)
    await h.spot(97100.0)
    for cid in ("KXBTCD-25NOV2415-T96750", CID, "KXBTCD-25NOV2415-T97250"):
        await h.quote(0.50, 0.52, cid=cid)
    await h.start()
    await h.open_trade()
    await h.quote(0.45, 0.47)
    snap = h.engine.snapshot()
    row = snap.trades[0]
    assert (row.trade_id, row.mark, row.state) == ("t1", 0.45, "armed")
    assert row.pnl == pytest.approx(-0.5) and row.pnl_pct == pytest.approx(-10.0)
    assert row.nearest == "max_loss 20%"  # 20 points from the -30 % stop
    assert [s.strike for s in snap.strikes] == [96750, 97000, 97250]
    assert [s.atm for s in snap.strikes] == [False, True, False]
    assert [s.held for s in snap.strikes] == [False, True, False]
    assert snap.strikes[1].no_bid == pytest.approx(0.53) and snap.strikes[
        1
    ].buffer == pytest.approx(100.0)
    assert snap.market.spot == 97100.0 and snap.market.ttc_seconds == pytest.approx(3600.0)
    assert snap.mode == "dry_run" and snap.armed
    assert h.engine.snapshot() is snap  # unchanged engine: the same immutable object
    await h.quote(0.44, 0.46)
    assert h.engine.snapshot() is not snap
    await h.close()


# --- bad input from feeds and other programs -----------------------------------------------


async def test_out_of_order_quote_raises_a_data_quality_note(tmp_path):
    h = await standard(tmp_path)
    h.at(5)
    await h.quote(0.50, 0.52)
    await h.quote(0.10, 0.12, ts=T0 + 3)
    note = [a for a in h.of_kind("data_quality") if "older than the last one" in a.message]
    assert len(note) == 1 and note[0].severity.value == "info"
    await h.close()


@pytest.mark.parametrize(
    ("side", "price", "why"),
    [("yes", 1.4, "outside 0..1"), ("long", 0.5, "does not fit"), ("yes", -0.1, "must be >= 0")],
)
async def test_impossible_trade_openings_are_refused_with_a_reason(tmp_path, side, price, why):
    h = await standard(tmp_path)
    await h.open_trade("bad", side=side, price=price)
    assert "bad" not in h.engine.trades
    assert await h.store.get_trade("bad") is None
    assert any(why in a.message for a in h.of_kind("data_quality"))
    await h.close()


async def test_a_repeated_trade_id_is_refused_and_reported(tmp_path):
    h = await standard(tmp_path)
    await h.open_trade("t1", qty=99)
    assert h.engine.trades["t1"].qty == 10
    assert any("already in the journal" in a.message for a in h.of_kind("data_quality"))
    await h.close()


@pytest.mark.parametrize("value", [math.nan, 7.0, -1.0])
async def test_impossible_settlement_values_leave_trades_open(tmp_path, value):
    h = await standard(tmp_path)
    await h.settle(value)
    assert "t1" in h.engine.trades
    assert (await h.store.get_trade("t1")).state == TradeState.OPEN
    assert any(a.severity.value == "critical" for a in h.of_kind("data_quality"))
    await h.close()


async def test_spot_update_refreshes_market_rules_without_reevaluating_quotes(tmp_path):
    cfg = config(auto_stop={"criteria": {"max_loss_percent": 30, "momentum_threshold_bps": 50}})
    h = await standard(tmp_path, cfg)
    for i, price in enumerate((97100.0, 97090.0, 97080.0), start=1):
        h.at(60 * i)
        await h.quote(0.50, 0.52)
        await h.spot(price)
    row = h.engine.snapshot().trades[0]
    mom = next(r for r in row.rules if r.rule == "momentum")
    assert not mom.fired and 0 < mom.value < 50  # falling spot: adverse for a YES-above holder
    h.at(240)
    await h.quote(0.50, 0.52)
    await h.spot(96000.0)  # -1.1 % in a minute: about -80 bps of momentum against the holder
    assert [e["rule"] for e in h.exits] == ["momentum"]
    await h.close()


async def test_an_internal_error_on_one_event_does_not_stop_the_feed(tmp_path):
    h = await standard(tmp_path)

    async def broken(ev):
        raise RuntimeError("boom")

    real = h.engine.handle
    h.engine.handle = broken
    await h.engine.handle_safely(QuoteEvent(T0, Quote(CID, 0.5, 0.52, T0)))
    h.engine.handle = real
    crit = [a for a in h.of_kind("data_quality") if a.severity.value == "critical"]
    assert len(crit) == 1 and "RuntimeError: boom" in crit[0].message
    await h.quote(0.30, 0.32)  # the engine still protects the trade
    assert [e["rule"] for e in h.exits] == ["max_loss"]
    await h.close()


async def test_missing_quotes_right_after_start_are_alerted_only_if_they_last(tmp_path):
    h = await Harness(tmp_path).open()
    await h.contract()
    await h.spot(97100.0)
    await h.start()
    await h.open_trade()  # no quote yet: stale, but feeds are still connecting
    await h.tick(5)
    assert h.engine.snapshot().trades[0].state == "stale"
    assert h.of_kind("data_quality") == []
    h.at(11)
    await h.spot(97100.0)
    await h.tick()  # still nothing after max_quote_age_seconds: now it is a problem
    dq = h.of_kind("data_quality")
    assert len(dq) == 1 and "no quote" in dq[0].message
    await h.close()


async def test_subscribers_get_a_new_immutable_snapshot_after_each_change(tmp_path):
    import dataclasses

    h = await standard(tmp_path)
    seen = []
    h.engine.subscribers.append(seen.append)
    await h.quote(0.45, 0.47)
    await h.engine.command(Command("pause", "t1"))
    assert len(seen) >= 2 and seen[-1].seq > seen[0].seq
    assert seen[0].trades[0].mark == 0.45 and seen[-1].trades[0].state == "paused"
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[-1].armed = False  # type: ignore[misc]
    await h.close()


async def test_alerts_before_a_restart_are_shown_again_but_not_announced_again(tmp_path):
    h1 = await standard(tmp_path)
    await h1.engine.command(Command("pause_all"))
    before = [(a.kind, a.message) for a in h1.engine.snapshot().alerts]
    assert before and all(a.seq > 0 for a in h1.engine.snapshot().alerts)
    await h1.close()
    h2 = await _restart(tmp_path, h1.cfg)
    restored = h2.engine.snapshot().alerts
    assert [(a.kind, a.message) for a in restored][-len(before) :] == before
    assert all(a.seq <= 0 for a in restored)  # the UI announces only seq > what it has seen
    assert sorted(a.seq for a in restored) == [a.seq for a in reversed(restored)]
    await h2.engine.command(Command("resume_all"))
    after = h2.engine.snapshot().alerts
    await h2.close()
    new = [a for a in after if a.seq > 0]
    assert sorted(a.seq for a in new) == list(range(1, len(new) + 1))
    assert any("resume" in a.message.lower() for a in new)


async def test_trade_detail_places_the_stops_in_dollars_and_lists_the_trades_alerts(tmp_path):
    cfg = config(
        auto_stop={"criteria": {"max_loss_percent": 30, "profit_target_percent": 50}},
    )
    h = await standard(tmp_path, cfg)  # t1: YES 10 @ 0.50, cost basis $5.00
    await h.engine.command(Command("pause", "t1"))
    h.at(10)
    await h.quote(0.55, 0.57)
    d = await h.engine.trade_detail("t1")
    assert d is not None and d.cost_basis == 5.0
    levels = {lv.name: lv.pnl for lv in d.levels}
    assert levels["max_loss"] == -1.5 and levels["profit_target"] == 2.5
    assert levels["entry"] == 0.0 and levels["peak"] == d.row.peak_pnl
    assert d.marks[-1][1] == d.row.pnl  # the chart ends at the P&L the trades table shows
    assert any(a.kind.value == "trade_detected" for a in d.alerts)
    assert all(a.trade_id == "t1" for a in d.alerts)
    assert dict(d.criteria)["max_loss_percent"] == 30
    await h.engine.command(Command("close", "t1"))
    assert await h.engine.trade_detail("t1") is None  # closed: the screen says so
    await h.close()
