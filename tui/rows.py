"""Snapshot rows → table rows (cells formatted for the screen; no value is computed here).

Cells are plain strings or `(text, style)` pairs, cheap to build and to compare; the table makes
a renderable only for a cell that changed (see tui/tables.py). Justification comes from the
column (`Column.right`). Strings are shown as they are, never parsed as markup.
"""

from __future__ import annotations

from engine.alerts import Alert
from engine.snapshot import OptionSide, OptionStrikeRow, StrikeRow, TradeRow
from engine.text import shown
from tui import format as fmt
from tui.format import Palette
from tui.tables import Cell, Column, Row

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

# Options and combos: the time value state (SAFE / RISK / CRITICAL) and the time value right
# after State, so that 80 columns still show them (the nearest rule moves right); the contract
# column gives up 6 so that 160 columns still show every column. Only with option trades.
TRADE_COLUMNS_TV = (
    *TRADE_COLUMNS[:7],
    Column("tv", "Time value", 12),
    *TRADE_COLUMNS[7:-1],
    Column("contract", "Contract", 17),
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

# An option chain, as traders read one: calls on the left, the strike in the middle, puts on the
# right, bid/ask next to the strike. IV in percent, delta as the venue gives it, P = N(d2) from
# the option's own IV (probability of finishing in the money: compare with |delta|), TV = time
# value (mid − intrinsic). 94 columns; at 80 the puts' delta, P and TV scroll into view.
OPTION_STRIKE_COLUMNS = (
    Column("flag", "", 3),
    Column("c_tv", "TV", 5, right=True),
    Column("c_prob", "P", 4, right=True),
    Column("c_delta", "Δ", 5, right=True),
    Column("c_iv", "IV%", 5, right=True),
    Column("c_ba", "Call b/a", 11, right=True),
    Column("strike", "Strike", 7, right=True),
    Column("p_ba", "Put b/a", 11, right=True),
    Column("p_iv", "IV%", 5, right=True),
    Column("p_delta", "Δ", 5, right=True),
    Column("p_prob", "P", 4, right=True),
    Column("p_tv", "TV", 5, right=True),
)

TV_STATE_STYLE = {"SAFE": "green", "RISK": "bold yellow", "CRITICAL": "bold white on red"}

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
    "unprotected": "bold white on red",
    "disarmed": "dim",
    "alert_only": "cyan",
    "halted": "bold red",
}

SEVERITY_STYLE = {"info": "", "warning": "bold yellow", "critical": "bold white on red"}


def trade_row(t: TradeRow, pal: Palette, with_tv: bool = False) -> Row:
    state = {"stale": "stale data", "unprotected": "UNPROT"}.get(t.state, t.state)
    cells: tuple[Cell, ...] = (
        shown(t.trade_id),
        t.side,
        fmt.qty(t.qty),
        fmt.price(t.mark),
        _signed(pal, t.pnl, fmt.money(t.pnl, signed=True)),
        _signed(pal, t.pnl_pct, fmt.pct(t.pnl_pct)),
        (state, STATE_STYLE.get(t.state, "")),
        (t.nearest, "bold white on red")
        if t.blocked
        else t.nearest
        if t.rules
        else ("no rules on", "yellow"),
        fmt.price(t.entry),
        _signed(pal, t.peak_pnl, fmt.money(t.peak_pnl, signed=True)),
        (fmt.money(t.drawdown), pal.down if t.drawdown > 0 else ""),
        fmt.duration(t.held_seconds),
        shown(t.contract_id),
    )
    search = f"{t.trade_id} {t.contract_id} {t.side} {t.strategy} {state}".lower()
    if t.blocked:  # "/fired" finds every stop that fired and cannot act
        search += f" {t.nearest.lower()}"
    if with_tv:
        cells = (*cells[:7], tv_cell(t), *cells[7:])
        if t.tv_state:
            search += f" {t.tv_state.lower()}"
    return Row(t.trade_id, cells, search)


def tv_cell(t: TradeRow) -> Cell:
    """ "RISK .18", "SAFE 2.05", "CRITICAL .07": the time value state against min_time_value
    and the time value in dollars per share (no leading zero: 12 columns hold them all); the
    value alone (".18") when the trade has no min_time_value."""
    if t.time_value is None:
        return (fmt.DASH, "dim") if t.contract_type in _TV_TYPES else ""
    value = f"{t.time_value:.2f}"
    if abs(t.time_value) < 1:
        value = value.replace("0.", ".", 1)
    if t.tv_state is None:  # min_time_value is off for this trade: the value, no state
        return (value, "")
    return (f"{t.tv_state} {value}", TV_STATE_STYLE.get(t.tv_state, ""))


_TV_TYPES = ("option_call", "option_put", "combo")


def has_tv(t: TradeRow) -> bool:
    """Whether the trade is an option or a combo (the Time value column is for those)."""
    return t.contract_type in _TV_TYPES


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


def option_strike_row(s: OptionStrikeRow, pal: Palette) -> Row:
    held = s.held
    flag = ("◆" if s.atm else " ") + ("●" if held else " ") + " "
    strike = f"{s.strike:,.2f}".rstrip("0").rstrip(".")
    call, put = s.call, s.put
    cells: tuple[Cell, ...] = (
        (flag, "bold"),
        *reversed(_option_cells(call)),
        (strike, "bold" if s.atm else ""),
        *_option_cells(put),
    )
    search = f"{strike} {s.contract_id} {'atm' if s.atm else ''} {'held' if held else ''}"
    return Row(s.contract_id, cells, search.lower())


def _option_cells(o: OptionSide | None) -> tuple[Cell, ...]:
    """bid/ask, IV %, delta, P, TV of one side of a strike (the call's are shown mirrored)."""
    if o is None:
        return ("", "", "", "", "")
    ba = f"{fmt.price(o.bid)}/{fmt.price(o.ask)}"
    return (
        (ba, "bold cyan") if o.held else ba,
        f"{o.iv * 100:.1f}" if o.iv is not None else fmt.DASH,
        f"{o.delta:+.2f}" if o.delta is not None else fmt.DASH,
        f"{o.prob_itm:.2f}" if o.prob_itm is not None else fmt.DASH,
        f"{o.time_value:.2f}" if o.time_value is not None else fmt.DASH,
    )


def alert_row(a: Alert) -> Row:
    sev = a.severity.value
    more = f" (+{a.repeats} similar)" if a.repeats else ""
    cells = (
        fmt.hms(a.ts),
        (sev, SEVERITY_STYLE.get(sev, "")),
        a.kind.value,
        shown(a.trade_id),
        (shown(a.message) + more, "bold" if sev == "critical" else ""),
    )
    search = f"{sev} {a.kind.value} {a.trade_id or ''} {a.message}".lower()
    return Row(str(a.seq), cells, search)


def _signed(pal: Palette, v: float | None, text: str) -> tuple[str, str]:
    """A number coloured by its sign, as `Palette.signed` does; a dim dash when there is none."""
    if v is None:
        return (fmt.DASH, "dim")
    return (text, pal.up if v > 0 else pal.down if v < 0 else "")
