"""The header and the four panes. Each renders its part of a snapshot and nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Sparkline, Static

from engine.alerts import Alert
from engine.snapshot import MarketView, OptionStrikeRow, RiskView, Snapshot, SourceHealth
from tui import format as fmt
from tui.format import Palette
from tui.rows import (
    ALERT_COLUMNS,
    OPTION_STRIKE_COLUMNS,
    STRIKE_COLUMNS,
    TRADE_COLUMNS,
    TRADE_COLUMNS_TV,
    alert_row,
    has_tv,
    option_strike_row,
    strike_row,
    trade_row,
)
from tui.tables import Column, LazyRow, LiveTable, Row

BADGE_STYLE = {
    "SIM": "bold black on cyan",
    "PAPER": "bold black on dodger_blue1",
    "LIVE": "bold white on red3",
    "ALERT-ONLY": "bold black on yellow",
}


def header_text(snap: Snapshot | None, engine_error: str | None = None) -> Text:
    """The one-line header: mode badge, armed, kill switch, source health, clock."""
    t = Text(no_wrap=True, overflow="ellipsis")
    if engine_error is not None:
        t.append(" ENGINE STOPPED ", style="bold white on red")
        t.append(
            f" {engine_error} — protection is OFF; restart trade-supervisor ", style="bold red"
        )
        return t
    if snap is None:
        t.append(" starting… ", style="bold")
        return t
    t.append(f" {snap.badge} ", style=BADGE_STYLE.get(snap.badge.split(" ")[0], "reverse"))
    t.append(" ")
    if snap.armed:
        t.append(" ARMED ", style="bold white on dark_green")
    else:
        t.append(" DISARMED ", style="bold black on grey70")
    if snap.paused_all:
        t.append(" ")
        t.append(" PAUSED ", style="bold white on red")
    if snap.unprotected:
        # The watchdog: open trades that no auto-stop is acting on right now, for any reason.
        t.append(" ")
        t.append(f" UNPROTECTED {len(snap.unprotected)} ", style="bold white on red")
    if snap.trades and not any(r.rules for r in snap.trades):
        # Armed protects nothing when no rule applies to any trade (a config without criteria).
        t.append(" ")
        t.append(" NO RULES ", style="bold black on yellow")
    t.append("  ")
    t.append_text(health_text(snap.health))
    for c in snap.alert_channels:  # only a channel that lost alerts is shown: "webhook ✗3"
        if c.failed + c.dropped:
            t.append("  ")
            t.append(
                f"{c.name} ✗{c.failed + c.dropped}",
                style="bold white on red" if c.failing else "red",
            )
    t.append("  ")
    t.append(fmt.hms(snap.ts) + " UTC", style="bold")
    return t


def health_text(health: Sequence[SourceHealth]) -> Text:
    t = Text()
    for i, h in enumerate(health):
        if i:
            t.append(" · ", style="dim")
        style = "bold white on red" if h.stale else "green"
        shown = "ok" if h.age_seconds is None and not h.stale else fmt.age(h.age_seconds)
        t.append(f"{h.name} {shown}", style=style)
    return t


class StatusBar(Static):
    """The header line. Re-rendered only when its text changes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", markup=False, **kwargs)  # type: ignore[arg-type]
        self._last: Text | None = None

    def show(self, snap: Snapshot | None, engine_error: str | None = None) -> None:
        text = header_text(snap, engine_error)
        if text != self._last:
            self._last = text
            self.update(text, layout=False)  # one line always (CSS height 1): no re-layout


class Pane(Vertical):
    """A titled pane; focusable so that `tab` can move to it (and show it on a small screen)."""

    can_focus = False

    def __init__(self, title: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.border_title = title
        self.pane_title = title

    def focus_target(self) -> object:
        return self


class MarketPane(Pane):
    """Spot with change and sparkline, TTC, momentum, volatility, regime and risk."""

    can_focus = True

    def compose(self) -> ComposeResult:
        yield Static(id="spot", markup=False)
        yield Sparkline([], id="spark")
        yield Static(id="market-lines", markup=False)

    def show(self, m: MarketView | None, risk: RiskView, pal: Palette) -> None:
        spot = self.query_one("#spot", Static)
        lines = self.query_one("#market-lines", Static)
        if m is None:
            spot.update("no market data yet")
            return
        top = Text(no_wrap=True)
        top.append(f"{m.symbol} ", style="bold")
        top.append(fmt.money(m.spot) if m.spot is not None else fmt.DASH, style="bold")
        top.append("  ")
        top.append_text(pal.signed(m.change_30m_pct, fmt.pct(m.change_30m_pct, digits=2)))
        top.append(" 30m", style="dim")
        _set(spot, top)
        spark = self.query_one("#spark", Sparkline)
        data = list(m.sparkline)
        spark.display = len(data) >= 2  # one point draws a solid block, not a chart
        if spark.data != data:
            spark.data = data

        t = Text(no_wrap=True)
        t.append("Event ", style="dim")
        t.append(m.event_id or fmt.DASH)
        t.append("\nTTC   ", style="dim")
        urgent = m.ttc_seconds is not None and m.ttc_seconds < 300
        t.append(fmt.countdown(m.ttc_seconds), style="bold red" if urgent else "bold")
        if m.close_label is not None:  # an exchange's close, in its own time
            t.append(f"  closes {m.close_label}", style="dim")
            if m.exchange_open is False:
                t.append(" · market closed", style="yellow")
        else:
            t.append(f"  closes {fmt.hms(m.close_ts)}", style="dim")
        t.append("\nSource ", style="dim")
        t.append(m.spot_source or fmt.DASH)  # None: no spot feed named one, or none usable
        t.append("\nMomentum", style="dim")
        for i, (w, v) in enumerate(m.momentum_pct):
            t.append("\n " if i % 3 == 0 else "  ")
            t.append(f"{w:>2}m ", style="dim")
            t.append_text(pal.signed(v, f"{fmt.pct(v, digits=3):>8}"))
        t.append("\nScore ", style="dim")
        t.append_text(
            pal.signed(m.momentum_bps, f"{m.momentum_bps:+.1f} bps" if m.momentum_bps else "—")
        )
        t.append("\nVol   ", style="dim")
        score = m.vol_score
        t.append(fmt.bar(score, 12), style="yellow" if (score or 0) >= 0.6 else "cyan")
        t.append(f" {score:.2f}" if score is not None else " —")
        t.append_text(sigma_text(m))
        t.append_text(regime_text(m))
        t.append("\nRisk  ", style="dim")
        t.append(f"{risk.open_positions} open · at risk ${risk.total_at_risk:,.2f}")
        t.append("\nDay   ", style="dim")
        t.append_text(pal.signed(risk.daily_pnl, fmt.money(risk.daily_pnl, signed=True)))
        for b in risk.breaches:
            t.append(f"\n⚠ {b}", style="bold red")
        _set(lines, t)


_SIGMA_LABEL = {"implied": "DVOL", "realized": "realized", "fallback": "fallback"}


def sigma_text(m: MarketView) -> Text:
    """The model's sigma line: its value and source, then the other sigma for comparison.

    "σ 52% (DVOL)  realized 48%", "σ 48% (realized)  DVOL 52%", "σ 50% (fallback)"; when DVOL
    was asked for and is not used, in yellow: "σ 48% (realized)  DVOL 52% stale 7m00s" or
    "σ 48% (realized)  no DVOL".
    """
    t = Text("\nσ ", style="dim")
    t.append(f"{m.sigma_used * 100:.0f}%", style="bold")
    t.append(f" ({_SIGMA_LABEL.get(m.sigma_source, m.sigma_source)})", style="dim")
    fell_back = m.sigma_wanted == "implied" and m.sigma_source != "implied"
    if m.sigma_source == "implied":
        if m.sigma is not None:
            t.append(f"  realized {m.sigma * 100:.0f}%", style="dim")
    elif m.implied_vol is not None:
        t.append(f"  DVOL {m.implied_vol * 100:.0f}%", style="bold yellow" if fell_back else "dim")
        if fell_back:
            t.append(f" stale {fmt.age(m.implied_vol_age)}", style="bold yellow")
    elif fell_back:
        t.append("  no DVOL", style="bold yellow")
    return t


def regime_text(m: MarketView) -> Text:
    """The regime line: the regime, and where it comes from when VIX is known.

    "Regime  MEDIUM " (volatility score; BTC, sim, Kalshi), "Regime  MEDIUM   VIX 18.4" (from
    the VIX level), and in yellow when VIX went stale and the score took over:
    "Regime  HIGH   realized · VIX 18.4 stale 7m00s".
    """
    t = Text()
    t.append("\nRegime ", style="dim")
    regime = (m.regime or "warming up").replace("_", " ").upper()
    t.append(f" {regime} ", style=_REGIME_STYLE.get(m.regime or "", "reverse"))
    if m.vix is None:
        return t
    if m.regime_source == "vix":
        t.append("  VIX ", style="dim")
        t.append(f"{m.vix:.1f}", style="bold")
    else:
        t.append(f"  realized · VIX {m.vix:.1f} stale {fmt.age(m.vix_age)}", style="bold yellow")
    return t


_REGIME_STYLE = {
    "very_low": "bold black on cyan",
    "low": "bold black on cyan",
    "medium": "bold black on green",
    "high": "bold black on yellow",
    "extreme": "bold white on red",
}


def _set(widget: Static, text: Text) -> None:
    old = getattr(widget, "_shown", None)
    if old != text:
        widget._shown = text  # type: ignore[attr-defined]
        # A re-layout (of the whole screen) only when the number of lines changes.
        lines = text.plain.count("\n")
        widget.update(text, layout=old is None or old.plain.count("\n") != lines)


class TablePane(Pane):
    """A titled LiveTable with a `/` filter line under it."""

    def __init__(
        self,
        title: str,
        columns: Sequence[Column],
        *,
        follow_head: bool = False,
        **kwargs: object,
    ) -> None:
        super().__init__(title, **kwargs)
        self.columns = columns
        self.follow_head = follow_head

    def compose(self) -> ComposeResult:
        yield LiveTable(self.columns, follow_head=self.follow_head)
        yield Input(placeholder="filter… (enter keeps it, escape clears)", classes="filter")

    @property
    def table(self) -> LiveTable:
        return self.query_one(LiveTable)

    def focus_target(self) -> object:
        return self.table

    def sync(self, rows: Sequence[Row | LazyRow]) -> None:
        self.table.sync(rows)
        shown, total = self.table.row_count, len(rows)
        extra = f" [{self.table.filter_text}] {shown}/{total}" if self.table.filter_text else ""
        subtitle = f"{total}{extra}" if total else ""
        # Setting a border title repaints the whole pane, even when it is the same: only on change.
        if subtitle != getattr(self, "_subtitle", None):
            self._subtitle = subtitle
            # Text, not a str: the filter is what the trader typed, not markup ("[x]" would vanish).
            self.border_subtitle = Text(subtitle) if subtitle else ""

    def open_filter(self) -> None:
        box = self.query_one(Input)
        box.display = True
        box.value = self.table.filter_text
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.table.set_filter(event.value)
        self.sync(self.table._rows)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        event.input.display = bool(event.value.strip())
        self.table.focus()

    def clear_filter(self) -> None:
        box = self.query_one(Input)
        box.value = ""
        box.display = False
        self.table.set_filter("")
        self.sync(self.table._rows)
        self.table.focus()


class TradesPane(TablePane):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("Open trades", TRADE_COLUMNS, **kwargs)

    def render_rows(self, snap: Snapshot, pal: Palette) -> None:
        # Options and combos (IBKR): a Time value column (SAFE / RISK / CRITICAL).
        with_tv = snap.venue == "ibkr" or any(has_tv(t) for t in snap.trades)
        self.table.set_columns(TRADE_COLUMNS_TV if with_tv else TRADE_COLUMNS)
        # Formatted only when shown (or filtered): most of 500 rows are off screen.
        self.sync([LazyRow(t.trade_id, trade_row, t, pal, with_tv) for t in snap.trades])


class StrikesPane(TablePane):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("Strikes", STRIKE_COLUMNS, **kwargs)

    def render_rows(self, snap: Snapshot, pal: Palette) -> None:
        rows = snap.strikes
        if rows:  # an empty picture keeps the layout it has
            first = rows[0]
            options = isinstance(first, OptionStrikeRow)
            self.table.set_columns(OPTION_STRIKE_COLUMNS if options else STRIKE_COLUMNS)
            title = (
                f"Options {first.contract_id.rsplit(' ', 1)[0]} · calls | puts · "
                "P = N(d2) from IV · TV = time value"
                if isinstance(first, OptionStrikeRow)
                else self.pane_title
            )
            if title != self.border_title:
                self.border_title = title
        make = option_strike_row if rows and isinstance(rows[0], OptionStrikeRow) else strike_row
        self.sync([LazyRow(s.contract_id, make, s, pal) for s in rows])


SEVERITY_FILTERS: tuple[str | None, ...] = (None, "warning", "critical")


class AlertsPane(TablePane):
    """Newest first; filtered by minimum severity (`s`) and kind (`k`) as well as by `/`."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("Alerts", ALERT_COLUMNS, follow_head=True, **kwargs)
        self.min_severity: str | None = None
        self.kind: str | None = None
        self._alerts: tuple[Alert, ...] = ()
        self._row_cache: dict[int, Row] = {}

    def render_rows(self, snap: Snapshot, pal: Palette) -> None:
        self.show_alerts(snap.alerts)

    def show_alerts(self, alerts: tuple[Alert, ...]) -> None:
        self._alerts = alerts
        rank = {"info": 0, "warning": 1, "critical": 2}
        floor = rank.get(self.min_severity or "info", 0)
        rows = []
        for a in alerts:
            if rank.get(a.severity.value, 0) < floor or (self.kind and a.kind.value != self.kind):
                continue
            r = self._row_cache.get(a.seq)
            if r is None:
                r = self._row_cache[a.seq] = alert_row(a)
            rows.append(r)
        if len(self._row_cache) > 4 * max(len(alerts), 50):
            keep = {a.seq for a in alerts}
            self._row_cache = {k: v for k, v in self._row_cache.items() if k in keep}
        self.sync(rows)
        parts = [f"≥{self.min_severity}" if self.min_severity else "", self.kind or ""]
        label = " ".join(p for p in parts if p)
        self.border_title = f"Alerts ({label})" if label else "Alerts"

    def cycle_severity(self) -> str:
        i = SEVERITY_FILTERS.index(self.min_severity)
        self.min_severity = SEVERITY_FILTERS[(i + 1) % len(SEVERITY_FILTERS)]
        self.show_alerts(self._alerts)
        return self.min_severity or "all severities"

    def cycle_kind(self) -> str:
        kinds = sorted({a.kind.value for a in self._alerts})
        options: list[str | None] = [None, *kinds]
        i = options.index(self.kind) if self.kind in options else 0
        self.kind = options[(i + 1) % len(options)]
        self.show_alerts(self._alerts)
        return self.kind or "all kinds"
