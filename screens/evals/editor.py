"""The eval editor: the workspace's evals and the graders of the one on view. Add a grader from
a form, edit them all as JSON (OpenAI's testing_criteria paste as they are), or add ready-made
ones. The panel saves to the store itself and tells its screen what changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from screens.dialogs import ConfirmDialog, TextPromptDialog
from screens.evals.dialogs import GradersJsonDialog, PresetDialog
from screens.evals.grader_form import GraderDialog, form_can_edit
from tui.engine.eval_views import add_graders, grader_presets
from tui.engine.evals import update_eval
from tui.engine.graders import GraderConfigError
from tui.engine.store import EvalInfo, Store, StoreError


class EvalEditor(Vertical):
    """Evals above, the graders of the highlighted one below. Its commands (`new_eval`,
    `add_grader`, `add_presets`, `edit_json`...) are the screen's keys; enter on a grader
    edits it."""

    @dataclass
    class EvalChanged(Message):
        """Another eval is on view, or the graders of the one on view changed: what is shown
        of its results is out of date."""

        editor: EvalEditor
        eval: EvalInfo | None

        @property
        def control(self) -> EvalEditor:
            return self.editor

    @dataclass
    class EvalRenamed(Message):
        editor: EvalEditor
        eval: EvalInfo

        @property
        def control(self) -> EvalEditor:
            return self.editor

    @dataclass
    class EvalChosen(Message):
        """Enter on an eval: the user is done choosing (the screen moves on to its results)."""

        editor: EvalEditor
        eval: EvalInfo | None

        @property
        def control(self) -> EvalEditor:
            return self.editor

    def __init__(self, store: Store, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.store = store
        self.evals: list[EvalInfo] = []
        self.eval: EvalInfo | None = None

    def compose(self) -> ComposeResult:
        yield Label("Evals", classes="section")
        yield OptionList(id="eval-list")
        yield Label("Graders", classes="section", id="graders-title")
        yield OptionList(id="grader-list")
        yield Static("a add · e edit · d delete\nj JSON · p presets", id="grader-hint")

    def load_evals(self, select: int | None = None) -> None:
        """Read the evals again; keep the one on view (or show `select`, or the first)."""
        self.evals = self.store.list_evals()
        wanted = select if select is not None else (self.eval.id if self.eval else None)
        self.eval = next((e for e in self.evals if e.id == wanted), None)
        if self.eval is None and self.evals:
            self.eval = self.evals[0]
        options = self.query_one("#eval-list", OptionList)
        prompts = []
        for e in self.evals:
            text = Text(e.name)
            text.append(f"  {len(e.graders)} grader{'s' if len(e.graders) != 1 else ''}", "dim")
            prompts.append(Option(text, id=str(e.id)))
        options.set_options(prompts)
        if self.eval is not None:
            options.highlighted = self.evals.index(self.eval)
        self._show_graders()

    def _show_graders(self) -> None:
        options = self.query_one("#grader-list", OptionList)
        highlighted = options.highlighted
        graders = self.eval.graders if self.eval else []
        prompts = []
        for i, config in enumerate(graders):
            text = Text(str(config.get("name") or config.get("type")), style="bold")
            text.append(f"\n  {config.get('type')}{_grader_gist(config)}", style="dim")
            prompts.append(Option(text, id=str(i)))
        options.set_options(prompts)
        if graders:
            options.highlighted = min(highlighted or 0, len(graders) - 1)
        title = self.query_one("#graders-title", Label)
        title.update(Text(f"Graders of {self.eval.name}") if self.eval else "Graders")

    def _changed(self) -> None:
        self.post_message(self.EvalChanged(self, self.eval))

    @on(OptionList.OptionHighlighted, "#eval-list")
    def _eval_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        eval_id = int(event.option.id or 0)
        if self.eval is not None and self.eval.id == eval_id:
            return
        self.eval = next((e for e in self.evals if e.id == eval_id), None)
        self._show_graders()
        self._changed()

    @on(OptionList.OptionSelected, "#eval-list")
    def _eval_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.EvalChosen(self, self.eval))

    @on(OptionList.OptionHighlighted, "#grader-list")
    def _grader_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()

    @on(OptionList.OptionSelected, "#grader-list")
    def _grader_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.edit_grader()

    def highlighted_grader(self) -> int | None:
        options = self.query_one("#grader-list", OptionList)
        if self.eval is None or options.highlighted is None:
            return None
        return options.highlighted if options.highlighted < len(self.eval.graders) else None

    async def _save_graders(self, graders: list[dict[str, Any]]) -> bool:
        assert self.eval is not None
        store = self.store
        try:
            await store.in_thread(update_eval, store, self.eval.id, graders=graders)
        except (GraderConfigError, StoreError) as error:
            self.notify(str(error), title="Graders not saved", severity="error", markup=False)
            return False
        self.load_evals()
        self._changed()
        return True

    async def _need_eval(self) -> EvalInfo | None:
        """The eval on view; with none yet, one is created (named after the first need)."""
        if self.eval is not None:
            return self.eval
        store = self.store
        name = "git commands" if store.eval_by_name("git commands") is None else "new eval"
        eval_id = await store.in_thread(store.create_eval, name, [])
        self.load_evals(select=eval_id)
        self._changed()
        return self.eval

    # -- the screen's commands -------------------------------------------------------------

    @work(group="evals-edit", exit_on_error=False)
    async def new_eval(self) -> None:
        name = await self.app.push_screen_wait(
            TextPromptDialog("New eval", placeholder="name, e.g. git commands", validate=_name)
        )
        if not name:
            return
        store = self.store
        try:
            eval_id = await store.in_thread(store.create_eval, name, [])
        except StoreError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self.load_evals(select=eval_id)
        self._changed()
        self.notify(f"Created {name!r}: a adds a grader, p adds ready-made ones.", markup=False)

    @work(group="evals-edit", exit_on_error=False)
    async def rename_eval(self) -> None:
        if self.eval is None:
            return
        name = await self.app.push_screen_wait(
            TextPromptDialog("Rename eval", self.eval.name, validate=_name)
        )
        if not name:
            return
        store = self.store
        try:
            await store.in_thread(update_eval, store, self.eval.id, name=name)
        except StoreError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self.load_evals()
        if self.eval is not None:
            self.post_message(self.EvalRenamed(self, self.eval))

    @work(group="evals-edit", exit_on_error=False)
    async def delete_eval(self) -> None:
        evaluation = self.eval
        if evaluation is None:
            return
        store = self.store
        n_runs = len(await store.in_thread(store.list_eval_runs, evaluation.id))
        ok = await self.app.push_screen_wait(
            ConfirmDialog(
                "Delete eval",
                f"Delete {evaluation.name!r} with its {n_runs} eval run(s) and their grades? "
                "The runs and their completions stay.",
                ok="Delete",
            )
        )
        if not ok:
            return
        await store.in_thread(store.delete_eval, evaluation.id)
        self.eval = None
        self.load_evals()
        self._changed()

    @work(group="evals-edit", exit_on_error=False)
    async def add_grader(self) -> None:
        taken = [str(g.get("name")) for g in self.eval.graders] if self.eval else []
        config = await self.app.push_screen_wait(GraderDialog(None, taken))
        if config is None:
            return
        evaluation = await self._need_eval()
        if evaluation is None:
            return
        if await self._save_graders([*evaluation.graders, config]):
            self.notify(f"Added {config['name']!r} to {evaluation.name!r}.", markup=False)

    @work(group="evals-edit", exit_on_error=False)
    async def edit_grader(self) -> None:
        index = self.highlighted_grader()
        if self.eval is None or index is None:
            self.notify("No grader to edit: a adds one.", severity="warning")
            return
        graders = list(self.eval.graders)
        if not form_can_edit(graders[index]):
            self.notify(
                "This judge has more messages than the form shows: edit it as JSON (j).",
                severity="warning",
            )
            return
        taken = [str(g.get("name")) for g in graders]
        config = await self.app.push_screen_wait(GraderDialog(graders[index], taken))
        if config is None:
            return
        graders[index] = config
        await self._save_graders(graders)

    async def delete_grader(self) -> None:
        index = self.highlighted_grader()
        if self.eval is None or index is None:
            return
        graders = list(self.eval.graders)
        removed = graders.pop(index)
        if await self._save_graders(graders):
            self.notify(
                f"Removed {removed.get('name')!r}. Eval runs made before keep their grades.",
                markup=False,
            )

    @work(group="evals-edit", exit_on_error=False)
    async def edit_json(self) -> None:
        evaluation = await self._need_eval()
        if evaluation is None:
            return
        graders = await self.app.push_screen_wait(
            GradersJsonDialog(evaluation.name, evaluation.graders)
        )
        if graders is None:
            return
        if await self._save_graders(graders):
            self.notify(f"{evaluation.name!r}: {len(graders)} graders saved.", markup=False)

    @work(group="evals-edit", exit_on_error=False)
    async def add_presets(self) -> None:
        preset = await self.app.push_screen_wait(PresetDialog(grader_presets()))
        if preset is None:
            return
        evaluation = await self._need_eval()
        if evaluation is None:
            return
        try:
            graders = add_graders(evaluation.graders, preset.graders)
        except GraderConfigError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        if await self._save_graders(graders):
            self.notify(f"Added {preset.name!r} to {evaluation.name!r}.", markup=False)


def _grader_gist(config: dict[str, Any]) -> str:
    kind = config.get("type")
    if kind == "string_check":
        return f" · {config.get('operation')}"
    if kind == "text_similarity":
        return f" · {config.get('evaluation_metric')} ≥ {config.get('pass_threshold', 0.5)}"
    if kind in ("score_model", "label_model"):
        return f" · {config.get('model') or 'judge from Settings'}"
    return ""


def _name(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("An eval name cannot be empty.")
    if len(value) > 200:
        raise ValueError("An eval name is limited to 200 characters.")
    return value
