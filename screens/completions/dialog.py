"""The Completions screen's dialog: one completion in full — what was sent (rebuilt from the
run's prompt settings), the reply, every sample of a teacher that sampled n times and whether
it agreed with the vote, the reference, and its figures."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Label, Static

from screens.dialogs import Dialog
from tui.engine.selection import confidence_text, sample_votes
from tui.engine.store import CompletionRow, RunInfo


class CompletionDialog(Dialog[None]):
    """One completion: what was sent (rebuilt from the run's prompt settings), the reply,
    and its figures."""

    CSS_PATH = "completions.tcss"

    def __init__(self, run: RunInfo, row: CompletionRow, messages: list[dict[str, str]]) -> None:
        super().__init__()
        self.run = run
        self.row = row
        self.messages = messages

    def compose(self) -> ComposeResult:
        run, row = self.run, self.row
        title = f"Completion {row.id} · run {run.id} · {run.model}" + (
            f" ({run.role})" if run.role else ""
        )
        with Vertical(classes="box wide", id="completion-box"):
            yield Label(Text(title), classes="title")
            with VerticalScroll(id="completion-body"):
                yield Label("Messages sent", classes="section")
                for message in self.messages:
                    with Horizontal(classes="message-row"):
                        yield Label(message["role"], classes="role")
                        yield Static(Text(message["content"]), classes="message")
                yield Label("Output", classes="section")
                yield Static(Text(row.output or "(empty)"), id="output", classes="message")
                if row.samples:
                    yield from self._samples()
                if row.reference:
                    yield Label("Reference", classes="section")
                    yield Static(Text(row.reference), classes="message")
                yield Label("Figures", classes="section")
                yield Static(self._figures(), id="figures", classes="message")
            yield Static("esc closes", classes="hint")

    def _samples(self) -> ComposeResult:
        """Every sample the teacher gave, ✓ where it agreed with the answer kept."""
        votes = sample_votes(self.run, self.row)
        agreed = sum(1 for _, agrees in votes if agrees)
        rule = self.run.params.get("vote", "normalised")
        yield Label(
            f"Samples ({agreed} of {len(votes)} agree with the output, vote {rule})",
            classes="section",
        )
        text = Text()
        for n, (sample, agrees) in enumerate(votes, 1):
            if n > 1:
                text.append("\n")
            text.append(f"{'✓' if agrees else '✗'} {n:>2}  ", style="green" if agrees else "red")
            text.append(sample.strip() or "(empty)", style="" if agrees else "dim")
        yield Static(text, id="completion-samples", classes="message")

    def _figures(self) -> Text:
        row = self.row

        def ms(value: float | None) -> str:
            return "–" if value is None else f"{value:,.0f} ms"

        def n(value: int | None) -> str:
            return "–" if value is None else f"{value:,}"

        figures = [
            ("status", row.status),
            ("tokens", f"{n(row.prompt_tokens)} prompt · {n(row.completion_tokens)} completion"),
            ("latency", ms(row.latency_ms)),
            ("first token", ms(row.first_token_ms)),
            ("finish reason", row.finish_reason or "–"),
            ("remote id", row.remote_id or "–"),
            *(
                [("metadata", " ".join(f"{k}={v}" for k, v in sorted(row.metadata.items())))]
                if row.metadata
                else []
            ),
            ("attempts", str(row.attempts)),
            *(
                [("confidence", f"{confidence_text(row)} ({row.confidence:.0%})")]
                if row.confidence is not None
                else []
            ),
            ("created", row.created_at[:19].replace("T", " ")),
        ]
        if row.error:
            figures.append(("error", row.error))
        text = Text()
        for i, (name, value) in enumerate(figures):
            if i:
                text.append("\n")
            text.append(f"{name:>13}  ", style="bold")
            text.append(value, style="red" if name == "error" else "")
        return text
