"""HTTP-level figures for the local backend: the real `python -m tui.local.serve` process on
127.0.0.1, driven by the openai SDK the way the app drives it.

    .venv/bin/python bench/local_http.py [--model ID_OR_GGUF ...] [--tokens 64] [--streams 8]

bench/local_backend.py calls http_rows(args) to add these rows to its table. Figures per
model (median of --repeats trials): time to first token and tok/s of one stream; aggregate
tok/s of --streams concurrent streams; the server process's peak RSS. Each request asks for
exactly --tokens tokens (prompts that make the model write on; a trial that stops early
counts the tokens it got, from `usage`). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a busy market in a small coastal town in the morning.",
    "Write a long letter to a friend about learning to cook.",
    "Explain step by step how to plant and care for a vegetable garden.",
    "Tell a long story about a robot who wants to become a painter.",
    "Describe the history of the printing press in detail.",
    "Write a long diary entry of a sailor crossing the Atlantic.",
]


@dataclass
class Row:  # the same fields as bench/local_backend.py's Row, which prints these
    section: str
    figure: str
    value: float | str
    unit: str = ""
    note: str = ""


@dataclass
class Trial:
    ttft: float
    total: float
    tokens: int

    @property
    def rate(self) -> float:
        return self.tokens / self.total


class Server:
    """`python -m tui.local.serve` on a free port, stopped on close."""

    def __init__(self, workspace: Path, models: list[Path], threads: int | None) -> None:
        self.key = "sk-bench-" + secrets.token_urlsafe(16)
        port_file = workspace / "bench.port"
        port_file.unlink(missing_ok=True)
        args = [
            sys.executable, "-m", "tui.local.serve", "--port", "0", "--port-file", str(port_file),
            "--workspace", str(workspace), "--log-level", "warning",
        ]  # fmt: skip
        for m in models:
            args += ["--model", str(m)]
        if threads:
            args += ["--threads", str(threads)]
        env = dict(os.environ, DISTILL_LOCAL_API_KEY=self.key, HF_HUB_OFFLINE="1")
        self.log = open(workspace / "bench-serve.log", "ab")  # noqa: SIM115
        started = time.perf_counter()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited with {self.proc.returncode}; see {self.log.name}")
            time.sleep(0.02)
        # serve preloads the default model before it writes the port file
        self.start_s = time.perf_counter() - started
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def _stream(client: Any, model: str, i: int, tokens: int) -> Trial:
    start = time.perf_counter()
    ttft = None
    used = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return Trial(ttft if ttft is not None else total, total, used)


async def _bench(url: str, key: str, models: list[str], args: argparse.Namespace) -> list[Row]:
    import openai

    rows: list[Row] = []
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=600) as c:
        for model in models:
            sec = f"http {model}"
            # Warm-up: loads the model if it is not loaded, fills the caches.
            await _stream(c, model, 0, 4)
            singles, batches = [], []
            for r in range(args.repeats):
                singles.append(await _stream(c, model, r, args.tokens))
                started = time.perf_counter()
                trials = await asyncio.gather(
                    *(_stream(c, model, i, args.tokens) for i in range(args.streams))
                )
                elapsed = time.perf_counter() - started
                batches.append((sum(t.tokens for t in trials) / elapsed, trials))
            med = statistics.median
            rows += [
                Row(sec, "single stream: first token", med(t.ttft for t in singles), "s"),
                Row(sec, "single stream", med(t.rate for t in singles), "tok/s",
                    f"{med(t.tokens for t in singles):.0f} tokens"),
                Row(sec, f"{args.streams} concurrent streams", med(b[0] for b in batches),
                    "tok/s", "aggregate"),
                Row(sec, f"{args.streams} streams: first token (median of all)",
                    med(t.ttft for b in batches for t in b[1]), "s"),
            ]  # fmt: skip
    return rows


def http_rows(args: argparse.Namespace) -> list[Row]:
    """The HTTP section of bench/local_backend.py. Runs on its own thread and event loop, so
    it can be called from inside another running loop."""
    model_args: list[str] = list(getattr(args, "model", []) or [])
    paths = [Path(m) for m in model_args if m.endswith(".gguf") and Path(m).is_file()]
    ids = [DEFAULT_MODEL_ID] + [
        Path(m).stem.lower() if m.endswith(".gguf") and Path(m).is_file() else m for m in model_args
    ]
    workspace_arg = getattr(args, "workspace", None)
    tmp = None if workspace_arg else tempfile.TemporaryDirectory(prefix="bench-http-")
    workspace = Path(workspace_arg) if workspace_arg else Path(tmp.name)  # type: ignore[union-attr]
    server = Server(workspace, paths, getattr(args, "threads", None))
    result: list[Row] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.extend(asyncio.run(_bench(server.url, server.key, ids, args)))
        except BaseException as exc:
            error.append(exc)

    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if error:
            raise error[0]
        result.insert(0, Row("http server", "start to listening", server.start_s, "s",
                             "process start, imports, default model preloaded"))  # fmt: skip
        result.append(Row("http server", "peak RSS (server process)", server.peak_rss_mb(), "MB"))
    finally:
        server.close()
        if tmp is not None:
            tmp.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="extra model: id or .gguf")
    parser.add_argument("--workspace", default=None, help="serve this workspace (ft: models)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.2f}", flush=True)
    rows = http_rows(args)
    print(f"load average at the end={os.getloadavg()[0]:.2f}\n")
    sw = max(len(r.section) for r in rows)
    fw = max(len(r.figure) for r in rows)
    for r in rows:
        value = f"{r.value:.3g}" if isinstance(r.value, float) else str(r.value)
        print(f"{r.section:<{sw}}  {r.figure:<{fw}}  {value:>8} {r.unit:<6} {r.note}".rstrip())


if __name__ == "__main__":
    main()
