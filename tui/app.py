"""The Textual app: four live panes over the engine, keyboard control, confirmations.

The app owns no trading state. It renders the snapshots the engine host posts, and every action
goes through the engine's one command interface (`host.command`). See ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import threading
import zoneinfo
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.color import Color, ColorParseError
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container
from textual.events import Resize
from textual.screen import Screen
from textual.theme import BUILTIN_THEMES
from textual.widgets import DataTable, Footer, Input, Static

from engine import private_files
from engine.alerts import AlertFilter, Verdict
from engine.commands import Command, CommandResult
from engine.config import UI_KEY_IDS, Config, ConfigError, parse_quiet_hours
from engine.models import AlertKind, Severity
from engine.snapshot import Snapshot, TradeRow
from engine.store import StoreError
from engine.text import shown
from tui import format as fmt
from tui.engine_process import ProcessEngineHost
from tui.format import Palette
from tui.host import EngineHost, EngineHostError, Host
from tui.messages import EngineStopped, SnapshotReady
from tui.panes import AlertsPane, MarketPane, Pane, StatusBar, StrikesPane, TablePane, TradesPane

NARROW_WIDTH = 120
NARROW_HEIGHT = 32
PANE_ORDER = ("trades", "market", "strikes", "alerts")
MAX_TOASTS_PER_UPDATE = 3


def _styles_path() -> Path:
    here = Path(__file__).resolve().parent
    for p in (here.parent / "styles" / "app.tcss", here / "_styles" / "app.tcss"):
        if p.is_file():
            return p
    raise FileNotFoundError("styles/app.tcss is missing from the installation")


class MainScreen(Screen[None]):
    """The four panes. Bindings call the app's actions, so the palette can call them too."""

    BINDINGS = [
        Binding(
            "c",
            "app.close_trade",
            "Close",
            id="close_trade",
            tooltip="Close the selected trade at the market (asks to confirm)",
        ),
        Binding(
            "p",
            "app.pause_trade",
            "Pause",
            id="pause_trade",
            tooltip="Pause or resume the selected trade's auto-stop",
        ),
        Binding(
            "a",
            "app.arm",
            "Arm",
            id="arm",
            tooltip="Arm or disarm automatic exits (arming a live venue asks to confirm)",
        ),
        Binding(
            "X",
            "app.close_all",
            "Close all",
            id="close_all",
            tooltip="Close every open trade (type CLOSE to confirm)",
        ),
        Binding(
            "enter",
            "app.detail",
            "Detail",
            id="detail",
            tooltip="The selected trade: P&L chart, rules, audit trail and alerts",
        ),
        Binding(
            "e",
            "app.edit",
            "Edit",
            id="edit",
            tooltip="Edit the selected trade's rule thresholds",
        ),
        Binding(
            "m",
            "app.metrics",
            "Metrics",
            id="metrics",
            show=False,
            tooltip="Closed trades: equity curve, aggregates and per-rule effectiveness",
        ),
        Binding("r", "app.reload", "Reload", id="reload", show=False, tooltip="Reload config.toml"),
        Binding(
            "slash",
            "app.filter",
            "Filter",
            id="filter",
            show=False,
            tooltip="Filter the focused table (escape clears)",
        ),
        Binding(
            "s",
            "app.alert_severity",
            "Severity",
            id="alert_severity",
            show=False,
            tooltip="Alerts: cycle the minimum severity shown (all, warning, critical)",
        ),
        Binding(
            "k",
            "app.alert_kind",
            "Kind",
            id="alert_kind",
            show=False,
            tooltip="Alerts: cycle the kind shown",
        ),
        Binding(
            "tab",
            "app.next_pane",
            "Next pane",
            id="next_pane",
            show=False,
            tooltip="Move to the next pane",
        ),
        Binding(
            "shift+tab",
            "app.previous_pane",
            "Previous pane",
            id="previous_pane",
            show=False,
            tooltip="Move to the previous pane",
        ),
        Binding(
            "escape",
            "app.clear_filter",
            "Clear filter",
            id="clear_filter",
            show=False,
            tooltip="Clear the focused table's filter",
        ),
    ]

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Static("", id="tabs", markup=False)
        with Container(id="panes"):
            yield TradesPane(id="trades", classes="pane -active")
            yield MarketPane("Market", id="market", classes="pane")
            yield StrikesPane(id="strikes", classes="pane")
            yield AlertsPane(id="alerts", classes="pane")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(TradesPane).table.focus()

    def on_screen_resume(self) -> None:
        app = self.app
        if isinstance(app, TradeSupervisorApp) and app.snapshot is not None:
            app.render_main(app.snapshot)

    def on_resize(self, event: Resize) -> None:
        self.set_narrow(event.size.width < NARROW_WIDTH or event.size.height < NARROW_HEIGHT)

    def set_narrow(self, narrow: bool) -> None:
        self.set_class(narrow, "narrow")
        self._show_tabs()

    @property
    def active_pane(self) -> Pane:
        for p in self.query(".pane").results(Pane):
            if p.has_class("-active"):
                return p
        return self.query_one(TradesPane)

    def show_pane(self, pane_id: str) -> None:
        for p in self.query(".pane").results(Pane):
            p.set_class(p.id == pane_id, "-active")
        pane = self.query_one(f"#{pane_id}", Pane)
        target = pane.focus_target()
        if hasattr(target, "focus"):
            target.focus()  # type: ignore[union-attr]
        self._show_tabs()

    def _show_tabs(self) -> None:
        t = Text(no_wrap=True)
        active = self.active_pane.id
        for i, pid in enumerate(PANE_ORDER, 1):
            pane = self.query_one(f"#{pid}", Pane)
            style = "bold reverse" if pid == active else "dim"
            t.append(f" {i} {pane.pane_title} ", style=style)
            t.append(" ")
        t.append("tab: next pane", style="dim italic")
        self.query_one("#tabs", Static).update(t)

    def on_descendant_focus(self, event: Any) -> None:
        # Focus moved by mouse or by the table's own keys: the active pane follows it.
        node = event.widget
        while node is not None and not isinstance(node, Pane):
            node = node.parent
        if isinstance(node, Pane) and not node.has_class("-active"):
            for p in self.query(".pane").results(Pane):
                p.set_class(p is node, "-active")
            self._show_tabs()

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        app = self.app
        if isinstance(event.data_table.parent, TradesPane) and isinstance(app, TradeSupervisorApp):
            event.stop()
            app.action_detail()


class TradeSupervisorApp(App[int]):
    """Trade Supervisor's screen."""

    TITLE = "Trade Supervisor"
    CSS_PATH = _styles_path()
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding(
            "P",
            "kill_switch",
            "Kill switch",
            id="kill_switch",
            priority=True,
            tooltip="Pause or resume ALL automatic exits (works from any screen)",
        ),
        Binding("question_mark", "help", "Help", id="help", tooltip="Every key and what it does"),
        Binding(
            "q",
            "quit_app",
            "Quit",
            id="quit",
            tooltip="Quit (warns when open trades would lose protection)",
        ),
    ]

    def __init__(self, config: Config, host: Host) -> None:
        super().__init__()
        self.config = config
        self.host = host
        self.palette_colors = Palette(config.ui.up_color, config.ui.down_color)
        self.snapshot: Snapshot | None = None
        self.engine_error: str | None = None
        self.stop_engine_on_exit = False  # set by quit under [ui] on_quit = "stop" (attached)
        self.main: MainScreen | None = None
        self._last_alert_seq = 0
        self.bells = 0  # rings sent (the bell is silent headless; tests read this)

    # ------------------------------------------------------------------ start-up

    def on_mount(self) -> None:
        # A closed terminal (SIGHUP) or a service stop (SIGTERM) ends the app cleanly, so the
        # engine flushes and closes the journal instead of dying mid-write.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        self.theme = self.config.ui.theme
        if self.config.ui.keys:
            self.set_keymap(dict(self.config.ui.keys))
        self.host.on_snapshot = lambda s: self.post_message(SnapshotReady(s))
        self.host.on_stopped = lambda e: self.post_message(EngineStopped(e))
        self.main = MainScreen()
        self.push_screen(self.main)
        if self.host.stopped.is_set():
            self.post_message(EngineStopped(None))
        else:
            self._sync()

    def _on_signal(self, sig: int) -> None:
        """SIGHUP (the terminal went away) or SIGTERM: exit cleanly. A screen attached to an
        engine service holds nothing of the engine's, so if the exit hangs (seen with a dead
        terminal: the process lived on with no terminal) it detaches and leaves hard, within
        `HARD_EXIT_SECONDS`; the engine keeps protecting either way."""
        from tui.attach_host import SocketEngineHost

        self.exit(0)
        host = self.host
        if not isinstance(host, SocketEngineHost):
            return

        def hard_exit() -> None:
            with contextlib.suppress(Exception):
                host.stop(timeout=0.2)
            os._exit(128 + sig)

        timer = threading.Timer(HARD_EXIT_SECONDS[sig == signal.SIGHUP], hard_exit)
        timer.daemon = True
        timer.start()

    @work(group="sync")
    async def _sync(self) -> None:
        with contextlib.suppress(EngineHostError):
            await self.host.sync(force=True)

    # ------------------------------------------------------------------ engine → screen

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        snap = message.snapshot
        self.snapshot = snap
        self._announce_alerts(snap)
        if self.main is not None and self.screen is self.main:
            self.render_main(snap)  # skipped under a modal; re-rendered when it closes

    def render_main(self, snap: Snapshot) -> None:
        main = self.main
        if main is None or not main.is_mounted:
            return
        pal = self.palette_colors
        with self.batch_update():
            main.query_one(StatusBar).show(snap, self.engine_error)
            main.query_one(MarketPane).show(snap.market, snap.risk, pal)
            main.query_one(TradesPane).render_rows(snap, pal)
            main.query_one(StrikesPane).render_rows(snap, pal)
            main.query_one(AlertsPane).render_rows(snap, pal)

    def _announce_alerts(self, snap: Snapshot) -> None:
        """Toast new alerts and ring the bell (once each), as `[ui]` filters them per channel
        (defaults: toasts for warning and critical, the bell for critical).

        Alerts restored from the journal at start-up have seq <= 0 and are never announced."""
        last = self._last_alert_seq
        fresh = [a for a in snap.alerts if a.seq > last]
        self._last_alert_seq = max((a.seq for a in snap.alerts), default=last)
        ui = self.config.ui
        tz = self.config.alerts.time_zone
        toast = _ui_filter(ui.toast_min_severity, tuple(ui.toast_kinds), ui.toast_quiet_hours, tz)
        bell = _ui_filter(ui.bell_min_severity, tuple(ui.bell_kinds), ui.bell_quiet_hours, tz)
        loud = [a for a in fresh if toast.check(a) is Verdict.PASS]
        if ui.toasts:
            for a in reversed(loud[:MAX_TOASTS_PER_UPDATE]):
                self.notify(
                    a.message,
                    title=f"{a.kind.value}{' · ' + shown(a.trade_id) if a.trade_id else ''}",
                    severity=TOAST_SEVERITY.get(a.severity.value, "warning"),
                    timeout=10 if a.severity.value == "critical" else 5,
                    markup=False,  # an alert's text is data: "[delayed data]" is not a style
                )
        if ui.bell and any(bell.check(a) is Verdict.PASS for a in fresh):
            self.ring_bell()

    def ring_bell(self) -> None:
        self.bells += 1
        self.bell()

    def on_engine_stopped(self, message: EngineStopped) -> None:
        if message.error is None and not self.is_running:
            return
        err = message.error
        self.engine_error = f"{type(err).__name__}: {err}" if err else "the engine stopped"
        if self.main is not None and self.main.is_mounted:
            self.main.query_one(StatusBar).show(self.snapshot, self.engine_error)
        from tui.attach_host import SocketEngineHost

        again = (
            "Start it again with `trade-supervisor start` (or quit with q and run ./run-app); "
            "details in engine.log in the data directory."
            if isinstance(self.host, SocketEngineHost)
            else "Quit (q) and start again; details in trade-supervisor.log in the data directory."
        )
        self.notify(
            markup=False,
            message=f"{self.engine_error}. Open trades are NOT protected. {again}",
            title="Engine stopped",
            severity="error",
            timeout=60,
        )
        self.ring_bell()

    # ------------------------------------------------------------------ helpers

    def selected_trade(self) -> TradeRow | None:
        if self.main is None or self.snapshot is None:
            return None
        key = self.main.query_one(TradesPane).table.selected_key
        return next((t for t in self.snapshot.trades if t.trade_id == key), None)

    def _need_trade(self) -> TradeRow | None:
        t = self.selected_trade()
        if t is None:
            self.notify("Select an open trade first (tab to the trades pane).", severity="warning")
        return t

    async def send(self, cmd: Command) -> CommandResult:
        """Send a command, show its result, and refresh the screen from the engine at once."""
        result = await self.host.command(cmd)
        self.notify(
            result.message,
            title=cmd.action.replace("_", " "),
            severity="information" if result.ok else "error",
        )
        with contextlib.suppress(EngineHostError):
            await self.host.sync()
        return result

    # ------------------------------------------------------------------ actions

    @work(exclusive=True, group="action")
    async def action_close_trade(self) -> None:
        t = self._need_trade()
        if t is None:
            return
        from tui.screens.confirm import ConfirmScreen

        body = Text()
        body.append(
            f"{shown(t.trade_id)}  {t.side.upper()} {fmt.qty(t.qty)} × {shown(t.contract_id)}\n"
        )
        body.append(f"entry {fmt.price(t.entry)}   mark {fmt.price(t.mark)}   ")
        body.append_text(self.palette_colors.signed(t.pnl, f"P&L {fmt.money(t.pnl, True)}"))
        body.append(f"\nexpected proceeds at the mark: {fmt.money(t.proceeds)} (before fees)")
        if t.state in ("closing", "stale", "unprotected"):
            body.append(f"\nstate: {t.state}", style="bold red")
        if t.unprotected:
            body.append(f"\nnot protected: {t.unprotected}", style="bold red")
        if await self.push_screen_wait(ConfirmScreen(f"Close {shown(t.trade_id)}?", body, "Close")):
            await self.send(Command("close", t.trade_id))

    @work(exclusive=True, group="action")
    async def action_pause_trade(self) -> None:
        t = self._need_trade()
        if t is not None:
            await self.send(Command("resume" if t.paused else "pause", t.trade_id))

    @work(exclusive=True, group="kill")
    async def action_kill_switch(self) -> None:
        on = self.snapshot is not None and self.snapshot.paused_all
        await self.send(Command("resume_all" if on else "pause_all"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # P types a capital P into a text field; everywhere else it is the kill switch.
        return not (action == "kill_switch" and isinstance(self.focused, Input))

    @work(exclusive=True, group="action")
    async def action_arm(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        if snap.armed:
            await self.send(Command("disarm"))
            return
        if snap.real_money:
            from tui.screens.confirm import ConfirmScreen

            body = (
                f"Venue {snap.venue}, mode {snap.mode}: armed, the supervisor sends REAL orders "
                f"when a rule fires on any of the {len(snap.trades)} open trades."
            )
            if not await self.push_screen_wait(ConfirmScreen("Arm a live venue?", body, "Arm")):
                return
        await self.send(Command("arm"))

    @work(exclusive=True, group="action")
    async def action_close_all(self) -> None:
        snap = self.snapshot
        if snap is None or not snap.trades:
            self.notify("No open trades.")
            return
        from tui.screens.confirm import TypedConfirmScreen

        body = Text(f"{len(snap.trades)} open trade(s) will be closed at the market:\n")
        for t in snap.trades[:12]:
            body.append(
                f"  {shown(t.trade_id)}  {t.side} {fmt.qty(t.qty)} × {shown(t.contract_id)}  "
            )
            body.append(f"mark {fmt.price(t.mark)}  proceeds {fmt.money(t.proceeds)}\n")
        if len(snap.trades) > 12:
            body.append(f"  … and {len(snap.trades) - 12} more\n")
        if await self.push_screen_wait(TypedConfirmScreen("Close ALL trades?", body, "CLOSE")):
            await self.send(Command("close_all"))

    @work(exclusive=True, group="action")
    async def action_detail(self) -> None:
        t = self._need_trade()
        if t is None:
            return
        from tui.screens.detail import TradeDetailScreen

        await self.push_screen(
            TradeDetailScreen(
                t.trade_id,
                self.host.trade_detail,
                up=self.palette_colors.up,
                down=self.palette_colors.down,
            )
        )

    @work(exclusive=True, group="action")
    async def action_edit(self) -> None:
        t = self._need_trade()
        if t is None:
            return
        from tui.screens.edit import EditThresholdsScreen

        detail = await self.host.trade_detail(t.trade_id)
        if detail is None:
            self.notify(f"{t.trade_id} is no longer open.", severity="warning")
            return
        tid = t.trade_id

        async def submit(payload: dict[str, Any]) -> CommandResult:
            return await self.send(Command("set_overrides", tid, payload))

        await self.push_screen(EditThresholdsScreen(detail, submit))

    @work(exclusive=True, group="action")
    async def action_metrics(self) -> None:
        from engine.analytics import metrics_for
        from tui.screens.metrics import MetricsScreen

        if isinstance(self.screen, MetricsScreen):
            return
        host = self.host

        async def fetch() -> dict[str, Any]:
            return await host.call(metrics_for)  # module-level: pickled for the engine process

        await self.push_screen(
            MetricsScreen(fetch, up=self.palette_colors.up, down=self.palette_colors.down)
        )

    @work(exclusive=True, group="action")
    async def action_reload(self) -> None:
        await self.send(Command("reload"))

    def _focused_pane(self) -> Pane | None:
        node = self.focused
        while node is not None and not isinstance(node, Pane):
            node = node.parent  # type: ignore[assignment]
        return node if isinstance(node, Pane) else None

    def action_filter(self) -> None:
        pane = self._focused_pane() or (self.main.active_pane if self.main else None)
        if isinstance(pane, TablePane):
            pane.open_filter()
        else:
            self.notify("Filter works on the trades, strikes and alerts tables (tab to one).")

    def action_clear_filter(self) -> None:
        pane = self._focused_pane()
        if isinstance(pane, TablePane) and (
            pane.table.filter_text or isinstance(self.focused, Input)
        ):
            pane.clear_filter()

    def action_alert_severity(self) -> None:
        if self.main is not None:
            shown = self.main.query_one(AlertsPane).cycle_severity()
            self.notify(f"Alerts: {shown}" + (" and above" if shown != "all severities" else ""))

    def action_alert_kind(self) -> None:
        if self.main is not None:
            self.notify(f"Alerts: {self.main.query_one(AlertsPane).cycle_kind()}")

    def _move_pane(self, step: int) -> None:
        if self.main is None:
            return
        current = self._focused_pane() or self.main.active_pane
        i = PANE_ORDER.index(current.id) if current.id in PANE_ORDER else 0
        self.main.show_pane(PANE_ORDER[(i + step) % len(PANE_ORDER)])

    def action_next_pane(self) -> None:
        self._move_pane(1)

    def action_previous_pane(self) -> None:
        self._move_pane(-1)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        self.push_screen(HelpScreen(self.key_help()))

    def key_help(self) -> list[tuple[str, str, str, str]]:
        """(keys, id, description, tooltip) of every remappable binding, as bound now."""
        keymap = {k: v for k, v in (self.config.ui.keys or {}).items()}
        out = []
        for b in [*MainScreen.BINDINGS, *self.BINDINGS]:
            if not isinstance(b, Binding) or not b.id:
                continue
            keys = keymap.get(b.id, b.key)
            shown = ", ".join(self.get_key_display(Binding(k.strip(), "")) for k in keys.split(","))
            out.append((shown, b.id, b.description, b.tooltip))
        return out

    @work(exclusive=True, group="action")
    async def action_quit_app(self) -> None:
        from tui.attach_host import SocketEngineHost

        if isinstance(self.host, SocketEngineHost) and self.config.ui.on_quit == "detach":
            await self._detach()
            return
        snap = self.snapshot
        protected = (
            snap is not None
            and snap.trades
            and snap.armed
            and snap.mode != "alert_only"
            and self.engine_error is None
        )
        if protected:
            from tui.screens.confirm import ConfirmScreen

            assert snap is not None
            if isinstance(self.host, SocketEngineHost):
                body = (
                    f"{len(snap.trades)} trade(s) are open and ARMED. Quitting stops the engine "
                    '([ui] on_quit = "stop"): nothing protects them until it runs again.\n\n'
                    'With on_quit = "detach" (the default), q leaves the engine running.'
                )
            else:
                body = (
                    f"{len(snap.trades)} trade(s) are open and ARMED. The auto-stop runs inside "
                    "this app: when it quits, nothing protects them.\n\n"
                    "To keep protection without the screen, run\n"
                    "    trade-supervisor --headless\n"
                    "in tmux or under a service manager (systemd), and check on it with\n"
                    "    trade-supervisor status"
                )
            if not await self.push_screen_wait(
                ConfirmScreen("Quit and stop protecting open trades?", body, "Quit", "Stay")
            ):
                return
        self.stop_engine_on_exit = True  # an attached screen with [ui] on_quit = "stop"
        self.exit(0)

    @work(exclusive=True, group="action")
    async def action_stop_engine(self) -> None:
        """Stop the attached engine itself, after a confirmation naming what loses protection."""
        from tui.attach_host import SocketEngineHost
        from tui.screens.confirm import ConfirmScreen

        host = self.host
        if not isinstance(host, SocketEngineHost) or self.engine_error is not None:
            return
        snap = self.snapshot
        n = len(snap.trades) if snap is not None else 0
        armed = snap is not None and snap.armed
        body = (
            f"{n} open trade(s){' are ARMED and' if armed and n else ''} will have no auto-stop "
            "until an engine runs again (./run-app or trade-supervisor start)."
            if n
            else "No trades are open."
        )
        if not await self.push_screen_wait(
            ConfirmScreen("Stop the engine?", body, "Stop engine", "Keep it running")
        ):
            return
        result = await host.stop_engine()
        self.notify(
            result.message, title="Stop the engine", severity="information" if result.ok else "error"
        )

    async def _detach(self) -> None:
        """`q` on a screen attached to a running engine: the engine stays on."""
        from tui.screens.confirm import ConfirmScreen

        if self.engine_error is None:
            snap = self.snapshot
            n = len(snap.trades) if snap is not None else 0
            welcome = getattr(self.host, "welcome", None)
            pid = f" (pid {welcome.pid})" if welcome is not None else ""
            bad = len(snap.unprotected) if snap is not None else 0
            unprotected = (
                f" ({bad} of them UNPROTECTED right now: see the header and "
                "`trade-supervisor status`)"
                if bad
                else ""
            )
            body = (
                f"The engine{pid} stays on and keeps protecting the {n} open trade(s){unprotected} "
                "while no screen is attached. Attach again with ./run-app (or "
                "trade-supervisor).\n\n"
                "To stop the engine itself, run\n"
                "    trade-supervisor stop"
            )
            if not await self.push_screen_wait(
                ConfirmScreen("Detach? The engine stays on.", body, "Detach", "Stay")
            ):
                return
        self.exit(0)

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        from tui.attach_host import SocketEngineHost

        if isinstance(self.host, SocketEngineHost) and not self.host.read_only:
            yield SystemCommand(
                "Stop the engine",
                "Stop the engine this screen is attached to (warns when open trades would "
                "lose protection); q only detaches",
                lambda: self.run_action("stop_engine"),
            )
        for b in [*MainScreen.BINDINGS, *self.BINDINGS]:
            if not isinstance(b, Binding) or not b.id:
                continue
            action = b.action.removeprefix("app.")
            yield SystemCommand(
                b.description,
                b.tooltip,
                lambda a=action: self.run_action(a),  # type: ignore[misc]
            )


TOAST_SEVERITY: dict[str, Any] = {"info": "information", "warning": "warning", "critical": "error"}


@functools.cache
def _ui_filter(
    min_severity: str, kinds: Sequence[str], quiet_hours: str, time_zone: str
) -> AlertFilter:
    """The toast's or the bell's filter, as the engine's channels filter (engine/alerts.py):
    at least `min_severity`, of `kinds` (empty: any), outside the quiet hours unless critical."""
    return AlertFilter(
        Severity(min_severity),
        frozenset(AlertKind(k) for k in kinds),
        parse_quiet_hours(quiet_hours),
        zoneinfo.ZoneInfo(time_zone),
    )


def ui_config_problems(config: Config, where: str) -> list[str]:
    """What in `[ui]` the screen cannot use (checked before the screen starts)."""
    problems = []
    names = sorted(BUILTIN_THEMES)
    if config.ui.theme not in names:
        problems.append(
            f"{where}: ui.theme: unknown theme {config.ui.theme!r}; use one of: {', '.join(names)}"
        )
    for key in ("up_color", "down_color"):
        value = getattr(config.ui, key)
        try:
            Color.parse(value)
        except ColorParseError:
            problems.append(
                f'{where}: ui.{key}: {value!r} is not a colour; use a name such as "green" '
                'or a hex colour such as "#00d787"'
            )
    missing = set(UI_KEY_IDS) - {
        b.id for b in [*MainScreen.BINDINGS, *TradeSupervisorApp.BINDINGS] if isinstance(b, Binding)
    }
    assert not missing, f"bindings without an id: {missing}"
    return problems


# An attached screen's longest clean exit after SIGTERM / SIGHUP before it leaves hard (the
# terminal is gone after SIGHUP: nothing to restore).
HARD_EXIT_SECONDS = {False: 1.5, True: 0.5}


def _log_to_file(config: Config) -> Path:
    """Send log records to `data_dir/trade-supervisor.log`: the screen owns the terminal."""
    root = logging.getLogger()
    path = config.data_path() / "trade-supervisor.log"
    private_files.make_dir(path.parent)
    private_files.create(path)
    private_files.tighten(path)
    if root.handlers:
        return path  # already set up (by a test or an embedding program)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


# Python's default first-generation threshold (700 allocations) promotes every snapshot the
# screen decodes (~10,000 objects that live until the next one) into the oldest generation, and
# the screen then ran a full collection (~100 ms over ~160,000 objects) 48 times a minute;
# benchmarks/ui_update.py: update p99 138 ms. At 10,000: 2 a minute, p99 44-49 ms.
SCREEN_GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc_for_the_screen() -> tuple[int, int, int]:
    """Set the screen process's garbage collector thresholds; returns the previous ones."""
    old = gc.get_threshold()
    gc.set_threshold(*SCREEN_GC_THRESHOLDS)
    return old


def run_app(config: Config, config_path: Path | None) -> int:
    """Start the engine (a child process, or a thread), run the screen, stop the engine cleanly
    afterwards."""
    problems = ui_config_problems(config, str(config_path or "config"))
    if problems:
        raise ConfigError(problems)
    if config.ui.engine == "service":
        return run_attached(config, config_path, start_if_none=True)
    log_path = _log_to_file(config)
    tune_gc_for_the_screen()
    host: Host
    if config.ui.engine == "process":
        host = ProcessEngineHost(config, config_path, log_path=log_path)
    else:
        # The engine thread must get the GIL back quickly while the screen renders (default 5 ms).
        sys.setswitchinterval(0.001)
        host = EngineHost(config, config_path)
    try:
        host.start()
    except (StoreError, EngineHostError) as e:
        print(f"trade-supervisor: {e}", file=sys.stderr)
        return 1
    app = TradeSupervisorApp(config, host)
    try:
        app.run()
    finally:
        host.stop()
    open_trades = len(app.snapshot.trades) if app.snapshot else 0
    print(
        "trade-supervisor: stopped; the journal is closed."
        + (
            f" {open_trades} open trade(s) are not protected until it runs again "
            "(trade-supervisor --headless keeps them protected without the screen)."
            if open_trades
            else ""
        )
    )
    return 1 if app.engine_error else 0


def run_attached(
    config: Config,
    config_path: Path | None,
    *,
    socket_path: Path | None = None,
    read_only: bool = False,
    start_if_none: bool = False,
) -> int:
    """The screen attached to the engine that runs for this config's data_dir (or at
    `socket_path`), starting one in the background first when none runs and `start_if_none`.
    `q` detaches (the engine keeps protecting) unless `[ui] on_quit = "stop"`."""
    from engine import service
    from tui.attach_host import SocketEngineHost

    problems = ui_config_problems(config, str(config_path or "config"))
    if problems:
        raise ConfigError(problems)
    if start_if_none and socket_path is None and service.engine_pid(config) is None:
        # Start-up errors (a locked journal, a bad key file) print here, before any screen.
        code = service.start(config, config_path)
        if code != 0:
            return code
    _log_to_file(config)
    tune_gc_for_the_screen()
    while True:
        host = SocketEngineHost(config, socket_path, read_only=read_only)
        try:
            host.start()
        except EngineHostError as e:
            hint = "" if socket_path is not None else "; start one with `trade-supervisor start`"
            print(f"trade-supervisor: cannot attach: {e}{hint}", file=sys.stderr)
            return 1
        app = TradeSupervisorApp(config, host)
        try:
            app.run()
        finally:
            host.stop()
        if app.engine_error is None:
            break
        print(f"trade-supervisor: {app.engine_error}; open trades are NOT protected")
        if not (start_if_none and sys.stdin.isatty() and service.engine_pid(config) is None):
            return 1
        # ./run-app: offer to start it again (start-up errors print here, as at first).
        answer = input("Start the engine again and attach? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            return 1
        code = service.start(config, config_path)
        if code != 0:
            return code
    pid = host.welcome.pid if host.welcome is not None else "?"
    if app.stop_engine_on_exit:
        return service.stop_at(host.path, config)
    print(
        f"trade-supervisor: detached; the engine (pid {pid}) keeps protecting. "
        "Attach again with ./run-app, stop it with `trade-supervisor stop`."
    )
    return 0
