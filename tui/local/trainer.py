"""The fine-tuning worker: ``python -m tui.local.trainer SPEC.json``.

It runs in its own process so the server stays responsive, prints one JSON object per line on
stdout and nothing else there (libraries' chatter goes to stderr). Exit code 0 on success,
1 after an error event, 143 after SIGTERM (cancel; the process exits within seconds).

SPEC.json: base_model_id, base_kind ("gguf" | "hf"), base_path, training_file,
validation_file (or null), output_dir, cache_dir (where a GGUF base's transformers copy is
kept), method ("lora" | "full"), n_epochs / batch_size / learning_rate_multiplier (number or
"auto"), seed, suffix; optional extras: lora_layers (N top layers | "all" | "auto"),
max_steps, export_type (type of trained tensors in an exported GGUF, default "Q8_0"),
ema_decay (the weights' moving average the result is, "auto" | 0 for the last step's | 0..1).

Events, in order:
    {"type": "message", "level": "info"|"warn"|"error", "message": ...}
    {"type": "hyperparameters", "n_epochs", "batch_size", "learning_rate_multiplier"}
    {"type": "metrics", "step", "total_steps", "epoch", "train_loss",
     "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy" (null without a
     validation file; one validation batch every ~5% of the steps), "trained_tokens",
     "estimated_finish" (unix time), "step_seconds", "step_cpu_seconds"}
    {"type": "checkpoint", "step", "epoch", "metrics": {the metrics' names, plus
     full_valid_loss / full_valid_mean_token_accuracy over the whole validation file},
     "path": the epoch's LoRA adapter directory (the last three are kept) or null}
    {"type": "result", "kind": "gguf"|"hf", "path": model file or directory, "trained_tokens"}
    {"type": "error", "code": "invalid_training_file"|"invalid_validation_file"|
     "invalid_hyperparameters"|"invalid_method"|"unsupported_model"|"training_failed",
     "message", "param"}

Supervised training on a chat JSONL: LoRA through peft (default: r 16, alpha 32 on
q/k/v/o/gate/up/down) or a full fine-tune, with the loss on assistant tokens only. Labels are
built explicitly: for SmolLM2 eos == pad == <|im_end|>, so masking by pad would also mask the
<|im_end|> that ends each answer, and the model would never learn to stop.

Where the time goes, and what this does about it (SmolLM2-135M on a 2-core CPU; the figures
are in bench/finetune.py's output):

- The output layer. 49,152 vocabulary rows x 576 is a fifth of the model's per-token work,
  and only the ~10 answer tokens of a ~60-token example have a label. The decoder runs to
  hidden states, the label positions are gathered, and the output layer runs on those only.
- Padding and the shared prompt. A batch is packed into one row: the prefix its examples
  share (the system prompt, in a distillation set the same for every example, ~40% of the
  tokens of a short git example) once, then each example's own tokens, with a mask that lets
  each example see the prefix and itself only and positions that restart after the prefix.
  No padding, and the prompt is computed once per batch instead of once per example. (Long
  batches, over PACK_LIMIT tokens, fall back to padding: a packed row's attention grows with
  its length squared. Batches are cut from length-sorted runs of examples so that padding,
  when used, stays small; the order of the batches is shuffled every epoch.)
- Which layers train. By default every layer gets adapters: on the git task, adapters on
  the top 15 of 30 layers halved the time per step but also the gain (6 instead of 12 of 54
  held-out requests answered exactly). ``lora_layers`` (a SPEC extra) trains only the top N
  layers; the layers below are then frozen, no gradient flows through them, and since their
  output for an example never changes it is computed once, before the first step, and
  reused in every epoch (and for the validation loss): each step runs only the trained
  layers.
- Threads: one per core (DISTILL_TRAIN_THREADS overrides), OpenMP told not to spin.
  Gradient checkpointing stays off: memory is not the limit here, time is.
- fp32 throughout: bf16 autocast made a step 10-20x slower on this CPU (AVX2, no native
  bf16 matmul).

The "auto" hyperparameters, and the measurements behind them (validation data carved from
the train split, never the eval split):

- method: "auto" is a full fine-tune up to FULL_AUTO_MAX_PARAMS, LoRA above. SmolLM2-135M,
  all 454 git references, 3 epochs, judged on hand-written requests outside the dataset:
  full ≈ 42 % exact (9 min), LoRA ≈ 30 % (6 min).
- epochs and learning rate: the cookbook's epochs rule (3, more for small sets) and lr 2e-4
  for a full fine-tune. On a 54-example pool judged on 60 held-out train requests, 3 epochs
  at lr 2e-5, 3 at 8e-5 and 8 at 2e-5 all answered 8 of 60 exactly (13.3 %): the extra
  epochs cost 2.8x the time for nothing measurable. On 303 train references (the same 60
  held-out requests) the learning rate matters: 2e-5 answered 10 and 14 exactly (seeds 0
  and 1), 8e-5 answered 16 and 21. A second probe, 283 train references judged on 80 other
  held-out train requests: 8e-5 answered 25 exactly (31 %), 2e-4 33 (41 %); on the
  43-example pool alone, 8e-5 answered 10 of the 80 and 2.4e-4 8 (a difference of two
  requests). So a full fine-tune's base rate is 2e-4, as LoRA's.
- method and epochs on small sets, the same 80 held-out train requests (exact answers):
  43 pool references, full 3 epochs 7, full 8 epochs 12, LoRA 3 epochs 13, LoRA 8 epochs 11;
  54 pool references, full 14, LoRA 13; 283 references, full 33, LoRA 17. LoRA wins nothing
  on large sets and nothing consistent on small ones (two to six requests, one seed each),
  so "auto" stays full with the cookbook's epochs.
- epochs on a small set again, over four training seeds (a 54-example pool; 80 held-out
  train requests and the 229 other train requests, exact answers summed over the seeds):
  3 epochs 30 and 96, 6 epochs 35 and 101 — within the spread one seed makes (5 to 11 of
  the 80 at 3 epochs, 8 to 10 at 6) for twice the time, so "auto" stays at 3.
- the result is the moving average of the weights over the last fifth of the steps
  (EMA_HORIZON; zero-started and bias-corrected, so no base weight leaks in). A full
  fine-tune on 283 train references, judged on a second draw of 80 held-out train requests
  (harder: a quarter of their answers are among the 283), answered 19, 18 and 19 exactly
  (seeds 0, 1, 2) with the last step's weights, 21, 25 and 23 with the average (on the
  eval split, one seed: 15 and 11 of 91, within a seed's spread); on the 54-example pool
  (the 80 and the 229 other train requests, four seeds) 126 and 123 exact answers without
  and with it. No loss on small sets, a gain on larger ones, for one extra copy of the
  trained weights and no extra time. Tried on the 283 references against the same 80 (one or
  two seeds each) and not adopted: lr 4e-4 18; 5 epochs 24; the set doubled with
  copy-swapped variants (the names, files and hashes an answer copies from its request
  swapped in both; 2 epochs for the same steps) 21 and 20. Later, the same 283 against the
  same 80 (the average on; 21, 25 and 23 with seeds 0, 1, 2), also not adopted: 300 extra
  examples made from the installed git's own usage text ("With git stash: include untracked
  files in stash." -> `git stash -u`) 24; NEFTune (uniform noise on the input embeddings,
  alpha 5) 27, 22 and 22; the three seeds' weights averaged into one model 24; attention
  dropout 0.1 while training 23, 21 and 26. Each is within the spread one seed makes. Nor
  the loss on the user turns' tokens too, weighted beside the answers' (instruction
  modelling, Shi et al. 2024; OpenAI's prompt_loss_weight; the system prompt excluded): the
  283 references against 80 held-out train requests (19 of their answers among the 283),
  seeds 0, 1, 2, weight 0 23, 21 and 27, weight 1 22, 22 and 23; the 54-example diverse pool
  (four seeds; the 80 and the 229 other train requests, summed) weight 0 40 and 104, 0.1 40
  and 99, 1 37 and 85. No gain, a loss on the 229 at weight 1, ~8 % more CPU per step. Nor
  freezing the token embeddings (and with them the tied output layer) in the full fine-tune:
  the same 283 against the same 80, seeds 0, 1, 2, 22, 20 and 26 against 23, 21 and 27, for
  ~9 % less CPU per step (4.67 against 5.15 CPU s). Nor retrieval-augmented fine-tuning
  (each example given its 4 nearest other training examples as prior turns, weight 0, and
  each judged request its 4 nearest training examples the same way): the 283 references
  against the same 80, seed 0, 19 against 23; the 54-example pool 7 of the 80 and 16 of the
  229 against 9 and 26; 2.5-3x the CPU per step (the demonstrations are 4/5 of the tokens).

Measured (SmolLM2-135M, 400 git examples of ~64 tokens, batch 8; the machine was shared,
load average 5-7 on its 2 cores, so CPU seconds per step are the comparable figure):

    LoRA on all layers, as before: full logits, random batches padded   ~6.0 CPU s/step
    + output layer on label positions only                              ~5.3
    + length-bucketed padding                                           ~4.3
    packed batches instead (the default)                                ~2.6
    adapters on the top 15 layers only, frozen layers cached, packed    ~1.4
    bf16 autocast                                                       10-20x slower

A whole default run (150 steps = 3 epochs), bench/finetune.py: at load ~2, 2.0 s/step
(2.6 CPU s), 71-121 s per epoch, 315 s of worker time in all (loading and the GGUF export
included), 2.6 GB peak; at load ~6, 5.8 s/step and 15 min. Held-out exact match went from
0/54 to 12/54 (the issue's goal: under 15 min; FINDINGS' starting point: 8 s/step).

A GGUF base is trained through an fp32 transformers copy of the GGUF, converted once per
base file into ``cache_dir`` (transformers parses the GGUF's vocabulary in Python, 40-65 s;
reloading the copy takes under a second). The result goes back into a GGUF
(tui/local/gguf_export.py) that llama.cpp serves as fast as the base. An HF base yields a
merged HF directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that finish a parallel region early sleep instead of spinning. The trainer
# shares the machine (the server's llama.cpp threads, other work); measured under load, the
# spinning doubled the trainer's CPU time per step for the same wall time, CPU taken from
# everything else.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tui.engine.training_data import check_chat_jsonl, default_n_epochs, load_chat_jsonl

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_R = 16
LORA_ALPHA = 32
# Full: 2e-4, measured on git references, 3 epochs, held-out train requests (see the
# docstring): on 283 references, 8e-5 answered 25 of 80 exactly, 2e-4 33 of 80.
BASE_LR = {"lora": 2e-4, "full": 2e-4}
# "auto" trains every weight of a model up to this size, and LoRA adapters above it. For
# SmolLM2-135M on the git task, trained on all 454 shipped references for 3 epochs and judged
# on hand-written requests outside the dataset (FINDINGS.md): full ≈ 42 % exact in 9 min,
# LoRA ≈ 30 % in 6 min. A full fine-tune of a model this small costs about what LoRA does
# (the optimizer state of 135 M parameters is ~1 GB), so "auto" takes the better one; above
# ~1 B parameters the optimizer state outgrows a laptop and LoRA is the safe default.
FULL_AUTO_MAX_PARAMS = 1_000_000_000
MAX_AUTO_BATCH = 8
# The result is the moving average of the weights over about this share of the steps (see
# the docstring for the figures).
EMA_HORIZON = 0.2
# The fraction of decoder layers (from the top) that get LoRA adapters by default (see the
# module's docstring for why all of them).
DEFAULT_LORA_LAYER_FRACTION = 1.0
# Frozen-layer outputs are kept in memory up to this many bytes; above it they are
# recomputed (without gradients) at every step.
CACHE_BUDGET_BYTES = 2 << 30
# Architectures whose decoder forward is plain enough (embeddings in, layers in order, a final
# norm, a linear output layer) for the frozen-layer cache and the label-only output layer.
FAST_PATH_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2")
# Longest packed row: a packed batch's attention costs its length squared.
PACK_LIMIT = 1024
CHECKPOINTS_KEPT = 3  # OpenAI keeps the last three epochs' checkpoints


class Cancelled(Exception):
    """SIGTERM: the job was cancelled."""


class TrainingError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


_stdout_lock = threading.Lock()
# Where protocol lines go: the real stdout, kept by main() before it sends sys.stdout (and so
# any library's print) to stderr.
_protocol = sys.stdout


def emit(obj: dict[str, Any]) -> None:
    with _stdout_lock:
        _protocol.write(json.dumps(obj) + "\n")
        _protocol.flush()


def message(text: str, level: str = "info") -> None:
    emit({"type": "message", "level": level, "message": text})


# ---- spec ---------------------------------------------------------------------------------


@dataclass
class Spec:
    base_model_id: str
    base_kind: str
    base_path: Path
    training_file: Path
    validation_file: Path | None
    output_dir: Path
    cache_dir: Path
    method: str = "auto"  # "auto": full for small models (FULL_AUTO_MAX_PARAMS), else LoRA
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    seed: int = 0
    suffix: str | None = None
    # Not in OpenAI's API; for benchmarks and tests.
    lora_layers: int | str = "auto"  # how many top decoder layers get adapters, or "all"
    max_steps: int | None = None
    export_type: str = "Q8_0"  # type of trained tensors in an exported GGUF
    # The result is the moving average of the weights (0: the last step's); "auto" averages
    # over the last EMA_HORIZON of the steps.
    ema_decay: float | str = "auto"

    @classmethod
    def load(cls, path: Path) -> Spec:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))

        def opt_path(key: str) -> Path | None:
            return Path(raw[key]) if raw.get(key) else None

        ema_decay(_auto(raw.get("ema_decay")), 1)  # refused here, before the model loads
        method = raw.get("method") or "auto"
        if method not in ("auto", "lora", "full"):
            raise TrainingError("invalid_method", f"unknown method {method!r}", "method")
        return cls(
            base_model_id=raw["base_model_id"],
            base_kind=raw.get("base_kind", "hf"),
            base_path=Path(raw["base_path"]),
            training_file=Path(raw["training_file"]),
            validation_file=opt_path("validation_file"),
            output_dir=Path(raw["output_dir"]),
            cache_dir=Path(raw.get("cache_dir") or Path(raw["output_dir"]) / "cache"),
            method=method,
            n_epochs=_auto(raw.get("n_epochs")),
            batch_size=_auto(raw.get("batch_size")),
            learning_rate_multiplier=_auto(raw.get("learning_rate_multiplier")),
            seed=int(raw.get("seed") or 0),
            suffix=raw.get("suffix"),
            lora_layers=_auto(raw.get("lora_layers")),
            max_steps=raw.get("max_steps"),
            export_type=raw.get("export_type") or "Q8_0",
            ema_decay=_auto(raw.get("ema_decay")),
        )


def _auto(value: Any) -> Any:
    return "auto" if value is None else value


@dataclass
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    @classmethod
    def resolve(cls, spec: Spec, n_examples: int) -> Hyperparameters:
        n_epochs = default_n_epochs(n_examples) if spec.n_epochs == "auto" else int(spec.n_epochs)
        if spec.batch_size == "auto":
            # OpenAI's auto batch is ~0.2% of the examples; on a CPU with hundreds of
            # examples that is 1, which wastes the matmuls' width. 8 keeps the step efficient;
            # small sets get smaller batches so an epoch still has ~8 steps.
            batch_size = max(1, min(MAX_AUTO_BATCH, n_examples // 8))
        else:
            batch_size = int(spec.batch_size)
        lrm = (
            1.0 if spec.learning_rate_multiplier == "auto" else float(spec.learning_rate_multiplier)
        )
        for name, value in (("n_epochs", n_epochs), ("batch_size", batch_size)):
            if value < 1:
                raise TrainingError("invalid_hyperparameters", f"{name} must be >= 1", name)
        if not lrm > 0:
            raise TrainingError(
                "invalid_hyperparameters",
                "learning_rate_multiplier must be > 0",
                "learning_rate_multiplier",
            )
        return cls(n_epochs, batch_size, lrm)


# ---- data -----------------------------------------------------------------------------------


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken

    @property
    def n_labels(self) -> int:
        return sum(1 for t in self.labels if t != -100)


def read_examples(path: Path, param: str, min_examples: int) -> list[dict[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainingError(
            f"invalid_{param}", f"The {param.replace('_', ' ')} is not UTF-8 text.", param
        ) from exc
    except OSError as exc:
        raise TrainingError(f"invalid_{param}", f"Cannot read {path}: {exc}", param) from exc
    report = check_chat_jsonl(text, min_examples=min_examples)
    if not report.ok():
        raise TrainingError(f"invalid_{param}", report.summary(), param)
    for warning in report.warnings:
        message(f"{param}: {warning}", "warn")
    return load_chat_jsonl(text)


class ChatEncoder:
    """Messages -> (input ids, labels), the labels on every trained assistant turn: its
    content and the end-of-turn token that closes it (that token teaches the model to stop);
    not the template's header before it nor the newline after it."""

    def __init__(self, tokenizer: Any, model_dir: Path, max_length: int):
        from tui.local.chat import hf_chat_template

        self.tokenizer = tokenizer
        self.template = hf_chat_template(model_dir)
        self.max_length = max_length
        ends = {tokenizer.eos_token_id}
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            ends.add(im_end)
        self.end_ids = {i for i in ends if isinstance(i, int)}
        self.n_truncated = 0

    def render(self, messages: Sequence[dict[str, Any]], gen: bool) -> str:
        clean = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self.template.render(clean, add_generation_prompt=gen)

    def encode(self, messages: Sequence[dict[str, Any]]) -> Example:
        text = self.render(messages, gen=False)
        spans: list[tuple[int, int]] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or m.get("weight", 1) == 0:
                continue
            before = self.render(messages[:i], gen=True)
            upto = self.render(messages[: i + 1], gen=False)
            if text.startswith(upto) and upto.startswith(before):
                spans.append((len(before), len(upto)))
            else:  # a template that rewrites earlier turns: find the answer in the text
                start = text.find(m["content"], len(self.render(messages[:i], gen=False)))
                if start >= 0:
                    spans.append((start, start + len(m["content"]) + 1))
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets = enc["offset_mapping"]
        labels = [-100] * len(ids)
        for start, end in spans:
            for t, (a, _b) in enumerate(offsets):
                if start <= a < end:
                    labels[t] = ids[t]
                    if ids[t] in self.end_ids:
                        break  # the turn's end token is trained; what follows it is not
        if len(ids) > self.max_length:
            self.n_truncated += 1
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return Example(ids, labels)


def make_batches(
    examples: Sequence[Example], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of examples of similar length: runs of 16 batches' worth of shuffled
    examples are sorted by length and cut into batches, then the batches are shuffled."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    run = batch_size * 16
    batches: list[list[int]] = []
    for i in range(0, len(order), run):
        chunk = sorted(order[i : i + run], key=lambda j: len(examples[j].input_ids))
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ---- model ----------------------------------------------------------------------------------


def gguf_cache_dir(base: Path, cache_dir: Path) -> Path:
    st = base.stat()
    key = hashlib.sha256(f"{base.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir / f"hf-{base.stem}-{key[:12]}"


def convert_gguf(base: Path, cache_dir: Path) -> Path:
    """The fp32 transformers copy of a GGUF, made once and reused."""
    target = gguf_cache_dir(base, cache_dir)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    message(f"Converting {base.name} for training (once per model; about a minute)")
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base.parent, gguf_file=base.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        base.parent, gguf_file=base.name, dtype=torch.float32
    )
    # transformers marks a GGUF-loaded model as quantized and then refuses to save it; the
    # weights are already dequantized to fp32, so the flag is dropped.
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with contextlib.suppress(OSError):
        os.replace(tmp, target)  # another job may have won the race; its copy is the same
    message(f"Converted in {time.monotonic() - started:.0f} s")
    return target


@dataclass
class Batch:
    """A batch, either padded (B rows) or packed: one row holding the batch's common prefix
    once, then each example's own tokens, with a mask that lets each example see the prefix
    and itself only, and positions that restart after the prefix for every example."""

    indices: list[int]
    input_ids: Any  # LongTensor, (B, L) padded or (1, N) packed
    attention_mask: Any  # (B, L) 0/1 padded, or (1, 1, N, N) bool packed
    position_ids: Any  # None padded, (1, N) packed
    label_pos: Any  # index tuple of the hidden states whose next token is a label
    targets: Any  # LongTensor (n,)
    n_tokens: int  # the examples' tokens (what OpenAI counts as trained tokens)
    prefix: int = 0  # packed: length of the shared prefix
    starts: list[int] = field(default_factory=list)  # packed: where each example's own part starts


def collate(
    examples: Sequence[Example], indices: Sequence[int], pad_id: int, pack: bool = False
) -> Batch:
    if pack:
        packed = _pack(examples, indices)
        if packed is not None:
            return packed
    return _pad(examples, indices, pad_id)


def _pad(examples: Sequence[Example], indices: Sequence[int], pad_id: int) -> Batch:
    import torch

    length = max(len(examples[i].input_ids) for i in indices)
    ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
    att = torch.zeros((len(indices), length), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    n_tokens = 0
    for r, i in enumerate(indices):
        ex = examples[i]
        n = len(ex.input_ids)
        ids[r, :n] = torch.tensor(ex.input_ids)
        att[r, :n] = 1
        n_tokens += n
        # The hidden state at position p predicts the token at p + 1.
        for p in range(n - 1):
            if ex.labels[p + 1] != -100:
                rows.append(r)
                cols.append(p)
                targets.append(ex.labels[p + 1])
    return Batch(
        indices=list(indices),
        input_ids=ids,
        attention_mask=att,
        position_ids=None,
        label_pos=(torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)),
        targets=torch.tensor(targets, dtype=torch.long),
        n_tokens=n_tokens,
    )


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for p in range(n):
        t = first[p]
        if any(s[p] != t for s in seqs):
            return p
    return n


def _pack(examples: Sequence[Example], indices: Sequence[int]) -> Batch | None:
    import torch

    seqs = [examples[i].input_ids for i in indices]
    prefix = _common_prefix(seqs) if len(seqs) > 1 else 0
    total = prefix + sum(len(s) - prefix for s in seqs)
    # Attention over one packed row costs total^2, a padded batch B * L^2: pack short
    # batches only.
    if total > PACK_LIMIT:
        return None
    ids = list(seqs[0][:prefix])
    positions = list(range(prefix))
    segment = [-1] * prefix
    starts: list[int] = []
    for r, s in enumerate(seqs):
        starts.append(len(ids))
        ids += s[prefix:]
        positions += range(prefix, len(s))
        segment += [r] * (len(s) - prefix)
    pos = torch.tensor(positions, dtype=torch.long)
    seg = torch.tensor(segment, dtype=torch.long)
    # key k is visible from query q when it is not later in q's sequence and belongs to the
    # shared prefix or to q's own example.
    mask = (pos[None, :] <= pos[:, None]) & ((seg[None, :] == -1) | (seg[None, :] == seg[:, None]))
    rows: list[int] = []
    targets: list[int] = []
    for r, i in enumerate(indices):
        ex = examples[i]
        for p in range(len(ex.input_ids) - 1):
            if ex.labels[p + 1] != -100:
                rows.append(p if p < prefix else starts[r] + p - prefix)
                targets.append(ex.labels[p + 1])
    return Batch(
        indices=list(indices),
        input_ids=torch.tensor([ids], dtype=torch.long),
        attention_mask=mask[None, None],
        position_ids=pos[None],
        label_pos=(torch.zeros(len(rows), dtype=torch.long), torch.tensor(rows, dtype=torch.long)),
        targets=torch.tensor(targets, dtype=torch.long),
        n_tokens=sum(len(s) for s in seqs),
        prefix=prefix,
        starts=starts,
    )


class Runner:
    """Forward passes for training and evaluation, with the frozen-layer cache."""

    def __init__(self, causal_lm: Any, first_trained_layer: int, fast: bool):
        self.lm = causal_lm
        self.fast = fast
        decoder: Any = causal_lm.get_decoder() if fast else None
        self.decoder = decoder
        self.head: Any = causal_lm.get_output_embeddings() if fast else None
        self.split = first_trained_layer if fast else 0
        self.all_layers: Any = decoder.layers if fast else None
        self.cache: dict[int, Any] | None = None  # example key -> frozen-layer output

    @property
    def pack(self) -> bool:
        """Packing needs the decoder to take a custom 4-D mask and position ids, which the
        architectures of the fast path do."""
        return self.fast

    def batch(self, examples: Sequence[Example], indices: Sequence[int], pad_id: int) -> Batch:
        return collate(examples, indices, pad_id, pack=self.pack)

    # The decoder's layer list is swapped for a slice of itself while the frozen part runs
    # (or is skipped); restore() puts the full list back before saving or merging.
    def _use_layers(self, start: int, stop: int | None) -> None:
        import torch

        assert self.decoder is not None
        self.decoder.layers = torch.nn.ModuleList(list(self.all_layers)[start:stop])

    def restore(self) -> None:
        if self.decoder is not None:
            self.decoder.layers = self.all_layers

    def _run(self, batch: Batch, start: int, stop: int | None, hidden: Any = None) -> Any:
        """Decoder layers [start, stop) on the batch's tokens (or on ``hidden``, the output
        of layer start - 1); the final norm only when running to the top."""
        import torch

        norm = self.decoder.norm
        if stop is not None:
            self.decoder.norm = torch.nn.Identity()
        self._use_layers(start, stop)
        try:
            inputs = {"input_ids": batch.input_ids} if hidden is None else {"inputs_embeds": hidden}
            return self.decoder(
                **inputs,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            ).last_hidden_state
        finally:
            self.decoder.norm = norm
            self.restore()

    def precompute(self, examples: Sequence[Example], keys: Sequence[int], pad_id: int) -> None:
        """Run the frozen layers once for every example and keep their outputs."""
        import torch

        if not self.fast or self.split == 0:
            return
        need = sum(len(examples[k].input_ids) for k in keys) * self.lm.config.hidden_size * 4
        if need > CACHE_BUDGET_BYTES:
            message(
                f"Frozen-layer cache would need {need >> 20} MB; recomputing it at each step",
                "warn",
            )
            return
        cache: dict[int, Any] = {}
        # Sorted by token ids: neighbours share the longest prefixes (packing computes a
        # shared prefix once) and, for the padded layout, often similar lengths.
        order = sorted(keys, key=lambda k: examples[k].input_ids)
        with torch.no_grad():
            for i in range(0, len(order), 16):
                chunk = order[i : i + 16]
                b = self.batch(examples, chunk, pad_id)
                h = self._run(b, 0, self.split)
                for r, k in enumerate(chunk):
                    cache[k] = self._rows(b, h, r, len(examples[k].input_ids)).clone()
                check_cancelled()
        self.cache = cache

    @staticmethod
    def _rows(b: Batch, h: Any, r: int, n: int) -> Any:
        """The n hidden states of the batch's r-th example, (n, hidden)."""
        import torch

        if b.position_ids is None:
            return h[r, :n]
        own = h[0, b.starts[r] : b.starts[r] + n - b.prefix]
        return torch.cat([h[0, : b.prefix], own]) if b.prefix else own

    def _frozen_output(self, b: Batch, keys: Sequence[int]) -> Any:
        import torch

        if self.cache is None:
            with torch.no_grad():
                return self._run(b, 0, self.split)
        size = self.lm.config.hidden_size
        h = torch.zeros((*b.input_ids.shape, size), dtype=torch.float32)
        for r, k in enumerate(keys):
            cached = self.cache[k]
            if b.position_ids is None:
                h[r, : cached.shape[0]] = cached
            else:
                own = cached[b.prefix :]
                h[0, b.starts[r] : b.starts[r] + own.shape[0]] = own
        if b.position_ids is not None and b.prefix:
            h[0, : b.prefix] = self.cache[keys[0]][: b.prefix]
        return h

    def label_logits(self, b: Batch, keys: Sequence[int]) -> Any:
        """Logits at the label positions only, (n_labels, vocab)."""
        if not self.fast:
            logits = self.lm(
                input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False
            ).logits
            return logits[b.label_pos]
        if self.split == 0:
            hidden = self._run(b, 0, None)
        else:
            hidden = self._run(b, self.split, None, hidden=self._frozen_output(b, keys))
        return self.head(hidden[b.label_pos])


def loss_and_accuracy(logits: Any, targets: Any) -> tuple[Any, float]:
    import torch

    loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    accuracy = float((logits.argmax(-1) == targets).float().mean().item())
    return loss, accuracy


# ---- cancellation ---------------------------------------------------------------------------

_cancelled = threading.Event()


def check_cancelled() -> None:
    if _cancelled.is_set():
        raise Cancelled()


def _on_sigterm(signum: int, frame: Any) -> None:
    _cancelled.set()
    # A step in progress finishes its current torch op first; if that or the cleanup takes
    # long, exit anyway.
    timer = threading.Timer(5.0, lambda: os._exit(143))
    timer.daemon = True
    timer.start()
    raise Cancelled()


# ---- training -------------------------------------------------------------------------------


@dataclass
class Progress:
    started: float = field(default_factory=time.time)
    step_times: list[float] = field(default_factory=list)
    trained_tokens: int = 0


def train(spec: Spec) -> dict[str, Any]:
    seed_and_threads(spec.seed)
    raw_train, raw_valid, hp = read_training_data(spec)
    base = load_base(spec)
    data = encode_examples(base, raw_train, raw_valid, hp.batch_size)
    trainee = build_trainee(spec, base)
    message(
        f"{spec.method} fine-tune of {spec.base_model_id}: {trainee.n_params / 1e6:.1f} M "
        f"trainable parameters in the top {trainee.n_trained} of {base.n_layers} layers; "
        f"{len(data.train)} training examples, {len(data.valid)} validation examples"
    )
    runner = Runner(trainee.causal_lm, trainee.first, base.fast)
    precompute_frozen(runner, data)
    schedule = plan_schedule(spec, hp, data.train)
    progress = TrainingLoop(spec, trainee, runner, data, schedule).run()

    check_cancelled()
    runner.restore()
    message("Training finished; writing the model")
    result = save_result(
        spec, base.model_dir, base.tokenizer, trainee.causal_lm, trainee.peft_model
    )
    result["trained_tokens"] = progress.trained_tokens
    return result


def seed_and_threads(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    threads = int(os.environ.get("DISTILL_TRAIN_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(threads)


def read_training_data(
    spec: Spec,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Hyperparameters]:
    """The training and validation examples as chat dicts, and the resolved hyperparameters
    (announced in the "hyperparameters" event)."""
    raw_train = read_examples(spec.training_file, "training_file", 10)
    raw_valid = (
        read_examples(spec.validation_file, "validation_file", 1) if spec.validation_file else []
    )
    hp = Hyperparameters.resolve(spec, len(raw_train))
    emit(
        {
            "type": "hyperparameters",
            "n_epochs": hp.n_epochs,
            "batch_size": hp.batch_size,
            "learning_rate_multiplier": hp.learning_rate_multiplier,
        }
    )
    return raw_train, raw_valid, hp


@dataclass
class BaseModel:
    """The base model as transformers loaded it (fp32), from its transformers directory (a
    GGUF base's converted copy)."""

    model_dir: Path
    tokenizer: Any
    model: Any
    n_layers: int
    fast: bool  # the architecture takes the fast path (FAST_PATH_MODEL_TYPES)


def load_base(spec: Spec) -> BaseModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    if spec.base_kind == "gguf":
        from tui.local.gguf_export import ExportUnsupported, check_exportable

        try:  # before the conversion and the training, not after them
            check_exportable(spec.base_path)
        except ExportUnsupported as exc:
            raise TrainingError("unsupported_model", str(exc), "model") from None
        model_dir = convert_gguf(spec.base_path, spec.cache_dir)
    else:
        model_dir = spec.base_path
    check_cancelled()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # sdpa: packed batches pass a boolean 4-D mask, which sdpa takes as is (eager attention
    # would add it to the scores).
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    fast = model.config.model_type in FAST_PATH_MODEL_TYPES
    if not fast:
        message(f"{model.config.model_type}: generic training path (slower)", "warn")
    return BaseModel(model_dir, tokenizer, model, int(model.config.num_hidden_layers), fast)


@dataclass
class EncodedData:
    """The encoded examples. ``everything`` is the training examples followed by the
    validation ones, so that both share the frozen-layer cache: a validation example's key is
    ``len(train)`` plus its index."""

    train: list[Example]
    valid: list[Example]
    pad_id: int
    batch_size: int
    everything: list[Example] = field(init=False)

    def __post_init__(self) -> None:
        self.everything = self.train + self.valid

    def valid_batches(self) -> list[list[int]]:
        """The validation examples' keys in ``everything``, in batches of ``batch_size``."""
        n_train, size = len(self.train), self.batch_size
        return [
            list(range(n_train + i, min(len(self.everything), n_train + i + size)))
            for i in range(0, len(self.valid), size)
        ]


def encode_examples(
    base: BaseModel,
    raw_train: Sequence[dict[str, Any]],
    raw_valid: Sequence[dict[str, Any]],
    batch_size: int,
) -> EncodedData:
    config = base.model.config
    max_length = min(int(getattr(config, "max_position_embeddings", 2048)), 2048)
    encoder = ChatEncoder(base.tokenizer, base.model_dir, max_length)
    train_set = [encoder.encode(ex["messages"]) for ex in raw_train]
    valid_set = [encoder.encode(ex["messages"]) for ex in raw_valid]
    if encoder.n_truncated:
        message(f"{encoder.n_truncated} example(s) truncated to {max_length} tokens", "warn")
    if not any(ex.n_labels for ex in train_set):
        raise TrainingError(
            "invalid_training_file", "No example has an assistant token to train on.",
            "training_file",
        )  # fmt: skip
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    return EncodedData(train_set, valid_set, pad_id, batch_size)


@dataclass
class Trainee:
    """What trains: the causal LM (for LoRA, the one inside the peft wrapper), from which
    layer up, and its trainable parameters."""

    causal_lm: Any
    peft_model: Any  # None for a full fine-tune
    first: int  # the first trained decoder layer; the ones below are frozen
    n_trained: int  # trained decoder layers
    params: list[Any]

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)


def choose_method(model: Any) -> str:
    """The "auto" method: full for models up to FULL_AUTO_MAX_PARAMS, LoRA above."""
    total = sum(p.numel() for p in model.parameters())
    return "full" if total <= FULL_AUTO_MAX_PARAMS else "lora"


def lora_layer_count(lora_layers: int | str, n_layers: int) -> int:
    """How many decoder layers (from the top) get LoRA adapters."""
    if lora_layers == "all":
        return n_layers
    if lora_layers == "auto":
        return max(1, math.ceil(n_layers * DEFAULT_LORA_LAYER_FRACTION))
    return max(1, min(n_layers, int(lora_layers)))


def build_trainee(spec: Spec, base: BaseModel) -> Trainee:
    """Resolves the "auto" method (into ``spec.method``) and wraps the model for it: LoRA
    adapters on the top layers through peft, or every weight trained."""
    model, n_layers = base.model, base.n_layers
    if spec.method == "auto":
        spec.method = choose_method(model)
    if spec.method == "lora":
        from peft import LoraConfig, get_peft_model

        n_trained = lora_layer_count(spec.lora_layers, n_layers)
        first = n_layers - n_trained
        config = LoraConfig(
            r=LORA_R,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,  # short runs on small sets; dropout only slows them down
            target_modules=list(LORA_TARGETS),
            layers_to_transform=list(range(first, n_layers)),
            bias="none",
        )
        peft_model: Any = get_peft_model(model, config)
        causal_lm: Any = peft_model.base_model.model
    else:
        peft_model = None
        causal_lm = model
        first = 0
        n_trained = n_layers
    causal_lm.train()
    params = [p for p in causal_lm.parameters() if p.requires_grad]
    return Trainee(causal_lm, peft_model, first, n_trained, params)


def precompute_frozen(runner: Runner, data: EncodedData) -> None:
    """With frozen layers below the trained ones, their output for every example (training
    and validation), computed once."""
    first = runner.split
    if first > 0 and runner.fast:
        started = time.monotonic()
        runner.precompute(data.everything, list(range(len(data.everything))), data.pad_id)
        if runner.cache is not None:
            message(f"Frozen layers 1-{first} computed once in {time.monotonic() - started:.1f} s")


@dataclass
class Schedule:
    """Every epoch's batches (keys of training examples), the number of steps (all the
    batches, or max_steps), and the learning rate: a linear warm-up over the first 3 % of the
    steps, then a linear decay to a tenth."""

    epochs: list[list[list[int]]]
    total_steps: int
    lr: float
    warmup: int

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        return self.lr * (1.0 - 0.9 * frac)


def ema_decay(setting: float | str, total_steps: int) -> float:
    """The weights' moving-average decay: "auto" averages over the last EMA_HORIZON of the
    steps (0.95 for 108 steps); 0 turns the average off."""
    if setting == "auto":
        return 1.0 - 1.0 / max(1.0, EMA_HORIZON * total_steps)
    try:
        decay = float(setting)
    except (TypeError, ValueError):
        decay = math.nan
    if not 0.0 <= decay < 1.0:
        raise TrainingError("invalid_hyperparameters", "ema_decay must be in [0, 1)", "ema_decay")
    return decay


def plan_schedule(spec: Spec, hp: Hyperparameters, train_set: Sequence[Example]) -> Schedule:
    rng = random.Random(spec.seed)
    epochs = [make_batches(train_set, hp.batch_size, rng) for _ in range(hp.n_epochs)]
    total_steps = sum(len(e) for e in epochs)
    if spec.max_steps:
        total_steps = min(total_steps, int(spec.max_steps))
    lr = BASE_LR[spec.method] * hp.learning_rate_multiplier
    return Schedule(epochs, total_steps, lr, warmup=max(1, round(total_steps * 0.03)))


class TrainingLoop:
    """The epochs: one optimizer step per batch, each followed by a "metrics" event (with one
    validation batch every ~5 % of the steps); at each epoch's end the loss over the whole
    validation file and a "checkpoint" event (for LoRA with the adapter saved, the last
    CHECKPOINTS_KEPT kept)."""

    def __init__(
        self,
        spec: Spec,
        trainee: Trainee,
        runner: Runner,
        data: EncodedData,
        schedule: Schedule,
    ):
        import torch

        self.trainee = trainee
        self.runner = runner
        self.data = data
        self.schedule = schedule
        self.optimizer = torch.optim.AdamW(trainee.params, lr=schedule.lr, weight_decay=0.0)
        self.valid_batches = data.valid_batches()
        self.eval_every = max(1, schedule.total_steps // 20)
        self.ckpt_root = spec.output_dir / "checkpoints"
        self.checkpoints: list[Path] = []
        self.progress = Progress()
        self.step = 0
        self.last_metrics: dict[str, Any] = {}
        self.ema_decay = ema_decay(spec.ema_decay, schedule.total_steps)
        # Zero-started and bias-corrected at the end (as Adam's moments): the base weights
        # never leak into the average, however few the steps.
        self.ema = [torch.zeros_like(p) for p in trainee.params] if self.ema_decay else None

    @property
    def done(self) -> bool:
        return self.step >= self.schedule.total_steps

    def run(self) -> Progress:
        for epoch, batches in enumerate(self.schedule.epochs, start=1):
            for idx in batches:
                if self.done:
                    break
                self.train_step(idx, epoch)
            # The end of an epoch (or of a max_steps run).
            self.end_epoch(epoch)
            if self.done:
                break
        if self.ema is not None and self.step:
            import torch

            correction = 1.0 - self.ema_decay**self.step
            with torch.no_grad():
                for param, average in zip(self.trainee.params, self.ema, strict=True):
                    param.copy_(average / correction)
        return self.progress

    def train_step(self, idx: list[int], epoch: int) -> None:
        """One optimizer step on the batch of training examples ``idx``, and its metrics."""
        check_cancelled()
        t0 = time.monotonic()
        c0 = time.process_time()
        b = self.runner.batch(self.data.train, idx, self.data.pad_id)
        train_loss, acc = self.optimize(b, idx)
        self.step += 1
        self.progress.trained_tokens += b.n_tokens
        self.progress.step_times.append(time.monotonic() - t0)
        step_cpu = time.process_time() - c0
        valid_loss, valid_acc = self.periodic_validation()
        self.last_metrics = {
            "train_loss": _finite(train_loss),
            "train_mean_token_accuracy": _finite(acc),
            "valid_loss": _finite(valid_loss),
            "valid_mean_token_accuracy": _finite(valid_acc),
        }
        self.emit_metrics(epoch, step_cpu)

    def optimize(self, b: Batch, idx: list[int]) -> tuple[float, float]:
        """Forward, backward and the optimizer's update; the batch's loss and accuracy."""
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at(self.step)
        if not len(b.targets):  # every answer in this batch was excluded (weight 0)
            return math.nan, math.nan
        logits = self.runner.label_logits(b, idx)
        loss, acc = loss_and_accuracy(logits, b.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainee.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                params = [p.detach() for p in self.trainee.params]
                torch._foreach_mul_(self.ema, self.ema_decay)
                torch._foreach_add_(self.ema, params, alpha=1.0 - self.ema_decay)
        return float(loss.item()), acc

    def periodic_validation(self) -> tuple[float | None, float | None]:
        """Every eval_every steps and at the last, the loss on one validation batch (the
        batches taken in turn); None otherwise or without a validation file."""
        step = self.step
        if self.valid_batches and (step % self.eval_every == 0 or self.done):
            vb = self.valid_batches[(step // self.eval_every) % len(self.valid_batches)]
            return self.evaluate([vb])
        return None, None

    def evaluate(self, batches: Sequence[list[int]]) -> tuple[float, float]:
        """Mean loss and token accuracy over the validation batches, per label token."""
        import torch

        total_loss = 0.0
        total_correct = 0.0
        n = 0
        causal_lm = self.trainee.causal_lm
        causal_lm.eval()
        with torch.no_grad():
            for idx in batches:
                b = self.runner.batch(self.data.everything, idx, self.data.pad_id)
                if len(b.targets) == 0:
                    continue
                logits = self.runner.label_logits(b, idx)
                loss, acc = loss_and_accuracy(logits, b.targets)
                total_loss += float(loss.item()) * len(b.targets)
                total_correct += acc * len(b.targets)
                n += len(b.targets)
                check_cancelled()
        causal_lm.train()
        return (total_loss / n, total_correct / n) if n else (math.nan, math.nan)

    def emit_metrics(self, epoch: int, step_cpu: float) -> None:
        times = self.progress.step_times
        recent = times[-20:]
        remaining = (self.schedule.total_steps - self.step) * (sum(recent) / len(recent))
        emit(
            {
                "type": "metrics",
                "step": self.step,
                "total_steps": self.schedule.total_steps,
                "epoch": epoch,
                **self.last_metrics,
                "trained_tokens": self.progress.trained_tokens,
                "estimated_finish": int(time.time() + remaining),
                "step_seconds": round(times[-1], 3),
                # CPU time of all the process's threads: on a busy machine, what the step
                # would take alone is about this divided by the cores.
                "step_cpu_seconds": round(step_cpu, 3),
            }
        )

    def end_epoch(self, epoch: int) -> None:
        """The full validation loss, the LoRA adapter saved (the oldest beyond
        CHECKPOINTS_KEPT removed), and the "checkpoint" event."""
        ckpt_metrics = {"step": self.step, **self.last_metrics}
        if self.valid_batches:
            full_loss, full_acc = self.evaluate(self.valid_batches)
            ckpt_metrics["full_valid_loss"] = _finite(full_loss)
            ckpt_metrics["full_valid_mean_token_accuracy"] = _finite(full_acc)
        ckpt = self.ckpt_root / f"step-{self.step}"
        self.runner.restore()
        peft_model = self.trainee.peft_model
        if peft_model is not None:
            peft_model.save_pretrained(str(ckpt))
            self.checkpoints.append(ckpt)
            while len(self.checkpoints) > CHECKPOINTS_KEPT:
                _rmtree(self.checkpoints.pop(0))
        emit(
            {
                "type": "checkpoint",
                "step": self.step,
                "epoch": epoch,
                "metrics": ckpt_metrics,
                "path": str(ckpt) if peft_model is not None else None,
            }
        )


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def save_result(
    spec: Spec, model_dir: Path, tokenizer: Any, causal_lm: Any, peft_model: Any
) -> dict[str, Any]:
    import torch

    spec.output_dir.mkdir(parents=True, exist_ok=True)
    if spec.base_kind == "gguf":
        from tui.local.gguf_export import export_merged_gguf

        deltas = weight_deltas(model_dir, causal_lm, peft_model)
        out = spec.output_dir / "model.gguf"
        export_merged_gguf(
            spec.base_path,
            out,
            deltas,
            trained_type=spec.export_type,
            name=f"{spec.base_model_id} fine-tuned" + (f" ({spec.suffix})" if spec.suffix else ""),
        )
        return {"type": "result", "kind": "gguf", "path": str(out)}
    merged = peft_model.merge_and_unload() if peft_model is not None else causal_lm
    merged.config.use_cache = True
    out = spec.output_dir / "model"
    with torch.no_grad():
        merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"type": "result", "kind": "hf", "path": str(out)}


def weight_deltas(model_dir: Path, causal_lm: Any, peft_model: Any) -> dict[str, Any]:
    """HF parameter name -> (trained - base) weight, as numpy float32."""
    import torch

    deltas: dict[str, Any] = {}
    if peft_model is not None:
        from peft.tuners.lora import LoraLayer

        for name, module in causal_lm.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                with torch.no_grad():
                    delta = module.get_delta_weight("default").float().numpy()  # type: ignore[attr-defined]
                deltas[name.replace("base_model.model.", "") + ".weight"] = delta
        return deltas
    from safetensors.torch import load_file

    base = load_file(str(model_dir / "model.safetensors"))
    tied = bool(getattr(causal_lm.config, "tie_word_embeddings", False))
    for name, p in causal_lm.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        if name in base:
            diff = (p.detach().float() - base[name].float()).numpy()
            if diff.any():
                deltas[name] = diff
    return deltas


# ---- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tui.local.trainer SPEC.json", file=sys.stderr)
        return 2
    global _protocol
    # Only the protocol goes to stdout; a library that prints goes to stderr instead.
    _protocol = sys.stdout
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        spec = Spec.load(Path(args[0]))
        result = train(spec)
        result["trained_tokens"] = int(result.get("trained_tokens", 0))
        emit(result)
        return 0
    except Cancelled:
        message("Cancelled", "warn")
        return 143
    except TrainingError as exc:
        emit({"type": "error", "code": exc.code, "message": exc.message, "param": exc.param})
        return 1
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        emit(
            {
                "type": "error",
                "code": "training_failed",
                "message": f"{type(exc).__name__}: {exc}",
                "param": None,
            }
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
