"""How numbers look on screen. Formatting only: every value comes from the engine's snapshot."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text

DASH = "—"


@dataclass(frozen=True, slots=True)
class Palette:
    """The colours for gains and losses (from `[ui]` up_color / down_color)."""

    up: str = "green"
    down: str = "red"

    def signed(self, v: float | None, text: str) -> Text:
        if v is None:
            return Text(DASH, style="dim")
        style = self.up if v > 0 else self.down if v < 0 else ""
        return Text(text, style=style)


def hms(ts: float | None) -> str:
    """Unix seconds as UTC HH:MM:SS."""
    return DASH if ts is None else time.strftime("%H:%M:%S", time.gmtime(ts))


def duration(seconds: float | None) -> str:
    """A span as 42s, 12m05s, 3h04m, 2d03h."""
    if seconds is None:
        return DASH
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def countdown(seconds: float | None) -> str:
    """Time to close as H:MM:SS (or M:SS under an hour)."""
    if seconds is None:
        return DASH
    s = max(int(seconds), 0)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def money(v: float | None, signed: bool = False) -> str:
    if v is None:
        return DASH
    return f"{v:+,.2f}" if signed else f"{v:,.2f}"


def pct(v: float | None, signed: bool = True, digits: int = 1) -> str:
    if v is None:
        return DASH
    return f"{v:+.{digits}f}%" if signed else f"{v:.{digits}f}%"


def price(v: float | None) -> str:
    """A contract price: binaries are quoted in dollars 0..1, shown as cents-precise."""
    if v is None:
        return DASH
    return f"{v:.2f}" if v < 10 else f"{v:,.2f}"


def qty(v: float) -> str:
    return f"{v:g}"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return duration(seconds)


def bar(fraction: float | None, width: int = 10) -> str:
    """A horizontal bar for a 0..1 score, in eighths."""
    if fraction is None:
        return "·" * width
    f = min(max(fraction, 0.0), 1.0) * width
    full = int(f)
    eighths = int((f - full) * 8)
    partial = " ▏▎▍▌▋▊▉"[eighths] if full < width else ""
    return ("█" * full + partial.strip()).ljust(width, "·")
