"""The cookbook's format checks for chat fine-tuning files, one error name at a time."""

from __future__ import annotations

import json

import pytest

from tui.engine.training_data import (
    ERROR_NAMES,
    Distribution,
    check_chat_jsonl,
    default_n_epochs,
    load_chat_jsonl,
    num_assistant_tokens_from_messages,
    num_tokens_from_messages,
    token_stats,
)


def good(i: int = 0) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Turn requests into git commands."},
            {"role": "user", "content": f"Create a branch called b{i}."},
            {"role": "assistant", "content": f"git checkout -b b{i}"},
        ]
    }


def jsonl(examples: list) -> str:
    return "".join(json.dumps(ex) + "\n" for ex in examples)


def with_bad(bad: object, n_good: int = 12, at: int = 3) -> str:
    """A file of good examples with ``bad`` as line ``at + 1``."""
    examples: list = [good(i) for i in range(n_good)]
    examples.insert(at, bad)
    return jsonl(examples)


def test_a_good_file_passes() -> None:
    report = check_chat_jsonl(jsonl([good(i) for i in range(10)]))
    assert report.ok()
    assert report.n_examples == 10
    assert report.errors == {}
    assert report.warnings == []
    assert "no format errors" in report.summary()


BAD_EXAMPLES = {
    "data_type": ["a string, not an object"],
    "missing_messages_list": {"prompt": "x", "completion": "y"},
    "message_missing_key": {
        "messages": [{"role": "user"}, {"role": "assistant", "content": "git status"}]
    },
    "message_unrecognized_key": {
        "messages": [
            {"role": "user", "content": "hi", "mood": "happy"},
            {"role": "assistant", "content": "git status"},
        ]
    },
    "unrecognized_role": {
        "messages": [
            {"role": "human", "content": "Show the status."},
            {"role": "assistant", "content": "git status"},
        ]
    },
    "missing_content": {
        "messages": [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "git status"},
        ]
    },
    "example_missing_assistant_message": {
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    },
}


@pytest.mark.parametrize("name", sorted(BAD_EXAMPLES))
def test_each_cookbook_error_is_named_with_its_line(name: str) -> None:
    report = check_chat_jsonl(with_bad(BAD_EXAMPLES[name]))
    assert not report.ok()
    assert name in report.errors
    assert report.first_error_line[name] == 4
    assert name in report.summary()
    assert "line 4" in report.summary()


def test_every_error_name_is_covered() -> None:
    covered = set(BAD_EXAMPLES) | {"invalid_json", "too_few_examples"}
    assert covered == set(ERROR_NAMES)


def test_a_non_json_line_is_invalid_json() -> None:
    text = with_bad("placeholder").replace('"placeholder"', "{not json")
    report = check_chat_jsonl(text)
    assert report.errors == {"invalid_json": 1}
    assert report.first_error_line == {"invalid_json": 4}
    assert report.n_examples == 13


def test_a_missing_message_key_also_counts_missing_content() -> None:
    # As in the cookbook: a message without "content" has no content either.
    report = check_chat_jsonl(with_bad(BAD_EXAMPLES["message_missing_key"]))
    assert report.errors == {"message_missing_key": 1, "missing_content": 1}


def test_message_level_errors_count_per_message() -> None:
    bad = {
        "messages": [
            {"role": "robot", "content": "a"},
            {"role": "robot", "content": "b"},
            {"role": "assistant", "content": "git status"},
        ]
    }
    assert check_chat_jsonl(with_bad(bad)).errors == {"unrecognized_role": 2}


def test_non_string_content_is_missing_content() -> None:
    bad = {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]}
    assert check_chat_jsonl(with_bad(bad)).errors == {"missing_content": 1}


def test_empty_messages_list_is_missing_messages_list() -> None:
    assert check_chat_jsonl(with_bad({"messages": []})).errors == {"missing_messages_list": 1}


def test_an_empty_file_has_too_few_examples() -> None:
    report = check_chat_jsonl("")
    assert report.n_examples == 0
    assert report.errors == {"too_few_examples": 1}
    assert "has 0 example(s), but must have at least 10" in report.summary()


def test_fewer_than_ten_examples() -> None:
    report = check_chat_jsonl(jsonl([good(i) for i in range(9)]))
    assert not report.ok()
    assert report.errors == {"too_few_examples": 1}
    assert check_chat_jsonl(jsonl([good(i) for i in range(9)]), min_examples=1).ok()


def test_blank_lines_are_not_examples() -> None:
    text = "\n" + jsonl([good(i) for i in range(10)]).replace("\n", "\n\n") + "   \n"
    report = check_chat_jsonl(text)
    assert report.ok() and report.n_examples == 10
    assert len(load_chat_jsonl(text)) == 10


def test_missing_system_and_user_are_warnings_not_errors() -> None:
    no_system = {"messages": good()["messages"][1:]}
    no_user = {"messages": [good()["messages"][0], good()["messages"][2]]}
    report = check_chat_jsonl(jsonl([good(i) for i in range(10)] + [no_system, no_user]))
    assert report.ok()
    assert report.n_missing_system == 1 and report.n_missing_user == 1
    assert report.warnings == [
        "1 example(s) missing a system message",
        "1 example(s) missing a user message",
    ]


def test_weight_and_name_keys_are_recognised() -> None:
    ex = good()
    ex["messages"][2]["weight"] = 0
    ex["messages"][1]["name"] = "alice"
    assert check_chat_jsonl(jsonl([ex] * 10)).ok()


def count_words(text: str) -> int:
    return len(text.split())


def test_token_counts_follow_the_cookbook() -> None:
    messages = good()["messages"]
    # 3 per message + content tokens + role tokens + 3 for the reply's priming.
    words = sum(count_words(m["content"]) + count_words(m["role"]) for m in messages)
    assert num_tokens_from_messages(messages, count_words) == 3 * 3 + words + 3
    assert num_assistant_tokens_from_messages(messages, count_words) == 4


def test_token_stats_and_default_epochs() -> None:
    examples = [good(i) for i in range(20)]
    stats = token_stats(examples, count_words)
    assert stats.n_examples == 20
    assert stats.n_messages.min == stats.n_messages.max == 3
    assert stats.assistant_tokens.mean == 4
    assert stats.n_too_long == 0
    assert stats.n_epochs == 5  # 100 // 20: small sets get more epochs
    assert stats.trained_tokens == stats.billing_tokens * 5
    assert token_stats(examples, count_words, max_tokens_per_example=5).n_too_long == 20


def test_default_n_epochs() -> None:
    assert default_n_epochs(10) == 10
    assert default_n_epochs(3) == 25  # capped
    assert default_n_epochs(34) == 3  # 34 * 3 >= 100
    assert default_n_epochs(400) == 3
    assert default_n_epochs(10_000) == 2  # 25000 // 10000
    assert default_n_epochs(100_000) == 1


def test_distribution_quantiles_match_numpy_linear() -> None:
    dist = Distribution.of([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert (dist.min, dist.max, dist.mean, dist.median) == (1, 10, 5.5, 5.5)
    assert dist.p10 == pytest.approx(1.9)
    assert dist.p90 == pytest.approx(9.1)
    assert Distribution.of([]).mean == 0
