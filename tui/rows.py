"""Snapshot rows → table rows (cells formatted for the screen; no value is computed here)."""

from __future__ import annotations

from rich.text import Text

from engine.alerts import Alert
from engine.snapshot import StrikeRow, TradeRow
from tui import format as fmt
from tui.format import Palette
from tui.tables import Column, Row

TRADE_COLUMNS = (  # what a trader needs first comes first (80 columns show up to State)
    Column("id", "ID", 10),
    Column("side", "Side", 4),
    Column("qty", "Qty", 5, right=True),
    Column("mark", "Mark", 6, right=True),
    Column("pnl", "P&L $", 9, right=True),
    Column("pnl_pct", "P&L %", 7, right=True),
    Column("nearest", "Nearest rule", 20),
    Column("state", "State", 10),
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
        Text(t.trade_id),
        t.side,
        Text(fmt.qty(t.qty), justify="right"),
        Text(fmt.price(t.mark), justify="right"),
        _right(pal.signed(t.pnl, fmt.money(t.pnl, signed=True))),
        _right(pal.signed(t.pnl_pct, fmt.pct(t.pnl_pct))),
        t.nearest if t.rules else Text("no rules on", style="yellow"),
        Text(state, style=STATE_STYLE.get(t.state, "")),
        Text(fmt.price(t.entry), justify="right"),
        _right(pal.signed(t.peak_pnl, fmt.money(t.peak_pnl, signed=True))),
        Text(fmt.money(t.drawdown), justify="right", style=pal.down if t.drawdown > 0 else ""),
        Text(fmt.duration(t.held_seconds), justify="right"),
        t.contract_id,
    )
    search = f"{t.trade_id} {t.contract_id} {t.side} {t.strategy} {state}".lower()
    return Row(t.trade_id, cells, search)


def strike_row(s: StrikeRow, pal: Palette) -> Row:
    flag = ("◆" if s.atm else " ") + ("●" if s.held else " ") + ("★" if s.edge else " ")
    strike_style = " ".join(x for x in ("bold" if s.atm else "", "cyan" if s.held else "") if x)
    strike = f"{s.strike:,.0f}" if s.cap is None else f"{s.strike:,.0f}-{s.cap:,.0f}"
    cells = (
        Text(flag, style="bold yellow" if s.edge else "bold"),
        Text(strike, justify="right", style=strike_style),
        _right(pal.signed(s.buffer, f"{s.buffer:+,.0f}")),
        _right(pal.signed(s.buffer_pct, fmt.pct(s.buffer_pct, digits=2))),
        Text(f"{s.bm:.2f}" if s.bm is not None else fmt.DASH, justify="right"),
        Text(f"{s.prob:.2f}", justify="right"),
        Text(f"{fmt.price(s.yes_bid)}/{fmt.price(s.yes_ask)}", justify="right"),
        Text(f"{fmt.price(s.no_bid)}/{fmt.price(s.no_ask)}", justify="right"),
        _diff(s.diff_yes, pal),
        _diff(s.diff_no, pal),
        Text(f"{s.volume:,.0f}/{s.open_interest:,.0f}", justify="right"),
    )
    search = f"{strike} {s.contract_id} {'atm' if s.atm else ''} {'held' if s.held else ''}"
    return Row(s.contract_id, cells, (search + (" edge" if s.edge else "")).lower())


def alert_row(a: Alert) -> Row:
    sev = a.severity.value
    more = f" (+{a.repeats} similar)" if a.repeats else ""
    cells = (
        Text(fmt.hms(a.ts)),
        Text(sev, style=SEVERITY_STYLE.get(sev, "")),
        a.kind.value,
        a.trade_id or "",
        Text(a.message + more, style="bold" if sev == "critical" else ""),
    )
    search = f"{sev} {a.kind.value} {a.trade_id or ''} {a.message}".lower()
    return Row(str(a.seq), cells, search)


def _right(t: Text) -> Text:
    t.justify = "right"
    return t


def _diff(v: float | None, pal: Palette) -> Text:
    return _right(pal.signed(v, f"{v:+.2f}" if v is not None else fmt.DASH))
