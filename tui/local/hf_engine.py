"""The transformers engine: serves models that are transformers directories (config.json +
safetensors + tokenizer), such as a user's own model or a full fine-tune of an HF base.

GGUF models go to llama.cpp (tui/local/models.py), which is several times faster on CPU;
this engine exists so any HF directory can be served at all, with the same protocol.

Generation runs in one worker thread, one request at a time (requests queue up to
``max_queue``; more raise QueueFull). On a 2-core CPU the model already uses every core for
one sequence; batching would add throughput only at a large cost in code, and the fast
path for throughput is llama.cpp. Tokens travel back to the event loop with
``loop.call_soon_threadsafe``. Closing a stream early (client disconnect, task
cancellation) sets a flag the worker checks before every token, so the slot frees at once.
A request for ``n`` choices is one job: the prompt is prefilled once and each choice decodes
from a copy of its KV cache.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tui.local.chat import hf_chat_template
from tui.local.protocol import END, ChunkStream, GenChunk, GenRequest, QueueFull, choice_requests
from tui.local.text_stream import TextOut, WindowDecoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Choice(ChunkStream):
    """One choice's stream. The worker thread ``emit``s into it; closing it (``aclose``,
    cancelling the task awaiting it, or dropping it) tells the worker to stop this choice."""

    def __init__(self, req: GenRequest, error: BaseException | None = None) -> None:
        super().__init__(error)
        self.req = req
        self.cancelled = threading.Event()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.ended = False  # the worker has sent END

    def emit(self, item: Any) -> None:
        """From the worker thread: a GenChunk or an exception."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def end(self) -> None:
        """From the worker thread: nothing more will come."""
        if not self.ended:
            self.ended = True
            self.emit(END)

    def _chunks(self) -> asyncio.Queue[Any]:
        return self._queue

    def _cancel(self) -> None:
        self._finished = True
        self.cancelled.set()


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
    """Engine protocol (tui.local.protocol.Engine) over a transformers model directory.

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

    def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]:
        return self.generate_choices(req, 1)[0]

    def generate_choices(self, req: GenRequest, n: int) -> Sequence[AsyncIterator[GenChunk]]:
        """``n`` samples of one prompt as one job: the prompt is prefilled once, and each
        choice decodes from its own copy of that KV cache, one choice after another."""
        try:
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
        except (QueueFull, ValueError, RuntimeError) as exc:
            return [_Choice(req, exc) for _ in range(n)]
        choices = [_Choice(r) for r in choice_requests(req, n)]
        future = self._executor.submit(self._work, prompt, choices)

        def on_done(f: Future[None]) -> None:
            if f.cancelled():  # aclose() dropped it before it ran
                with self._lock:
                    self._waiting -= 1
                for choice in choices:
                    choice.emit(RuntimeError(f"engine {self.model_id} was closed"))
                    choice.end()

        future.add_done_callback(on_done)
        return choices

    def _work(self, prompt: list[int], choices: list[_Choice]) -> None:
        with self._lock:
            self._waiting -= 1
        try:
            if not all(c.cancelled.is_set() for c in choices):
                self._generate(prompt, choices)
        except Exception as exc:  # reaches the callers as the exception of their async for
            for choice in choices:
                if not choice.ended:
                    choice.emit(exc)
        finally:
            for choice in choices:
                choice.end()

    def _generate(self, prompt: list[int], choices: list[_Choice]) -> None:
        import torch
        from transformers import DynamicCache

        with torch.inference_mode():
            cache = DynamicCache()
            # logits_to_keep=1: the 49k-row output layer runs on the last position only.
            out = self.model(
                input_ids=torch.tensor([prompt]),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[0, -1]
            for i, choice in enumerate(choices):
                if choice.cancelled.is_set():
                    continue
                # Every choice but the last decodes from a copy of the prompt's cache.
                own = cache if i == len(choices) - 1 else copy.deepcopy(cache)
                self._decode(len(prompt), logits, own, choice)
                choice.end()

    def _decode(self, n_prompt: int, logits: Any, cache: Any, choice: _Choice) -> None:
        """Sample one choice from the prompt's last ``logits`` on, extending ``cache``."""
        import torch

        req = choice.req
        generator = torch.Generator()
        if req.seed is not None:
            generator.manual_seed(req.seed)
        else:
            generator.seed()
        room = self.context_length - n_prompt
        limit = room if req.max_tokens is None else min(req.max_tokens, room)
        decoder = WindowDecoder(
            lambda ids: str(self.tokenizer.decode(ids, skip_special_tokens=True))
        )
        text = TextOut(req.stop)
        n_generated = 0
        finish = "length"
        while n_generated < limit:
            if choice.cancelled.is_set():
                return
            if self._closed:  # aclose() waits for this thread: stop at once
                raise RuntimeError(f"engine {self.model_id} was closed")
            token = sample_next(logits, req.temperature, req.top_p, generator)
            if token in self.eos_ids:
                finish = "stop"
                break
            n_generated += 1
            piece = text.feed(decoder.push(token))
            if piece:
                choice.emit(GenChunk(text=piece))
            if text.stopped:
                finish = "stop"
                break
            if n_generated >= limit:
                break
            out = self.model(
                input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True
            )
            logits = out.logits[0, -1]
        choice.emit(
            GenChunk(
                text=text.flush(),
                finish_reason=finish,
                prompt_tokens=n_prompt,
                completion_tokens=n_generated,
            )
        )

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True, cancel_futures=True)
        )
