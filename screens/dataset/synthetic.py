"""The Dataset screen's "Generate requests…" (g): a dialog asking what to generate, then the
preview (screens/dataset/preview.py) where the new requests stream in and a person picks
which to add.

`GenerateRequestsDialog` returns a `SynthesisRequest` (model, how many, examples shown,
topics). `generate_requests` is the whole exchange, from the teacher's backend to the requests
a person accepted, added to the dataset; showing them and undoing that is the screen's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import openai
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.suggester import SuggestFromList
from textual.widgets import Input, Label, Static, TextArea

from screens.dataset.preview import RequestsPreview
from screens.dialogs import Dialog
from tui.engine.store import DatasetInfo, Item
from tui.engine.synthetic import (
    Added,
    RequestSynthesizer,
    SynthesisSpec,
    add_synthetic,
    example_pool,
)

if TYPE_CHECKING:
    from screens.base import DistillScreen

__all__ = [
    "GenerateRequestsDialog",
    "RequestsPreview",
    "SynthesisRequest",
    "added_message",
    "generate_requests",
]

MAX_COUNT = 5_000
MAX_EXAMPLES = 50


@dataclass(frozen=True)
class SynthesisRequest:
    model: str
    count: int
    examples: int
    topics: tuple[str, ...]


class GenerateRequestsDialog(Dialog[SynthesisRequest]):
    """What to generate: the model (the teacher's by default), how many, how many of the
    dataset's requests to show as examples, and optional topics (one a line)."""

    BINDINGS = [Binding("ctrl+s", "save", "Generate", id="dialog.generate")]

    def __init__(self, model: str, pool: int, models: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.pool = pool  # requests the examples are drawn from
        self.models = list(models)

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide", id="synth-form"):
            yield Label("Generate requests", classes="title")
            yield Static(
                f"A model writes new requests in the style of this dataset's, shown a few at "
                f"a time from its {self.pool:,} train and unassigned requests (eval requests "
                "are never shown). You pick which to add: they go to the train split, tagged "
                "synthetic, without references (the teacher answers them later).",
                markup=False,
                classes="hint",
            )
            yield Label("Model")
            suggester = SuggestFromList(self.models) if self.models else None
            yield Input(self.model, id="synth-model", suggester=suggester)
            with Horizontal(classes="synth-numbers"):
                with Vertical():
                    yield Label("How many")
                    yield Input("20", id="synth-count", type="integer")
                with Vertical():
                    yield Label("Examples shown per batch")
                    yield Input("8", id="synth-examples", type="integer")
            yield Label("Topics (optional, one a line)")
            yield TextArea("", id="synth-topics", classes="short")
            yield Static("ctrl+s starts, esc cancels", classes="hint")
            yield from self.buttons("Generate")

    def on_mount(self) -> None:
        self.query_one("#synth-count", Input).focus()

    def action_save(self) -> None:
        self.submit()

    @on(Input.Submitted)
    def submit(self) -> None:
        model = self.query_one("#synth-model", Input).value.strip()
        if not model:
            self.show_error("Name the model that writes the requests.")
            return
        count = _number(self.query_one("#synth-count", Input).value)
        if count is None or not 1 <= count <= MAX_COUNT:
            self.show_error(f"How many: a whole number from 1 to {MAX_COUNT:,}.")
            return
        examples = _number(self.query_one("#synth-examples", Input).value)
        if examples is None or not 0 <= examples <= MAX_EXAMPLES:
            self.show_error(f"Examples shown: a whole number from 0 to {MAX_EXAMPLES}.")
            return
        topics = tuple(
            line.strip()
            for line in self.query_one("#synth-topics", TextArea).text.splitlines()
            if line.strip()
        )
        if examples == 0 and not topics and self.pool:
            self.show_error("Show at least one example, or give topics.")
            return
        self.dismiss(SynthesisRequest(model, count, examples, topics))


def _number(text: str) -> int | None:
    try:
        return int(text.strip().replace(",", "").replace("_", ""))
    except ValueError:
        return None


async def generate_requests(
    screen: DistillScreen, dataset: DatasetInfo, items: Sequence[Item]
) -> Added | None:
    """A model (the teacher's by default) writes new requests like the dataset's `items`; the
    ones the person accepted are added (train split, tagged synthetic, no reference). None:
    nothing was added. Runs in a worker (it waits on two dialogs)."""
    distill = screen.distill
    backend = distill.backend_for("teacher")
    if backend is None:
        screen.notify("The backend is not connected yet.", severity="warning")
        return None
    settings = distill.settings
    pool = len(example_pool(items))
    models = await _models(backend.client)
    request = await screen.app.push_screen_wait(
        GenerateRequestsDialog(settings.teacher, pool, models)
    )
    if request is None:
        return None
    spec = SynthesisSpec(
        dataset_id=dataset.id,
        model=request.model,
        count=request.count,
        examples=request.examples,
        topics=request.topics,
    )
    synthesizer = RequestSynthesizer(
        distill.store,
        backend.client,
        price=settings.price(request.model, "teacher"),
        max_retries=settings.max_retries,
    )
    accepted = await screen.app.push_screen_wait(RequestsPreview(synthesizer, spec))
    if not accepted:
        return None
    store = distill.store
    return await store.in_thread(add_synthetic, store, dataset.id, accepted)


def added_message(added: Added) -> str:
    skipped = (
        f" {len(added.skipped):,} were in the dataset by now and were left out."
        if added.skipped
        else ""
    )
    return (
        f"Added {len(added.ids):,} synthetic requests to the train split, without references."
        + skipped
        + " Press u to undo."
    )


async def _models(client: openai.AsyncOpenAI) -> list[str]:
    """The backend's models, for the model box's suggestions ([] if it cannot list them)."""
    try:
        listing = client.with_options(timeout=5.0, max_retries=0).models.list()
        return sorted({model.id async for model in listing})
    except openai.APIError:  # only suggestions: the dialog works without them
        return []
