"""Train and validation loss per step, redrawn when new metrics arrive."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class LossChart(PlotextPlot):
    DEFAULT_CSS = """
    LossChart {
        height: 14;
        min-height: 8;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._series: dict[str, list[tuple[int, float]]] = {}

    def on_mount(self) -> None:
        self._draw()

    def show(self, series: dict[str, list[tuple[int, float]]]) -> None:
        if series == self._series:
            return
        self._series = {k: list(v) for k, v in series.items()}
        self._draw()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss per step")
        plt.xlabel("step")
        drawn = False
        for name, label in (("train_loss", "train"), ("valid_loss", "validation")):
            points = self._series.get(name)
            if points:
                steps, values = zip(*points, strict=True)
                plt.plot(list(steps), list(values), label=label, marker="braille")
                drawn = True
        if not drawn:
            plt.title("loss per step — waiting for the first metrics")
        self.refresh()
