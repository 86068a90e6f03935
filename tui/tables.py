"""A DataTable kept in step with keyed rows by diffing, for live data.

Following the dashboards that stay fast (dolphie): rows are keyed by id; each update removes the
rows that went away, calls `update_cell` only for values that changed (never with
`update_width`, never `clear()` + re-add), appends new rows, and re-sorts only when the order
changed. Column widths are fixed when the columns are made, so nothing is re-measured on the live
path. The cursor stays on the same row key (the same trade) as rows come and go, and the scroll
position is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.widgets import DataTable


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int
    right: bool = False  # numbers are right-aligned


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    cells: tuple[Any, ...]  # str or rich Text, one per column
    search: str  # what `/` filters on (lower case)


class LiveTable(DataTable):
    """A row-cursor DataTable that `sync()`s to a list of keyed rows, touching only changes."""

    def __init__(self, columns: Sequence[Column], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.columns_spec = tuple(columns)
        self._cells: dict[str, tuple[Any, ...]] = {}
        self._order: list[str] = []
        self._rows: list[Row] = []
        self.filter_text = ""
        self.updates = 0  # number of cell updates applied (tests and benchmarks read it)

    def on_mount(self) -> None:
        for c in self.columns_spec:
            label = Text(c.label, justify="right") if c.right else c.label
            self.add_column(label, key=c.key, width=c.width)

    # ------------------------------------------------------------------ queries

    @property
    def selected_key(self) -> str | None:
        """The row key under the cursor (None when the table is empty)."""
        if self.row_count == 0:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None

    @property
    def keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    def select_key(self, key: str) -> bool:
        if key not in self._cells:
            return False
        self.move_cursor(row=self.get_row_index(key), scroll=True)
        return True

    # ------------------------------------------------------------------ updates

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip().lower()
        self.sync(self._rows)

    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show `rows` (filtered), in that order, with the fewest changes."""
        self._rows = list(rows)
        f = self.filter_text
        wanted = [r for r in rows if not f or f in r.search] if f else list(rows)
        wanted_keys = [r.key for r in wanted]
        wanted_set = set(wanted_keys)
        cursor_key = self.selected_key
        cursor_row = self.cursor_row
        col_keys = [c.key for c in self.columns_spec]

        for k in [k for k in self._order if k not in wanted_set]:
            self.remove_row(k)
            del self._cells[k]
        self._order = [k for k in self._order if k in wanted_set]

        for r in wanted:
            old = self._cells.get(r.key)
            if old is None:
                self.add_row(*r.cells, key=r.key)
                self._order.append(r.key)
            elif old != r.cells:
                for ck, a, b in zip(col_keys, old, r.cells, strict=True):
                    if a != b:
                        self.update_cell(r.key, ck, b)
                        self.updates += 1
            self._cells[r.key] = r.cells

        if self._order != wanted_keys:
            self._reorder(wanted_keys)

        # Keep the cursor on the same row key; if that row went, stay at the same position.
        if cursor_key is not None and cursor_key in self._cells:
            idx = self.get_row_index(cursor_key)
            if idx != self.cursor_row:
                self.move_cursor(row=idx, scroll=False)
        elif self.row_count and cursor_row >= self.row_count:
            self.move_cursor(row=self.row_count - 1, scroll=False)

    def _reorder(self, wanted_keys: list[str]) -> None:
        # DataTable.sort hands the key function the row's cell values; the first cell object
        # of each row is unique (we stored it), so its id finds the row's wanted position.
        first_col = self.columns_spec[0].key
        pos = {id(self.get_cell(k, first_col)): i for i, k in enumerate(wanted_keys)}
        self.sort(key=lambda values: pos.get(id(values[0]), len(pos)))
        self._order = list(wanted_keys)
