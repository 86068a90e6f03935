"""The paper venue: fill prices, slippage, fees, partials, rejections, idempotency, persistence."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from engine.config import PaperConfig
from engine.models import Quote
from engine.venues.base import OrderRequest, Venue, VenuePosition
from engine.venues.paper import PaperVenue

BIN = "KXBTCD-25NOV2114-T97000"
OPT = "BTC-20251121-97000-C"


def book(quotes: dict[str, Quote]):
    return quotes.get


def venue(cfg: PaperConfig | None = None, **kw) -> PaperVenue:
    quotes = {
        BIN: Quote(BIN, bid=0.55, ask=0.58, ts=1.0),
        OPT: Quote(OPT, bid=120.0, ask=125.0, ts=1.0),
    }
    return PaperVenue(cfg or PaperConfig(), book(quotes), **kw)


def sell(coid: str, side: str = "yes", qty: float = 10, limit: float | None = None, **kw):
    cid = BIN if side in ("yes", "no") else OPT
    action = "buy" if side == "short" else "sell"
    return OrderRequest(coid, cid, side, action, qty, limit, **kw)


async def test_is_a_venue() -> None:
    assert isinstance(venue(), Venue)


async def test_sell_yes_at_the_bid_and_no_at_one_minus_the_ask() -> None:
    v = venue()
    v.open_position(BIN, "yes", 10, 0.50)
    v.open_position(BIN, "no", 5, 0.40)
    r = await v.submit(sell("a", "yes"))
    assert (r.status, r.filled_qty, r.fees) == ("filled", 10, 0.0)
    assert r.avg_price == pytest.approx(0.55)
    r = await v.submit(sell("b", "no", qty=5))
    assert r.status == "filled" and r.avg_price == pytest.approx(0.42)
    assert await v.positions() == []


async def test_long_sells_at_bid_short_buys_at_ask() -> None:
    v = venue()
    v.open_position(OPT, "long", 2, 100.0)
    v.open_position(OPT, "short", 3, 130.0)
    assert (await v.submit(sell("l", "long", qty=2))).avg_price == pytest.approx(120.0)
    assert (await v.submit(sell("s", "short", qty=3))).avg_price == pytest.approx(125.0)


@pytest.mark.parametrize(
    ("cfg", "side", "qty", "expected"),
    [
        (PaperConfig(slippage="none"), "yes", 10, 0.55),
        (PaperConfig(slippage="fixed", slippage_fixed=0.02), "yes", 10, 0.53),
        (PaperConfig(slippage="fixed", slippage_fixed=0.02), "no", 10, 0.40),
        (PaperConfig(slippage="size", slippage_per_contract=0.001), "yes", 20, 0.53),
        (PaperConfig(slippage="size", slippage_per_contract=0.001), "no", 30, 0.39),
        (PaperConfig(slippage="fixed", slippage_fixed=0.5), "short", 1, 125.5),
        (PaperConfig(slippage="size", slippage_per_contract=0.25), "long", 4, 119.0),
        # Clamped: a binary never fills below 0; an option never below 0 either.
        (PaperConfig(slippage="fixed", slippage_fixed=0.9), "yes", 10, 0.0),
        (PaperConfig(slippage="fixed", slippage_fixed=500.0), "long", 1, 0.0),
    ],
)
async def test_slippage_models(cfg: PaperConfig, side: str, qty: float, expected: float) -> None:
    v = venue(cfg)
    v.open_position(BIN if side in ("yes", "no") else OPT, side, qty, 0.5)
    r = await v.submit(sell("x", side, qty=qty))
    assert r.status == "filled"
    assert r.avg_price == pytest.approx(expected)


async def test_binary_buy_clamped_at_one() -> None:
    # A short binary is unusual but the clamp is by side: yes/no are binaries (≤ 1).
    quotes = {BIN: Quote(BIN, bid=0.97, ask=0.99, ts=1.0)}
    v = PaperVenue(PaperConfig(slippage="fixed", slippage_fixed=0.05), book(quotes))
    v.open_position(BIN, "no", 1, 0.05)
    r = await v.submit(sell("n", "no", qty=1))
    assert r.avg_price == pytest.approx(0.0)  # 1 − 0.99 − 0.05 → clamped


async def test_fees() -> None:
    v = venue(PaperConfig(fee_per_contract=0.02))
    v.open_position(BIN, "yes", 10, 0.5)
    r = await v.submit(sell("f", qty=7))
    assert r.fees == pytest.approx(0.14)
    assert (await v.positions())[0].qty == 3


async def test_partial_fill_with_probability_one() -> None:
    v = venue(PaperConfig(partial_fill_probability=1.0))
    v.open_position(BIN, "yes", 10, 0.5)
    r = await v.submit(sell("p", qty=10))
    assert r.status == "partial"
    assert 1 <= r.filled_qty <= 9 and r.filled_qty.is_integer()
    assert "partial" in r.reason
    [pos] = await v.positions()
    assert pos.qty == 10 - r.filled_qty


async def test_rejection_with_probability_one() -> None:
    v = venue(PaperConfig(reject_probability=1.0))
    v.open_position(BIN, "yes", 10, 0.5)
    r = await v.submit(sell("r"))
    assert (r.status, r.filled_qty, r.avg_price, r.reason) == (
        "rejected",
        0.0,
        None,
        "simulated rejection",
    )
    assert (await v.positions())[0].qty == 10


async def test_repeated_client_order_id_fills_once() -> None:
    v = venue()
    v.open_position(BIN, "yes", 10, 0.5)
    first = await v.submit(sell("same", qty=4))
    again = await v.submit(sell("same", qty=4))
    assert again == first
    assert (await v.positions())[0].qty == 6
    assert await v.lookup("same") == first


async def test_unfilled_when_limit_is_not_marketable() -> None:
    v = venue()
    v.open_position(BIN, "yes", 10, 0.5)
    r = await v.submit(sell("u1", limit=0.56))
    assert (r.status, r.filled_qty, r.avg_price) == ("unfilled", 0.0, None)
    assert (await v.positions())[0].qty == 10
    r = await v.submit(sell("u2", limit=0.55))
    assert r.status == "filled" and r.avg_price == pytest.approx(0.55)
    v.open_position(OPT, "short", 1, 130.0)
    assert (await v.submit(sell("u3", "short", qty=1, limit=124.0))).status == "unfilled"
    assert (await v.submit(sell("u4", "short", qty=1, limit=125.0))).status == "filled"


async def test_never_sells_more_than_held() -> None:
    v = venue()
    v.open_position(BIN, "yes", 3, 0.5)
    r = await v.submit(sell("big", qty=10))
    assert (r.status, r.filled_qty) == ("partial", 3)
    assert await v.positions() == []
    r = await v.submit(sell("more", qty=1))
    assert r.status == "rejected" and "no open" in r.reason


async def test_rejections_for_bad_requests_and_quotes() -> None:
    quotes = {BIN: Quote(BIN, bid=0.60, ask=0.55, ts=1.0)}
    v = PaperVenue(PaperConfig(), book(quotes))
    v.open_position(BIN, "yes", 5, 0.5)
    v.open_position("MISSING", "yes", 5, 0.5)
    r = await v.submit(OrderRequest("q", "MISSING", "yes", "sell", 5, None))
    assert (r.status, r.reason) == ("rejected", "no quote")
    assert (await v.submit(sell("c"))).reason.startswith("crossed quote")
    r = await v.submit(OrderRequest("w", BIN, "yes", "buy", 5, None))
    assert r.status == "rejected" and "does not close" in r.reason
    assert (await v.submit(sell("z", qty=0))).status == "rejected"
    assert len(await v.positions()) == 2


async def test_fill_at_reference_price() -> None:
    v = venue(PaperConfig(slippage="fixed", slippage_fixed=0.01), fill_at="reference")
    v.open_position(BIN, "yes", 10, 0.5)
    r = await v.submit(sell("ref", qty=5, reference_price=0.61))
    assert r.avg_price == pytest.approx(0.60)
    r = await v.submit(sell("noref", qty=5))  # no reference → the quote rule
    assert r.avg_price == pytest.approx(0.54)


async def test_open_position_averages_and_settle_removes() -> None:
    v = venue()
    v.open_position(BIN, "yes", 10, 0.50)
    v.open_position(BIN, "yes", 30, 0.70)
    v.open_position(BIN, "no", 2, 0.30)
    v.open_position(OPT, "long", 1, 100.0)
    pos = {(p.contract_id, p.side): p for p in await v.positions()}
    assert pos[(BIN, "yes")].qty == 40
    assert pos[(BIN, "yes")].avg_price == pytest.approx(0.65)
    removed = v.settle(BIN, 1.0)
    assert {p.side for p in removed} == {"yes", "no"}
    assert await v.positions() == [VenuePosition(OPT, "long", 1, 100.0)]


async def test_lookup_unknown_is_none() -> None:
    assert await venue().lookup("never-sent") is None


async def test_persistence_across_a_new_venue(tmp_path: Path) -> None:
    path = tmp_path / "paper" / "venue.json"
    v1 = venue(PaperConfig(fee_per_contract=0.01), state_path=path)
    v1.open_position(BIN, "yes", 10, 0.5)
    v1.open_position(OPT, "short", 2, 130.0)
    first = await v1.submit(sell("keep", qty=4))
    last = records(path)[-1]
    assert (last["op"], last["result"]["client_order_id"], last["result"]["status"]) == (
        "order",
        "keep",
        "filled",
    )
    assert not [p for p in path.parent.iterdir() if p.name != "venue.json"]  # no temp files left

    v2 = venue(PaperConfig(fee_per_contract=0.01), state_path=path)
    assert sorted(await v2.positions(), key=lambda p: p.side) == sorted(
        await v1.positions(), key=lambda p: p.side
    )
    assert await v2.lookup("keep") == first
    assert await v2.submit(sell("keep", qty=4)) == first  # not filled twice after a restart
    assert {p.side: p.qty for p in await v2.positions()} == {"yes": 6, "short": 2}
    second = await v2.submit(sell("next", qty=6))
    assert second.venue_order_id != first.venue_order_id
    v2.settle(OPT, 0.0)

    v3 = venue(state_path=path)
    assert await v3.positions() == []
    assert await v3.lookup("next") == second


async def test_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"venue\.json"):
        venue(state_path=path)


# --- the state log ------------------------------------------------------------------------------


def lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n")
    return text.splitlines()


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in lines(path)]


def v1_state(path: Path) -> None:
    """A state file as version 1 wrote it: one JSON object, no trailing newline."""
    data = {
        "version": 1,
        "name": "paper",
        "seq": 7,
        "positions": [
            {"contract_id": BIN, "side": "yes", "qty": 6, "avg_price": 0.5},
            {"contract_id": OPT, "side": "short", "qty": 2, "avg_price": 130.0},
        ],
        "orders": {
            "old": {
                "client_order_id": "old",
                "status": "filled",
                "filled_qty": 4,
                "avg_price": 0.55,
                "fees": 0.0,
                "venue_order_id": "paper-7",
                "reason": "",
            }
        },
    }
    path.write_text(json.dumps(data, separators=(",", ":")))


async def test_restart_keeps_positions_orders_and_the_counter(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    v1 = venue(state_path=path)
    v1.open_position(BIN, "yes", 10, 0.5)
    first = await v1.submit(sell("a", qty=4))
    rejected = await v1.submit(sell("b", "no", qty=1))  # no NO position: rejected, still counted
    assert (first.venue_order_id, rejected.venue_order_id) == ("paper-1", "paper-2")

    v2 = venue(state_path=path)  # v1 never closed: a process that died
    assert await v2.positions() == [VenuePosition(BIN, "yes", 6, 0.5)]
    assert await v2.lookup("b") == rejected
    assert await v2.submit(sell("a", qty=4)) == first  # the same id never fills twice
    assert (await v2.positions())[0].qty == 6
    assert (await v2.submit(sell("c", qty=1))).venue_order_id == "paper-3"
    v2.close()

    v3 = venue(state_path=path)
    assert (await v3.submit(sell("d", qty=1))).venue_order_id == "paper-4"
    assert (await v3.positions())[0].qty == 4
    v3.close()


async def test_a_half_written_last_line_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "venue.json"
    v1 = venue(state_path=path)
    v1.open_position(BIN, "yes", 10, 0.5)
    await v1.submit(sell("kept", qty=2))
    await v1.submit(sell("torn", qty=3))  # its line is cut short below, as by a crash mid-write
    v1.close()
    text = path.read_text()
    n = len(text.splitlines())
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])

    with caplog.at_level(logging.WARNING, logger="engine.venues.paper"):
        v2 = venue(state_path=path)
    [warning] = [r.getMessage() for r in caplog.records]
    assert str(path) in warning and f"line {n}" in warning
    assert (await v2.lookup("kept")) is not None
    assert await v2.lookup("torn") is None  # the order and its fill went together
    assert await v2.positions() == [VenuePosition(BIN, "yes", 8, 0.5)]
    # The torn line is gone from the rewritten file; appending continues after whole lines.
    assert [r.get("op") for r in records(path)] == [None, "set", "order"]
    assert (await v2.submit(sell("torn", qty=3))).filled_qty == 3


async def test_a_torn_line_that_is_not_last_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    v1 = venue(state_path=path)
    v1.open_position(BIN, "yes", 10, 0.5)
    v1.open_position(BIN, "no", 5, 0.4)
    v1.open_position(OPT, "long", 1, 100.0)
    v1.close()
    text = lines(path)
    text[2] = text[2][:20]
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"venue\.json, line 3: cannot read the paper venue state"):
        venue(state_path=path)


@pytest.mark.parametrize(
    "middle",
    [
        '{"op":"set","contract_id":"X","side":"sideways","qty":1,"avg_price":1}',
        '{"op":"bogus"}',
        "[1, 2]",
        "",
    ],
)
async def test_a_bad_record_before_the_last_is_an_error(tmp_path: Path, middle: str) -> None:
    path = tmp_path / "venue.json"
    v1 = venue(state_path=path)
    v1.open_position(BIN, "yes", 10, 0.5)
    v1.close()
    path.write_text(path.read_text() + middle + "\n" + lines(path)[1] + "\n")
    with pytest.raises(ValueError, match=r"venue\.json, line 3"):
        venue(state_path=path)


async def test_a_version_1_file_is_read_and_rewritten_as_a_log(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    v1_state(path)
    v = venue(state_path=path)
    assert sorted(await v.positions(), key=lambda p: p.side) == [
        VenuePosition(OPT, "short", 2, 130.0),
        VenuePosition(BIN, "yes", 6, 0.5),
    ]
    assert (await v.lookup("old")).venue_order_id == "paper-7"  # type: ignore[union-attr]
    assert await v.submit(sell("old", qty=4)) == await v.lookup("old")
    recs = records(path)
    assert recs[0] == {"version": 2, "name": "paper", "seq": 7}
    assert sorted(r["op"] for r in recs[1:]) == ["order", "set", "set"]
    assert (await v.submit(sell("new", qty=1))).venue_order_id == "paper-8"
    v.close()
    again = venue(state_path=path)
    assert {p.side: p.qty for p in await again.positions()} == {"yes": 5, "short": 2}
    assert (await again.lookup("new")).venue_order_id == "paper-8"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    [
        '{"version":3,"name":"paper","seq":0,"positions":[],"orders":{}}',
        '{"version":3,"name":"paper","seq":0}\n',
        '{"version":99,"name":"paper","seq":0}\n{"op":"set"}\n',
    ],
)
async def test_an_unknown_version_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "venue.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"venue\.json.*unsupported version"):
        venue(state_path=path)
    assert path.read_text() == text  # left as it was


async def test_a_restart_compacts_the_log(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    v = venue(state_path=path)
    for i in range(20):
        v.open_position(BIN, "yes", 1, 0.5)
        v.open_position(OPT, "long", 1, 100.0)
        await v.submit(sell(f"s{i}", qty=1))
        v.close_position(OPT, "long", 1)
    v.open_position(BIN, "no", 3, 0.4)
    v.settle(BIN, 1.0)
    v.open_position(OPT, "short", 2, 130.0)
    assert len(lines(path)) == 1 + 20 * 4 + 3
    v.close()

    sizes = []
    for _ in range(3):
        v = venue(state_path=path)
        # header + one line per live position + one per order result
        assert len(lines(path)) == 1 + 1 + 20
        sizes.append(path.stat().st_size)
        v.close()
    assert len(set(sizes)) == 1
    assert await v.positions() == [VenuePosition(OPT, "short", 2, 130.0)]
    assert not [p for p in tmp_path.iterdir() if p.name != "venue.json"]


async def test_each_change_appends_exactly_one_line(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    v = venue(state_path=path)
    for i in range(200):
        v.open_position(f"OTHER-{i}", "yes", 1, 0.5)
    v.open_position(BIN, "yes", 10, 0.5)
    v.open_position(BIN, "no", 10, 0.4)

    async def one_line(change, op: str) -> dict:
        before = path.read_text()
        await change()
        after = path.read_text()
        assert after.startswith(before)  # appended; nothing before it rewritten
        [line] = after[len(before) :].splitlines()
        rec = json.loads(line)
        assert rec["op"] == op
        return rec

    async def opened() -> None:
        v.open_position(BIN, "yes", 10, 0.7)

    rec = await one_line(opened, "set")
    assert (rec["qty"], rec["avg_price"]) == (20, pytest.approx(0.6))

    rec = await one_line(lambda: v.submit(sell("part", qty=5)), "order")
    assert rec["seq"] == 1 and rec["then"] == {
        "op": "set",
        "contract_id": BIN,
        "side": "yes",
        "qty": 15,
        "avg_price": pytest.approx(0.6),
    }
    rec = await one_line(lambda: v.submit(sell("all", qty=15)), "order")
    assert rec["then"] == {"op": "del", "contract_id": BIN, "sides": ["yes"]}
    rec = await one_line(lambda: v.submit(sell("none", qty=1)), "order")  # rejected
    assert rec["result"]["status"] == "rejected" and "then" not in rec

    async def closed() -> None:
        v.close_position("OTHER-0", "yes", 1)

    assert await one_line(closed, "del") == {
        "op": "del",
        "contract_id": "OTHER-0",
        "sides": ["yes"],
    }

    async def settled() -> None:
        v.open_position(BIN, "yes", 1, 0.5)
        size = path.stat().st_size
        v.settle(BIN, 1.0)
        assert path.read_text()[size:].count("\n") == 1

    await settled()

    # No change, no line: a repeated id, closing what is not held, settling what is not held.
    size = path.stat().st_size
    await v.submit(sell("part", qty=5))
    v.close_position(BIN, "yes", 1)
    v.settle(BIN, 0.0)
    assert path.stat().st_size == size


async def test_close_is_idempotent_and_a_later_change_is_still_kept(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    v = venue(state_path=path)
    v.open_position(BIN, "yes", 10, 0.5)
    v.close()
    v.close()
    v.open_position(BIN, "no", 2, 0.4)  # reopens the log (rewriting it whole first)
    v.close()
    again = venue(state_path=path)
    assert {p.side for p in await again.positions()} == {"yes", "no"}
    again.close()
    venue().close()  # no state file: nothing to close


async def test_a_failed_write_is_repaired_by_the_next_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "venue.json"
    v = venue(state_path=path)
    v.open_position(BIN, "yes", 10, 0.5)

    def broken(fd: int) -> None:
        raise OSError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", broken)
        with pytest.raises(OSError, match="disk on fire"):
            v.open_position(BIN, "no", 2, 0.4)
    # The file could end in part of a line now; the next change writes the whole state afresh.
    with path.open("a") as f:
        f.write('{"op":"se')
    v.open_position(OPT, "long", 1, 100.0)
    assert [r.get("side") for r in records(path)] == [None, "yes", "no", "long"]
    v.open_position(OPT, "long", 1, 100.0)
    assert len(lines(path)) == 5
    v.close()
    again = venue(state_path=path)
    assert {p.side: p.qty for p in await again.positions()} == {"yes": 10, "no": 2, "long": 2}
