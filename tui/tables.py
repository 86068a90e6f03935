"""A DataTable kept in step with keyed rows by diffing, for live data.

Following the dashboards that stay fast (dolphie): rows are keyed by id; each update removes the
rows that went away, calls `update_cell` only for values that changed (never with
`update_width`, never `clear()` + re-add), appends new rows, and re-sorts only when the order
changed. Column widths are fixed when the columns are made, so nothing is re-measured on the live
path. The cursor stays on the same row key (the same trade) as rows come and go, and the scroll
position is left alone.

What keeps 1000 rows updating every second cheap (benchmarks/ui_update.py):

- Cells are cheap values, compared as such: a `str` (plain text) or a `(text, style)` pair. A
  renderable (`CellText`: one object for the garbage collector where a rich `Text` is three) is
  made only for a cell that changed, justified as its column says. A ready `Text` is accepted
  too (compared with `==`, shown as it is).
- Only rows on screen (and a few around) are brought up to date by `sync`. The others are kept
  as the latest `Row` and written when they scroll into view, are resized into view, or are
  read (`get_cell`, `get_row`). A `LazyRow` is not even formatted until then (or until the `/`
  filter needs its search text).
- The repaints that `update_cell` asks for one by one are folded into one per sync.
- DataTable keys its rendered-cell cache on the table's update count, so one changed cell
  re-renders every visible cell. LiveTable keys that cache on each cell's own version instead
  (bumped by `update_cell`), plus the row's position and the column's width, so a frame
  re-renders only the visible cells that changed; and it renders a one-line `CellText` without
  Rich's Padding/Styled/render_lines round trip (the same segments in about half the time). Its
  per-update line caches are kept small: after an update every entry in them is dead.

What is on screen is exactly what DataTable would show for `Text(text, style=style,
justify="right")` in a right-aligned column and `Text(text, style=style)` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions
from rich.control import strip_control_codes
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.cache import LRUCache
from textual.geometry import Region
from textual.strip import Strip
from textual.widgets import DataTable
from textual.widgets.data_table import CellType, ColumnKey, RowKey

Cell = str | tuple[str, str] | Text  # plain text, (text, style), or a ready Text

# Rendered cells kept per table: the visible cells (a 200x50 screen shows ~400 across the tables)
# several times over, for the cursor and hover variants and the cells that did not change.
CELL_CACHE_SIZE = 2000
# Lines and rows kept in DataTable's per-update caches: more than a tall terminal shows.
LINE_CACHE_SIZE = 256
# Rows beyond each edge of the screen that `sync` keeps up to date as well.
WINDOW_MARGIN = 2


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int
    right: bool = False  # numbers are right-aligned


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    cells: tuple[Cell, ...]  # one per column (see the module docstring)
    search: str  # what `/` filters on (lower case)


class RowLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def cells(self) -> tuple[Cell, ...]: ...
    @property
    def search(self) -> str: ...


class LazyRow:
    """A row formatted only when the table needs its cells or its search text.

    `LazyRow(key, make, *args)`: `make(*args)` returns the `Row`, at most once.
    """

    __slots__ = ("_args", "_make", "_row", "key")

    def __init__(self, key: str, make: Callable[..., Row], *args: Any) -> None:
        self.key = key
        self._make = make
        self._args = args
        self._row: Row | None = None

    @property
    def row(self) -> Row:
        if self._row is None:
            self._row = self._make(*self._args)
        return self._row

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self.row.cells

    @property
    def search(self) -> str:
        return self.row.search


class LiveTable(DataTable):
    """A row-cursor DataTable that `sync()`s to a list of keyed rows, touching only changes."""

    _hold_refresh = False  # class defaults: DataTable.__init__ already calls refresh()
    _refresh_held = False

    def __init__(
        self, columns: Sequence[Column], *, follow_head: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(cursor_type="row", **kwargs)
        # Newest-first tables (alerts): a cursor on the first row stays on the first row, so
        # new rows come into view instead of pushing the old selected one down out of sight.
        self.follow_head = follow_head
        self.columns_spec = tuple(columns)
        self._col_keys = tuple(c.key for c in self.columns_spec)
        self._justify = tuple("right" if c.right else "default" for c in self.columns_spec)
        self._shown: dict[str, tuple[Cell, ...]] = {}  # row key -> the cells the table holds
        self._pending: dict[str, RowLike] = {}  # row key -> newer row not yet written
        self._versions: dict[str, list[int]] = {}  # row key -> a version per column
        self._version = 0
        self._cell_render_cache = _CellRenderCache(self, CELL_CACHE_SIZE)
        # DataTable's line and row caches are keyed on the update count: after an update every
        # entry is dead. 1000 dead Strips per table are 10,000s of objects for the GC to scan.
        for cache in (self._line_cache, self._row_render_cache, self._row_renderable_cache):
            cache.maxsize = LINE_CACHE_SIZE
        self._order: list[str] = []
        self._rows: list[RowLike] = []
        self.filter_text = ""
        self.updates = 0  # cell updates written to the table (tests and benchmarks read it)

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for c in self.columns_spec:
            label = Text(c.label, justify="right") if c.right else c.label
            self.add_column(label, key=c.key, width=c.width)

    def set_columns(self, columns: Sequence[Column]) -> bool:
        """Show `columns` instead (a pane whose rows change kind, e.g. binary strikes to an
        option chain). The rows go; the next `sync` brings them back. Nothing happens when the
        columns are the same (the live path calls this on every update). True if changed."""
        spec = tuple(columns)
        if spec == self.columns_spec:
            return False
        self.clear(columns=True)
        self._rows = []
        self.columns_spec = spec
        self._col_keys = tuple(c.key for c in spec)
        self._justify = tuple("right" if c.right else "default" for c in spec)
        if self.is_mounted:
            self._add_columns()  # else on_mount adds them
        return True

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
        if key not in self._shown:
            return False
        self.move_cursor(row=self.get_row_index(key), scroll=True)
        return True

    def get_cell(self, row_key: RowKey | str, column_key: ColumnKey | str) -> CellType:
        self._flush_key(row_key)
        return super().get_cell(row_key, column_key)

    def get_row(self, row_key: RowKey | str) -> list[CellType]:
        self._flush_key(row_key)
        return super().get_row(row_key)

    # ------------------------------------------------------------------ updates

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip().lower()
        self.sync(self._rows)

    def sync(self, rows: Sequence[RowLike]) -> None:
        """Make the table show `rows` (filtered), in that order, with the fewest changes."""
        self._hold_refresh = True
        try:
            self._sync(rows)
        finally:
            self._release_refresh()

    def _sync(self, rows: Sequence[RowLike]) -> None:
        self._rows = list(rows)
        f = self.filter_text
        wanted = [r for r in self._rows if f in r.search] if f else self._rows
        wanted_keys = [r.key for r in wanted]
        wanted_set = set(wanted_keys)
        cursor_key = self.selected_key
        cursor_row = self.cursor_row
        shown = self._shown

        if not wanted_set.issuperset(shown):
            for k in [k for k in self._order if k not in wanted_set]:
                self.remove_row(k)
                del shown[k]
            self._order = [k for k in self._order if k in wanted_set]

        justify = self._justify
        for r in wanted:
            if r.key not in shown:
                cells = r.cells
                self.add_row(*map(_text, cells, justify), key=r.key)
                self._order.append(r.key)
                shown[r.key] = cells

        if self._order != wanted_keys:
            self._reorder(wanted_keys)

        # Rows on screen now are written; the rest wait until they are shown or read.
        self._pending = dict(zip(wanted_keys, wanted, strict=True))
        lo, hi = self._window()
        for r in wanted[lo:hi]:
            del self._pending[r.key]
            self._write(r.key, r.cells)

        # Keep the cursor on the same row key; if that row went, stay at the same position.
        # Following the head: the cursor stays on the first row, and it stays in view.
        if self.follow_head and cursor_row == 0:
            if self.cursor_row != 0:
                self.move_cursor(row=0, scroll=False)
            if self.scroll_y:
                self.scroll_to(y=0, animate=False)
        elif cursor_key is not None and cursor_key in shown:
            idx = self.get_row_index(cursor_key)
            if idx != self.cursor_row:
                self.move_cursor(row=idx, scroll=False)
        elif self.row_count and cursor_row >= self.row_count:
            self.move_cursor(row=self.row_count - 1, scroll=False)

    def _window(self) -> tuple[int, int]:
        """Row indexes on screen, with WINDOW_MARGIN rows either side."""
        top = int(self.scroll_y)
        return max(top - WINDOW_MARGIN, 0), top + self.size.height + WINDOW_MARGIN

    def _write(self, key: str, cells: tuple[Cell, ...]) -> None:
        """Write the cells of one row that differ from what the table holds."""
        old = self._shown[key]
        if old == cells:
            return
        col_keys, justify = self._col_keys, self._justify
        update_cell = self.update_cell
        for i, (a, b) in enumerate(zip(old, cells, strict=True)):
            if a != b:
                update_cell(key, col_keys[i], _text(b, justify[i]))
                self.updates += 1
        self._shown[key] = cells

    def _flush_key(self, row_key: RowKey | str) -> None:
        key = row_key.value if isinstance(row_key, RowKey) else row_key
        if self._pending and key is not None:
            r = self._pending.pop(key, None)
            if r is not None:
                self._write(key, r.cells)

    def _flush_window(self) -> None:
        """Write the waiting rows that are now on screen."""
        if not self._pending:
            return
        lo, hi = self._window()
        for key in self._order[lo:hi]:
            r = self._pending.pop(key, None)
            if r is not None:
                self._write(key, r.cells)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._flush_window()  # before the frame that shows the rows scrolled into view

    def render_lines(self, crop: Region) -> list[Strip]:
        # Rows resized into view (or shown before a scroll was noticed): written now, and the
        # table is repainted once more so every line shows them.
        self._flush_window()
        return super().render_lines(crop)

    def _reorder(self, wanted_keys: list[str]) -> None:
        # DataTable.sort hands the key function the row's cell values; the first cell object
        # of each row is unique (we made it), so its id finds the row's wanted position.
        first_col = self.columns_spec[0].key
        get = super().get_cell  # as held: reordering writes no waiting row
        pos = {id(get(k, first_col)): i for i, k in enumerate(wanted_keys)}
        self.sort(key=lambda values: pos.get(id(values[0]), len(pos)))
        self._order = list(wanted_keys)

    # ------------------------------------------------------------------ painting

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> Any:
        """DataTable's cell render, without Rich's layout machinery for a one-line CellText.

        DataTable renders `Styled(Padding(cell, (0, padding)), pre_style, post_style)` through
        `console.render_lines`; for a CellText in a one-line body row that gives exactly one line
        of: left padding, the fitted text, padding to the inner width, right padding, styled
        pre + (cell style) + post. Built here directly (about half the time); anything else (header,
        labels, fixed or multi-line rows, other renderables) goes to DataTable.
        """
        pad = self.cell_padding
        inner = width - 2 * pad
        if (
            row_index < self.fixed_rows
            or column_index < self.fixed_columns
            or inner < 1
            or row_index < 0
            or column_index < 0
        ):
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        row = self.rows.get(row_key) if row_key is not None else None
        cell = self._data.get(row_key, {}).get(column_key) if row is not None else None
        if row is None or row.height != 1 or type(cell) is not CellText:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        key = (
            row_key,
            column_key,
            base_style,
            cursor,
            hover,
            self._show_hover_cursor,
            self._update_count,
            self._pseudo_class_state,
        )
        cache = self._cell_render_cache
        if key in cache:
            return cache[key]
        component_style, post_style = self._get_styles_to_render_cell(
            False,
            False,
            False,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        pre = base_style + Style.from_meta({"row": row_index, "column": column_index})
        pre = pre + component_style
        plain = pre + post_style
        text = cell.fit(inner)
        segments = [Segment(" " * pad, plain)] if pad else []
        if text:
            style = cell.rich_style(self.app.console)
            segments.append(Segment(text, pre + style + post_style if style else plain))
        size = cell_len(text)
        if size < inner:
            segments.append(Segment(" " * (inner - size), plain))
        if pad:
            segments.append(Segment(" " * pad, plain))
        lines = [segments]
        cache[key] = lines
        return lines

    # ------------------------------------------------------------------ repaint folding

    def refresh(
        self,
        *regions: Region,
        repaint: bool = True,
        layout: bool = False,
        recompose: bool = False,
    ) -> Self:
        # Inside sync(), update_cell's whole-table repaint requests are folded into one.
        if self._hold_refresh and repaint and not (regions or layout or recompose):
            self._refresh_held = True
            return self
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def _release_refresh(self) -> None:
        self._hold_refresh = False
        if self._refresh_held:
            self._refresh_held = False
            self.refresh()

    # ------------------------------------------------------------------ cell versions

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def add_row(
        self,
        *cells: CellType,
        height: int | None = 1,
        key: str | None = None,
        label: Any = None,
    ) -> RowKey:
        row_key = super().add_row(*cells, height=height, key=key, label=label)
        if row_key.value is not None:
            self._versions[row_key.value] = [self._next_version()] * len(self.columns)
        return row_key

    def update_cell(
        self,
        row_key: RowKey | str,
        column_key: ColumnKey | str,
        value: CellType,
        *,
        update_width: bool = False,
    ) -> None:
        super().update_cell(row_key, column_key, value, update_width=update_width)
        rk = row_key.value if isinstance(row_key, RowKey) else row_key
        if rk is None:
            return
        versions = self._versions.get(rk)
        ck = ColumnKey(column_key) if isinstance(column_key, str) else column_key
        idx = self._column_locations.get(ck)
        if versions is not None and idx is not None and idx < len(versions):
            versions[idx] = self._next_version()
        else:
            self._versions.pop(rk, None)  # unknown shape: DataTable's own key from now on

    def remove_row(self, row_key: RowKey | str) -> None:
        super().remove_row(row_key)
        key = row_key.value if isinstance(row_key, RowKey) else row_key
        self._versions.pop(key, None)  # type: ignore[arg-type]
        self._pending.pop(key, None)  # type: ignore[arg-type]

    def clear(self, columns: bool = False) -> Self:
        self._versions.clear()
        self._shown.clear()
        self._pending.clear()
        self._order.clear()
        return super().clear(columns)

    def cell_version(self, row_key: RowKey, column_key: ColumnKey) -> Any:
        """What a rendered cell depends on besides its styles: the cell's version, the row's
        position (it is in the render's mouse metadata) and the column's width."""
        versions = self._versions.get(row_key.value) if row_key.value is not None else None
        col = self._column_locations.get(column_key)
        if versions is None or col is None or col >= len(versions):
            return self._update_count  # the header, or a row we do not track: DataTable's key
        column = self.columns.get(column_key)
        width = column.get_render_width(self) if column is not None else 0
        return (versions[col], self._row_locations.get(row_key), width)


class _CellRenderCache(LRUCache[Any, Any]):
    """DataTable's rendered-cell cache, keyed on the cell's own version (`cell_version`) instead
    of the table's update count, which every `update_cell` bumps for all cells."""

    def __init__(self, table: LiveTable, maxsize: int) -> None:
        super().__init__(maxsize)
        self._table = table

    def _key(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        # DataTable's key: (row_key, column_key, base_style, cursor, hover, show_hover_cursor,
        # update_count, pseudo_class_state).
        if len(key) != 8:
            return key
        version = self._table.cell_version(key[0], key[1])
        return (*key[:6], version, key[7])

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._key(key), default)

    def set(self, key: Any, value: Any) -> None:
        super().set(self._key(key), value)

    __setitem__ = set


class CellText:
    """One line of styled text in a table cell: what `Text(text, style=, justify=)` shows there,
    for less. A Text is three objects for the garbage collector to track (itself and two lists)
    and is wrapped, joined and re-split on every render; a cell needs none of that.

    Rendered like a no-wrap Text: the first line, tabs expanded, control codes dropped, cropped
    to the width. "right" strips trailing spaces and pads on the left inside the style; any
    other justify leaves the padding to the table (unstyled), as a Text without one does.
    """

    __slots__ = ("justify", "plain", "style")

    def __init__(self, text: str, style: str = "", justify: str = "default") -> None:
        if "\n" in text:
            text = text.split("\n", 1)[0]
        if "\t" in text:
            text = text.expandtabs(8)
        self.plain = strip_control_codes(text)
        self.style = style
        self.justify = justify

    def fit(self, width: int) -> str:
        """The text as shown in `width` cells: cropped, and padded on the left if "right"."""
        right = self.justify == "right"
        text = self.plain.rstrip() if right else self.plain
        size = cell_len(text)
        if size > width:
            return set_cell_size(text, width)
        if right and size < width:
            return " " * (width - size) + text
        return text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        text = self.fit(options.max_width)
        if text:
            yield Segment(text, self.rich_style(console))

    def rich_style(self, console: Console) -> Style | None:
        """The cell's style (None when it has none; an unknown name counts as none, as in Text)."""
        if not self.style:
            return None
        return console.get_style(self.style, default=Style.null()) or None

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        words = self.plain.split()
        size = cell_len(self.plain)
        return Measurement(max((cell_len(w) for w in words), default=size), size)

    def __str__(self) -> str:
        return self.plain

    def __repr__(self) -> str:
        return f"CellText({self.plain!r}, {self.style!r}, {self.justify!r})"


def _text(cell: Cell, justify: str) -> CellText | Text:
    """The renderable of a cell, justified as its column says (a ready Text as it is)."""
    if isinstance(cell, str):
        return CellText(cell, "", justify)
    if isinstance(cell, tuple):
        return CellText(cell[0], cell[1], justify)
    return cell
