"""SteadyStatic (tui/widgets/steady_static.py), the Static the results panel redraws many
times a second: new text at the same height is drawn without a new layout, and text that
needs another height still gets it (nothing is clipped, no blank lines are left)."""

from __future__ import annotations

from textual.app import App, ComposeResult

from tests.helpers.pilot import count_layouts
from tui.widgets.steady_static import SteadyStatic


class OneLine(App[None]):
    CSS = "SteadyStatic { height: auto; } #fixed { height: 2; }"

    def compose(self) -> ComposeResult:
        yield SteadyStatic("", id="auto")
        yield SteadyStatic("", id="fixed")


def lines(widget: SteadyStatic) -> list[str]:
    return [strip.text.rstrip() for strip in widget.render_lines(widget.region.reset_offset)]


async def test_steady_static_lays_out_again_only_for_another_height() -> None:
    app = OneLine()
    async with app.run_test(size=(40, 12)) as pilot:
        auto = app.query_one("#auto", SteadyStatic)
        auto.show("first")
        await pilot.pause()
        assert auto.region.height == 1 and lines(auto) == ["first"]

        layouts = count_layouts(app.screen)
        auto.show("second")  # the same height: drawn, not laid out
        await pilot.pause()
        assert lines(auto) == ["second"] and not layouts

        auto.show("one\ntwo\nthree")  # taller: laid out, nothing clipped
        await pilot.pause()
        assert auto.region.height == 3 and lines(auto) == ["one", "two", "three"]
        assert layouts

        layouts.clear()
        auto.show("four\nfive\nsix")
        await pilot.pause()
        assert lines(auto) == ["four", "five", "six"] and not layouts

        auto.show("seven")  # shorter again: no blank lines left behind
        await pilot.pause()
        assert auto.region.height == 1 and lines(auto) == ["seven"]

        layouts.clear()
        fixed = app.query_one("#fixed", SteadyStatic)
        fixed.show("a")
        await pilot.pause()
        fixed.show("b\nc")  # CSS gives it its height: its text's height changes nothing
        await pilot.pause()
        assert fixed.region.height == 2 and lines(fixed) == ["b", "c"]
        assert len(layouts) <= 1  # the first show of a widget never laid out
