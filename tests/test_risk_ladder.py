"""Issue 19's semantics around the rules: what a risk breach does (never switch the stops off;
optionally close every trade once), a stop that cannot act says so loudly and on its row, an
exhausted ladder ends as configured (retry after a while, or one last crossing order), and every
change of state (reload, arm/disarm, kill switch) is announced past the alert cool-down."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from engine.commands import Command
from engine.config import ConfigError, load_config, parse_config
from engine.exit_ladder import cross_limit
from engine.models import Quote, Trade, TradeState
from engine.supervisor import BLOCKED_SIGNAL_REPEAT_SECONDS
from tests.engine_harness import CID, T0, config, standard
from tests.kalshi_world import world as world  # the fixture (loopback Kalshi)

# --- 1. a risk breach never switches the stops off --------------------------------------------


def test_halt_on_breach_is_refused_naming_its_replacement() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"risk": {"max_daily_loss": 50, "halt_on_breach": True}})
    text = str(e.value)
    assert "risk.halt_on_breach" in text
    assert "on_daily_loss" in text and "close_all" in text


@pytest.mark.parametrize("key", ["on_daily_loss", "on_total_risk"])
def test_the_breach_policies_take_alert_or_close_all(key: str) -> None:
    assert getattr(parse_config({}).risk, key) == "alert"
    assert getattr(parse_config({"risk": {key: "close_all"}}).risk, key) == "close_all"
    with pytest.raises(ConfigError) as e:
        parse_config({"risk": {key: "halt"}})
    assert f"risk.{key}" in str(e.value) and "alert, close_all" in str(e.value)


def _loss_cfg(policy: str) -> object:
    return config(risk={"max_daily_loss": 1.0, "on_daily_loss": policy})


async def test_a_daily_loss_breach_with_alert_closes_nothing_and_pauses_nothing(tmp_path):
    h = await standard(tmp_path, _loss_cfg("alert"))
    await h.open_trade("t2", qty=4)
    await h.quote(0.40, 0.42)  # t1 -1.00, t2 -0.40: daily -1.40, beyond -1.00
    await h.tick(1)
    [risk] = h.of_kind("risk_limit")
    assert risk.severity.value == "critical" and "daily P&L $-1.40" in risk.message
    assert h.engine.paused_all is False  # the stops stay on
    assert h.venue.submitted == [] and h.exits == []
    await h.close()


async def test_a_daily_loss_breach_with_close_all_closes_every_trade_exactly_once(tmp_path):
    h = await standard(tmp_path, _loss_cfg("close_all"))
    await h.open_trade("t2", qty=4)
    await h.quote(0.40, 0.42)
    for dt in range(1, 6):  # the breach lasts (the losses are now realised): still once
        await h.quote(0.40, 0.42, ts=T0 + dt)
        await h.tick(dt)
    assert sorted((e["trade_id"], e["rule"]) for e in h.exits) == [
        ("t1", "risk_daily_loss"),
        ("t2", "risk_daily_loss"),
    ]
    assert len(h.venue.submitted) == 2
    assert h.engine.trades == {} and h.engine.paused_all is False
    for tid in ("t1", "t2"):
        t = await h.store.get_trade(tid)
        assert t is not None and t.state == TradeState.CLOSED
        assert t.exit_reason == "risk_daily_loss"
    why = [a for a in h.of_kind("risk_limit") if "close_all" in a.message]
    assert len(why) == 1 and why[0].severity.value == "critical"
    assert "on_daily_loss" in why[0].message and "t1" in why[0].message
    assert "t2" in why[0].message and "daily P&L" in why[0].message
    await h.close()


async def test_close_all_on_a_breach_leaves_a_paused_trade_and_says_so(tmp_path):
    h = await standard(tmp_path, _loss_cfg("close_all"))
    await h.open_trade("t2", qty=4)
    assert (await h.engine.command(Command("pause", "t2"))).ok
    await h.quote(0.40, 0.42)
    await h.tick(1)
    assert [e["trade_id"] for e in h.exits] == ["t1"]
    [why] = [a for a in h.of_kind("risk_limit") if "close_all" in a.message]
    assert "NOT closing t2" in why.message and "paused" in why.message
    await h.close()


async def test_a_total_risk_breach_with_close_all_closes_every_trade(tmp_path):
    cfg = config(risk={"max_total_risk": 6.0, "on_total_risk": "close_all"})
    h = await standard(tmp_path, cfg)
    await h.tick(1)
    assert h.exits == []  # $5 at risk
    await h.open_trade("t2", qty=4)  # $7 at risk
    await h.tick(2)
    await h.tick(3)
    assert sorted((e["trade_id"], e["rule"]) for e in h.exits) == [
        ("t1", "risk_total_risk"),
        ("t2", "risk_total_risk"),
    ]
    assert len(h.venue.submitted) == 2
    await h.close()


# --- 2. a stop that cannot act says so loudly ---------------------------------------------------


async def _blocked(tmp_path: Path, how: str, cooldown: float = 0.0):
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            **({"mode": "alert_only"} if how == "alert_only" else {}),
        },
        alerts={"cooldown_seconds": cooldown},
    )
    h = await standard(tmp_path, cfg)
    cmd = {"paused": Command("pause", "t1"), "disarmed": Command("disarm")}
    cmd["kill switch"] = Command("pause_all")
    if how in cmd:
        assert (await h.engine.command(cmd[how])).ok
    return h


@pytest.mark.parametrize("how", ["paused", "disarmed", "kill switch", "alert_only"])
async def test_a_rule_that_fires_while_it_cannot_act_warns_and_shows_on_the_row(tmp_path, how):
    h = await _blocked(tmp_path, how)
    await h.quote(0.30, 0.32)  # -40 %: max_loss fires
    [sig] = h.of_kind("exit_signal")[-1:]
    assert sig.severity.value == "warning"
    assert "max_loss FIRED -40% <= -30%" in sig.message and "not closing" in sig.message
    [row] = h.engine.snapshot().trades
    assert row.nearest == f"max_loss FIRED — {how}"
    assert h.venue.submitted == []
    await h.close()


@pytest.mark.parametrize("cooldown", [0.0, 900.0])  # the alert cool-down never swallows it
async def test_the_warning_repeats_every_few_minutes_while_the_rule_stays_fired(tmp_path, cooldown):
    h = await _blocked(tmp_path, "paused", cooldown)
    await h.quote(0.30, 0.32)
    n = len(h.of_kind("exit_signal"))
    for dt in range(10, int(BLOCKED_SIGNAL_REPEAT_SECONDS), 10):
        h.at(dt)
        await h.quote(0.30, 0.32)
    assert len(h.of_kind("exit_signal")) == n  # not on every quote
    h.at(BLOCKED_SIGNAL_REPEAT_SECONDS + 1)
    await h.quote(0.29, 0.31)
    assert len(h.of_kind("exit_signal")) == n + 1
    again = h.of_kind("exit_signal")[-1]
    assert again.severity.value == "warning" and "max_loss FIRED -42% <= -30%" in again.message
    # Back within the limit: the row no longer says FIRED.
    await h.quote(0.49, 0.51)
    [row] = h.engine.snapshot().trades
    assert "FIRED" not in row.nearest and row.state == "paused"
    await h.close()


# --- 3. an exhausted ladder has a configured end -------------------------------------------------


def test_the_ladders_end_keys_parse_and_bad_values_are_refused() -> None:
    cfg = parse_config(
        {"auto_stop": {"ladder": {"on_exhausted": "cross", "retry_after_seconds": 5}}}
    )
    assert (cfg.ladder().on_exhausted, cfg.ladder().retry_after_seconds) == ("cross", 5.0)
    d = parse_config({})
    assert (d.ladder().on_exhausted, d.ladder().retry_after_seconds) == ("retry", 60.0)
    ib = parse_config(
        {
            "engine": {"venue": "ibkr"},
            "auto_stop": {"mode": "alert_only", "ladder": {"on_exhausted": "cross"}},
        }
    )
    assert ib.ladder().on_exhausted == "cross"  # for every venue, IB's ladder keys or not
    with pytest.raises(ConfigError) as e:
        parse_config({"auto_stop": {"ladder": {"on_exhausted": "market"}}})
    assert "auto_stop.ladder.on_exhausted" in str(e.value) and "retry, cross" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"auto_stop": {"ladder": {"retry_after_seconds": 0}}})
    assert "auto_stop.ladder.retry_after_seconds" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"auto_stop": {"ladder": {"on_exausted": "cross"}}})
    assert "did you mean 'on_exhausted'" in str(e.value)


def _t(side: str) -> Trade:
    return Trade("t", CID, side, 10.0, 0.5, T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("side", "binary", "limit"),
    [
        ("yes", True, 0.01),  # Kalshi: the worst tick
        ("no", True, 0.01),
        ("short", True, 0.99),
        ("long", False, 0.05),  # an option: a marketable limit at the venue's lowest price
        ("short", False, 0.52),  # bought back through the ask by the spread (0.44 + 0.04 * 2)
    ],
)
def test_the_crossing_price_is_the_most_aggressive_the_venue_accepts(side, binary, limit) -> None:
    q = Quote(CID, 0.40, 0.44, T0)
    assert cross_limit(_t(side), q, binary, tick=0.04, floor=0.05) == pytest.approx(limit)


def _never_fills(slip: float = 0.20, **ladder: object) -> object:
    return config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "ladder_max_attempts": 3,
            "ladder_step_seconds": 1,
            "ladder_tick": 0.05,
            "ladder_floor": 0.20,
            "ladder": ladder,
        },
        paper={"slippage": "fixed", "slippage_fixed": slip},  # 0.20: fills 0.10 for a 0.30 bid
    )


async def test_retry_after_seconds_sets_when_an_exhausted_ladder_starts_again(tmp_path):
    h = await standard(tmp_path, _never_fills(on_exhausted="retry", retry_after_seconds=10))
    await h.quote(0.30, 0.32)
    for dt in range(1, 5):
        await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    assert len(h.venue.submitted) == 3  # 0.30, 0.25, 0.20: exhausted at T0+2
    gave_up = h.of_kind("execution_failure")[-1]
    assert "LIMIT_REACHED" in gave_up.message and "10s" in gave_up.message
    for dt in range(5, 12):
        await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    assert len(h.venue.submitted) == 3  # the cool-down runs to T0+12
    await h.tick(12)  # no new quote (the last, from T0+11, is fresh): the tick retries
    assert len(h.venue.submitted) == 4 and h.venue.submitted[-1].limit_price == pytest.approx(0.30)
    assert min(r.limit_price for r in h.venue.submitted) >= 0.20  # the floor holds
    await h.close()


async def test_cross_sends_one_last_order_at_the_worst_tick_and_books_the_venues_fill(tmp_path):
    h = await standard(tmp_path, _never_fills(on_exhausted="cross"))
    await h.quote(0.30, 0.32)
    for dt in range(1, 8):
        if "t1" in h.engine.trades:
            await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    limits = [r.limit_price for r in h.venue.submitted]
    assert limits == [pytest.approx(x) for x in (0.30, 0.25, 0.20, 0.01)]  # floor, then cross
    assert len({r.client_order_id for r in h.venue.submitted}) == 4
    t = await h.store.get_trade("t1")
    assert t is not None and t.state == TradeState.CLOSED and t.exit_reason == "max_loss"
    assert t.exit_price == pytest.approx(0.10)  # the paper broker's fill, not the limit
    crit = [a for a in h.of_kind("execution_failure") if a.severity.value == "critical"]
    assert len(crit) == 1 and "CROSSING" in crit[0].message and "0.01" in crit[0].message
    await h.close()


async def test_a_cross_that_does_not_fill_either_leaves_the_trade_open_and_retries_later(
    tmp_path,
):
    # Nothing fills at all: the paper price is 0.30 - 0.40, floored at 0, under even 0.01.
    h = await standard(tmp_path, _never_fills(0.40, on_exhausted="cross", retry_after_seconds=30))
    await h.quote(0.30, 0.32)
    for dt in range(1, 10):
        await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    assert [r.limit_price for r in h.venue.submitted][-1] == pytest.approx(0.01)
    assert len(h.venue.submitted) == 4  # one cross only
    assert h.engine.trades["t1"].state == TradeState.OPEN
    last = h.of_kind("execution_failure")[-1]
    assert last.severity.value == "critical" and "left OPEN" in last.message
    await h.close()


# --- 4. every change of state is announced --------------------------------------------------------


async def test_every_reload_is_announced_even_within_the_alert_cooldown(tmp_path):
    path = tmp_path / "cfg.toml"
    body = '[alerts]\nlog_file = ""\ncooldown_seconds = 60\n[auto_stop]\narmed = {}\n'
    path.write_text(body.format("true"))
    h = await standard(tmp_path, load_config(path))
    h.engine.config_path = path
    for i, armed in enumerate(["false", "true", "false", "true"]):
        h.at(3 * (i + 1))
        path.write_text(body.format(armed))
        assert (await h.engine.command(Command("reload"))).ok
    reloads = [a for a in h.alerts if "config reloaded" in a.message]
    assert len(reloads) == 4
    assert "armed" in reloads[-1].message and "disarmed" not in reloads[-1].message
    assert h.engine.armed is True
    await h.close()


async def test_arm_disarm_and_the_kill_switch_are_each_announced_within_the_cooldown(tmp_path):
    cfg = config(alerts={"cooldown_seconds": 60})
    h = await standard(tmp_path, cfg)
    for i, action in enumerate(["disarm", "arm", "disarm", "arm"]):
        h.at(i + 1)
        assert (await h.engine.command(Command(action))).ok
    words = [a.message.split(":")[0] for a in h.alerts if a.message.startswith(("ARMED", "DIS"))]
    assert words == ["DISARMED", "ARMED", "DISARMED", "ARMED"]
    for i, action in enumerate(["pause_all", "resume_all", "pause_all"]):
        h.at(10 + i)
        assert (await h.engine.command(Command(action))).ok
    kill = [a.message for a in h.alerts if a.message.startswith("kill switch")]
    assert [m.split(":")[0] for m in kill] == [
        "kill switch ON",
        "kill switch OFF",
        "kill switch ON",
    ]
    await h.close()


# --- replay scenarios -----------------------------------------------------------------------------


async def test_replay_a_daily_loss_breach_with_close_all_closes_both_trades_once(tmp_path):
    # risk_close_all.jsonl: t1 (YES 10) and t2 (YES 4) @ 0.50, no rule on, max daily loss $1.
    # Bid 0.45 at 1001.5: daily -0.70, within. Bid 0.40 at 1002.5: -1.40, beyond: the tick at
    # 1003 closes both at 0.40. The bids after (0.35, 0.30) close nothing more.
    from tests.test_replay import assert_exit, exit_row, run_scenario

    toml = '[risk]\nmax_daily_loss = 1.0\non_daily_loss = "close_all"\n'
    run = await run_scenario("risk_close_all.jsonl", toml, tmp_path, trades=2)
    assert len(run.exits) == 2
    for tid, qty in (("t1", 10), ("t2", 4)):
        row = exit_row(run, tid)
        assert_exit(row, ts=1003.0, rule="risk_daily_loss", mark=0.40, qty=qty, entry=0.50)
    [why] = [a for a in run.alerts("risk_limit") if "close_all" in a["message"]]
    assert why["severity"] == "critical" and why["ts"] == 1003.0
    assert "on_daily_loss" in why["message"]


async def test_replay_an_exhausted_ladder_crosses_once_and_books_the_fill(tmp_path):
    # ladder_cross.jsonl: YES 10 @ 0.50, max loss 30 %. Bid 0.30 from 1001.5 (-40 %). The paper
    # broker fills 0.20 under the mark (0.10), so the two ladder steps (0.30, 0.25; floor 0.20)
    # get nothing; the crossing order at 0.01 a step later fills at 0.10.
    from tests.test_replay import exit_row, run_scenario

    toml = """
        [paper]
        slippage = "fixed"
        slippage_fixed = 0.20
        [auto_stop]
        ladder_max_attempts = 2
        ladder_step_seconds = 1
        ladder_tick = 0.05
        ladder_floor = 0.20
        [auto_stop.ladder]
        on_exhausted = "cross"
        [auto_stop.criteria]
        max_loss_percent = 30
    """
    run = await run_scenario("ladder_cross.jsonl", toml, tmp_path)
    row = exit_row(run, "t1")
    assert row["rule"] == "max_loss"
    assert row["pnl"] == pytest.approx(10 * (0.10 - 0.50))  # the venue's fill, not the limit
    crit = [a for a in run.alerts("execution_failure") if a["severity"] == "critical"]
    assert len(crit) == 1 and "CROSSING" in crit[0]["message"] and "at 0.01" in crit[0]["message"]


# --- the cross at Kalshi (loopback server) ------------------------------------------------------


async def test_at_kalshi_the_cross_is_one_ioc_sell_at_one_cent_booked_at_the_books_price(
    world,
) -> None:
    """The quote says YES bid 0.30, but the only resting bids are at 0.12: the ladder's two IOC
    sells (0.30, 0.29; floor 0.25) fill nothing; the cross, one IOC sell at 0.01, takes the 0.12
    bids, and the trade is booked at 0.12 (the fill), not 0.01."""
    from engine.runtime import build_runtime
    from tests.kalshi_world import HELD, step

    w = world
    cfg = w.config(
        ladder_tick=0.01,
        ladder_step_seconds=1.0,
        ladder_max_attempts=2,
        ladder_floor=0.25,
        ladder={"on_exhausted": "cross"},
    )
    rt = await build_runtime(cfg, None, clock=w.clock)
    try:
        [t] = rt.engine.trades.values()
        w.book("0.30", "0.32")
        w.kalshi.state.set_book(HELD, yes=[("0.12", "50")])
        for _ in range(6):
            await step(w, rt)
        posts = w.kalshi.state.order_posts()
        assert [p.body["price"] for p in posts] == ["0.3000", "0.2900", "0.0100"]
        assert all(p.body["time_in_force"] == "immediate_or_cancel" for p in posts)
        assert all(p.body["reduce_only"] is True for p in posts)
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_price == pytest.approx(0.12)
        assert w.kalshi.state.positions[HELD]["position_fp"] == "0.00"
    finally:
        await rt.close()


# --- check-config (the real command) ------------------------------------------------------------


def test_check_config_refuses_halt_on_breach_with_exit_2_and_accepts_the_new_keys(
    tmp_path,
) -> None:
    from tests.test_cli import Cli

    cli = Cli(tmp_path)
    cli.write_config("[risk]\nmax_daily_loss = 100\nhalt_on_breach = true\n")
    proc = cli.run("--config", str(cli.config), "check-config")
    assert proc.returncode == 2, proc.stderr
    assert "line 5: risk.halt_on_breach: removed" in proc.stderr
    assert "on_daily_loss" in proc.stderr
    cli.write_config(
        """
        [risk]
        max_daily_loss = 100
        on_daily_loss = "close_all"
        on_total_risk = "close_all"
        [auto_stop.ladder]
        on_exhausted = "cross"
        retry_after_seconds = 15
        """
    )
    out = cli.ok("--config", str(cli.config), "check-config")
    shown = tomllib.loads(out)
    assert shown["risk"]["on_daily_loss"] == shown["risk"]["on_total_risk"] == "close_all"
    assert shown["auto_stop"]["ladder"] == {"on_exhausted": "cross", "retry_after_seconds": 15.0}
    cli.write_config('[auto_stop.ladder]\non_exhausted = "market"\n')
    proc = cli.run("--config", str(cli.config), "check-config")
    assert proc.returncode == 2 and "auto_stop.ladder.on_exhausted" in proc.stderr
    assert "expected one of: retry, cross" in proc.stderr


async def test_the_screens_row_draws_a_blocked_stop_in_red_and_finds_it_by_search(tmp_path):
    from tui.format import Palette
    from tui.rows import TRADE_COLUMNS, trade_row

    h = await _blocked(tmp_path, "kill switch")
    await h.quote(0.30, 0.32)
    [snap_row] = h.engine.snapshot().trades
    row = trade_row(snap_row, Palette())
    nearest = row.cells[[c.key for c in TRADE_COLUMNS].index("nearest")]
    assert nearest == ("max_loss FIRED — kill switch", "bold white on red")
    assert "paused" in row.search  # the state column: the kill switch pauses every trade
    assert "max_loss fired" in row.search  # "/fired" lists the stops that cannot act
    await h.close()
