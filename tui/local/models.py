"""Local models: the registry the server asks for engines, and the llama.cpp engine.

The llama.cpp engine drives llama-cpp-python's low-level API directly rather than its
``Llama`` class, because ``Llama`` decodes one sequence at a time: eight clients would wait in
line. Here one decoding thread per model runs *continuous batching*: every step feeds one
token for each running sequence plus a chunk of any new prompt into a single ``llama_decode``
call over a KV cache that holds ``n_parallel`` sequences, then samples each sequence with its
own sampler chain (its own temperature, top_p and seed). New requests join between steps and
finished or abandoned ones leave between steps, so a client that disconnects frees its slot
at once. Tokens cross back to asyncio through ``loop.call_soon_threadsafe``; ctypes drops the
GIL inside llama.cpp, so the event loop keeps serving HTTP while a step runs.

A slot keeps the KV cells of its last conversation after it finishes. The next request that
shares a prefix with it (the same system prompt and few-shot turns, which is what a
distillation run sends hundreds of times) only prefills what differs.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui.engine.local_model import LOCAL_DEFAULT_MODEL, default_gguf_path
from tui.local.chat import ChatTemplate
from tui.local.protocol import (
    END,
    ChunkStream,
    Engine,
    GenChunk,
    GenRequest,
    QueueFull,
    choice_requests,
)
from tui.local.text_stream import TextOut
from tui.local.threads import ThreadCount

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = LOCAL_DEFAULT_MODEL

# The protocol types and the default model's whereabouts are defined in tui/local/protocol.py
# and tui/engine/local_model.py; callers (bench/, tests) may import them from here too.
__all__ = [
    "DEFAULT_MODEL_ID",
    "Engine",
    "GenChunk",
    "GenRequest",
    "LlamaEngine",
    "ModelInfo",
    "ModelRegistry",
    "QueueFull",
    "default_gguf_path",
]


@dataclass
class ModelInfo:
    id: str  # "smollm2-135m-instruct", a user model's stem, or "ft:<base>:local:<suffix>:<job>"
    kind: str  # "gguf" | "hf"
    path: Path
    created: int
    owned_by: str  # "distill-tui" / "user" / "ft"
    base: str | None = None


# ---- the llama.cpp engine ----------------------------------------------------------------------

# Sharing fewer cached tokens than this is not worth a wait or a KV bookkeeping call.
_MIN_SHARED_PREFIX = 16


class _Request:
    """One generation inside a LlamaEngine. ``cancelled`` is written by the event loop and read
    by the decoding thread (a bool assignment is atomic under the GIL); the rest belongs to
    the decoding thread once the request has been handed over."""

    def __init__(
        self,
        req: GenRequest,
        prompt: list[int],
        max_new: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.req = req
        self.prompt = prompt
        self.max_new = max_new
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False
        self.done = False
        # decoding-thread state
        self.slot: _Slot | None = None
        self.n_fed = 0  # prompt tokens already in the KV cache (prefill progress)
        self.next_token: int | None = None  # sampled, not yet fed back
        self.n_generated = 0
        self.sampler: Any = None
        self.text = TextOut(req.stop)
        self.t_enqueued = time.perf_counter()


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # exactly what the KV cache holds for it
    request: _Request | None = None


class GenStream(ChunkStream):
    """The async iterator ``LlamaEngine.generate`` returns.

    ``aclose()``, cancelling the task that awaits ``__anext__``, or dropping the object all
    cancel the generation, and the decoding thread frees the slot before its next step.
    """

    def __init__(
        self, engine: LlamaEngine, request: _Request | None, error: BaseException | None = None
    ) -> None:
        super().__init__(error)
        self._engine = engine
        self._request = request

    def _chunks(self) -> asyncio.Queue[Any] | None:
        return self._request.queue if self._request is not None else None

    def _cancel(self) -> None:
        self._finished = True
        if self._request is not None and not self._request.done:
            self._engine._cancel(self._request)

    def __del__(self) -> None:
        # A server that forgets to close the stream must not leak a decoding slot.
        if self._request is not None and not self._request.done:
            self._request.cancelled = True


_native_log = logging.getLogger("tui.local.llama_cpp")
_log_callback: Any = None  # kept referenced: llama.cpp calls it for the life of the process


def _llama() -> Any:
    """llama_cpp, imported on first use, with llama.cpp's own messages routed to logging.

    llama.cpp prints pages of load details to stderr, and llama-cpp-python's filter misreads
    the newer log levels (it shows warnings as errors). Here warnings go to logging at INFO
    and errors at ERROR, the rest at DEBUG. DISTILL_LLAMA_VERBOSE=1 keeps llama.cpp's stderr.

    OpenMP's wait policy is left at libgomp's default (spin briefly at a barrier, then sleep):
    it was OMP_WAIT_POLICY=PASSIVE, chosen for a loaded machine, which cost a quiet one a
    quarter of its speed (single stream 41 → 55 tok/s). Under load the engine now drops to
    one thread (tui/local/threads.py), and one thread has no barrier to wait at.
    """
    import llama_cpp

    global _log_callback
    if _log_callback is None and not os.environ.get("DISTILL_LLAMA_VERBOSE"):
        levels = {3: logging.INFO, 4: logging.ERROR}  # ggml_log_level: 3 WARN, 4 ERROR

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def _route(level: int, text: bytes, _user: Any) -> None:
            message = text.decode("utf-8", errors="replace").rstrip()
            if message:
                _native_log.log(levels.get(level, logging.DEBUG), "%s", message)

        _log_callback = _route
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


class LlamaEngine:
    """A GGUF model served by llama.cpp with continuous batching over ``n_parallel`` slots.

    The constructor loads the model and blocks (≈ 0.2 s for SmolLM2-135M); the registry
    calls it through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        model_id: str,
        path: Path,
        *,
        n_threads: int | None = None,
        max_queue: int = 64,
        n_parallel: int = 8,
        context_length: int = 2048,
        n_batch: int = 512,
        flash_attn: bool | None = None,
    ) -> None:
        ll = _llama()
        self._ll = ll
        self.model_id = model_id
        self.path = Path(path)
        self.max_queue = max_queue
        # Threads follow the machine's load (tui/local/threads.py) unless the user fixed them.
        self._threads = ThreadCount(n_threads)
        threads = self._threads_set = self._threads.threads

        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        model = ll.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not model:
            raise ValueError(f"llama.cpp could not load the GGUF file {self.path}")
        self._model = model
        self._vocab = ll.llama_model_get_vocab(model)
        self._n_vocab = ll.llama_vocab_n_tokens(self._vocab)

        ctx_len = max(64, min(context_length, ll.llama_model_n_ctx_train(model) or context_length))
        ctx = None
        n_seq = max(1, n_parallel)
        while ctx is None:
            cparams = ll.llama_context_default_params()
            # One KV stream of ctx_len cells per sequence (not llama.cpp's "unified" pool):
            # each sequence then computes exactly what it would alone, so batching never
            # changes an answer (measured: identical logits; with the unified pool they
            # drifted by up to 1.3 at the first token), and it was as fast at 8 sequences.
            cparams.n_seq_max = n_seq
            cparams.kv_unified = False
            cparams.n_ctx = ctx_len * n_seq
            cparams.n_batch = n_batch
            cparams.n_ubatch = n_batch
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            if flash_attn is not None:
                cparams.flash_attn_type = (
                    ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
                    if flash_attn
                    else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
                )
            ctx = ll.llama_init_from_model(model, cparams) or None
            if ctx is None:
                if n_seq == 1:
                    ll.llama_model_free(model)
                    raise RuntimeError(f"llama.cpp could not create a context for {self.path}")
                # The batched layout could not be set up (memory, or a model kind that
                # does not support several sequences): serve one request at a time instead.
                log.warning(
                    "%s: no context for %d parallel sequences; serving requests one at a time",
                    model_id,
                    n_seq,
                )
                n_seq = 1
        self._ctx = ctx
        self.n_parallel = n_seq
        self.context_length = ctx_len
        self._n_batch = n_batch
        self._mem = ll.llama_get_memory(ctx)
        self._share_prefix = n_seq > 1
        self._batch = ll.llama_batch_init(n_batch, 0, 1)

        self.template = self._read_template()
        self._add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab))
        self._piece_cache: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

        self._slots = [_Slot(i) for i in range(n_seq)]
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._n_active = 0  # requests holding a slot; written under _cond
        self._n_prefilled = 0  # prompt tokens computed (not taken from the cache), ever
        self._closing = False
        self._unloaded = False  # its llama.cpp objects freed: nothing may call into them
        self._thread = threading.Thread(
            target=self._run, name=f"llama-decode[{model_id}]", daemon=True
        )
        self._thread.start()

    # -- model facts -----------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        ll = self._ll
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def _read_template(self) -> ChatTemplate:
        ll = self._ll
        raw = ll.llama_model_chat_template(self._model, None)
        source = raw.decode("utf-8", errors="replace") if raw else None
        bos = self._token_text(ll.llama_vocab_bos(self._vocab))
        eos = self._token_text(ll.llama_vocab_eos(self._vocab))
        if source:
            return ChatTemplate(source, bos_token=bos, eos_token=eos)
        log.info("%s has no chat template in its GGUF metadata; using ChatML", self.model_id)
        return ChatTemplate(bos_token=bos, eos_token=eos)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids for ``text``; special-token text (``<|im_start|>``) maps to its token."""
        if self._unloaded:  # a freed vocabulary would abort the whole process
            raise RuntimeError(f"model {self.model_id} has been unloaded")
        ll = self._ll
        data = text.encode("utf-8")
        # A template that writes the BOS text itself must not get a second BOS from llama.cpp.
        add_bos = self._add_bos and not (
            self.template.bos_token and text.startswith(self.template.bos_token)
        )
        n_max = len(data) + 8
        while True:
            buf = (ll.llama_token * n_max)()
            n = ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_bos, special)
            if n >= 0:
                return list(buf[:n])
            n_max = -n

    def _piece(self, token: int) -> bytes:
        """The bytes of ``token`` (decoding thread only: it uses the engine's one buffer)."""
        piece = self._piece_cache.get(token)
        if piece is None:
            ll = self._ll
            buf = self._piece_buf
            # special=False: control tokens (<|im_start|>…) are not part of the answer text.
            n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._piece_cache[token] = piece
        return piece

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if self._closing:  # the model's vocabulary is freed with it
            raise RuntimeError(f"model {self.model_id} has been unloaded")
        return self.tokenize(self.template.render(messages))

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_tokens(messages))

    # -- requests --------------------------------------------------------------------------------

    def generate(self, req: GenRequest) -> GenStream:
        """Queue ``req`` now (requests start in the order generate() is called) and return its
        stream. A full queue or a prompt too long for the context raises on the stream's first
        ``__anext__``, so callers can answer 429/400 before they start a response."""
        return self.generate_choices(req, 1)[0]

    def generate_choices(self, req: GenRequest, n: int) -> list[GenStream]:
        """``n`` samples of one prompt, queued together (all or none: the queue must have room
        for all ``n``). The prompt is tokenized once, and the KV sharing in ``_admit`` prefills
        it once: the first choice computes it, the others wait for it and copy its cells
        (prompts shorter than ``_MIN_SHARED_PREFIX`` + 1 tokens are cheaper to recompute)."""
        loop = asyncio.get_running_loop()
        if self._closing:  # checked first: tokenizing needs the model that aclose() frees
            error = RuntimeError(f"model {self.model_id} has been unloaded")
            return [GenStream(self, None, error) for _ in range(n)]
        try:
            first = self._make_request(req, loop)
            requests = [first] + [
                _Request(r, first.prompt, first.max_new, loop) for r in choice_requests(req, n)[1:]
            ]
            with self._cond:
                if self._closing:
                    raise RuntimeError(f"model {self.model_id} has been unloaded")
                queued = len(self._waiting) + n + self._n_active - self.n_parallel
                if queued > self.max_queue:
                    raise QueueFull(
                        f"{self.model_id}: {self.max_queue} requests are already waiting"
                    )
                self._waiting.extend(requests)
                self._cond.notify()
        except (QueueFull, ValueError, RuntimeError) as exc:
            return [GenStream(self, None, exc) for _ in range(n)]
        return [GenStream(self, r) for r in requests]

    def _make_request(self, req: GenRequest, loop: asyncio.AbstractEventLoop) -> _Request:
        prompt = self.prompt_tokens(req.messages)
        n_prompt = len(prompt)
        ctx = self.context_length
        if n_prompt >= ctx:
            raise ValueError(
                f"This model's maximum context length is {ctx} tokens. However, your messages "
                f"resulted in {n_prompt} tokens. Please reduce the length of the messages."
            )
        if req.max_tokens is not None:
            if req.max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {req.max_tokens}")
            if n_prompt + req.max_tokens > ctx:
                raise ValueError(
                    f"This model's maximum context length is {ctx} tokens. However, you "
                    f"requested {n_prompt + req.max_tokens} tokens ({n_prompt} in the messages, "
                    f"{req.max_tokens} in the completion). Please reduce the length of the "
                    "messages or completion."
                )
            max_new = req.max_tokens
        else:
            max_new = ctx - n_prompt
        return _Request(req, prompt, max_new, loop)

    def _cancel(self, request: _Request) -> None:
        request.cancelled = True
        with self._cond:
            try:
                self._waiting.remove(request)
            except ValueError:
                pass  # already running: the decoding thread frees the slot before its next step
            else:
                request.done = True
            self._cond.notify()

    async def aclose(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "active": self._n_active,
                "waiting": len(self._waiting),
                "n_parallel": self.n_parallel,
                "prefilled_tokens": self._n_prefilled,
                "threads": self._threads_set,
            }

    # -- the decoding thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._idle():
                        self._threads.rest()  # the next look's window spans the idle spell
                        while self._idle():
                            self._cond.wait()
                    if self._closing:
                        break
                    self._admit()
                active = [s.request for s in self._slots if s.request is not None]
                out: list[tuple[_Request, Any]] = []
                for r in active:
                    if r.cancelled:
                        self._release(r, keep_cache=True)
                if any(s.request is not None for s in self._slots):
                    try:
                        self._step(out)
                    except Exception as exc:  # a failed step fails its requests, not the server
                        log.exception("%s: decoding step failed", self.model_id)
                        for s in self._slots:
                            if s.request is not None:
                                out.append((s.request, RuntimeError(f"generation failed: {exc}")))
                                out.append((s.request, END))
                                self._release(s.request, keep_cache=False)
                self._deliver(out)
        except BaseException:
            log.exception("%s: the decoding thread stopped; the model is unloaded", self.model_id)
            raise
        finally:
            self._shutdown()

    def _idle(self) -> bool:
        """Nothing to decode and no reason to stop (read under _cond)."""
        return not self._closing and not self._waiting and self._n_active == 0

    def _admit(self) -> None:
        """Move waiting requests into free slots (decoding thread, _cond held).

        A prompt starts from the longest prefix already in the KV cache: the chosen free
        slot's own leftovers, or, if another slot (running or idle) holds more of it, a copy
        of that slot's cells. A request whose
        prefix another request is still prefilling waits for it rather than computing the
        same cells twice: a burst of requests with one long system prompt prefills it once.
        """
        deferred: list[_Request] = []
        while self._waiting:
            free = [s for s in self._slots if s.request is None]
            if not free:
                break
            r = self._waiting.popleft()
            limit = len(r.prompt) - 1  # the last prompt token is always fed, for its logits
            slot = max(free, key=lambda s: _common_prefix(s.tokens, r.prompt))
            keep = min(_common_prefix(slot.tokens, r.prompt), limit)
            source, shared = None, keep
            if self._share_prefix:
                for other in self._slots:
                    if other is not slot:
                        common = min(_common_prefix(other.tokens, r.prompt), limit)
                        if common > shared:
                            source, shared = other, common
                soon = max(
                    (
                        min(_common_prefix(o.request.prompt, r.prompt), limit)
                        for o in self._slots
                        if o.request is not None and o.request.n_fed < len(o.request.prompt)
                    ),
                    default=0,
                )
                if soon >= shared + _MIN_SHARED_PREFIX:
                    deferred.append(r)
                    continue
            ll = self._ll
            if source is not None and shared >= keep + _MIN_SHARED_PREFIX:
                # Across KV streams llama.cpp copies a whole stream (a memcpy of a few MB at
                # the next decode, far cheaper than prefilling 16+ tokens), then the copy is
                # cut back to the shared prefix.
                ll.llama_memory_seq_cp(self._mem, source.seq_id, slot.seq_id, -1, -1)
                ll.llama_memory_seq_rm(self._mem, slot.seq_id, shared, -1)
                slot.tokens[:] = source.tokens[:shared]
                keep = shared
            elif keep < len(slot.tokens) and not ll.llama_memory_seq_rm(
                self._mem, slot.seq_id, keep, -1
            ):
                # Models whose memory cannot be cut (recurrent ones) start again from zero.
                ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                keep = 0
            del slot.tokens[keep:]
            r.slot = slot
            r.n_fed = keep
            r.sampler = self._make_sampler(r.req)
            slot.request = r
            self._n_active += 1
        self._waiting.extendleft(reversed(deferred))

    def _make_sampler(self, req: GenRequest) -> Any:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if req.temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        # OpenAI's order: scale by temperature, then keep the nucleus of that distribution.
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(float(req.temperature)))
        if req.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(float(req.top_p), 1))
        seed = random.getrandbits(32) if req.seed is None else req.seed & 0xFFFFFFFF
        if seed == ll.LLAMA_DEFAULT_SEED:  # that value means "pick a random seed" to llama.cpp
            seed ^= 1
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def _release(self, r: _Request, *, keep_cache: bool) -> None:
        """Give r's slot back. Its KV cells stay as a prefix cache unless ``keep_cache`` is
        false (after a failed step their content is unknown)."""
        slot = r.slot
        if slot is not None:
            if not keep_cache:
                self._ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.tokens.clear()
            slot.request = None
            r.slot = None
            with self._cond:
                self._n_active -= 1
        if r.sampler is not None:
            self._ll.llama_sampler_free(r.sampler)
            r.sampler = None
        r.done = True

    def _step(self, out: list[tuple[_Request, Any]]) -> None:
        ll = self._ll
        batch = self._batch
        n = 0
        logits_at: list[tuple[_Request, int]] = []
        fed: list[tuple[_Slot, list[int]]] = []

        def add(token: int, pos: int, seq: int, want_logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = want_logits
            n += 1

        running = [s.request for s in self._slots if s.request is not None]
        # Sequences already generating go first: one token each keeps every stream moving.
        for r in running:
            if r.next_token is not None and r.slot is not None:
                logits_at.append((r, n))
                add(r.next_token, len(r.slot.tokens), r.slot.seq_id, True)
                fed.append((r.slot, [r.next_token]))
                r.next_token = None
        # Prompts fill what is left of the batch, oldest request first.
        for r in sorted(running, key=lambda q: q.t_enqueued):
            prefilling = r.slot
            if prefilling is None or r.n_fed >= len(r.prompt) or n >= self._n_batch:
                continue
            take = min(self._n_batch - n, len(r.prompt) - r.n_fed)
            chunk = r.prompt[r.n_fed : r.n_fed + take]
            base = len(prefilling.tokens)
            for i, tok in enumerate(chunk):
                last = r.n_fed + i == len(r.prompt) - 1
                if last:
                    logits_at.append((r, n))
                add(tok, base + i, prefilling.seq_id, last)
            fed.append((prefilling, chunk))
            r.n_fed += take
            self._n_prefilled += take
        if n == 0:
            return
        threads = self._threads.now()
        if threads != self._threads_set:
            ll.llama_set_n_threads(self._ctx, threads, threads)
            self._threads_set = threads
        batch.n_tokens = n
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for slot, tokens in fed:
            slot.tokens.extend(tokens)

        for r, idx in logits_at:
            token = ll.llama_sampler_sample(r.sampler, self._ctx, idx)
            r.n_generated += 1
            finish: str | None = None
            if ll.llama_vocab_is_eog(self._vocab, token):
                text = r.text.flush()
                finish = "stop"
            else:
                text = r.text.feed(self._piece(token))
                if r.text.stopped:
                    finish = "stop"
                elif r.n_generated >= r.max_new:
                    text += r.text.flush()
                    finish = "stop" if r.text.stopped else "length"
                else:
                    r.next_token = token
            if finish is None:
                if text:
                    out.append((r, GenChunk(text)))
                continue
            out.append(
                (
                    r,
                    GenChunk(
                        text,
                        finish_reason=finish,
                        prompt_tokens=len(r.prompt),
                        completion_tokens=r.n_generated,
                    ),
                )
            )
            out.append((r, END))
            self._release(r, keep_cache=True)

    def _deliver(self, out: list[tuple[_Request, Any]]) -> None:
        """Hand a step's chunks to their event loops: one wake-up per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Any]]] = {}
        for r, item in out:
            by_loop.setdefault(r.loop, []).append((r, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                for r, _ in items:
                    r.cancelled = True

    def _shutdown(self) -> None:
        ll = self._ll
        err = RuntimeError(f"model {self.model_id} has been unloaded")
        out: list[tuple[_Request, Any]] = []
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
        for r in waiting:
            r.done = True
            out += [(r, err), (r, END)]
        for s in self._slots:
            if s.request is not None:
                out += [(s.request, err), (s.request, END)]
                self._release(s.request, keep_cache=False)
        self._deliver(out)
        self._unloaded = True
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        ll.llama_model_free(self._model)


def _put_all(items: list[tuple[_Request, Any]]) -> None:
    for r, item in items:
        r.queue.put_nowait(item)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _is_idle(engine: Engine) -> bool:
    # Engines that cannot say whether they are busy are never unloaded behind a client's back.
    stats = getattr(engine, "stats", None)
    if stats is None:
        return False
    numbers = stats()
    return bool(numbers.get("active", 1) == 0 and numbers.get("waiting", 1) == 0)


# ---- the registry ------------------------------------------------------------------------------


class ModelRegistry:
    """The models this server offers, and their engines once loaded.

    Engines load on first use, off the event loop, once even when many requests ask at the
    same moment. At most ``max_loaded`` engines stay loaded; the least recently used idle one
    is unloaded to make room (a fine-tuning session can produce many models).
    """

    def __init__(
        self,
        extra_paths: Sequence[Path] = (),
        n_threads: int | None = None,
        max_queue: int = 64,
        *,
        n_parallel: int = 8,
        context_length: int = 2048,
        max_loaded: int = 3,
    ) -> None:
        self.n_threads = n_threads  # None: llama.cpp engines follow the machine's load
        self.max_queue = max_queue
        self.n_parallel = n_parallel
        self.context_length = context_length
        self.max_loaded = max_loaded
        self._models: dict[str, ModelInfo] = {}
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Engine]] = {}
        try:
            path = default_gguf_path()
        except FileNotFoundError as exc:
            log.warning("%s", exc)
        else:
            self._models[DEFAULT_MODEL_ID] = ModelInfo(
                id=DEFAULT_MODEL_ID,
                kind="gguf",
                path=path,
                created=int(path.stat().st_mtime),
                owned_by="distill-tui",
            )
        for extra in extra_paths:
            info = self._info_for_path(Path(extra))
            if info is None:
                continue
            if info.id in self._models:
                log.warning("model %s (%s) is already listed; not adding it twice", info.id, extra)
                continue
            self._models[info.id] = info

    @staticmethod
    def _info_for_path(path: Path) -> ModelInfo | None:
        path = path.expanduser()
        if path.is_file() and path.suffix.lower() == ".gguf":
            kind, model_id = "gguf", path.stem.lower()
        elif path.is_dir() and (path / "config.json").is_file():
            kind, model_id = "hf", path.name
        else:
            log.warning("%s is neither a .gguf file nor a model directory with config.json", path)
            return None
        return ModelInfo(
            id=model_id,
            kind=kind,
            path=path.resolve(),
            created=int(path.stat().st_mtime),
            owned_by="user",
        )

    def list(self) -> list[ModelInfo]:
        return list(self._models.values())

    def info(self, model_id: str) -> ModelInfo:
        try:
            return self._models[model_id]
        except KeyError:
            raise KeyError(model_id) from None

    def add(self, info: ModelInfo) -> None:
        """Offer another model (e.g. a fine-tuned one once its job succeeds)."""
        old = self._models.get(info.id)
        self._models[info.id] = info
        if old is not None and (old.path, old.kind) != (info.path, info.kind):
            # Same id, other weights: the loaded engine is stale; the next request reloads.
            engine = self._engines.pop(info.id, None)
            if engine is not None:
                try:
                    asyncio.get_running_loop().create_task(engine.aclose())
                except RuntimeError:  # no loop running: close it on a thread of its own
                    threading.Thread(target=asyncio.run, args=(engine.aclose(),)).start()

    async def engine(self, model_id: str) -> Engine:
        info = self.info(model_id)
        engine = self._engines.get(model_id)
        if engine is not None:
            self._engines.move_to_end(model_id)
            return engine
        pending = self._loading.get(model_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(info))
            self._loading[model_id] = pending
            pending.add_done_callback(lambda _f: self._loading.pop(model_id, None))
        # shield: one caller giving up must not cancel the load the others wait for
        return await asyncio.shield(pending)

    async def _load(self, info: ModelInfo) -> Engine:
        started = time.perf_counter()
        engine: Engine
        if info.kind == "gguf":
            engine = await asyncio.to_thread(
                LlamaEngine,
                info.id,
                info.path,
                n_threads=self.n_threads,
                max_queue=self.max_queue,
                n_parallel=self.n_parallel,
                context_length=self.context_length,
            )
        elif info.kind == "hf":
            # imported here: it pulls in torch and transformers, which a GGUF-only server
            # never needs to pay for
            from tui.local.hf_engine import HFEngine

            engine = await asyncio.to_thread(
                HFEngine,
                info.id,
                info.path,
                n_threads=self.n_threads,
                max_queue=self.max_queue,
            )
        else:
            raise ValueError(f"model {info.id}: unknown kind {info.kind!r}")
        log.info("loaded %s (%s) in %.2f s", info.id, info.kind, time.perf_counter() - started)
        self._engines[info.id] = engine
        await self._evict()
        return engine

    async def _evict(self) -> None:
        while len(self._engines) > self.max_loaded:
            idle = [mid for mid, e in list(self._engines.items())[:-1] if _is_idle(e)]
            if not idle:
                return
            engine = self._engines.pop(idle[0])
            await engine.aclose()

    async def aclose(self) -> None:
        for pending in list(self._loading.values()):
            pending.cancel()
        engines = list(self._engines.values())
        self._engines.clear()
        for engine in engines:
            await engine.aclose()
