"""The trade detail screen: one open trade's chart, rules, audit trail and alerts.

It polls `fetch(trade_id)` (the engine's `trade_detail`) on mount and then every
`refresh_seconds`. The timer is one-shot and re-armed after each fetch, so a slow fetch never has
a second one queued behind it. Everything shown comes from the `TradeDetail`; this module only
formats. The tables are rebuilt (clear + add_rows) only when their data changed: this screen is
not on the hot path, and the unchanged case keeps the cursor and scroll position.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Label, Static

from engine.alerts import Alert
from engine.rules import fmt_dollars
from engine.snapshot import AuditEntry, RuleView, TradeDetail
from engine.text import shown
from tui.chart import PnlChart

__all__ = ["CLOSED_TEXT", "TradeDetailScreen"]

Fetch = Callable[[str], Awaitable[TradeDetail | None]]

CLOSED_TEXT = "closed — no longer open"

RULE_COLUMNS = (("rule", 18), ("state", 6), ("value", 11), ("threshold", 11), ("distance", 11))
RULE_TEXT_WIDTH = 44
AUDIT_COLUMNS = (("time", 8), ("event", 20), ("text", 24))
ALERT_COLUMNS = (("time", 8), ("severity", 8), ("kind", 16), ("message", 20))


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _num(x: float, unit: str = "") -> str:
    """A rule quantity with its unit, as the engine writes them ("4.2%", "12 bps", "-$0.05")."""
    if unit == "$":
        n = fmt_dollars(x)
        return f"-${n[1:]}" if n.startswith("-") else f"${n}"
    n = f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"
    if unit in ("%", "s", ""):
        return f"{n}{unit}"
    return f"{n} {unit}"


def _price(x: float | None) -> str:
    if x is None:
        return "—"
    s = f"{x:,.4f}".rstrip("0")
    return s + "0" * max(0, 2 - len(s.partition(".")[2]))


class TradeDetailScreen(Screen[None]):
    """Full-screen detail of one trade; `escape` goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape",
            "back",
            "Back",
            id="back",
            tooltip="Close the trade detail and return to the main screen",
        ),
    ]

    DEFAULT_CSS = """
    TradeDetailScreen {
        layout: vertical;
    }
    TradeDetailScreen #detail-title {
        height: 1;
        text-style: bold;
        padding: 0 1;
    }
    TradeDetailScreen #detail-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    TradeDetailScreen #detail-status.closed {
        color: $warning;
        text-style: bold;
    }
    TradeDetailScreen #detail-status.error {
        color: $error;
    }
    TradeDetailScreen #detail-chart {
        height: 12;
        padding: 0 1;
    }
    TradeDetailScreen .detail-heading {
        height: 1;
        padding: 0 1;
        text-style: bold;
        color: $text-accent;
    }
    TradeDetailScreen #detail-rules-box {
        height: 1fr;
    }
    TradeDetailScreen #detail-lower {
        height: 1fr;
    }
    TradeDetailScreen #detail-audit-box, TradeDetailScreen #detail-alerts-box {
        width: 1fr;
    }
    TradeDetailScreen DataTable {
        height: 1fr;
    }
    """

    def __init__(
        self,
        trade_id: str,
        fetch: Fetch,
        up: str = "green",
        down: str = "red",
        refresh_seconds: float = 2.0,
    ) -> None:
        super().__init__()
        self.trade_id = trade_id
        self._fetch = fetch
        self.up = up
        self.down = down
        self.refresh_seconds = refresh_seconds
        self.detail: TradeDetail | None = None  # the last data shown (kept once closed)
        self.closed = False
        self._timer: Timer | None = None
        self._fetching = False
        self._shown: dict[str, Any] = {}  # per table: the data it was last built from

    def compose(self) -> ComposeResult:
        yield Static(f"{shown(self.trade_id)}  loading…", id="detail-title", markup=False)
        yield Static("", id="detail-status", markup=False)
        yield PnlChart(self.up, self.down, id="detail-chart")
        with Vertical(id="detail-rules-box"):
            yield Label("Rules", classes="detail-heading")
            yield DataTable(id="detail-rules", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="detail-lower"):
            with Vertical(id="detail-audit-box"):
                yield Label("Audit trail (UTC)", classes="detail-heading")
                yield DataTable(id="detail-audit", cursor_type="row", zebra_stripes=True)
            with Vertical(id="detail-alerts-box"):
                yield Label("Alerts (UTC)", classes="detail-heading")
                yield DataTable(id="detail-alerts", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        rules = self.query_one("#detail-rules", DataTable)
        for label, width in RULE_COLUMNS:
            rules.add_column(label, width=width, key=label)
        rules.add_column("text", width=RULE_TEXT_WIDTH, key="text")
        for table_id, columns in (
            ("#detail-audit", AUDIT_COLUMNS),
            ("#detail-alerts", ALERT_COLUMNS),
        ):
            table = self.query_one(table_id, DataTable)
            for label, width in columns:
                table.add_column(label, width=width, key=label)
        # The first fetch runs in this screen's message loop, right after the first layout; the
        # later ones run from the one-shot timer.
        self.call_later(self.fetch_now)

    async def fetch_now(self) -> None:
        """Fetch and show the trade now, then arm the timer for the next fetch."""
        if self._fetching or self.closed:
            return
        if self._timer is not None:  # a fetch was due later: this one replaces it
            self._timer.stop()
            self._timer = None
        self._fetching = True
        try:
            detail = await self._fetch(self.trade_id)
        except Exception as e:  # a failed fetch keeps the last data and tries again later
            self._set_status(f"could not fetch {self.trade_id}: {e}", "error")
        else:
            if detail is None:
                self.closed = True  # a closed trade never reopens: stop polling
                self._set_status(CLOSED_TEXT, "closed")
            else:
                self._set_status("", None)
                self.show(detail)
        finally:
            self._fetching = False
        if not self.closed and self.is_attached:
            self._timer = self.set_timer(self.refresh_seconds, self._on_timer)

    async def _on_timer(self) -> None:
        self._timer = None  # this timer has fired; fetch_now must not stop (cancel) it
        await self.fetch_now()

    def show(self, detail: TradeDetail) -> None:
        """Render `detail` (also usable directly, without fetch)."""
        self.detail = detail
        self.query_one("#detail-title", Static).update(self._title(detail))
        self.query_one("#detail-chart", PnlChart).show(detail.marks, detail.levels)
        self._fill("#detail-rules", detail.row.rules, self._rule_rows)
        self._fill("#detail-audit", detail.audit, self._audit_rows, scroll_end=True)
        self._fill("#detail-alerts", detail.alerts, self._alert_rows)

    def action_back(self) -> None:
        self.dismiss()

    # --- formatting --------------------------------------------------------------------------

    def _set_status(self, text: str, kind: str | None) -> None:
        status = self.query_one("#detail-status", Static)
        status.update(text)
        status.set_class(kind == "closed", "closed")
        status.set_class(kind == "error", "error")

    def _title(self, d: TradeDetail) -> Text:
        r = d.row
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(shown(r.trade_id), style="bold")
        t.append(f"  {d.contract}  ")
        t.append(f"{r.side.upper()} {r.qty:g} @ {_price(r.entry)}")
        t.append(f"  mark {_price(r.mark)}  P&L ")
        if r.pnl is None:
            t.append("—")
        else:
            pct = f" ({r.pnl_pct:+.1f}%)" if r.pnl_pct is not None else ""
            t.append(f"{r.pnl:+,.2f}{pct}", style=self.up if r.pnl >= 0 else self.down)
        t.append(f"  {r.state}", style="bold")
        if r.problem:
            t.append(f" ({r.problem})", style=self.down)
        return t

    def _rule_rows(self, rules: Sequence[RuleView]) -> list[tuple[Any, ...]]:
        return [
            (
                rv.rule,
                Text("FIRED", style=f"bold {self.down}") if rv.fired else Text("ok"),
                _num(rv.value, rv.unit),
                _num(rv.threshold, rv.unit),
                _num(rv.distance, rv.unit),
                rv.text,
            )
            for rv in rules
        ]

    @staticmethod
    def _audit_rows(audit: Sequence[AuditEntry]) -> list[tuple[Any, ...]]:
        return [(_hms(a.ts), a.event, a.text) for a in audit]

    def _alert_rows(self, alerts: Sequence[Alert]) -> list[tuple[Any, ...]]:
        styles = {"critical": f"bold {self.down}", "warning": "yellow"}
        rows: list[tuple[Any, ...]] = []
        for a in alerts:
            more = f" (+{a.repeats} similar)" if a.repeats else ""
            severity = str(a.severity)
            rows.append(
                (
                    _hms(a.ts),
                    Text(severity, style=styles.get(severity, "")),
                    str(a.kind),
                    shown(a.message) + more,
                )
            )
        return rows

    def _fill(
        self,
        table_id: str,
        data: Sequence[Any],
        rows: Callable[[Sequence[Any]], list[tuple[Any, ...]]],
        scroll_end: bool = False,
    ) -> None:
        if self._shown.get(table_id) == data:
            return
        self._shown[table_id] = data
        table = self.query_one(table_id, DataTable)
        table.clear()
        table.add_rows(rows(data))
        if scroll_end and table.row_count:
            table.move_cursor(row=table.row_count - 1, animate=False)
