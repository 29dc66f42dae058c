"""A table that draws only the rows on screen, so 100,000 rows cost no more than 50.

Textual's DataTable builds an object per row and must be rebuilt to filter; here the rows are a
plain sequence of tuples owned by the caller, and filtering is swapping that sequence. A
`RowView` makes that sequence from the caller's own records (items, completions, results)
without copying them: a row's cells are computed when the row is drawn."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar, overload

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip


@dataclass(frozen=True)
class Column:
    label: str
    width: int = 0  # 0: share the remaining width by `weight`
    weight: int = 1
    justify: str = "left"


# Where the widget's own style is kept among Textual's component styles (never a component).
_BASE_STYLE = ("virtual-table base style",)


@lru_cache(maxsize=256)
def _parse_style(style: str) -> Style:
    return Style.parse(style)


def _clean(value: str) -> str:
    # One line per row: show line breaks and tabs as visible marks instead of breaking layout.
    if "\n" in value or "\t" in value or "\r" in value:
        value = value.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")
        value = value.replace("\t", " ")
    return value


Record = TypeVar("Record")
Row = tuple[str, ...]


class RowView(Sequence[Row], Generic[Record]):
    """A table's rows over a sequence of records, each row made by `cells(record)` when it is
    drawn: filtering or a new run swaps the records, never builds 100,000 tuples. The records
    may be indices into the caller's own list (`RowView(shown, lambda i: ...)`)."""

    def __init__(self, records: Sequence[Record], cells: Callable[[Record], Row]) -> None:
        self.records = records
        self.cells = cells

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Row]: ...

    def __getitem__(self, index: int | slice) -> Row | Sequence[Row]:
        if isinstance(index, slice):
            return [self.cells(record) for record in self.records[index]]
        return self.cells(self.records[index])


class VirtualTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES = {
        "virtual-table--header",
        "virtual-table--cursor",
        "virtual-table--odd",
        "virtual-table--flagged",
    }
    DEFAULT_CSS = """
    VirtualTable {
        background: $surface;
        height: 1fr;
    }
    VirtualTable > .virtual-table--header { text-style: bold; background: $panel; }
    VirtualTable > .virtual-table--cursor { background: $block-cursor-background;
        color: $block-cursor-foreground; text-style: bold; }
    VirtualTable:blur > .virtual-table--cursor { background: $block-cursor-blurred-background; }
    VirtualTable > .virtual-table--odd { background: $surface-lighten-1; }
    VirtualTable > .virtual-table--flagged { color: $warning; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True)

    class Highlighted(Message):
        def __init__(self, table: VirtualTable, index: int) -> None:
            super().__init__()
            self.table = table
            self.index = index

        @property
        def control(self) -> VirtualTable:
            """The table, so `@on(VirtualTable.Highlighted, "#id")` can tell tables apart."""
            return self.table

    class Selected(Message):
        def __init__(self, table: VirtualTable, index: int) -> None:
            super().__init__()
            self.table = table
            self.index = index

        @property
        def control(self) -> VirtualTable:
            """The table, so `@on(VirtualTable.Selected, "#id")` can tell tables apart."""
            return self.table

    def __init__(
        self,
        columns: Sequence[Column],
        *,
        flagged: Callable[[int], bool] | None = None,
        cell_style: Callable[[int, int], str | None] | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self._rows: Sequence[Sequence[str]] = ()
        self._widths: list[int] = [c.width for c in self.columns]
        self._laid_out_for = -1  # the width the columns were laid out for
        self._flagged = flagged
        # (row, column) → a Rich style for that cell (e.g. a verdict in green or red), or None.
        self._cell_style = cell_style

    # -- data ----------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._rows)

    def set_rows(self, rows: Sequence[Sequence[str]], *, keep_cursor: bool = True) -> None:
        self._rows = rows
        self._set_virtual_size(Size(self.size.width, len(rows) + 1))
        cursor = self.cursor if keep_cursor else 0
        self.cursor = max(0, min(cursor, len(rows) - 1))
        self.refresh()

    @property
    def visible_rows(self) -> range:
        """The indices of the rows on screen."""
        top = int(self.scroll_y)
        return range(top, min(top + self._page, len(self._rows)))

    def refresh_rows(self, rows: Iterable[int]) -> None:
        """Draw these rows again (those on screen), not the whole table: a live view whose
        few rows change many times a second redraws only those."""
        shown = self.visible_rows
        for row in rows:
            if row in shown:
                self.refresh_line(row + 1)  # the header is line 0

    def set_columns(self, columns: Sequence[Column]) -> None:
        """Change the columns (e.g. one per grader of the eval on view)."""
        self.columns = list(columns)
        self._widths = [c.width for c in self.columns]
        if self.scrollable_content_region.width:
            self._layout_columns(self.scrollable_content_region.width)
        self.refresh()

    # -- geometry ------------------------------------------------------------------------

    def _set_virtual_size(self, size: Size) -> None:
        """A new number of rows. Setting `virtual_size` lays the whole screen out again, which
        costs a frame tens of milliseconds: a filter typed into sets rows on every key. When
        the vertical scrollbar stays as it is (shown, or not needed, before and after; always
        shown with `overflow-y: scroll`), the size and the scrollbar's thumb are updated in
        place, as a layout would."""
        height = self.container_size.height
        old = self.virtual_size
        if size == old:
            return
        toggles = (old.height > height) != (size.height > height)
        if not self.is_mounted or not height or (toggles and self.styles.overflow_y != "scroll"):
            self.virtual_size = size
            return
        self.set_reactive(VirtualTable.virtual_size, size)
        self._scroll_update(size)
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self._layout_columns(self.scrollable_content_region.width)
        self.virtual_size = Size(self.scrollable_content_region.width, len(self._rows) + 1)

    def _layout_columns(self, total: int) -> None:
        gaps = len(self.columns)  # one space between (and before) columns
        fixed = sum(c.width for c in self.columns if c.width)
        flex = [c for c in self.columns if not c.width]
        weights = sum(c.weight for c in flex) or 1
        remaining = max(len(flex) * 8, total - fixed - gaps)
        widths: list[int] = []
        given = 0
        for column in self.columns:
            if column.width:
                widths.append(column.width)
            else:
                share = remaining * column.weight // weights
                widths.append(share)
                given += share
        # Give rounding leftovers to the first flexible column.
        for i, column in enumerate(self.columns):
            if not column.width:
                widths[i] += remaining - given
                break
        self._widths = widths
        self._laid_out_for = total

    @property
    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    # -- cursor --------------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        if not self._rows:
            return
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.Highlighted(self, new))

    def validate_cursor(self, value: int) -> int:
        return max(0, min(value, max(0, len(self._rows) - 1)))

    def _scroll_to_cursor(self) -> None:
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + self._page:
            self.scroll_to(y=self.cursor - self._page + 1, animate=False)

    def action_cursor(self, delta: int) -> None:
        self.cursor += delta

    def action_page(self, direction: int) -> None:
        self.cursor += direction * self._page

    def action_jump(self, where: int) -> None:
        self.cursor = where if where >= 0 else len(self._rows) - 1

    def action_select(self) -> None:
        if self._rows:
            self.post_message(self.Selected(self, self.cursor))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            return
        index = int(self.scroll_y) + event.y - 1
        if 0 <= index < len(self._rows):
            if index == self.cursor and event.chain >= 2:
                self.post_message(self.Selected(self, index))
            self.cursor = index

    # -- drawing -------------------------------------------------------------------------

    def _cells(self, values: Sequence[str], style: Style, index: int | None = None) -> Strip:
        segments: list[Segment] = []
        styled = self._cell_style if index is not None else None
        for i, (column, width, value) in enumerate(
            zip(self.columns, self._widths, values, strict=False)
        ):
            if width <= 0:
                continue
            extra = styled(index, i) if styled is not None and index is not None else None
            text = _clean(value)
            if column.justify == "right":
                text = text[-width:].rjust(width)
            cell = set_cell_size(text, width)
            if len(text) > width and width > 1 and column.justify != "right":
                cell = set_cell_size(cell[: width - 1], width - 1) + "…"
            if extra:
                segments.append(Segment(" ", style))
                segments.append(Segment(cell, style + _parse_style(extra)))
            else:
                segments.append(Segment(" " + cell, style))
        return Strip(segments)

    def _base_style(self) -> Style:
        """The widget's own style, kept with Textual's component styles: those are dropped
        whenever styles may have changed (a refresh, focus, a CSS update), and so is this.
        Computing it walks the ancestors, which a table of 40 lines did 40 times a frame."""
        cached = self._rich_style_cache.get(_BASE_STYLE)
        if cached is None:
            style = self.rich_style
            cached = self._rich_style_cache[_BASE_STYLE] = (style, style)
        return cached[0]

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if width != self._laid_out_for:
            # The width changed without a resize: a scrollbar came or went with new rows.
            self._layout_columns(width)
        base = self._base_style()
        if y == 0:
            style = base + self.get_component_rich_style("virtual-table--header")
            return self._cells([c.label for c in self.columns], style).extend_cell_length(
                width, style
            )
        index = int(self.scroll_y) + y - 1
        if index >= len(self._rows):
            return Strip.blank(width, base)
        style = base
        if index % 2:
            style += self.get_component_rich_style("virtual-table--odd")
        if self._flagged is not None and self._flagged(index):
            style += self.get_component_rich_style("virtual-table--flagged")
        if index == self.cursor:
            style += self.get_component_rich_style("virtual-table--cursor")
        return self._cells(self._rows[index], style, index).extend_cell_length(width, style)
