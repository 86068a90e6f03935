"""The trade detail's P&L chart: the P&L line over time with its stop levels as dashed lines.

`render_pnl_chart` is a pure function (points and levels in, Rich `Text` lines out) so it can be
tested without a terminal; `PnlChart` is the thin widget that calls it at its current size.

The line is drawn in braille (2 x 4 dots per cell). Each level (entry, peak, max_loss,
profit_target, trailing_stop) is a dashed horizontal line labelled with its name at the right
edge; the y-axis column on the left shows the top and bottom of the range and each level's value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from rich.text import Text
from textual.widget import Widget

from engine.snapshot import PnlLevel

__all__ = ["PnlChart", "render_pnl_chart"]

_BRAILLE = 0x2800
# Dot bit for (sub-column, sub-row) inside one braille cell.
_DOT = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_DASH = "╌"
_AXIS = "│"
_TICK = "┤"
_NEUTRAL = "grey50"
_PEAK = "cyan"
_LABEL_MAX = 13  # len("profit_target"), len("trailing_stop")
_MIN_PLOT = 20  # keep at least this many plot columns before reserving a label column
# When two levels share a row, whose colour the dashes take (the stops matter most).
_PRIORITY = ("max_loss", "trailing_stop", "profit_target", "peak", "entry")


def _level_style(name: str, up: str, down: str) -> str:
    if name in ("max_loss", "trailing_stop"):
        return down
    if name == "profit_target":
        return up
    if name == "peak":
        return _PEAK
    return _NEUTRAL


def _money(v: float) -> str:
    return f"{v:+,.0f}" if abs(v) >= 1000 else f"{v:+,.2f}"


def _hms(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def _fit(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def render_pnl_chart(
    points: Sequence[tuple[float, float]],
    levels: Sequence[PnlLevel],
    width: int,
    height: int,
    up: str = "green",
    down: str = "red",
    time_text: Callable[[float], str] = _hms,
    empty_text: str = "no marks yet",
) -> list[Text]:
    """Draw `points` ((ts, P&L $), oldest first) and `levels` into `height` lines of `width` cells.

    The y range covers every point and every level, so a stop far from the current P&L is still
    on the chart. Rows are top = highest P&L. Non-finite values are skipped. Always returns exactly
    `height` lines of exactly `width` cells (an empty list when either is < 1). `time_text`
    writes the time axis's ends (default HH:MM:SS, UTC).
    """
    if width < 1 or height < 1:
        return []
    pts = [(float(t), float(v)) for t, v in points if math.isfinite(t) and math.isfinite(v)]
    lvls = [lv for lv in levels if math.isfinite(lv.pnl)]
    values = [v for _, v in pts] + [lv.pnl for lv in lvls]
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    if hi - lo < 1e-9:  # one value (or all equal): give the line some room above and below
        pad = max(abs(hi) * 0.1, 1.0)
        lo, hi = lo - pad, hi + pad

    time_row = height >= 5 and bool(pts)
    plot_h = height - 1 if time_row else height
    sub_rows = plot_h * 4

    def sub_y(v: float) -> int:
        return round((hi - v) / (hi - lo) * (sub_rows - 1))

    # Levels by the row they fall on; several levels on one row share it.
    by_row: dict[int, list[PnlLevel]] = {}
    for lv in lvls:
        by_row.setdefault(sub_y(lv.pnl) // 4, []).append(lv)
    row_label = {r: "/".join(lv.name for lv in group) for r, group in by_row.items()}
    row_style = {
        r: _level_style(min(group, key=lambda lv: _rank(lv.name)).name, up, down)
        for r, group in by_row.items()
    }

    # Left axis: the range's ends and each level's value.
    axis_text: dict[int, tuple[str, str]] = {0: (_money(hi), _NEUTRAL)}
    axis_text.setdefault(plot_h - 1, (_money(lo), _NEUTRAL))
    for r, group in by_row.items():
        first = min(group, key=lambda lv: _rank(lv.name))
        axis_text[r] = (_money(first.pnl), row_style[r])
    axis_w = max(len(s) for s, _ in axis_text.values())
    if width - axis_w - 1 < 4:  # too narrow for an axis: the plot gets every column
        axis_w = -1
    label_w = min(max((len(s) for s in row_label.values()), default=0), _LABEL_MAX)
    free = width - (axis_w + 1)
    reserve = bool(row_label) and free - (label_w + 1) >= _MIN_PLOT
    plot_w = free - (label_w + 1) if reserve else free

    cells = _plot(pts, plot_w, plot_h, sub_y)
    # Where "no marks yet" goes: the middle row, or the nearest one without a level on it.
    free_rows = [r for r in range(plot_h) if r not in row_label] or [plot_h // 2]
    empty_row = min(free_rows, key=lambda r: abs(r - plot_h // 2)) if not pts else -1

    lines: list[Text] = []
    for r in range(plot_h):
        line = Text(no_wrap=True, overflow="crop")
        if axis_w >= 0:
            label, style = axis_text.get(r, ("", _NEUTRAL))
            line.append(label.rjust(axis_w), style=style)
            line.append(_TICK if r in axis_text else _AXIS, style=_NEUTRAL)
        row: list[tuple[str, str]] = []
        for c in range(plot_w):
            bits, v = cells[r][c]
            if bits:
                row.append((chr(_BRAILLE + bits), up if v >= 0 else down))
            elif r in row_label:
                row.append((_DASH, row_style[r]))
            else:
                row.append((" ", ""))
        if r in row_label and not reserve:  # narrow: the label sits on the line's right end
            text = _fit(row_label[r], max(plot_w - 1, 0))
            start = plot_w - len(text)
            for i, ch in enumerate(text):
                row[start + i] = (ch, f"bold {row_style[r]}")
        if r == empty_row:
            _overlay_centre(row, empty_text, plot_w)
        for ch, style in row:
            line.append(ch, style=style)
        if reserve:
            label = _fit(row_label.get(r, ""), label_w)
            line.append(" " + label.ljust(label_w), style=f"bold {row_style.get(r, _NEUTRAL)}")
        line.truncate(width, overflow="crop", pad=True)
        lines.append(line)

    if time_row:
        line = Text(no_wrap=True, overflow="crop")
        if axis_w >= 0:
            line.append(" " * axis_w + "└", style=_NEUTRAL)
        first, last = time_text(pts[0][0]), time_text(pts[-1][0])
        if first != last and plot_w >= len(first) + len(last) + 2:
            axis = first + "─" * (plot_w - len(first) - len(last)) + last
        elif plot_w >= len(last):
            axis = "─" * (plot_w - len(last)) + last
        else:
            axis = "─" * plot_w
        line.append(axis, style=_NEUTRAL)
        if reserve:
            line.append(" " + "UTC".ljust(label_w), style=_NEUTRAL)
        line.truncate(width, overflow="crop", pad=True)
        lines.append(line)
    return lines


def _rank(name: str) -> int:
    return _PRIORITY.index(name) if name in _PRIORITY else len(_PRIORITY)


def _overlay_centre(row: list[tuple[str, str]], text: str, width: int) -> None:
    text = _fit(text, width)
    start = max((width - len(text)) // 2, 0)
    for i, ch in enumerate(text):
        row[start + i] = (ch, _NEUTRAL)


def _plot(
    pts: Sequence[tuple[float, float]],
    plot_w: int,
    plot_h: int,
    sub_y: Callable[[float], int],
) -> list[list[tuple[int, float]]]:
    """Braille dot bits per cell and the P&L value the cell shows (for its colour)."""
    cells: list[list[tuple[int, float]]] = [[(0, 0.0)] * max(plot_w, 0) for _ in range(plot_h)]
    if not pts or plot_w < 1:
        return cells
    sub_cols = plot_w * 2
    t0, t1 = pts[0][0], pts[-1][0]
    t0, t1 = min(t0, min(t for t, _ in pts)), max(t1, max(t for t, _ in pts))

    def sub_x(t: float) -> int:
        if t1 - t0 <= 0:
            return sub_cols - 1  # one moment: the dot sits at the latest time, on the right
        return round((t - t0) / (t1 - t0) * (sub_cols - 1))

    def dot(x: int, y: int, v: float) -> None:
        r, c = y // 4, x // 2
        bits, _ = cells[r][c]
        cells[r][c] = (bits | _DOT[x % 2][y % 4], v)

    prev: tuple[int, int, float] | None = None
    for t, v in pts:
        x, y = sub_x(t), sub_y(v)
        if prev is None:
            dot(x, y, v)
        else:
            # Bresenham between consecutive points so the line has no gaps.
            x0, y0, v0 = prev
            dx, dy = abs(x - x0), -abs(y - y0)
            sx, sy = (1 if x > x0 else -1), (1 if y > y0 else -1)
            err = dx + dy
            cx, cy = x0, y0
            steps = max(dx, -dy)
            for i in range(steps + 1):
                frac = i / steps if steps else 1.0
                dot(cx, cy, v0 + (v - v0) * frac)
                if cx == x and cy == y:
                    break
                e2 = 2 * err
                if e2 >= dy:
                    err += dy
                    cx += sx
                if e2 <= dx:
                    err += dx
                    cy += sy
        prev = (x, y, v)
    return cells


class PnlChart(Widget):
    """The P&L chart widget: call `show(points, levels)`; it re-renders at its size on resize."""

    DEFAULT_CSS = """
    PnlChart {
        height: 12;
        width: 1fr;
    }
    """

    def __init__(
        self,
        up: str = "green",
        down: str = "red",
        *,
        time_text: Callable[[float], str] = _hms,
        empty_text: str = "no marks yet",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.up = up
        self.down = down
        self.time_text = time_text
        self.empty_text = empty_text
        self.points: tuple[tuple[float, float], ...] = ()
        self.levels: tuple[PnlLevel, ...] = ()

    def show(self, points: Sequence[tuple[float, float]], levels: Sequence[PnlLevel]) -> None:
        """Replace the data; repaints only when it changed."""
        new_points, new_levels = tuple(points), tuple(levels)
        if new_points == self.points and new_levels == self.levels:
            return
        self.points, self.levels = new_points, new_levels
        self.tooltip = "\n".join(lv.text for lv in new_levels) or None
        self.refresh()

    def render(self) -> Text:
        size = self.content_size
        lines = render_pnl_chart(
            self.points,
            self.levels,
            size.width,
            size.height,
            self.up,
            self.down,
            self.time_text,
            self.empty_text,
        )
        return Text("\n", no_wrap=True, overflow="crop").join(lines)
