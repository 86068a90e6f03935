"""A machine with ib_insync (0.9.x) and no ib_async: the adapter imports ib_insync (same API),
connects to the loopback gateway with ib_insync's protocol range (157..176) and reads the
account. Run in a child process, where ib_async is made unimportable before anything loads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.modules["ib_async"] = None  # as if only ib_insync were installed

    from engine.clock import RealClock
    from engine.config import IbkrConfig
    from engine.venues.ibkr import ib as shim
    from engine.venues.ibkr.connection import IbConnection
    from engine.venues.ibkr.venue import IbkrVenue
    from tests.tws_gateway import option_contract, stock_contract, tws_gateway


    async def main(data_dir):
        async with tws_gateway(accounts=["DU1"]) as gw:
            put = option_contract(700001, "SPY", "20261218", 550.0, "P")
            gw.state.add_position(put, -2, 312.0, market_price=1.40)
            gw.state.add_position(stock_contract(756733, "SPY"), 10, 590.0, market_price=591.0)
            cfg = IbkrConfig(port=gw.port, client_id=5, connect_timeout_seconds=5.0)
            conn = IbConnection(cfg, RealClock())
            await conn.connect()
            venue = IbkrVenue(conn.current_ib, cfg, data_dir, is_ready=conn.is_ready)
            positions = await venue.positions()
            conn.close()
            print(json.dumps({
                "library": shim.LIBRARY,
                "module": type(conn.ib).__module__,
                "versions": [v for _, v in gw.state.handshakes],
                "positions": sorted(
                    [p.contract_id, p.side, p.qty, round(p.avg_price, 6)] for p in positions
                ),
            }))


    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_the_adapter_runs_on_ib_insync_when_ib_async_is_missing(tmp_path: Path) -> None:
    pytest.importorskip("ib_insync")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["library"] == "ib_insync" and got["module"].startswith("ib_insync")
    assert got["versions"] == [176]  # ib_insync's newest protocol version
    assert got["positions"] == [
        ["SPY", "long", 10.0, 590.0],  # avgCost per share
        ["SPY 20261218 550P", "short", 2.0, 3.12],  # avgCost 312 per contract / 100
    ]
