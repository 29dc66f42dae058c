"""The llama-cpp-python release pyproject pins is the one installed, and tui/local/models.py's
low-level path works on it: the packaged SmolLM2 GGUF loads and two sequences decode in the
same batches (their KV cells shared, then apart), answering as each does alone.

models.py calls llama.cpp's C functions through llama-cpp-python's ctypes layer (batches,
memory/KV sequence calls, sampler chains); a release that renames or reshapes one of them
breaks the local backend at run time, not at install. So the version is pinned with `==`,
and bumping it means running this file (and tests/local/) first."""

from __future__ import annotations

import asyncio
import tomllib
from importlib.metadata import version

import pytest

from tests.helpers.deps import ROOT, requirement_name
from tui.engine.local_model import LOCAL_DEFAULT_MODEL, default_gguf_path
from tui.local.models import LlamaEngine
from tui.local.protocol import GenChunk, GenRequest

pytestmark = pytest.mark.slow

GIT = [
    {"role": "system", "content": "You turn requests into one git command."},
    {"role": "user", "content": "Create a new branch called 'feature-login'."},
]
OTHER = [{"role": "user", "content": "What is 2+2? Answer with one number."}]


def test_the_installed_release_is_the_pinned_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (pin,) = [
        r for r in project["optional-dependencies"]["local"]
        if requirement_name(r) == "llama-cpp-python"
    ]  # fmt: skip
    assert "==" in pin, f"{pin}: models.py needs an exact pin"
    assert version("llama-cpp-python") == pin.split("==")[1].strip()


async def _text(stream: object) -> tuple[str, str | None, int]:
    chunks: list[GenChunk] = [c async for c in stream]  # type: ignore[attr-defined]
    last = chunks[-1]
    return "".join(c.text for c in chunks), last.finish_reason, last.completion_tokens


async def test_two_sequences_batch_through_the_low_level_api() -> None:
    engine = LlamaEngine(
        LOCAL_DEFAULT_MODEL, default_gguf_path(), n_parallel=2, context_length=256, max_queue=4
    )
    try:
        git = GenRequest(GIT, max_tokens=8, temperature=0.0)
        other = GenRequest(OTHER, max_tokens=8, temperature=0.0)
        alone_git = await _text(engine.generate(git))
        alone_other = await _text(engine.generate(other))
        assert alone_git[0].strip() and alone_other[0].strip()
        assert alone_git[2] >= 1 and alone_git[1] in ("stop", "length")

        # Two choices of one prompt are admitted together: the second copies the first's
        # prompt cells (llama_memory_seq_cp), then both decode in every step.
        prefilled = engine.stats()["prefilled_tokens"]
        pair = engine.generate_choices(git, 2)
        assert engine.stats()["waiting"] + engine.stats()["active"] == 2
        both = await asyncio.gather(*(_text(s) for s in pair))
        assert both == [alone_git, alone_git]
        # The prompt was cached from the solo run or computed once, not twice.
        assert engine.stats()["prefilled_tokens"] - prefilled < len(engine.prompt_tokens(GIT))

        # Two different prompts at once: each answers as it did alone.
        mixed = await asyncio.gather(_text(engine.generate(git)), _text(engine.generate(other)))
        assert mixed == [alone_git, alone_other]
    finally:
        await engine.aclose()
