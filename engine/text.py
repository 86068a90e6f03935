"""Text from other programs, made safe to show: ids and messages that reach a terminal.

A trade id, a contract id or a venue's error message is written by someone else (another
program inserting rows, a venue's API). Shown as is, a control character (ESC starts a terminal
escape sequence, CR rewrites the line) or a bidi override (U+202E shows "evil" text reversed)
could repaint the screen or disguise one id as another. `shown` escapes them as visible
`\\x1b`, `\\u202e`; everything printable, any script, stays as it is.
"""

from __future__ import annotations

import unicodedata

# Bidi embeddings, overrides and isolates, the directional marks, and the line/paragraph
# separators (they break a line like a newline).
_INVISIBLE = frozenset(
    [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029]
)


def _escape(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def _unsafe(c: str) -> bool:
    return ord(c) in _INVISIBLE or unicodedata.category(c) == "Cc"


def shown(s: str | None) -> str:
    """`s` with its control characters and bidi controls escaped; "" for None."""
    if not s:
        return ""
    if s.isprintable() and not any(ord(c) in _INVISIBLE for c in s):
        return s  # the common case, fast
    return "".join(_escape(c) if _unsafe(c) else c for c in s)
