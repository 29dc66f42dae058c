"""Checks and statistics for chat fine-tuning files (JSONL, one example per line).

This follows OpenAI's cookbook "Data preparation and analysis for chat model fine-tuning":
the same format-error names, the same warnings, the same token-count and epoch heuristics.
It is used by the local backend's trainer (to reject a bad file before loading a model) and
by the client (to show what is wrong before uploading). Pure python: no torch, no textual;
token counts take the tokenizer as a plain callable so each side passes its own.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The cookbook's vocabulary. "function" stays a recognised role (the cookbook accepts it),
# "weight" a recognised key (OpenAI uses it to exclude an assistant turn from training).
RECOGNIZED_KEYS = ("role", "content", "name", "function_call", "weight")
RECOGNIZED_ROLES = ("system", "user", "assistant", "function")

# In the cookbook's order, then ours: "invalid_json" for a line that is not JSON at all,
# "too_few_examples" for a file under the minimum (OpenAI refuses fewer than 10).
ERROR_NAMES = (
    "data_type",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "example_missing_assistant_message",
    "invalid_json",
    "too_few_examples",
)

ERROR_DESCRIPTIONS = {
    "data_type": "the line is not a JSON object",
    "missing_messages_list": 'no non-empty "messages" list',
    "message_missing_key": 'a message without "role" or "content"',
    "message_unrecognized_key": "a message with a key other than " + ", ".join(RECOGNIZED_KEYS),
    "unrecognized_role": "a message whose role is not one of " + ", ".join(RECOGNIZED_ROLES),
    "missing_content": "a message whose content is empty or not a string",
    "example_missing_assistant_message": "no assistant message",
    "invalid_json": "the line is not valid JSON",
    "too_few_examples": "fewer examples than the minimum",
}

MIN_EXAMPLES = 10

# The cookbook's defaults for epochs and its per-example token limit.
MAX_TOKENS_PER_EXAMPLE = 16385
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


@dataclass
class FormatReport:
    n_examples: int
    errors: dict[str, int]  # error name -> occurrences (per message for message-level ones)
    first_error_line: dict[str, int]  # error name -> 1-based line of its first occurrence
    warnings: list[str]
    min_examples: int = MIN_EXAMPLES
    n_missing_system: int = 0
    n_missing_user: int = 0

    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One readable sentence per error, in a fixed order, for an error message."""
        if self.ok():
            return f"{self.n_examples} examples, no format errors"
        parts = []
        for name in ERROR_NAMES:
            if name not in self.errors:
                continue
            if name == "too_few_examples":
                parts.append(
                    f"too_few_examples: the file has {self.n_examples} example(s), "
                    f"but must have at least {self.min_examples}"
                )
                continue
            count = self.errors[name]
            parts.append(
                f"{name}: {count} ({ERROR_DESCRIPTIONS[name]}; "
                f"first at line {self.first_error_line[name]})"
            )
        return "; ".join(parts)


def _check_example(ex: Any) -> list[str]:
    """The cookbook's checks for one parsed example. Like the cookbook, message-level errors
    are counted once per message, so a name may appear several times."""
    if not isinstance(ex, dict):
        return ["data_type"]
    messages = ex.get("messages", None)
    if not messages or not isinstance(messages, list):
        return ["missing_messages_list"]
    found: list[str] = []
    add = found.append
    for message in messages:
        if not isinstance(message, dict):
            # The cookbook would crash here; a non-object message has neither key.
            add("message_missing_key")
            continue
        if "role" not in message or "content" not in message:
            add("message_missing_key")
        if any(k not in RECOGNIZED_KEYS for k in message):
            add("message_unrecognized_key")
        if message.get("role", None) not in RECOGNIZED_ROLES:
            add("unrecognized_role")
        content = message.get("content", None)
        function_call = message.get("function_call", None)
        if (not content and not function_call) or not isinstance(content, str):
            add("missing_content")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        add("example_missing_assistant_message")
    return found


def iter_jsonl(text: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield lineno, line


def check_chat_jsonl(text: str, min_examples: int = MIN_EXAMPLES) -> FormatReport:
    errors: dict[str, int] = {}
    first: dict[str, int] = {}
    n_examples = 0
    n_missing_system = 0
    n_missing_user = 0

    def record(name: str, lineno: int) -> None:
        errors[name] = errors.get(name, 0) + 1
        first.setdefault(name, lineno)

    for lineno, line in iter_jsonl(text):
        n_examples += 1
        try:
            ex = json.loads(line)
        except ValueError:
            record("invalid_json", lineno)
            continue
        for name in _check_example(ex):
            record(name, lineno)
        if isinstance(ex, dict) and isinstance(ex.get("messages"), list):
            roles = [m.get("role") for m in ex["messages"] if isinstance(m, dict)]
            n_missing_system += "system" not in roles
            n_missing_user += "user" not in roles

    if n_examples < min_examples:
        errors["too_few_examples"] = 1
        first["too_few_examples"] = 1

    warnings = []
    if n_missing_system:
        warnings.append(f"{n_missing_system} example(s) missing a system message")
    if n_missing_user:
        warnings.append(f"{n_missing_user} example(s) missing a user message")
    return FormatReport(
        n_examples=n_examples,
        errors=errors,
        first_error_line=first,
        warnings=warnings,
        min_examples=min_examples,
        n_missing_system=n_missing_system,
        n_missing_user=n_missing_user,
    )


def load_chat_jsonl(text: str) -> list[dict[str, Any]]:
    """The examples of a file that passed check_chat_jsonl."""
    return [json.loads(line) for _, line in iter_jsonl(text)]


# ---- token counts (the cookbook's functions, with the tokenizer passed in) -------------------

TokenCounter = Callable[[str], int]
"""Number of tokens in a string, e.g. ``lambda s: len(enc.encode(s))``."""


def num_tokens_from_messages(
    messages: Sequence[dict[str, Any]],
    count: TokenCounter,
    tokens_per_message: int = 3,
    tokens_per_name: int = 1,
) -> int:
    """The cookbook's estimate of an example's tokens, chat-format overhead included."""
    num_tokens = 0
    for message in messages:
        num_tokens += tokens_per_message
        for key, value in message.items():
            if isinstance(value, str):
                num_tokens += count(value)
            if key == "name":
                num_tokens += tokens_per_name
    num_tokens += 3
    return num_tokens


def num_assistant_tokens_from_messages(
    messages: Sequence[dict[str, Any]], count: TokenCounter
) -> int:
    return sum(
        count(m["content"])
        for m in messages
        if m.get("role") == "assistant" and isinstance(m.get("content"), str)
    )


@dataclass
class Distribution:
    min: float
    max: float
    mean: float
    median: float
    p10: float  # the cookbook prints these as "p5 / p95" but computes the 10th/90th
    p90: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(0, 0, 0.0, 0.0, 0.0, 0.0)
        return cls(
            min=min(values),
            max=max(values),
            mean=statistics.fmean(values),
            median=statistics.median(values),
            p10=_quantile(values, 0.1),
            p90=_quantile(values, 0.9),
        )


def _quantile(values: Sequence[float], q: float) -> float:
    """numpy's default (linear) quantile, without numpy."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class TokenStats:
    n_examples: int
    n_messages: Distribution
    total_tokens: Distribution
    assistant_tokens: Distribution
    n_too_long: int  # examples over max_tokens_per_example (truncated in training)
    billing_tokens: int  # tokens in the file, each example capped at the limit
    n_epochs: int  # the cookbook's default epochs for this many examples
    convo_lens: list[int] = field(default_factory=list)

    @property
    def trained_tokens(self) -> int:
        """What a job with the default epochs would be charged for."""
        return self.billing_tokens * self.n_epochs


def default_n_epochs(n_examples: int) -> int:
    """The cookbook's (and OpenAI's "auto") epochs: 3, more for small sets, fewer for huge."""
    n_epochs = TARGET_EPOCHS
    if n_examples <= 0:
        return n_epochs
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n_epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n_epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return n_epochs


def token_stats(
    examples: Sequence[dict[str, Any]],
    count: TokenCounter,
    max_tokens_per_example: int = MAX_TOKENS_PER_EXAMPLE,
    n_epochs: int | None = None,
) -> TokenStats:
    """The cookbook's distributions for examples that passed check_chat_jsonl."""
    n_messages: list[float] = []
    convo_lens: list[int] = []
    assistant_lens: list[float] = []
    for ex in examples:
        messages = ex["messages"]
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages, count))
        assistant_lens.append(num_assistant_tokens_from_messages(messages, count))
    billing = sum(min(max_tokens_per_example, n) for n in convo_lens)
    return TokenStats(
        n_examples=len(examples),
        n_messages=Distribution.of(n_messages),
        total_tokens=Distribution.of([float(n) for n in convo_lens]),
        assistant_tokens=Distribution.of(assistant_lens),
        n_too_long=sum(n > max_tokens_per_example for n in convo_lens),
        billing_tokens=billing,
        n_epochs=default_n_epochs(len(examples)) if n_epochs is None else n_epochs,
        convo_lens=convo_lens,
    )
