"""A Static for text that changes several times a second: the screen is laid out again only
when the new text needs another height.

`Static.update` lays out the whole screen on every call, since new content may take another
size. A results panel redrawn 15 times a second while judges answer (a summary table whose
counts grow, a view line, the detail of the row under the cursor) then costs a full layout
a frame: bench/judges_tui.py measured 24 layouts in a 3.7 s grading run on the Evals screen
at 64 judges, ~40 ms each, and the app's event-loop lag p99 at 148 ms. The counts and
verdicts change every frame; the lines they take almost never do. The Compare screen's
diff under its items, redrawn at every cursor move, is one too."""

from __future__ import annotations

from textual.geometry import Size
from textual.visual import VisualType
from textual.widgets import Static

NO_SIZE = Size(0, 0)  # get_content_height's container and viewport: unused by a Static


class SteadyStatic(Static):
    """`show(content)`: `update` that keeps the layout while the content's height at the
    widget's width stays the same (whatever CSS then makes of that height, it makes the
    same of it again), and always when CSS gives the widget a height of its own (cells,
    fr, %): the content's height then changes nothing."""

    _fitted: tuple[int, int] | None = None  # (width, content height) the layout was made for

    def show(self, content: VisualType, lines: int | None = None) -> None:
        """Show `content`; `lines`: its height, where the caller knows it without rendering
        it (measuring a rich Table renders it: ~5 ms for a summary of three graders)."""
        self.update(content, layout=False)
        width = self.content_size.width
        if not width:  # not laid out yet (or hidden): the next layout sizes it anyway
            self._fitted = None
            self.refresh(layout=True)
            return
        height = self.styles.height
        if height is not None and not height.is_auto:
            return
        if lines is None:
            lines = self.get_content_height(NO_SIZE, NO_SIZE, width)
        fitted = (width, lines)
        if fitted != self._fitted:
            self._fitted = fitted
            self.refresh(layout=True)
