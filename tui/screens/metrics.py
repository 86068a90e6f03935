"""The metrics screen (`m`): the closed trades' equity curve, aggregates and auto-stop effectiveness.

Every number comes from the engine side: `fetch()` is `host.call(engine.analytics.metrics_for)`,
the report of `trade-supervisor metrics` as plain data (`Report.to_dict()` without the per-trade
rows, plus the equity curve). It is fetched on mount and again on `r`; this module only formats.
The body scrolls, so an 80×24 terminal shows every part; `g` switches the grouped table between
strategy, venue and exit reason.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from engine.analytics import MIN_RATIO_TRADES, fmt_duration
from engine.snapshot import PnlLevel
from tui.chart import PnlChart

__all__ = ["EMPTY_TEXT", "GROUPS", "MetricsScreen", "money", "pct", "ratio"]

Fetch = Callable[[], Awaitable[Mapping[str, Any]]]

EMPTY_TEXT = "no closed trades yet"
# (report key, what the table's first column is), in the order `g` cycles through them.
GROUPS: tuple[tuple[str, str], ...] = (
    ("by_strategy", "strategy"),
    ("by_venue", "venue"),
    ("by_exit_reason", "exit reason"),
)
GROUP_COLUMNS = (
    "trades",
    "wins",
    "losses",
    "win %",
    "total P&L",
    "avg P&L",
    "PF",
    "expect.",
    "Sharpe",
    "Sortino",
    "max DD",
    "avg hold",
)
RULE_COLUMNS = (
    "exits",
    "settled",
    "pending",
    "realised",
    "if held",
    "saved",
    "given up",
    "net",
)
ALL_RULES = "all rules"
NEUTRAL = "grey50"


def money(v: float | None) -> str:
    return "—" if v is None else f"{v:+,.2f}"


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100.0 * v:.1f}%"


def ratio(v: float | None, trades: int | None = None) -> str:
    """A ratio; "n/a (n=7)" when there are too few trades for it to mean anything."""
    if v is None:
        return "—" if not trades or trades >= MIN_RATIO_TRADES else f"n/a (n={trades})"
    return f"{v:.2f}"


def _stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _axis_time(ts: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(ts))


class MetricsScreen(Screen[None]):
    """Full-screen metrics of the closed trades; `escape` goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape,q",
            "back",
            "Back",
            id="metrics_close",
            tooltip="Close the metrics and return to the main screen",
        ),
        Binding(
            "r",
            "refresh",
            "Refresh",
            id="metrics_refresh",
            tooltip="Read the journal again and redraw the metrics",
        ),
        Binding(
            "g",
            "next_group",
            "Group by",
            id="metrics_group",
            tooltip="Group the table by strategy, venue or exit reason",
        ),
    ]

    DEFAULT_CSS = """
    MetricsScreen {
        layout: vertical;
    }
    MetricsScreen #metrics-title {
        height: 1;
        text-style: bold;
        padding: 0 1;
    }
    MetricsScreen #metrics-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    MetricsScreen #metrics-status.error {
        color: $error;
    }
    MetricsScreen #metrics-body {
        height: 1fr;
    }
    MetricsScreen .metrics-heading {
        height: 1;
        padding: 0 1;
        margin-top: 1;
        text-style: bold;
        color: $text-accent;
    }
    MetricsScreen #metrics-empty {
        padding: 1 2;
        text-style: bold;
        color: $warning;
    }
    MetricsScreen #metrics-chart {
        height: 10;
        padding: 0 1;
    }
    MetricsScreen #metrics-overall, MetricsScreen #metrics-notes {
        height: auto;
        padding: 0 1;
    }
    MetricsScreen DataTable {
        height: auto;
        max-height: 14;
        margin: 0 1;
    }
    """

    def __init__(self, fetch: Fetch, up: str = "green", down: str = "red") -> None:
        super().__init__()
        self.fetch = fetch
        self.up = up
        self.down = down
        self.data: Mapping[str, Any] | None = None
        self.group_index = 0
        self.overall_cells: list[tuple[str, str]] = []  # (label, value) as shown (tests read)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Label("Trade metrics", id="metrics-title")
        yield Static("loading…", id="metrics-status", markup=False)
        with VerticalScroll(id="metrics-body"):
            yield Static(EMPTY_TEXT, id="metrics-empty", markup=False)
            yield Label(
                "Equity: cumulative realised P&L by close time (UTC)",
                classes="metrics-heading metrics-part",
            )
            yield PnlChart(
                self.up,
                self.down,
                time_text=_axis_time,
                empty_text=EMPTY_TEXT,
                id="metrics-chart",
                classes="metrics-part",
            )
            yield Label("Overall", classes="metrics-heading metrics-part")
            yield Static("", id="metrics-overall", classes="metrics-part")
            yield Label("", id="metrics-group-heading", classes="metrics-heading metrics-part")
            yield DataTable(
                id="metrics-groups",
                classes="metrics-part",
                cursor_type="row",
                zebra_stripes=True,
            )
            yield Label(
                "Auto-stop effectiveness by rule (rule exits vs holding to settlement)",
                classes="metrics-heading metrics-part",
            )
            yield DataTable(
                id="metrics-rules",
                classes="metrics-part",
                cursor_type="row",
                zebra_stripes=True,
            )
            yield Static("", id="metrics-notes", classes="metrics-part", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#metrics-empty").display = False
        self.query_one("#metrics-body", VerticalScroll).focus()
        self.action_refresh()

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        self.dismiss(None)

    def action_refresh(self) -> None:
        self._load()

    def action_next_group(self) -> None:
        self.group_index = (self.group_index + 1) % len(GROUPS)
        if self.data is not None:
            self._show_groups(self.data)

    @work(exclusive=True, group="metrics")
    async def _load(self) -> None:
        status = self.query_one("#metrics-status", Static)
        try:
            data = await self.fetch()
        except Exception as e:  # the engine stopped, the journal could not be read
            status.set_class(True, "error")
            status.update(f"metrics unavailable: {type(e).__name__}: {e}")
            return
        status.set_class(False, "error")
        self.data = data
        self.show(data)

    # ------------------------------------------------------------------ rendering

    def show(self, data: Mapping[str, Any]) -> None:
        n = int(data.get("closed_trades", 0))
        as_of = data.get("as_of")
        self.query_one("#metrics-title", Label).update(
            f"Trade metrics — {n} closed trade{'s' if n != 1 else ''}"
            + (f"  (as of {_stamp(as_of)})" if isinstance(as_of, (int, float)) else "")
        )
        self.query_one("#metrics-status", Static).update(
            "r refresh · g group by strategy / venue / exit reason · escape back"
        )
        empty = n == 0
        self.query_one("#metrics-empty").display = empty
        for part in self.query(".metrics-part"):
            part.display = not empty
        if empty:
            self.overall_cells = []
            self.query_one("#metrics-empty", Static).update(
                f"{EMPTY_TEXT}: the metrics appear here once a trade has closed."
            )
            return
        points = [(float(t), float(v)) for t, v in data.get("equity", [])]
        self.query_one(PnlChart).show(points, [PnlLevel("break-even", 0.0, "0.00")])
        self._show_overall(data["overall"])
        self._show_groups(data)
        self._show_rules(data.get("effectiveness", {}), data.get("effectiveness_total", {}))
        notes: list[str] = []
        unknown = int(data["overall"].get("unknown_pnl", 0))
        if unknown:
            notes.append(f"{unknown} closed without a known P&L, not counted")
        notes.extend(f"warning: {p}" for p in data.get("problems", []))
        notes_w = self.query_one("#metrics-notes", Static)
        notes_w.update("\n".join(notes))
        notes_w.display = bool(notes)

    def _signed(self, v: float | None, text: str) -> Text:
        if v is None or v == 0:
            return Text(text)
        return Text(text, style=self.up if v > 0 else self.down)

    def _show_overall(self, a: Mapping[str, Any]) -> None:
        cells = [
            ("trades", str(a["trades"])),
            ("win rate", pct(a["win_rate"])),
            ("profit factor", ratio(a["profit_factor"], a["trades"])),
            ("wins / losses", f"{a['wins']} / {a['losses']}"),
            ("total P&L", money(a["total_pnl"])),
            ("expectancy", money(a["expectancy"])),
            ("average P&L", money(a["avg_pnl"])),
            ("Sharpe", ratio(a["sharpe"], a["trades"])),
            ("Sortino", ratio(a["sortino"], a["trades"])),
            ("max drawdown", f"{a['max_drawdown']:,.2f}"),
            ("avg holding", fmt_duration(a["avg_holding_seconds"])),
            ("best / worst", f"{money(a['best'])} / {money(a['worst'])}"),
        ]
        self.overall_cells = cells
        signed = {"total P&L": a["total_pnl"], "expectancy": a["expectancy"]}
        signed["average P&L"] = a["avg_pnl"]
        grid = Table.grid(padding=(0, 2))
        for _ in range(3):
            grid.add_column(style=NEUTRAL, no_wrap=True)
            grid.add_column(justify="right", no_wrap=True)
        for i in range(0, len(cells), 3):
            row: list[Text | str] = []
            for label, value in cells[i : i + 3]:
                row.append(label)
                if label in signed:
                    row.append(self._signed(signed[label], value))
                elif label == "max drawdown" and a["max_drawdown"]:
                    row.append(Text(value, style=self.down))
                else:
                    row.append(value)
            grid.add_row(*row)
        self.query_one("#metrics-overall", Static).update(grid)

    def _group_cells(self, a: Mapping[str, Any]) -> list[Text | str]:
        return [
            str(a["trades"]),
            str(a["wins"]),
            str(a["losses"]),
            pct(a["win_rate"]),
            self._signed(a["total_pnl"], money(a["total_pnl"])),
            self._signed(a["avg_pnl"], money(a["avg_pnl"])),
            ratio(a["profit_factor"], a["trades"]),
            self._signed(a["expectancy"], money(a["expectancy"])),
            ratio(a["sharpe"], a["trades"]),
            ratio(a["sortino"], a["trades"]),
            f"{a['max_drawdown']:,.2f}",
            fmt_duration(a["avg_holding_seconds"]),
        ]

    def _show_groups(self, data: Mapping[str, Any]) -> None:
        key, label = GROUPS[self.group_index]
        others = ", ".join(lbl for k, lbl in GROUPS if k != key)
        self.query_one("#metrics-group-heading", Label).update(
            f"By {label}  (g: by {others.replace(', ', ' or by ')})"
        )
        groups: Mapping[str, Mapping[str, Any]] = data.get(key, {})
        self._fill(
            self.query_one("#metrics-groups", DataTable),
            (label, *GROUP_COLUMNS),
            [(name, self._group_cells(a)) for name, a in groups.items()],
        )

    def _rule_cells(self, e: Mapping[str, Any]) -> list[Text | str]:
        return [
            str(e["exits"]),
            str(e["settled"]),
            str(e["pending"]),
            money(e["realized_pnl"]),
            money(e["if_held_pnl"]),
            self._signed(e["saved"], f"{e['saved']:,.2f}"),
            self._signed(-e["given_up"], f"{e['given_up']:,.2f}"),
            self._signed(e["net"], money(e["net"])),
        ]

    def _show_rules(self, effects: Mapping[str, Any], total: Mapping[str, Any]) -> None:
        rows = [(rule, self._rule_cells(e)) for rule, e in effects.items()]
        if rows and total:
            rows.append((ALL_RULES, self._rule_cells(total)))
        table = self.query_one("#metrics-rules", DataTable)
        self._fill(table, ("rule", *RULE_COLUMNS), rows)
        if not rows:
            table.add_row(Text("no trades closed by a rule", style=NEUTRAL), key="none")

    @staticmethod
    def _fill(
        table: DataTable[Any],
        columns: Sequence[str],
        rows: Sequence[tuple[str, Sequence[Text | str]]],
    ) -> None:
        """Rebuild `table`: columns keyed by their titles, rows by their first cell."""
        table.clear(columns=True)
        for i, c in enumerate(columns):
            table.add_column(Text(c, justify="left" if i == 0 else "right"), key=c)
        for name, cells in rows:
            out = [Text(name, style="bold")]
            for c in cells:
                t = c.copy() if isinstance(c, Text) else Text(c)
                t.justify = "right"
                out.append(t)
            table.add_row(*out, key=name)
