"""The exit's limit-price ladder: first at the held side's bid, then a tick lower each step, never
below the floor, a bounded number of attempts, one warning while it climbs down and a critical
alert when it gives up."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, parse_config
from engine.exit_ladder import exit_limit
from engine.models import Quote, Trade, TradeState
from tests.engine_harness import CID, T0, config, standard


def _trade(side: str) -> Trade:
    return Trade("t", CID, side, 10.0, 0.5, T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("side", "attempt", "limit", "at_floor"),
    [
        ("yes", 1, 0.40, False),  # the YES bid
        ("yes", 3, 0.38, False),  # two ticks lower
        ("yes", 50, 0.05, True),  # never below the floor
        ("no", 1, 0.58, False),  # the NO bid = 1 - YES ask
        ("no", 2, 0.57, False),
        ("short", 1, 0.42, False),  # a short is bought back from the ask...
        ("short", 3, 0.44, False),  # ...upwards
    ],
)
def test_each_attempt_asks_a_tick_worse_from_the_held_sides_bid(
    side: str, attempt: int, limit: float, at_floor: bool
) -> None:
    step = exit_limit(_trade(side), Quote(CID, 0.40, 0.42, T0), attempt, 0.01, 0.05)
    assert step.limit == pytest.approx(limit, abs=1e-9)
    assert step.at_floor is at_floor


def test_a_bid_already_below_the_floor_is_asked_at_the_floor() -> None:
    step = exit_limit(_trade("yes"), Quote(CID, 0.02, 0.04, T0), 1, 0.01, 0.05)
    assert (step.limit, step.start, step.at_floor) == (0.05, 0.02, True)


def test_the_renamed_keys_say_what_they_are_called_now() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"auto_stop": {"exit_max_attempts": 3}})
    assert "renamed: use 'ladder_max_attempts'" in str(e.value)


async def test_the_first_attempts_do_not_fill_and_the_ladder_steps_down_until_one_does(tmp_path):
    # The paper broker fills 0.02 below the bid (thin book): asks at 0.30 and 0.29 get nothing,
    # the third attempt at 0.28 fills.
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "ladder_max_attempts": 5,
            "ladder_step_seconds": 2,
            "ladder_tick": 0.01,
        },
        paper={"slippage": "fixed", "slippage_fixed": 0.02},
    )
    h = await standard(tmp_path, cfg)
    await h.quote(0.30, 0.32)  # -40 %: max_loss fires at once
    assert [r.limit_price for r in h.venue.submitted] == [pytest.approx(0.30)]
    await h.tick(1)  # not yet: a step is 2 s
    assert len(h.venue.submitted) == 1
    for dt in (2, 4, 6, 8):
        await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    limits = [r.limit_price for r in h.venue.submitted]
    assert limits == [pytest.approx(x) for x in (0.30, 0.29, 0.28)]
    assert len({r.client_order_id for r in h.venue.submitted}) == 3
    t = await h.store.get_trade("t1")
    assert t is not None and t.state == TradeState.CLOSED and t.exit_reason == "max_loss"
    assert t.exit_price == pytest.approx(0.28)
    orders = await h.store.orders_for_intent(
        (await h.store.intents_for_trade("t1"))[0]["intent_id"]
    )
    assert [(o["limit_price"], o["status"]) for o in orders] == [
        (pytest.approx(0.30), "unfilled"),
        (pytest.approx(0.29), "unfilled"),
        (pytest.approx(0.28), "filled"),
    ]
    [warning] = h.of_kind("execution_failure")  # one warning for the whole ladder
    assert warning.severity.value == "warning" and "at 0.3000 unfilled" in warning.message
    assert len(h.of_kind("auto_stop")) == 1
    await h.close()


async def test_the_ladder_follows_the_bid_when_the_market_moves(tmp_path):
    cfg = config(
        auto_stop={"criteria": {"max_loss_percent": 30}, "ladder_step_seconds": 1},
        paper={"slippage": "fixed", "slippage_fixed": 0.05},
    )
    h = await standard(tmp_path, cfg)
    await h.quote(0.30, 0.32)
    await h.quote(0.25, 0.27, ts=T0 + 1)
    await h.tick(1)
    assert [r.limit_price for r in h.venue.submitted] == [
        pytest.approx(0.30),
        pytest.approx(0.24),  # the new bid, one tick lower
    ]
    await h.close()


async def test_at_the_floor_it_gives_up_after_the_last_attempt_and_leaves_the_trade_open(
    tmp_path,
):
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "ladder_max_attempts": 4,
            "ladder_step_seconds": 1,
            "ladder_tick": 0.05,
            "ladder_floor": 0.20,
        },
        paper={"slippage": "fixed", "slippage_fixed": 0.20},  # nothing fills above 0.10
    )
    h = await standard(tmp_path, cfg)
    await h.quote(0.30, 0.32)
    for dt in range(1, 8):
        await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    limits = [r.limit_price for r in h.venue.submitted]
    assert limits == [pytest.approx(x) for x in (0.30, 0.25, 0.20, 0.20)]  # stops at the floor
    t = h.engine.trades["t1"]
    assert t.state == TradeState.OPEN and t.qty == 10
    alerts = h.of_kind("execution_failure")
    assert [a.severity.value for a in alerts] == ["warning", "critical"]
    assert "LIMIT_REACHED: ladder exhausted after 4 attempts" in alerts[1].message
    assert "left OPEN" in alerts[1].message
    [held] = await h.venue.positions()  # nothing was sold
    assert (held.contract_id, held.qty) == (CID, 10)
    await h.close()


async def test_a_market_below_the_floor_says_mid_too_low(tmp_path):
    """An option worth less than the ladder's floor cannot be sold by the ladder: the trader is
    told why (MID_TOO_LOW) in the one warning and in the final LIMIT_REACHED."""
    cfg = config(
        auto_stop={
            "criteria": {"max_loss_percent": 30},
            "ladder_max_attempts": 3,
            "ladder_step_seconds": 1,
            "ladder_tick": 0.05,
            "ladder_floor": 0.20,
        },
    )
    h = await standard(tmp_path, cfg)
    await h.quote(0.10, 0.14)  # held mid 0.12, under the floor
    for dt in range(1, 6):
        await h.quote(0.10, 0.14, ts=T0 + dt)
        await h.tick(dt)
    assert [r.limit_price for r in h.venue.submitted] == [pytest.approx(0.20)] * 3
    alerts = h.of_kind("execution_failure")
    assert [a.severity.value for a in alerts] == ["warning", "critical"]
    for a in alerts:
        assert "MID_TOO_LOW: the mid 0.1200 is below the floor 0.2" in a.message
    assert "LIMIT_REACHED" in alerts[1].message
    await h.close()


async def test_a_market_above_the_floor_does_not_say_mid_too_low(tmp_path):
    cfg = config(
        auto_stop={"criteria": {"max_loss_percent": 30}, "ladder_max_attempts": 2},
        paper={"slippage": "fixed", "slippage_fixed": 0.20},  # nothing fills
    )
    h = await standard(tmp_path, cfg)
    await h.quote(0.30, 0.32)
    for dt in range(1, 8):
        await h.quote(0.30, 0.32, ts=T0 + dt)
        await h.tick(dt)
    alerts = h.of_kind("execution_failure")
    assert alerts and not any("MID_TOO_LOW" in a.message for a in alerts)
    await h.close()
