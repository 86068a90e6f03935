"""The screen attached to a running engine over its control socket (tui/attach_host.py).

The engine runs in an `EngineHost` of the test (its own thread and loop, a manual clock, not
driven) and serves its control socket from that loop, as `--headless` does; the screens are the
real app over `SocketEngineHost`s. No sleeps: pictures are fetched with `sync()` and waits are
bounded conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine import control
from engine.analytics import metrics_for
from engine.clock import ManualClock
from engine.commands import Command
from engine.snapshot import Snapshot
from engine.supervisor import Engine
from tests.tui_harness import T0, screen_text, settle, ui_config
from tui.app import TradeSupervisorApp
from tui.attach_host import SocketEngineHost
from tui.host import EngineHost, EngineHostError
from tui.panes import StatusBar, TradesPane

DEMO = ["demo-1", "demo-2", "demo-3", "demo-4"]


class World:
    def __init__(self, engine_host: EngineHost, server: control.ControlServer) -> None:
        self.engine_host = engine_host
        self.server = server
        self.config = engine_host.config

    async def attach(self, read_only: bool = False) -> SocketEngineHost:
        h = SocketEngineHost(self.config, read_only=read_only)
        await asyncio.to_thread(h.start)
        return h

    async def engine_attr(self, name: str) -> Any:
        return await self.engine_host.call(functools.partial(_attr, name))


async def _attr(name: str, e: Engine) -> Any:
    return getattr(e, name)


async def until(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    cfg = ui_config(tmp_path)
    host = EngineHost(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=False)
    host.start()
    server = control.ControlServer(host.engine, cfg, refresh_seconds=0.05)

    async def start(_e: Engine) -> None:
        await server.start()

    async def close(_e: Engine) -> None:
        await server.close()

    await host.call(start)
    try:
        yield World(host, server)
    finally:
        with contextlib.suppress(EngineHostError):
            await host.call(close)
        host.stop()


def _trade_keys(app: TradeSupervisorApp) -> list[str]:
    assert app.main is not None
    return list(app.main.query_one(TradesPane).table.keys)


def _header(app: TradeSupervisorApp) -> str:
    assert app.main is not None
    return str(app.main.query_one(StatusBar).render())


async def test_the_host_speaks_for_the_engine(world: World) -> None:
    h = await world.attach()
    got: list[Snapshot] = []
    h.on_snapshot = got.append
    try:
        assert h.welcome is not None and h.welcome.venue == "sim"
        await h.sync()
        assert [t.trade_id for t in got[-1].trades] == DEMO
        r = await h.command(Command("disarm"))
        assert (r.ok, r.message) == (True, "disarmed")
        # The picture with the command's effect arrived before its answer.
        assert got[-1].armed is False
        assert await world.engine_attr("armed") is False
        detail = await h.trade_detail("demo-1")
        assert detail is not None and detail.row.trade_id == "demo-1"
        assert "equity" in await h.call(metrics_for)
        with pytest.raises(EngineHostError, match="only data"):
            await h.call(functools.partial(_attr, "armed"))
    finally:
        h.stop()
    # Detached: the engine runs on, and its client is gone.
    await until(lambda: not world.server.clients)
    assert world.engine_host.running


async def test_a_read_only_screen_is_refused_every_command(world: World) -> None:
    h = await world.attach(read_only=True)
    try:
        r = await h.command(Command("pause_all"))
        assert not r.ok and "read-only" in r.message
        r = await h.stop_engine()
        assert not r.ok
        assert await world.engine_attr("paused_all") is False
        assert world.engine_host.running
    finally:
        h.stop()


async def test_two_screens_see_each_others_commands(world: World) -> None:
    a, b = await world.attach(), await world.attach()
    app_a, app_b = TradeSupervisorApp(world.config, a), TradeSupervisorApp(world.config, b)
    try:
        async with app_a.run_test(size=(160, 50)) as pa, app_b.run_test(size=(160, 50)) as pb:
            await a.sync()
            await b.sync()
            await settle(pa)
            await settle(pb)
            assert _trade_keys(app_a) == DEMO == _trade_keys(app_b)
            assert "PAUSED" not in _header(app_b)
            await pa.press("P")  # the kill switch, on screen A
            await until(lambda: app_a.snapshot is not None and app_a.snapshot.paused_all)
            assert await world.engine_attr("paused_all") is True
            await b.sync()
            await settle(pb)
            assert "PAUSED" in _header(app_b)  # and screen B shows it
    finally:
        a.stop()
        b.stop()
    assert world.engine_host.running  # the screens left; the engine protects on


async def test_an_engine_that_stops_turns_the_screen_red(world: World) -> None:
    h = await world.attach()
    app = TradeSupervisorApp(world.config, h)
    try:
        async with app.run_test(size=(160, 50)) as pilot:
            await h.sync()
            await settle(pilot)
            assert app.engine_error is None

            async def close(_e: Engine) -> None:
                await world.server.close("stopped by the test")

            await world.engine_host.call(close)
            await until(lambda: app.engine_error is not None)
            await settle(pilot)
            assert "stopped by the test" in app.engine_error
            assert "ENGINE STOPPED" in _header(app).upper()
            r = await h.command(Command("arm"))
            assert not r.ok and "not sent" in r.message
    finally:
        h.stop()


async def test_no_engine_to_attach_to(tmp_path: Path) -> None:
    h = SocketEngineHost(ui_config(tmp_path))
    with pytest.raises(EngineHostError, match="no engine answers"):
        h.start()


async def test_the_screen_can_stop_the_engine_after_confirming(world: World) -> None:
    h = await world.attach()
    app = TradeSupervisorApp(world.config, h)
    try:
        async with app.run_test(size=(160, 50)) as pilot:
            await h.sync()
            await settle(pilot)
            assert any(c.title == "Stop the engine" for c in app.get_system_commands(app.screen))
            await app.run_action("stop_engine")
            await settle(pilot)
            await pilot.press("n")  # keep it running
            await settle(pilot)
            assert not await world.engine_attr("stopping")
            await app.run_action("stop_engine")
            await settle(pilot)
            await pilot.press("y")
            await until(lambda: world.engine_host.engine.stopping)
    finally:
        h.stop()


async def test_a_read_only_screen_offers_no_stop(world: World) -> None:
    h = await world.attach(read_only=True)
    app = TradeSupervisorApp(world.config, h)
    try:
        async with app.run_test(size=(160, 50)):
            assert not any(
                c.title == "Stop the engine" for c in app.get_system_commands(app.screen)
            )
    finally:
        h.stop()


async def _close_demo_1(e: Engine) -> Any:
    return await e.command(Command("close", "demo-1"))


async def test_a_screen_attached_later_shows_what_happened_meanwhile(world: World) -> None:
    first = await world.attach()
    first.stop()  # detached: no screen
    r = await world.engine_host.call(_close_demo_1)
    assert r.ok, r.message
    await world.engine_host.advance(2)  # the exit goes through
    later = await world.attach()
    app = TradeSupervisorApp(world.config, later)
    try:
        async with app.run_test(size=(160, 50)) as pilot:
            await later.sync()
            await settle(pilot)
            assert "demo-1" not in _trade_keys(app)
            assert app.snapshot is not None
            assert any(
                a.trade_id == "demo-1" and "closed" in a.message.lower()
                for a in app.snapshot.alerts
            ), [a.message for a in app.snapshot.alerts]
    finally:
        later.stop()


async def test_q_detaches_by_default_and_stops_with_on_quit_stop(world: World) -> None:
    h = await world.attach()
    app = TradeSupervisorApp(world.config, h)
    try:
        async with app.run_test(size=(160, 50)) as pilot:
            await h.sync()
            await settle(pilot)
            await pilot.press("q")
            await settle(pilot)
            assert "stays on" in screen_text(app) and "trade-supervisor stop" in screen_text(app)
            await pilot.press("y")
            await settle(pilot)
        assert app.stop_engine_on_exit is False
    finally:
        h.stop()
    cfg = world.config.model_copy(deep=True)
    cfg.ui.on_quit = "stop"
    h = await world.attach()
    app = TradeSupervisorApp(cfg, h)
    try:
        async with app.run_test(size=(160, 50)) as pilot:
            await h.sync()
            await settle(pilot)
            await pilot.press("q")
            await settle(pilot)
            assert "Quitting stops the engine" in screen_text(app)
            await pilot.press("y")
            await settle(pilot)
        assert app.stop_engine_on_exit is True  # run_attached then stops the engine
    finally:
        h.stop()
