"""Fine-tuning benchmark for the local backend: how long a LoRA (or full) fine-tune of the
default model takes on the shipped git task, and what it buys.

    python bench/finetune.py                      # 400 examples x 3 epochs, auto settings
    python bench/finetune.py --max-steps 12       # a quick s/step figure
    python bench/finetune.py --lora-layers all --eval 54

It runs the real worker (``python -m tui.local.trainer``) on chat examples built from
data/git_requests.json (the first N requests with their reference commands as answers),
then, with llama.cpp, compares the base GGUF and the fine-tuned GGUF: exact match of greedy
answers on the held-out requests, and decode speed (tok/s, 64 tokens, end-of-text
suppressed so both models do the same work). Prints seconds per step and per epoch, peak
memory of the worker, and the machine's load (other work on a shared machine slows every
figure; the load average says how much there was).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SYSTEM = (
    "You are a helpful assistant that turns a user's request into the git command that does "
    "it. Reply with the command only."
)


def load_pairs() -> list[tuple[str, str]]:
    data = json.loads((ROOT / "data" / "git_requests.json").read_text(encoding="utf-8"))
    return list(zip(data["requests"], data["references"], strict=True))


def chat(request: str, answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for request, answer in pairs:
            f.write(json.dumps({"messages": chat(request, answer)}) + "\n")


def run_trainer(spec: dict[str, Any], workdir: Path) -> tuple[list[dict[str, Any]], float]:
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    events: list[dict[str, Any]] = []
    with (workdir / "trainer.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tui.local.trainer", str(spec_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if event["type"] == "metrics" and (event["step"] % 10 == 0 or event["step"] < 3):
                print(
                    f"  step {event['step']}/{event['total_steps']} "
                    f"loss {event['train_loss']} ({event['step_seconds']} s)",
                    flush=True,
                )
            elif event["type"] in ("message", "hyperparameters", "checkpoint", "error"):
                print("  " + json.dumps(event)[:200], flush=True)
        proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed ({proc.returncode}); see {workdir / 'trainer.log'}")
    return events, time.monotonic() - started


def load(model_path: Path, lora: Path | None, threads: int) -> Any:
    import llama_cpp

    kwargs = {"lora_path": str(lora)} if lora else {}
    return llama_cpp.Llama(str(model_path), n_ctx=512, n_threads=threads, verbose=False, **kwargs)


def compare(
    variants: dict[str, tuple[Path, Path | None]],
    held_out: list[tuple[str, str]],
    threads: int,
    rounds: int = 3,
) -> None:
    """Exact match on the held-out requests and decode tok/s for every variant. The variants
    take turns prompt by prompt and round by round, so a busy machine slows them alike."""
    models = {label: load(path, lora, threads) for label, (path, lora) in variants.items()}
    hits = dict.fromkeys(models, 0)
    outputs: dict[str, list[str]] = {label: [] for label in models}
    for request, reference in held_out:
        for label, llm in models.items():
            out = llm.create_chat_completion(chat(request), temperature=0, max_tokens=48)
            text = (out["choices"][0]["message"]["content"] or "").strip()
            outputs[label].append(text)
            hits[label] += " ".join(text.split()) == " ".join(reference.split())
    # Decode speed: 64 greedy tokens with end-of-text suppressed, so every variant does the
    # same work; best of the rounds.
    prompt = "<|im_start|>user\nExplain what git rebase does.<|im_end|>\n<|im_start|>assistant\n"
    best = dict.fromkeys(models, 0.0)
    for _ in range(rounds):
        for label, llm in models.items():
            llm.reset()
            started = time.perf_counter()
            out = llm.create_completion(
                prompt, max_tokens=64, temperature=0, logit_bias={int(llm.token_eos()): -1e9}
            )
            tok_s = out["usage"]["completion_tokens"] / (time.perf_counter() - started)
            best[label] = max(best[label], tok_s)
    print(f"\nllama.cpp, {threads} thread(s), load average {os.getloadavg()[0]:.1f}:")
    for label, (path, lora) in variants.items():
        size = (lora or path).stat().st_size / 1e6
        line = f"  {label}: {best[label]:.1f} tok/s, file {size:.0f} MB"
        if held_out:
            line += f", exact match {hits[label]}/{len(held_out)}"
        print(line, flush=True)
    tuned = next((label for label in variants if label != "base"), None)
    if held_out and tuned:
        print(f"  answers of '{tuned}':")
        for (request, reference), out in list(zip(held_out, outputs[tuned], strict=True))[:8]:
            print(f"    {request!r}: {out!r} (reference {reference!r})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--lr-multiplier", default="auto")
    ap.add_argument("--method", default="lora", choices=("lora", "full"))
    ap.add_argument("--lora-layers", default="auto")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--eval", type=int, default=54, help="held-out requests scored (0: none)")
    ap.add_argument("--export-type", default="Q8_0")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="llama.cpp threads when scoring"
    )
    ap.add_argument("--keep", type=Path, default=None, help="keep the work directory here")
    ap.add_argument(
        "--compare-exports",
        action="store_true",
        help="also write the LoRA result as F16, requantized Q4_1 and a llama.cpp adapter, "
        "and score each",
    )
    args = ap.parse_args()

    from tui.local.models import default_gguf_path

    base = default_gguf_path()
    pairs = load_pairs()
    train, held_out = pairs[: args.examples], pairs[args.examples :][: args.eval]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_jsonl(workdir / "train.jsonl", train)
    cache = Path(os.environ.get("DISTILL_BENCH_CACHE", Path.home() / ".cache" / "distill-bench"))

    def num(v: str) -> Any:
        return v if v in ("auto", "all") else (float(v) if "." in v else int(v))

    spec = {
        "base_model_id": "smollm2-135m-instruct",
        "base_kind": "gguf",
        "base_path": str(base),
        "training_file": str(workdir / "train.jsonl"),
        "validation_file": None,
        "output_dir": str(workdir / "out"),
        "cache_dir": str(cache),
        "method": args.method,
        "n_epochs": num(args.epochs),
        "batch_size": num(args.batch_size),
        "learning_rate_multiplier": num(args.lr_multiplier),
        "seed": 0,
        "suffix": "bench",
        "lora_layers": num(args.lora_layers),
        "max_steps": args.max_steps,
        "export_type": args.export_type,
    }
    load_before = os.getloadavg()[0]
    print(f"fine-tuning on {len(train)} examples in {workdir} (load {load_before:.1f})")
    events, wall = run_trainer(spec, workdir)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    metrics = [e for e in events if e["type"] == "metrics"]
    result = next(e for e in events if e["type"] == "result")
    steps = [m["step_seconds"] for m in metrics]
    per_epoch: dict[int, float] = {}
    for m in metrics:
        per_epoch[m["epoch"]] = per_epoch.get(m["epoch"], 0.0) + m["step_seconds"]
    print()
    print(f"steps: {len(steps)}, batch {next(e for e in events if e['type'] == 'hyperparameters')}")
    print(
        f"s/step: mean {statistics.fmean(steps):.2f}, median {statistics.median(steps):.2f} "
        f"(first {steps[0]:.2f})"
    )
    cpu = [m.get("step_cpu_seconds", 0.0) for m in metrics]
    print(
        f"CPU s/step (all threads): mean {statistics.fmean(cpu):.2f}; on {os.cpu_count()} idle "
        f"cores a step takes at least {statistics.fmean(cpu) / (os.cpu_count() or 1):.2f} s"
    )
    print("s/epoch (training steps): " + ", ".join(f"{v:.0f}" for v in per_epoch.values()))
    print(
        f"worker wall time: {wall:.0f} s (load, conversion cache, cache of frozen layers, export)"
    )
    print(f"first/last train_loss: {metrics[0]['train_loss']} -> {metrics[-1]['train_loss']}")
    print(f"worker peak RSS: {peak_mb:.0f} MB; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    tuned = Path(result["path"])
    variants: dict[str, tuple[Path, Path | None]] = {
        "base": (base, None),
        f"fine-tuned, merged {args.export_type}": (tuned, None),
    }
    checkpoints = [e for e in events if e["type"] == "checkpoint" and e.get("path")]
    if args.compare_exports and checkpoints:
        variants.update(other_exports(base, Path(checkpoints[-1]["path"]), workdir, cache))
    compare(variants, held_out, args.threads)
    return 0


def other_exports(
    base: Path, adapter: Path, workdir: Path, cache: Path
) -> dict[str, tuple[Path, Path | None]]:
    """The same LoRA result written the other ways gguf_export could write it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tui.local.gguf_export import export_lora_gguf, export_merged_gguf
    from tui.local.trainer import gguf_cache_dir, weight_deltas

    hf_dir = gguf_cache_dir(base, cache)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    causal_lm = peft_model.base_model.model
    deltas = weight_deltas(hf_dir, causal_lm, peft_model)
    lora: dict[str, tuple[Any, Any]] = {}
    alpha = 32.0
    for name, module in causal_lm.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a = module.lora_A["default"].weight.detach().float().numpy()
            b = module.lora_B["default"].weight.detach().float().numpy()
            lora[name + ".weight"] = (a, b)
            alpha = float(module.scaling["default"] * a.shape[0])
    out: dict[str, tuple[Path, Path | None]] = {}
    for kind in ("F16", "same"):
        path = export_merged_gguf(base, workdir / f"merged-{kind}.gguf", deltas, trained_type=kind)
        out["fine-tuned, merged " + ("Q4_1 (requantized)" if kind == "same" else kind)] = (
            path,
            None,
        )
    adapter_gguf = export_lora_gguf(base, workdir / "adapter.gguf", lora, alpha)
    out["fine-tuned, base + LoRA adapter GGUF"] = (base, adapter_gguf)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
