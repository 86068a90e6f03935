"""`KalshiVenue` (the engine's `Venue` over `KalshiClient`) against the loopback Kalshi server.

Real HTTP on 127.0.0.1 and real RSA-PSS signatures; backoff waits return at once.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.venues.base import OrderRequest, Venue, VenueError
from engine.venues.kalshi import KalshiClient, KalshiSigner, KalshiVenue
from engine.venues.kalshi.models import Fill
from engine.venues.kalshi.venue import _fifo_cost
from tests.kalshi_server import RunningServer, kalshi_server
from tests.loopback import RecordedSleeps

KEY_ID = "0d4c5a43-venue-test-key"
TICKER = "KXBTCD-26NOV2117-T97000"


@pytest.fixture
async def server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[RunningServer]:
    async with kalshi_server(KEY_ID, rsa_key.public_key()) as srv:
        srv.state.add_market(TICKER)
        yield srv


@pytest.fixture
async def make_venue(
    server: RunningServer, rsa_key: rsa.RSAPrivateKey
) -> AsyncIterator[Callable[..., KalshiVenue]]:
    """Venues on the loopback server; each call is a fresh venue (as after a restart)."""
    clients: list[KalshiClient] = []

    def make(page_size: int = 200, **kw: Any) -> KalshiVenue:
        options: dict[str, Any] = {
            "base_url": server.base_url,
            "signer": KalshiSigner(KEY_ID, rsa_key),
            "timeout_seconds": 2.0,
            "read_per_second": 10_000,
            "write_per_second": 10_000,
            "burst": 100,
            "max_attempts": 4,
            "sleep": RecordedSleeps(),
            "rng": random.Random(7),
        }
        options.update(kw)
        client = KalshiClient(**options)
        clients.append(client)
        return KalshiVenue(client, page_size=page_size)

    yield make
    for client in clients:
        await client.aclose()


def close(
    coid: str, side: str, qty: float, limit: float | None, ticker: str = TICKER
) -> OrderRequest:
    return OrderRequest(coid, ticker, side, "sell", qty, limit)  # type: ignore[arg-type]


def sent_body(server: RunningServer) -> dict[str, Any]:
    posts = server.state.order_posts()
    assert len(posts) == 1
    return posts[0].body


async def test_it_is_a_venue(make_venue: Callable[..., KalshiVenue]) -> None:
    venue = make_venue()
    assert isinstance(venue, Venue) and venue.name == "kalshi"


async def test_closing_yes_sells_yes_ioc_reduce_only_and_the_position_is_gone(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "3.00", exposure="1.2000")
    server.state.set_book(TICKER, yes=[("0.45", "5")])
    venue = make_venue()
    res = await venue.submit(close("exit-1", "yes", 3.0, 0.40))
    assert sent_body(server) == {
        "ticker": TICKER,
        "client_order_id": "exit-1",
        "side": "ask",
        "count": "3.00",
        "price": "0.4000",
        "time_in_force": "immediate_or_cancel",
        "self_trade_prevention_type": "taker_at_cross",
        "reduce_only": True,
    }
    assert res.client_order_id == "exit-1" and res.status == "filled"
    assert res.filled_qty == 3.0 and res.avg_price == 0.45 and res.fees == 0.0
    assert res.venue_order_id in server.state.orders and res.reason == ""
    assert await venue.positions() == []


async def test_closing_no_buys_yes_at_one_minus_the_limit_and_reports_no_prices(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "-2.00", exposure="0.7000")
    server.state.set_book(TICKER, no=[("0.30", "5")])  # YES ask 0.70 = NO bid 0.30
    venue = make_venue()
    res = await venue.submit(close("exit-2", "no", 2.0, 0.25))
    body = sent_body(server)
    assert (body["side"], body["price"], body["count"]) == ("bid", "0.7500", "2.00")
    assert body["time_in_force"] == "immediate_or_cancel" and body["reduce_only"] is True
    assert res.status == "filled" and res.filled_qty == 2.0
    assert res.avg_price == pytest.approx(0.30)  # NO terms: 1 − YES 0.70
    assert await venue.positions() == []


@pytest.mark.parametrize(
    ("side", "book_side", "price"), [("yes", "ask", "0.0100"), ("no", "bid", "0.9900")]
)
async def test_a_marketable_exit_uses_the_most_aggressive_price(
    server: RunningServer,
    make_venue: Callable[..., KalshiVenue],
    side: str,
    book_side: str,
    price: str,
) -> None:
    server.state.set_position(TICKER, "1.00" if side == "yes" else "-1.00")
    server.state.set_book(TICKER, yes=[("0.40", "1")], no=[("0.58", "1")])
    res = await make_venue().submit(close("m-1", side, 1.0, None))
    body = sent_body(server)
    assert (body["side"], body["price"]) == (book_side, price)
    assert res.status == "filled"  # at the book's price, not at the limit
    assert res.avg_price == pytest.approx(0.40 if side == "yes" else 0.58)


async def test_a_thin_book_is_a_partial_fill(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "5.00")
    server.state.set_book(TICKER, yes=[("0.41", "2"), ("0.35", "10")])
    venue = make_venue()
    res = await venue.submit(close("exit-3", "yes", 5.0, 0.40))
    assert res.status == "partial" and res.filled_qty == 2.0 and res.avg_price == 0.41
    assert await venue.lookup("exit-3") == res
    [left] = await venue.positions()
    assert (left.contract_id, left.side, left.qty) == (TICKER, "yes", 3.0)


async def test_nothing_at_the_limit_is_unfilled(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "3.00")
    server.state.set_book(TICKER, yes=[("0.30", "5")])
    venue = make_venue()
    res = await venue.submit(close("exit-4", "yes", 3.0, 0.40))
    assert res.status == "unfilled" and res.filled_qty == 0.0 and res.avg_price is None
    assert await venue.lookup("exit-4") == res


async def test_a_refusal_is_rejected_with_the_venues_code_and_message(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "3.00")
    server.state.queue_fault(
        "refuse", method="POST", status=400, code="market_closed", message="market is closed"
    )
    res = await make_venue().submit(close("exit-5", "yes", 3.0, 0.40))
    assert res.status == "rejected" and res.filled_qty == 0.0
    assert "market is closed" in res.reason and "market_closed" in res.reason
    assert server.state.orders == {}


async def test_what_kalshi_cannot_close_is_rejected_without_sending(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    res = await make_venue().submit(close("exit-6", "long", 1.0, 0.40))
    assert res.status == "rejected" and server.state.requests == []


async def test_a_timeout_after_placing_raises_venue_error_and_lookup_finds_the_one_order(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "2.00")
    server.state.set_book(TICKER, yes=[("0.44", "5")])
    server.state.queue_fault("delay", method="POST", seconds=1.0)  # placed; answer lost
    with pytest.raises(VenueError):
        await make_venue(max_attempts=1, timeout_seconds=0.3).submit(
            close("exit-7", "yes", 2.0, 0.40)
        )
    assert len(server.state.orders) == 1
    # A fresh venue (a restarted engine) knows nothing of it and scans every order.
    found = await make_venue().lookup("exit-7")
    assert found is not None and found.status == "filled"
    assert found.filled_qty == 2.0 and found.avg_price == 0.44
    assert len(server.state.orders) == 1 and len(server.state.order_posts()) == 1


async def test_a_timeout_then_a_retry_returns_the_existing_order_never_two(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "-2.00")
    server.state.set_book(TICKER, no=[("0.35", "5")])
    server.state.queue_fault("delay", method="POST", seconds=1.0)
    res = await make_venue(max_attempts=2, timeout_seconds=0.3).submit(
        close("exit-8", "no", 2.0, 0.30)
    )
    assert res.status == "filled" and res.filled_qty == 2.0
    assert res.avg_price == pytest.approx(0.35)
    assert len(server.state.orders) == 1  # the retry met a 409 and looked the order up


@pytest.mark.parametrize("side", ["yes", "no"])
async def test_an_order_found_after_a_cut_off_answer_is_priced_in_held_terms(
    server: RunningServer, make_venue: Callable[..., KalshiVenue], side: str
) -> None:
    """The answer is cut off mid-body; the retry meets the 409 and the order is found: its
    price is its fills' price of the held side, never its fill cost read as YES (selling YES
    at 0.25 lists a fill cost of 0.75 a contract: the NO side's)."""
    s = server.state
    s.fee_per_contract = Decimal("0.014")
    s.set_position(TICKER, "10.00" if side == "yes" else "-10.00")
    if side == "yes":
        s.set_book(TICKER, yes=[("0.25", "50")])
    else:
        s.set_book(TICKER, no=[("0.25", "50")])
    s.queue_fault("cutoff", method="POST")
    res = await make_venue(max_attempts=2).submit(close("cut-1", side, 10.0, 0.20))
    order = s.order_by_client_id("cut-1")
    assert order["outcome_side"] == ("no" if side == "yes" else "yes")
    assert (res.status, res.filled_qty) == ("filled", 10.0)
    assert res.avg_price == pytest.approx(0.25) and res.fees == pytest.approx(0.14)
    assert [r.fault for r in s.order_posts()] == ["cutoff", None]  # the second one was a 409
    assert len(s.orders) == 1


@pytest.mark.parametrize("direction", ["v2", "legacy", "none"])
@pytest.mark.parametrize("side", ["yes", "no"])
async def test_while_its_fills_are_not_listed_an_order_is_priced_from_its_fill_cost(
    server: RunningServer, make_venue: Callable[..., KalshiVenue], side: str, direction: str
) -> None:
    """The fills of an order lag it: the order's fill cost is in its outcome side's terms
    (outcome_side / book_side, or legacy action + side; none at all: a closing order is the
    opposite of what it closes), converted to the held side, with a note."""
    s = server.state
    s.fills_listed = False
    s.set_position(TICKER, "4.00" if side == "yes" else "-4.00")
    if side == "yes":
        s.set_book(TICKER, yes=[("0.30", "50")])
    else:
        s.set_book(TICKER, no=[("0.30", "50")])
    venue = make_venue()
    await venue.submit(close("lag-1", side, 4.0, 0.20))
    order = s.order_by_client_id("lag-1")
    if direction != "v2":
        del order["outcome_side"], order["book_side"]
    if direction == "none":
        del order["side"], order["action"]
    found = await venue.lookup("lag-1")
    assert found is not None and found.status == "filled" and found.filled_qty == 4.0
    assert found.avg_price == pytest.approx(0.30)
    assert "fill cost" in found.reason


async def test_a_filled_order_with_no_readable_price_is_an_unknown_outcome(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    s = server.state
    s.fills_listed = False
    s.set_position(TICKER, "2.00")
    s.set_book(TICKER, yes=[("0.40", "5")])
    venue = make_venue()
    await venue.submit(close("np-1", "yes", 2.0, 0.30))
    order = s.order_by_client_id("np-1")
    del order["taker_fill_cost_dollars"], order["maker_fill_cost_dollars"]
    with pytest.raises(VenueError, match="give a price yet"):
        await venue.lookup("np-1")


async def test_a_repeated_client_order_id_returns_the_first_result(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "3.00")
    server.state.set_book(TICKER, yes=[("0.45", "5")])
    venue = make_venue()
    first = await venue.submit(close("exit-9", "yes", 3.0, 0.40))
    again = await make_venue().submit(close("exit-9", "yes", 3.0, 0.40))
    assert again == first and len(server.state.orders) == 1


async def test_lookup_unknown_is_none_and_a_filled_order_matches_submit(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.set_position(TICKER, "-3.00")
    server.state.set_book(TICKER, no=[("0.30", "5")])
    venue = make_venue()
    assert await venue.lookup("never-sent") is None
    res = await venue.submit(close("exit-10", "no", 3.0, 0.20))
    assert res.status == "filled" and res.avg_price == pytest.approx(0.30)
    assert await venue.lookup("exit-10") == res
    assert await make_venue().lookup("exit-10") == res  # after a restart too
    for fill in server.state.fills:  # fees come from the fills when the venue charges them
        fill["fee_cost"] = "0.0200"
    charged = await venue.lookup("exit-10")
    assert charged is not None and charged.fees == pytest.approx(0.02)


async def test_lookup_and_positions_raise_venue_error_when_kalshi_is_down(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    server.state.queue_fault("500", method="GET", times=2)
    venue = make_venue(max_attempts=1)
    with pytest.raises(VenueError):
        await venue.lookup("exit-11")
    with pytest.raises(VenueError):
        await venue.positions()


async def test_positions_across_pages_with_signs_and_fifo_entry_prices(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    s = server.state
    a, b, c, d, e = (f"KXBTCD-26NOV2117-T9{i}000" for i in range(5))
    s.set_position(a, "3.00", exposure="1.4000")
    s.set_position(b, "-4.00", exposure="2.6000")
    s.set_position(c, "0.00")
    s.set_position(d, "2.00", exposure="1.1000")  # no fills: exposure / qty
    s.set_position(e, "-1.00")
    # a: bought 2 @ 0.40, then 2 @ 0.50, then sold 1: FIFO holds 2 @ 0.50 + 1 @ 0.40.
    s.add_fill(
        ticker=a, count_fp="2.00", yes_price_dollars="0.4000", created_time="2026-11-21T10:00:00Z"
    )
    s.add_fill(
        ticker=a, count_fp="2.00", yes_price_dollars="0.5000", created_time="2026-11-21T10:01:00Z"
    )
    s.add_fill(
        ticker=a,
        outcome_side="no",
        book_side="ask",
        count_fp="1.00",
        yes_price_dollars="0.5500",
        no_price_dollars="0.4500",
        created_time="2026-11-21T10:02:00Z",
    )
    # b: long NO built by one fill; the NO price is the held price.
    s.add_fill(
        ticker=b,
        outcome_side="no",
        book_side="ask",
        count_fp="4.00",
        yes_price_dollars="0.3500",
        no_price_dollars="0.6500",
    )
    # e: an old-style fill (side + action only).
    s.add_fill(
        ticker=e,
        outcome_side=None,
        book_side=None,
        side="no",
        action="buy",
        count_fp="1.00",
        yes_price_dollars="0.8000",
        no_price_dollars="0.2000",
    )
    positions = await make_venue(page_size=2).positions()
    by_ticker = {p.contract_id: p for p in positions}
    assert set(by_ticker) == {a, b, d, e}
    assert (by_ticker[a].side, by_ticker[a].qty) == ("yes", 3.0)
    assert by_ticker[a].avg_price == pytest.approx(1.40 / 3)
    assert (by_ticker[b].side, by_ticker[b].qty, by_ticker[b].avg_price) == ("no", 4.0, 0.65)
    assert (by_ticker[d].side, by_ticker[d].qty, by_ticker[d].avg_price) == ("yes", 2.0, 0.55)
    assert (by_ticker[e].side, by_ticker[e].qty, by_ticker[e].avg_price) == ("no", 1.0, 0.2)
    pages = [r for r in s.requests if r.path == "/portfolio/positions"]
    assert len(pages) == 3 and all(r.query["limit"] == "2" for r in pages)


async def test_fills_are_read_again_only_for_positions_that_changed(
    server: RunningServer, make_venue: Callable[..., KalshiVenue]
) -> None:
    s = server.state
    a, b = (f"KXBTCD-26NOV2117-T9{i}000" for i in range(2))
    s.set_position(a, "2.00")
    s.set_position(b, "1.00")
    s.add_fill(ticker=a, count_fp="2.00", yes_price_dollars="0.4000")
    s.add_fill(ticker=b, count_fp="1.00", yes_price_dollars="0.3000")
    venue = make_venue()

    def fills_asked() -> list[str]:
        return [r.query.get("ticker", "") for r in s.requests if r.path == "/portfolio/fills"]

    await venue.positions()
    assert sorted(fills_asked()) == [a, b]
    again = {p.contract_id: p.avg_price for p in await venue.positions()}
    assert sorted(fills_asked()) == [a, b]  # nothing changed: no fills read
    assert again == {a: pytest.approx(0.40), b: pytest.approx(0.30)}

    s.add_fill(ticker=a, count_fp="2.00", yes_price_dollars="0.6000")  # a grows: 4 @ 0.50
    s.set_position(a, "4.00")
    grown = {p.contract_id: p.avg_price for p in await venue.positions()}
    assert sorted(fills_asked()) == [a, a, b]
    assert grown[a] == pytest.approx(0.50)


def test_fifo_entry_price_does_not_depend_on_the_listing_order() -> None:
    def fill(at: str, count: str, yes: str, outcome: str = "yes") -> Fill:
        return Fill.from_json(
            {
                "fill_id": at,
                "order_id": "o",
                "ticker": TICKER,
                "outcome_side": outcome,
                "count_fp": count,
                "yes_price_dollars": yes,
                "no_price_dollars": str(1 - Decimal(yes)),
                "created_time": at,
            }
        )

    fills = [
        fill("2026-11-21T10:00:00Z", "2.00", "0.40"),
        fill("2026-11-21T10:00:00.500Z", "2.00", "0.50"),  # later, though it sorts first as text
        fill("2026-11-21T10:02:00Z", "1.00", "0.55", outcome="no"),
    ]
    for listing in (fills, fills[::-1]):
        assert _fifo_cost(listing, "yes", Decimal(3)) == Decimal("1.40") / 3
    assert _fifo_cost(fills, "yes", Decimal(5)) is None  # fills do not cover the position


@pytest.mark.parametrize(
    ("side", "limit", "expected"),
    [
        ("yes", 0.0, ("ask", "0.01")),  # looser than marketable: raised to it
        ("yes", 0.4200000000000001, ("ask", "0.42")),  # float noise is not a stricter limit
        ("yes", 0.4200004, ("ask", "0.420001")),  # sub-tick precision rounds to the safe side
        ("no", 1 - 0.7000000000000001, ("bid", "0.7")),
        ("yes", 1.0, ("ask", "1")),  # stricter than any price: the venue refuses it
        ("no", 0.0, ("bid", "0.99")),
        ("no", 0.3, ("bid", "0.7")),
        ("no", 1.0, ("bid", "0")),
    ],
)
def test_limit_prices_in_yes_terms_never_loosen_the_limit(
    side: str, limit: float, expected: tuple[str, str]
) -> None:
    book_side, price = KalshiVenue._yes_terms(side, limit)  # type: ignore[arg-type]
    assert (book_side, price) == (expected[0], Decimal(expected[1]))
