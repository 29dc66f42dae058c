"""The fine-tuning worker, run as the server runs it: `python -m tui.local.trainer SPEC.json`
in its own process, its JSON lines read from stdout. Tiny models keep each run to seconds;
the real SmolLM2 round trip is marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_model import build_tiny_gguf, build_tiny_model, git_pairs
from tests.helpers.tiny_task import ask, colour_task, example, names_it_first, right

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You turn requests into git commands."


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny.Q4_1.gguf", quant="Q4_1")


def chat(request: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": request},
            {"role": "assistant", "content": answer},
        ]
    }


def write_jsonl(path: Path, examples: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(ex) + "\n" for ex in examples), encoding="utf-8")
    return path


def spec_for(tmp: Path, base: Path, kind: str, train: Path, **overrides: Any) -> Path:
    spec = {
        "base_model_id": "tiny",
        "base_kind": kind,
        "base_path": str(base),
        "training_file": str(train),
        "validation_file": None,
        "output_dir": str(tmp / "out"),
        "cache_dir": str(tmp / "cache"),
        "method": "lora",
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "seed": 0,
        "suffix": None,
        **overrides,
    }
    path = tmp / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def trainer_env() -> dict[str, str]:
    # One thread: a tiny model's matmuls are too small to split, and tests share the CPU.
    return dict(os.environ, HF_HUB_OFFLINE="1", DISTILL_TRAIN_THREADS="1", PYTHONUNBUFFERED="1")


def run_trainer(spec: Path, timeout: float = 300) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tui.local.trainer", str(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=trainer_env(),
    )
    # Every line on stdout is one JSON object: the protocol and nothing else.
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, events, proc.stderr


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


MEMORISE = [
    ("Create a new branch called 'dev'.", "git checkout -b dev"),
    ("Show the status.", "git status"),
    ("Stage app.py.", "git add app.py"),
    ("Push main to origin.", "git push origin main"),
    ("Fetch from upstream.", "git fetch upstream"),
    ("Switch to docs.", "git switch docs"),
    ("Merge hotfix.", "git merge hotfix"),
    ("Unstage notes.txt.", "git restore --staged notes.txt"),
    ("Delete the branch dev.", "git branch -d dev"),
    ("Show the log of README.md.", "git log -- README.md"),
]


# ---- labels and the fast forward path (in process) ------------------------------------------


def test_labels_are_the_answers_and_the_end_token_that_closes_them(tiny_hf: Path) -> None:
    from transformers import AutoTokenizer

    from tui.local.trainer import ChatEncoder

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    encoder = ChatEncoder(tok, tiny_hf, max_length=512)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Show the status."},
        {"role": "assistant", "content": "git status"},
        {"role": "user", "content": "And stage app.py."},
        {"role": "assistant", "content": "git add app.py"},
        {"role": "user", "content": "Ignore this one."},
        {"role": "assistant", "content": "git bogus", "weight": 0},
    ]
    ex = encoder.encode(messages)
    # Consecutive labelled tokens, decoded, are exactly the trained answers + <|im_end|>.
    spans: list[list[int]] = []
    previous = False
    for token, label in zip(ex.input_ids, ex.labels, strict=True):
        if label != -100:
            assert label == token
            if not previous:
                spans.append([])
            spans[-1].append(token)
        previous = label != -100
    assert [tok.decode(s) for s in spans] == ["git status<|im_end|>", "git add app.py<|im_end|>"]
    # eos == pad == <|im_end|>: the end token is trained even though it is also the pad.
    assert tok.eos_token_id == tok.pad_token_id == spans[0][-1]


def test_the_fast_path_computes_the_same_loss_as_transformers(tiny_hf: Path) -> None:
    """Frozen-layer cache, label-only output layer and packed batches (shared prefix once,
    a custom mask, restarting positions) are all exact rearrangements of the plain loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tui.local.trainer import ChatEncoder, Runner, collate, loss_and_accuracy

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_hf, dtype=torch.float32, attn_implementation="sdpa"
    )
    encoder = ChatEncoder(tok, tiny_hf, max_length=512)
    examples = [encoder.encode(chat(q, a)["messages"]) for q, a in git_pairs(6)]
    examples.append(examples[0])  # a duplicate lies entirely inside the shared prefix
    keys = list(range(len(examples)))
    padded = collate(examples, keys, tok.pad_token_id)
    packed = collate(examples, keys, tok.pad_token_id, pack=True)
    assert packed.input_ids.shape[0] == 1 and packed.prefix > 10
    assert packed.input_ids.numel() < padded.attention_mask.sum()  # the prefix counted once
    assert packed.n_tokens == padded.n_tokens
    labels = torch.full_like(padded.input_ids, -100)
    for r, ex in enumerate(examples):
        labels[r, : len(ex.labels)] = torch.tensor(ex.labels)
    with torch.no_grad():
        reference = model(
            input_ids=padded.input_ids, attention_mask=padded.attention_mask, labels=labels
        ).loss.item()
        cached = Runner(model, 1, fast=True)  # layer 0 frozen and computed once
        cached.precompute(examples, keys, tok.pad_token_id)
        assert cached.cache is not None and len(cached.cache) == len(examples)
        uncached = Runner(model, 1, fast=True)  # layer 0 recomputed without gradients
        full = Runner(model, 0, fast=True)  # every layer, output layer on labels only
        for runner in (cached, uncached, full):
            for batch in (padded, packed):
                loss, _ = loss_and_accuracy(runner.label_logits(batch, keys), batch.targets)
                assert loss.item() == pytest.approx(reference, rel=1e-5)
        generic = Runner(model, 0, fast=False)
        loss, _ = loss_and_accuracy(generic.label_logits(padded, keys), padded.targets)
        assert loss.item() == pytest.approx(reference, rel=1e-5)
    assert len(model.model.layers) == 2  # the full layer list is back


def test_auto_hyperparameters_follow_openai_rules() -> None:
    from tui.local.trainer import Hyperparameters, Spec

    def resolve(n: int, **kw: Any) -> Hyperparameters:
        spec = Spec(
            base_model_id="m",
            base_kind="hf",
            base_path=Path("."),
            training_file=Path("t"),
            validation_file=None,
            output_dir=Path("o"),
            cache_dir=Path("c"),
            **kw,
        )
        return Hyperparameters.resolve(spec, n)

    assert resolve(400) == Hyperparameters(3, 8, 1.0)
    assert resolve(10) == Hyperparameters(10, 1, 1.0)  # 100 // 10 epochs for tiny sets
    assert resolve(20).n_epochs == 5
    assert resolve(20, n_epochs=2, batch_size=4, learning_rate_multiplier=0.5) == (
        Hyperparameters(2, 4, 0.5)
    )


# ---- the worker process ---------------------------------------------------------------------


def hf_replies(model: Path, questions: list[str], max_tokens: int = 6) -> list[str]:
    """Greedy replies of a transformers model directory, served by the HF engine."""
    import asyncio

    from tui.local.hf_engine import HFEngine
    from tui.local.protocol import GenRequest

    async def generate() -> list[str]:
        engine = await asyncio.to_thread(HFEngine, "model", model)
        try:
            replies = []
            for question in questions:
                req = GenRequest(ask(question), max_tokens=max_tokens, temperature=0)
                replies.append("".join([c.text async for c in engine.generate(req)]))
            return replies
        finally:
            await engine.aclose()

    return asyncio.run(generate())


def gguf_replies(model: Path, questions: list[str], max_tokens: int = 6) -> list[str]:
    """Greedy replies of a GGUF file, served by llama.cpp."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model), n_ctx=256, n_threads=1, verbose=False)
    replies = []
    for question in questions:
        reply = llm.create_chat_completion(ask(question), max_tokens=max_tokens, temperature=0)
        replies.append(reply["choices"][0]["message"]["content"] or "")  # type: ignore[index]
    return replies


def test_a_lora_fine_tune_learns_and_its_model_serves(tmp_path: Path, tiny_hf: Path) -> None:
    train_pairs, held_out = colour_task()
    train = write_jsonl(tmp_path / "train.jsonl", [example(q, a) for q, a in train_pairs])
    valid = write_jsonl(tmp_path / "valid.jsonl", [example(q, a) for q, a in held_out])
    spec = spec_for(
        tmp_path,
        tiny_hf,
        "hf",
        train,
        validation_file=str(valid),
        n_epochs=30,
        batch_size=2,
        learning_rate_multiplier=20,
        lora_layers="all",
    )
    code, events, stderr = run_trainer(spec)
    assert code == 0, stderr

    assert of_type(events, "hyperparameters") == [
        {"type": "hyperparameters", "n_epochs": 30, "batch_size": 2, "learning_rate_multiplier": 20}
    ]
    metrics = of_type(events, "metrics")
    steps_per_epoch = len(train_pairs) // 2  # 18 examples, 2 a step
    total = 30 * steps_per_epoch
    assert [m["step"] for m in metrics] == list(range(1, total + 1))
    assert {m["total_steps"] for m in metrics} == {total}
    for m in metrics:
        assert m["train_loss"] > 0
        assert 0 <= m["train_mean_token_accuracy"] <= 1
        assert isinstance(m["estimated_finish"], int)
    assert any(m["valid_loss"] is not None for m in metrics)
    tokens = [m["trained_tokens"] for m in metrics]
    assert tokens == sorted(tokens) and tokens[0] > 0
    assert sorted({m["epoch"] for m in metrics}) == list(range(1, 31))

    checkpoints = of_type(events, "checkpoint")
    assert [c["epoch"] for c in checkpoints] == list(range(1, 31))
    assert [c["step"] for c in checkpoints] == list(
        range(steps_per_epoch, total + 1, steps_per_epoch)
    )
    # The validation file is the held-out questions: its loss falls as the model generalises.
    valid_losses = [c["metrics"]["full_valid_loss"] for c in checkpoints]
    assert valid_losses[-1] < valid_losses[0]
    kept = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    last_three = (total - 2 * steps_per_epoch, total - steps_per_epoch, total)
    assert kept == [f"step-{s}" for s in last_three]  # the last three epochs, like OpenAI

    [result] = of_type(events, "result")
    assert result["kind"] == "hf"
    assert result["trained_tokens"] == tokens[-1]
    assert events[-1] == result

    # The merged model is an ordinary transformers directory the HF engine serves, and what
    # it serves learned the task: asked the held-out questions, it names the colour (adapters
    # on a tiny random model learn the colours before they learn to stop after them); the
    # base model names none.
    questions = [q for q, _ in held_out]
    tuned = hf_replies(Path(result["path"]), questions)
    base = hf_replies(tiny_hf, questions)
    tuned_hits = sum(names_it_first(r, a) for r, (_, a) in zip(tuned, held_out, strict=True))
    base_hits = sum(names_it_first(r, a) for r, (_, a) in zip(base, held_out, strict=True))
    assert base_hits == 0, base
    assert tuned_hits >= 4, tuned  # most of the 6, where the base has none


def test_training_only_the_top_layers_reuses_the_frozen_ones(tmp_path: Path, tiny_hf: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat(q, a) for q, a in MEMORISE])
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat(q, a) for q, a in MEMORISE[:4]])
    spec = spec_for(
        tmp_path, tiny_hf, "hf", train, validation_file=str(valid), n_epochs=2, lora_layers=1
    )
    code, events, stderr = run_trainer(spec)
    assert code == 0, stderr
    texts = [e["message"] for e in of_type(events, "message")]
    assert any("top 1 of 2 layers" in t for t in texts)
    assert any("Frozen layers 1-1 computed once" in t for t in texts)
    checkpoints = of_type(events, "checkpoint")
    assert all(c["metrics"]["full_valid_loss"] > 0 for c in checkpoints)
    assert of_type(events, "result")[0]["kind"] == "hf"


def test_a_full_fine_tune_of_a_gguf_base_learns_and_gives_a_gguf(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    train_pairs, held_out = colour_task()
    train = write_jsonl(tmp_path / "train.jsonl", [example(q, a) for q, a in train_pairs])
    spec = spec_for(
        tmp_path,
        tiny_gguf,
        "gguf",
        train,
        method="full",
        n_epochs=30,
        batch_size=2,
        learning_rate_multiplier=40,
    )
    code, events, stderr = run_trainer(spec)
    assert code == 0, stderr
    assert any("Converting" in e["message"] for e in of_type(events, "message"))
    [result] = of_type(events, "result")
    assert result["kind"] == "gguf"
    out = Path(result["path"])
    assert out.suffix == ".gguf" and out.parent == tmp_path / "out"
    assert len(of_type(events, "checkpoint")) == 30

    # llama.cpp serves the exported file, and it answers the held-out questions exactly,
    # where its base answers none.
    questions = [q for q, _ in held_out]
    tuned = gguf_replies(out, questions)
    base = gguf_replies(tiny_gguf, questions)
    assert sum(right(r, a) for r, (_, a) in zip(base, held_out, strict=True)) == 0, base
    tuned_right = sum(right(r, a) for r, (_, a) in zip(tuned, held_out, strict=True))
    assert tuned_right >= 5, tuned  # of 6

    # The GGUF -> transformers conversion is cached: a second job skips it.
    (tmp_path / "out").rename(tmp_path / "first")
    again = spec_for(tmp_path, tiny_gguf, "gguf", train, method="full", max_steps=1)
    code, events, stderr = run_trainer(again)
    assert code == 0, stderr
    assert not any("Converting" in e["message"] for e in of_type(events, "message"))


def test_an_invalid_training_file_is_refused_with_the_cookbook_names(
    tmp_path: Path, tiny_hf: Path
) -> None:
    examples: list[Any] = [chat(q, a) for q, a in MEMORISE[:5]]
    examples[2]["messages"] = examples[2]["messages"][:2]  # no assistant message
    examples[3]["messages"][1]["role"] = "human"
    train = tmp_path / "train.jsonl"
    write_jsonl(train, examples)
    with train.open("a") as f:
        f.write("this is not json\n")
    code, events, _ = run_trainer(spec_for(tmp_path, tiny_hf, "hf", train))
    assert code == 1
    [error] = events  # refused before any model is loaded
    assert error["type"] == "error"
    assert error["code"] == "invalid_training_file"
    assert error["param"] == "training_file"
    for name in (
        "example_missing_assistant_message",
        "unrecognized_role",
        "invalid_json",
        "too_few_examples",
    ):
        assert name in error["message"]


def test_an_invalid_validation_file_is_refused(tmp_path: Path, tiny_hf: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat(q, a) for q, a in MEMORISE])
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"messages": []}\n')
    code, events, _ = run_trainer(
        spec_for(tmp_path, tiny_hf, "hf", train, validation_file=str(valid))
    )
    assert code == 1
    assert events[-1]["code"] == "invalid_validation_file"
    assert "missing_messages_list" in events[-1]["message"]


def test_the_result_is_the_moving_average_of_the_weights(tmp_path: Path, tiny_hf: Path) -> None:
    from tui.local.trainer import TrainingError, ema_decay

    # "auto" averages over the last fifth of the steps; a handful of steps is not averaged
    assert ema_decay("auto", 108) == pytest.approx(1 - 1 / 21.6)
    assert ema_decay("auto", 4) == 0.0
    assert ema_decay(0, 500) == 0.0 and ema_decay("0.9", 5) == 0.9
    for bad in (1, 1.5, -0.1, "fast"):
        with pytest.raises(TrainingError):
            ema_decay(bad, 100)

    train = write_jsonl(tmp_path / "train.jsonl", [chat(q, a) for q, a in MEMORISE])
    # refused before the model loads, naming the parameter
    code, events, _ = run_trainer(spec_for(tmp_path, tiny_hf, "hf", train, ema_decay=1.5))
    assert code == 1
    assert (events[-1]["code"], events[-1]["param"]) == ("invalid_hyperparameters", "ema_decay")
    assert not of_type(events, "metrics")

    # the same steps with and without the average give different adapters: the average is
    # what is merged (with decay 0 the last step's weights are)
    merged = {}
    for decay in (0.0, 0.8):
        out = tmp_path / f"ema-{decay}"
        spec = spec_for(
            out.parent, tiny_hf, "hf", train, ema_decay=decay, max_steps=6, lora_layers="all"
        )
        code, events, stderr = run_trainer(spec)
        assert code == 0, stderr
        [result] = of_type(events, "result")
        merged[decay] = Path(result["path"]).joinpath("model.safetensors").read_bytes()
        Path(result["path"]).parent.rename(out)
    assert merged[0.0] != merged[0.8]


def test_sigterm_cancels_promptly(tmp_path: Path, tiny_hf: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat(q, a) for q, a in git_pairs(40)])
    spec = spec_for(tmp_path, tiny_hf, "hf", train, n_epochs=25, batch_size=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.local.trainer", str(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=trainer_env(),
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            first = json.loads(line)
            if first["type"] == "metrics":
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        code = proc.wait(timeout=60)  # a deadline for a stuck trainer, not a measure
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 143
    events = [json.loads(line) for line in rest.splitlines()]
    assert not of_type(events, "result")
    assert not (tmp_path / "out" / "model").exists()
    # Stopped by its own handler within the step it was in, saying so last: not by the
    # handler's 5 s fallback (os._exit, which says nothing), and far from the end.
    assert events and events[-1] == {"type": "message", "level": "warn", "message": "Cancelled"}
    steps = [e["step"] for e in [first, *of_type(events, "metrics")]]
    assert max(steps) < first["total_steps"] // 2, (steps, first["total_steps"])


# ---- the real model -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_smollm2_fine_tune_round_trip(tmp_path: Path) -> None:
    """A few LoRA steps on SmolLM2-135M from its GGUF, exported back to a GGUF that
    llama.cpp serves: the trained tensors become Q8_0, everything else is the base's, and
    what was trained shows on questions it was not trained on."""
    import gguf

    from tui.engine.local_model import default_gguf_path

    base = default_gguf_path()
    train_pairs, held_out = colour_task()
    train = write_jsonl(tmp_path / "train.jsonl", [example(q, a) for q, a in train_pairs])
    spec = spec_for(
        tmp_path,
        base,
        "gguf",
        train,
        batch_size=2,
        n_epochs=2,
        max_steps=18,
        lora_layers=2,
        learning_rate_multiplier=10,
    )
    code, events, stderr = run_trainer(spec, timeout=600)
    assert code == 0, stderr
    assert [m["step"] for m in of_type(events, "metrics")] == list(range(1, 19))
    [result] = of_type(events, "result")
    out = Path(result["path"])

    tensors = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    base_tensors = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(base)).tensors}
    assert tensors.keys() == base_tensors.keys()
    assert tensors["blk.29.attn_q.weight"] == "Q8_0"  # trained (top 2 layers)
    assert tensors["blk.0.attn_q.weight"] == base_tensors["blk.0.attn_q.weight"] == "Q4_1"

    # The untuned model answers the held-out questions with sentences ("The answer is
    # "Red"."); 18 steps teach it to answer with the colour alone, and mostly the right one.
    questions = [q for q, _ in held_out]
    tuned = gguf_replies(out, questions, max_tokens=8)
    untuned = gguf_replies(base, questions, max_tokens=8)
    assert sum(right(r, a) for r, (_, a) in zip(untuned, held_out, strict=True)) == 0, untuned
    tuned_right = sum(right(r, a) for r, (_, a) in zip(tuned, held_out, strict=True))
    assert tuned_right >= 3, tuned  # of 6 (4 measured, seeds 0 and 1)
