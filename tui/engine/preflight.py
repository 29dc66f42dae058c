"""Check before spending: everything the later steps of the recipe need, verified before its
first paid request, so a run that would fail at step 6 (after paying for the baseline and the
teacher) fails at once, costs nothing, and says what to change.

- the student can be fine-tuned on its backend: on OpenAI, a model of the fine-tunable table
  (`Settings.fine_tunable`; an alias resolves to its dated snapshot); on the local backend,
  any model it serves (its trainer takes every model it lists); on another URL, the backend
  must have `/v1/fine_tuning/jobs` at all;
- the models exist (`models.retrieve`, else the backend's model list: vLLM has no retrieve);
- the dataset has a split and enough train items for a training file (≥ 10 examples once
  the validation share is taken out).

The same resolution serves the Fine-tune screen (`fine_tune_base`), so the base it shows
before launch is the one the job will name.
"""

from __future__ import annotations

from collections.abc import Mapping

import openai

from tui.engine.openai_models import NotFineTunable, alias_of, resolve_snapshot
from tui.engine.redact import redact_url
from tui.engine.retry import describe
from tui.engine.settings import Settings
from tui.engine.store import DatasetInfo
from tui.engine.training_data import MIN_EXAMPLES

__all__ = [
    "NotFineTunable",
    "check_before_spending",
    "fine_tune_base",
    "student_model",
]


def fine_tune_base(settings: Settings, backend_kind: str, model: str) -> str:
    """The base model a fine-tuning job must name for `model` on this backend: on OpenAI the
    dated snapshot (`gpt-4o-mini` -> `gpt-4o-mini-2024-07-18`), elsewhere the model as it
    is. Raises NotFineTunable, naming the fine-tunable models, for one OpenAI won't train."""
    if backend_kind != "openai":
        return model
    return resolve_snapshot(model, settings.fine_tunable)


def student_model(settings: Settings, backend_kind: str, model: str) -> str:
    """The model the student's runs use: on OpenAI the snapshot its fine-tuning will start
    from (so the baseline and the fine-tuned model are compared on the same base); the model
    as it is otherwise, and where it cannot be fine-tuned (check_before_spending says so)."""
    try:
        return fine_tune_base(settings, backend_kind, model)
    except NotFineTunable:
        return model


def _training_examples(n_train: int, validation_fraction: float) -> int:
    """How many training examples a train split of n items yields (finetune's split rule)."""
    n_validation = round(n_train * validation_fraction)
    if validation_fraction > 0 and n_validation == 0 and n_train >= 20:
        n_validation = 1
    return n_train - n_validation


class _Models:
    """Does a model exist at the backend: retrieve it; where the backend has no retrieve
    (vLLM), look in its list; where it has neither, nobody can tell (assume it does)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self._listed: set[str] | None = None
        self._list_failed = False

    async def exists(self, model: str) -> bool:
        try:
            await self.client.models.retrieve(model)
            return True
        except openai.NotFoundError:
            pass
        if self._listed is None and not self._list_failed:
            try:
                self._listed = {m.id async for m in self.client.models.list()}
            except openai.NotFoundError:
                self._list_failed = True
        return self._listed is None or model in self._listed

    def similar(self, model: str) -> list[str]:
        family = alias_of(model).split("-")[0]
        return sorted(m for m in self._listed or () if m.startswith(family))[:8]


async def check_before_spending(
    client: openai.AsyncOpenAI,
    settings: Settings,
    backend_kind: str,
    *,
    models: Mapping[str, str],
    fine_tune: str | None = None,
    dataset: DatasetInfo | None = None,
    validation_fraction: float = 0.1,
) -> list[str]:
    """What stands in the way, one sentence each (empty: go ahead). `models` maps a role
    ("student", "teacher"...) to the model the steps still to run will call; `fine_tune` is
    the base the fine-tuning step will name (None when no fine-tuning is to come); `dataset`
    is checked for a split and for enough train items. Sends only free requests (model
    lookups, one fine-tuning list); none when the answer is known without asking."""
    problems: list[str] = []
    where = (
        "OpenAI" if backend_kind == "openai" else f"the backend at {redact_url(client.base_url)}"
    )

    if dataset is not None:
        if dataset.n_train == 0 or dataset.n_eval == 0:
            problems.append(
                f"dataset {dataset.name!r} needs a train/eval split (it has {dataset.n_train} "
                f"train and {dataset.n_eval} eval items): split it on the Dataset screen (s)"
            )
        elif fine_tune is not None:
            examples = _training_examples(dataset.n_train, validation_fraction)
            if examples < MIN_EXAMPLES:
                problems.append(
                    f"dataset {dataset.name!r} has {dataset.n_train} train items, which make "
                    f"{examples} training examples after the validation share; fine-tuning "
                    f"needs at least {MIN_EXAMPLES}: add items or give the train split more"
                )

    if fine_tune is not None and backend_kind == "openai":
        try:
            resolve_snapshot(fine_tune, settings.fine_tunable)
        except NotFineTunable as error:
            problems.append(f"the student {error}")

    lookup = _Models(client)
    try:
        if fine_tune is not None and backend_kind == "url":
            try:
                await client.fine_tuning.jobs.list(limit=1)
            except (openai.NotFoundError, openai.UnprocessableEntityError) as error:
                problems.append(
                    f"{where} has no fine-tuning endpoint ({describe(error)}): fine-tune on "
                    "OpenAI or the local backend, or stop the recipe before fine-tuning"
                )
        checked: set[str] = set()
        for role, model in models.items():
            if not model or model in checked:
                continue
            checked.add(model)
            if not await lookup.exists(model):
                similar = lookup.similar(model)
                hint = f" (it has {', '.join(similar)})" if similar else ""
                problems.append(f"the {role} model {model!r} does not exist at {where}{hint}")
    except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
        problems.append(f"{where} refused the request ({describe(error)}): check the API key")
    except openai.APIConnectionError as error:
        problems.append(f"cannot reach {where} ({describe(error)})")
    except openai.APIStatusError as error:
        problems.append(f"{where} could not be asked about the models ({describe(error)})")
    return problems
