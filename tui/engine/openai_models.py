"""What OpenAI publishes about its models that the recipe depends on: which models can be
fine-tuned (a dated snapshot, never an alias: `fine_tuning.jobs.create(model="gpt-4o-mini")`
is refused with `400 model_not_available`), what the base models cost, and what a fine-tuned
model costs (its own rates, not its base's).

Plain data and name parsing, no I/O: `Settings` starts from these tables and lets a user
override each entry (`fine_tunable`, `prices`, `fine_tuned_prices` in the config file), so a
new snapshot or a price change needs no release.

Figures as published by OpenAI (platform.openai.com/docs/pricing and the fine-tuning guide),
US dollars per 1M tokens, standard tier, taken on `PUBLISHED`; check them there.
"""

from __future__ import annotations

import re

PUBLISHED = "2025-06-01"

# alias -> the dated snapshot a fine-tuning job must name.
FINE_TUNABLE: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
}

# (input, output, training) per 1M tokens, by alias; a snapshot bills as its alias.
BASE_PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-4o": (2.50, 10.00, 25.00),
    "gpt-4o-mini": (0.15, 0.60, 3.00),
    "gpt-4.1": (2.00, 8.00, 25.00),
    "gpt-4.1-mini": (0.40, 1.60, 5.00),
    "gpt-4.1-nano": (0.10, 0.40, 1.50),
    "gpt-3.5-turbo": (0.50, 1.50, 8.00),
}

# What a model fine-tuned from this base costs to use (input, output) and to train, by the
# base's alias: gpt-4o-mini fine-tuned is $0.30 / $1.20, twice the base's $0.15 / $0.60.
FINE_TUNED_PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-4o": (3.75, 15.00, 25.00),
    "gpt-4o-mini": (0.30, 1.20, 3.00),
    "gpt-4.1": (3.00, 12.00, 25.00),
    "gpt-4.1-mini": (0.80, 3.20, 5.00),
    "gpt-4.1-nano": (0.20, 0.80, 1.50),
    "gpt-3.5-turbo": (3.00, 6.00, 8.00),
}

# "-2024-07-18" (most models) or "-0125" (gpt-3.5-turbo, gpt-4 of 2023-24).
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class NotFineTunable(ValueError):
    """The model cannot be fine-tuned where it was asked; the message names what can."""


def alias_of(model: str) -> str:
    """`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`; a name without a date is its own alias."""
    return _SNAPSHOT_SUFFIX.sub("", model)


def fine_tuned_base(model: str) -> str | None:
    """The base a fine-tuned model was trained from: `ft:gpt-4o-mini-2024-07-18:org:git:id`
    -> `gpt-4o-mini-2024-07-18` (also the local backend's `ft:<base>:local:...`); None when
    the model is not a fine-tuned one."""
    if not model.startswith("ft:"):
        return None
    parts = model.split(":")
    return parts[1] if len(parts) > 1 and parts[1] else None


def resolve_snapshot(model: str, table: dict[str, str]) -> str:
    """The model a fine-tuning job on OpenAI must name for `model`: an alias's snapshot, a
    snapshot or a fine-tuned model (fine-tuning continues from it) as they are. Raises
    NotFineTunable naming the fine-tunable models otherwise."""
    if model in table:
        return table[model]
    if model in table.values():
        return model
    base = fine_tuned_base(model)
    if base is not None and (base in table or base in table.values()):
        return model
    names = ", ".join(f"{alias} ({snapshot})" for alias, snapshot in table.items())
    raise NotFineTunable(
        f"{model!r} cannot be fine-tuned on OpenAI; the fine-tunable models are {names}. "
        "Choose one as the student, or add its snapshot to `fine_tunable` in the settings."
    )
