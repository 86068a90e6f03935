"""The fixture every test with the real ib_async client uses (import it into the test module):
ib_async's decoder swallows a message it cannot parse (it only logs it), so a malformed message
from the loopback gateway would otherwise pass unnoticed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def decoded_cleanly(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if the client could not decode a message the gateway sent, or got one for
    an unknown request or order."""
    caplog.set_level(logging.INFO, logger="ib_async")
    yield
    bad = [
        r.getMessage()
        for r in caplog.get_records("setup") + caplog.get_records("call")
        if r.name == "ib_async.Decoder"
        or "Unknown reqId" in r.getMessage()
        or "No order found" in r.getMessage()
    ]
    assert bad == []
