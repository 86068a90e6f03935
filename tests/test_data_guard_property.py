"""Property: no exit is ever produced from an invalid or stale quote.

Hypothesis draws sequences of quotes that are each invalid (crossed, NaN, infinite, negative,
above 1, one-sided, missing) or stale (stamped more than max_quote_age_seconds before the clock),
at prices that would fire every enabled rule if they were believed. Nothing may reach the venue.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine_harness import CID, T0, Harness, config

price = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
bad_number = st.sampled_from([math.nan, math.inf, -math.inf, -0.01, -5.0, 1.01, 7.0])

invalid_quote = st.one_of(
    st.tuples(price, price)
    .filter(lambda ba: ba[0] > ba[1])
    .map(lambda ba: ("q", ba[0], ba[1], 0.0)),
    st.tuples(bad_number, price).map(lambda ba: ("q", ba[0], ba[1], 0.0)),
    st.tuples(price, bad_number).map(lambda ba: ("q", ba[0], ba[1], 0.0)),
    price.map(lambda p: ("q", None, p, 0.0)),
    price.map(lambda p: ("q", p, None, 0.0)),
)
# Valid numbers, but stamped older than the 10 s limit allows.
stale_quote = st.tuples(price, price, st.floats(min_value=10.5, max_value=3600)).map(
    lambda t: ("q", min(t[0], t[1]), max(t[0], t[1]), t[2])
)
step = st.one_of(invalid_quote, stale_quote, st.just(("tick", None, None, 0.0)))


async def _run(steps: list[tuple]) -> list:
    # Thresholds so tight that any believed quote would fire a rule, whichever way it moved.
    cfg = config(
        auto_stop={"criteria": {"max_loss_percent": 0.01, "profit_target_percent": 0.01}},
        engine={"max_quote_age_seconds": 10},
    )
    with tempfile.TemporaryDirectory() as tmp:
        h = await Harness(Path(tmp), cfg).open()
        await h.contract()
        await h.spot(97000.0)
        await h.start()
        # The trade is opened with no usable quote at all, then only bad data arrives.
        await h.open_trade()
        for i, (kind, bid, ask, age) in enumerate(steps, start=1):
            now = h.at(20.0 * i)
            await h.spot(97000.0)
            if kind == "tick":
                await h.tick()
            else:
                await h.quote(bid, ask, ts=now - age, cid=CID)
        await h.tick()
        sent = list(h.venue.submitted)
        await h.close()
    return sent


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=12))
def test_no_exit_from_invalid_or_stale_quotes(steps):
    assert asyncio.run(_run(steps)) == []


def test_the_property_can_fail():
    """The same set-up with one good, fresh quote does exit: the property is not vacuous."""

    async def good() -> list:
        cfg = config(
            auto_stop={"criteria": {"max_loss_percent": 0.01, "profit_target_percent": 0.01}}
        )
        with tempfile.TemporaryDirectory() as tmp:
            h = await Harness(Path(tmp), cfg).open()
            await h.contract()
            await h.spot(97000.0)
            await h.start()
            await h.open_trade()
            h.at(20)
            await h.spot(97000.0)
            await h.quote(0.40, 0.42, ts=T0 + 20)
            sent = list(h.venue.submitted)
            await h.close()
        return sent

    assert len(asyncio.run(good())) == 1
