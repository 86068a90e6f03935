"""Snapshot rows → table rows (cells formatted for the screen; no value is computed here).

Cells are plain strings or `(text, style)` pairs, cheap to build and to compare; the table makes
a renderable only for a cell that changed (see tui/tables.py). Justification comes from the
column (`Column.right`). Strings are shown as they are, never parsed as markup.
"""

from __future__ import annotations

from engine.alerts import Alert
from engine.snapshot import StrikeRow, TradeRow
from tui import format as fmt
from tui.format import Palette
from tui.tables import Column, Row

TRADE_COLUMNS = (  # what a trader needs first comes first: 80 columns show ID to State in full
    Column("id", "ID", 10),
    Column("side", "Side", 4),
    Column("qty", "Qty", 5, right=True),
    Column("mark", "Mark", 6, right=True),
    Column("pnl", "P&L $", 9, right=True),
    Column("pnl_pct", "P&L %", 7, right=True),
    Column("state", "State", 10),
    Column("nearest", "Nearest rule", 20),
    Column("entry", "Entry", 6, right=True),
    Column("peak", "Peak $", 9, right=True),
    Column("dd", "DD $", 8, right=True),
    Column("held", "Held", 7, right=True),
    Column("contract", "Contract", 23),
)

STRIKE_COLUMNS = (
    Column("flag", "", 3),
    Column("strike", "Strike", 9, right=True),
    Column("buf", "Buffer $", 8, right=True),
    Column("buf_pct", "Buf %", 6, right=True),
    Column("bm", "B/M", 5, right=True),
    Column("prob", "Prob", 5, right=True),
    Column("yes", "YES b/a", 9, right=True),
    Column("no", "NO b/a", 9, right=True),
    Column("diff_yes", "DIFF Y", 6, right=True),
    Column("diff_no", "DIFF N", 6, right=True),
    Column("vol", "Vol/OI", 13, right=True),
)

ALERT_COLUMNS = (
    Column("time", "Time", 8),
    Column("sev", "Sev", 8),
    Column("kind", "Kind", 17),
    Column("trade", "Trade", 10),
    Column("message", "Message", 90),
)

STATE_STYLE = {
    "armed": "bold green",
    "paused": "bold yellow",
    "closing": "bold magenta",
    "stale": "bold white on red",
    "disarmed": "dim",
    "alert_only": "cyan",
    "halted": "bold red",
}

SEVERITY_STYLE = {"info": "", "warning": "bold yellow", "critical": "bold white on red"}


def trade_row(t: TradeRow, pal: Palette) -> Row:
    state = "stale data" if t.state == "stale" else t.state
    cells = (
        t.trade_id,
        t.side,
        fmt.qty(t.qty),
        fmt.price(t.mark),
        _signed(pal, t.pnl, fmt.money(t.pnl, signed=True)),
        _signed(pal, t.pnl_pct, fmt.pct(t.pnl_pct)),
        (state, STATE_STYLE.get(t.state, "")),
        t.nearest if t.rules else ("no rules on", "yellow"),
        fmt.price(t.entry),
        _signed(pal, t.peak_pnl, fmt.money(t.peak_pnl, signed=True)),
        (fmt.money(t.drawdown), pal.down if t.drawdown > 0 else ""),
        fmt.duration(t.held_seconds),
        t.contract_id,
    )
    search = f"{t.trade_id} {t.contract_id} {t.side} {t.strategy} {state}".lower()
    return Row(t.trade_id, cells, search)


def strike_row(s: StrikeRow, pal: Palette) -> Row:
    flag = ("◆" if s.atm else " ") + ("●" if s.held else " ") + ("★" if s.edge else " ")
    strike_style = " ".join(x for x in ("bold" if s.atm else "", "cyan" if s.held else "") if x)
    if s.below:
        strike = f"<{s.strike:,.0f}"
    else:
        strike = f"{s.strike:,.0f}" if s.cap is None else f"{s.strike:,.0f}-{s.cap:,.0f}"
    cells = (
        (flag, "bold yellow" if s.edge else "bold"),
        (strike, strike_style),
        _signed(pal, s.buffer, f"{s.buffer:+,.0f}"),
        _signed(pal, s.buffer_pct, fmt.pct(s.buffer_pct, digits=2)),
        f"{s.bm:.2f}" if s.bm is not None else fmt.DASH,
        f"{s.prob:.2f}",
        f"{fmt.price(s.yes_bid)}/{fmt.price(s.yes_ask)}",
        f"{fmt.price(s.no_bid)}/{fmt.price(s.no_ask)}",
        _signed(pal, s.diff_yes, f"{s.diff_yes:+.2f}" if s.diff_yes is not None else ""),
        _signed(pal, s.diff_no, f"{s.diff_no:+.2f}" if s.diff_no is not None else ""),
        f"{s.volume:,.0f}/{s.open_interest:,.0f}",
    )
    search = f"{strike} {s.contract_id} {'atm' if s.atm else ''} {'held' if s.held else ''}"
    return Row(s.contract_id, cells, (search + (" edge" if s.edge else "")).lower())


def alert_row(a: Alert) -> Row:
    sev = a.severity.value
    more = f" (+{a.repeats} similar)" if a.repeats else ""
    cells = (
        fmt.hms(a.ts),
        (sev, SEVERITY_STYLE.get(sev, "")),
        a.kind.value,
        a.trade_id or "",
        (a.message + more, "bold" if sev == "critical" else ""),
    )
    search = f"{sev} {a.kind.value} {a.trade_id or ''} {a.message}".lower()
    return Row(str(a.seq), cells, search)


def _signed(pal: Palette, v: float | None, text: str) -> tuple[str, str]:
    """A number coloured by its sign, as `Palette.signed` does; a dim dash when there is none."""
    if v is None:
        return (fmt.DASH, "dim")
    return (text, pal.up if v > 0 else pal.down if v < 0 else "")
