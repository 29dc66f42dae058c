"""The transformers engine: serves models that are transformers directories (config.json +
safetensors + tokenizer), such as a user's own model or a full fine-tune of an HF base.

GGUF models go to llama.cpp (tui/local/models.py), which is several times faster on CPU;
this engine exists so any HF directory can be served at all, with the same protocol.

Generation runs in one worker thread, one request at a time (requests queue up to
``max_queue``; more raise QueueFull). On a 2-core CPU the model already uses every core for
one sequence; batching would add throughput only at a large cost in code, and the fast
path for throughput is llama.cpp. Tokens travel back to the event loop with
``loop.call_soon_threadsafe``. Closing the async generator early (client disconnect, task
cancellation) sets a flag the worker checks before every token, so the slot frees at once.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tui.local.chat import hf_chat_template
from tui.local.models import GenChunk, GenRequest, QueueFull

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class StopScanner:
    """Turns a stream of text pieces into output that never contains a stop string.

    Text that might be the beginning of a stop string is held back until the next piece
    shows it is not (or the stream ends)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        start = max(0, self.emitted - max((len(s) for s in self.stops), default=0))
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            end = len(self.text) - self._held_back()
        end = max(end, self.emitted)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out

    def _held_back(self) -> int:
        """Length of the longest end of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best


class IncrementalDecoder:
    """Token ids in, new text out, never splitting a multi-byte character (the usual
    prefix/read offset scheme: decode a small window, emit only what grew and is whole)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self.decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""


def sample_next(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """OpenAI's semantics: temperature 0 is greedy; top_p keeps the smallest set of tokens
    whose probabilities add up to top_p."""
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep a token while the mass before it is still under top_p (always keeps one).
        keep = (cumulative - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


class HFEngine:
    """Engine protocol (tui.local.models.Engine) over a transformers model directory.

    The constructor loads the model: call it off the event loop (the registry does)."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        n_threads: int | None = None,
        max_queue: int = 64,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if n_threads:
            torch.set_num_threads(n_threads)
        self.model_id = model_id
        self.path = Path(path)
        self.max_queue = max_queue
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.path)
        # fp32: the weights a fine-tune produced, unchanged (bf16 decodes faster on CPU but
        # prefills slower and drifts from what was trained and evaluated).
        self.model: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        self.model.eval()
        self.template = hf_chat_template(self.path)
        cfg = self.model.config
        self.context_length = int(
            getattr(cfg, "max_position_embeddings", None)
            or getattr(self.tokenizer, "model_max_length", None)
            or 2048
        )
        self.eos_ids = self._eos_ids()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hf-{model_id}")
        self._waiting = 0
        self._lock = threading.Lock()
        self._closed = False

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(i) for i in source)
        # A ChatML model ends its turn with <|im_end|> even when its eos is another token.
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return ids

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.template.render(messages, add_generation_prompt=True)
        # The template writes any special tokens itself (bos included, when the model has one).
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.encode(messages))

    async def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]:
        if self._closed:
            raise RuntimeError(f"engine {self.model_id} is closed")
        prompt = self.encode(req.messages)
        if len(prompt) >= self.context_length:
            raise ValueError(
                f"The prompt has {len(prompt)} tokens; {self.model_id} reads at most "
                f"{self.context_length}."
            )
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting")
            self._waiting += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenChunk | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: GenChunk | BaseException | None) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        future = self._executor.submit(self._work, prompt, req, emit, cancelled)

        def on_done(f: Future[None]) -> None:
            if f.cancelled():  # aclose() dropped it before it ran
                with self._lock:
                    self._waiting -= 1
                emit(RuntimeError(f"engine {self.model_id} was closed"))
                emit(None)

        future.add_done_callback(on_done)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    def _work(
        self,
        prompt: list[int],
        req: GenRequest,
        emit: Callable[[GenChunk | BaseException | None], None],
        cancelled: threading.Event,
    ) -> None:
        with self._lock:
            self._waiting -= 1
        try:
            if not cancelled.is_set():
                self._generate(prompt, req, emit, cancelled)
        except Exception as exc:  # reaches the caller as the exception of its async for
            emit(exc)
        finally:
            emit(None)

    def _generate(
        self,
        prompt: list[int],
        req: GenRequest,
        emit: Callable[[GenChunk | BaseException | None], None],
        cancelled: threading.Event,
    ) -> None:
        import torch
        from transformers import DynamicCache

        generator = torch.Generator()
        if req.seed is not None:
            generator.manual_seed(req.seed)
        else:
            generator.seed()
        room = self.context_length - len(prompt)
        limit = room if req.max_tokens is None else min(req.max_tokens, room)
        decoder = IncrementalDecoder(
            lambda ids: str(self.tokenizer.decode(ids, skip_special_tokens=True))
        )
        stops = StopScanner(req.stop)
        n_generated = 0
        finish = "length"
        with torch.inference_mode():
            cache = DynamicCache()
            # logits_to_keep=1: the 49k-row output layer runs on the last position only.
            out = self.model(
                input_ids=torch.tensor([prompt]),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            while n_generated < limit:
                if cancelled.is_set():
                    return
                if self._closed:  # aclose() waits for this thread: stop at once
                    raise RuntimeError(f"engine {self.model_id} was closed")
                token = sample_next(out.logits[0, -1], req.temperature, req.top_p, generator)
                if token in self.eos_ids:
                    finish = "stop"
                    break
                n_generated += 1
                text = stops.push(decoder.push(token))
                if text:
                    emit(GenChunk(text=text))
                if stops.stopped:
                    finish = "stop"
                    break
                if n_generated >= limit:
                    break
                out = self.model(
                    input_ids=torch.tensor([[token]]),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
        emit(
            GenChunk(
                text=stops.flush(),
                finish_reason=finish,
                prompt_tokens=len(prompt),
                completion_tokens=n_generated,
            )
        )

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True, cancel_futures=True)
        )
