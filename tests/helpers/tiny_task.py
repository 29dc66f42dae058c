"""A task a tiny model can learn in seconds, with held-out items to show it did.

The colour of a thing, asked four ways: six things × four questions. Each thing is held out
under one question and trained under the other three, so a held-out item is a combination
never seen in training of a thing and a question that both were. A model that memorised the
training items but learned nothing gets none of them; one that learned "the answer is the
thing's colour, whatever the question" gets them all. A randomly initialised model answers
none of them, so whatever the fine-tuned model answers right, it learned.
"""

from __future__ import annotations

from typing import Any

SYSTEM = "Answer with one word."
COLOURS = {
    "apple": "red",
    "sky": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "sun": "yellow",
}
QUESTIONS = (
    "What colour is the {}?",
    "Tell me the colour of the {}.",
    "Which colour has the {}?",
    "Name the colour of the {}.",
)


def colour_task() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held out) lists of (question, answer): 18 and 6."""
    train: list[tuple[str, str]] = []
    held_out: list[tuple[str, str]] = []
    for q, question in enumerate(QUESTIONS):
        for t, (thing, colour) in enumerate(COLOURS.items()):
            pair = (question.format(thing), colour)
            (held_out if t % len(QUESTIONS) == q else train).append(pair)
    return train, held_out


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def example(question: str, answer: str) -> dict[str, Any]:
    """A chat training example, as a fine-tuning file holds it."""
    return {"messages": [*ask(question), {"role": "assistant", "content": answer}]}


def right(reply: str, answer: str) -> bool:
    """The reply is the answer (surrounding space aside)."""
    return reply.strip() == answer


def names_it_first(reply: str, answer: str) -> bool:
    """The reply starts with the answer (what follows it aside)."""
    return reply.strip().startswith(answer)
