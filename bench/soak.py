"""Soak the local backend: the real `python -m tui.local.serve` process under mixed load from
many clients for a long time, then print what it served and what it cost. Asserts nothing.

    .venv/bin/python bench/soak.py [--duration 1800] [--clients 64] [--model tiny|default|PATH]

Each client loops until the time is up, choosing at random (seeded) among: a streamed chat
completion read to the end; a stream cancelled after a few chunks (the connection dropped
mid-stream); a plain chat completion; listing models; a wrong API key (401); an invalid
request (NaN temperature, 400); an upload of a small JSONL file, then its deletion; and a
body over the server's limit (413). Printed: requests served, answers by status (and client
errors by kind), latency p50/p99/max, the server's RSS and open file descriptors at the start
and at the end (and peak RSS), whether it still answers afterwards, and the machine's load.

`--model tiny` (the default) serves the tests' tiny random model: the server's own machinery
under load rather than the CPU's arithmetic. `--model default` serves SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
MAX_BODY = 16 * MiB  # the server's default max_body_bytes (tui/local/config.py)
ACTIONS = {  # name: weight
    "stream": 30,
    "cancel": 15,
    "chat": 20,
    "models": 8,
    "bad_key": 8,
    "invalid": 8,
    "upload": 9,
    "oversized": 2,
}
PROMPTS = [
    "Create a new branch called 'feature-login'.",
    "Show the last five commits on one line each.",
    "Undo the last commit but keep the changes.",
    "List all remote branches.",
    "Write a long story about a lighthouse keeper.",
]
TRAINING_LINE = (
    json.dumps(
        {
            "messages": [
                {"role": "user", "content": "List all tags."},
                {"role": "assistant", "content": "git tag"},
            ]
        }
    )
    + "\n"
)


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def record(self, action: str, status: int | str, started: float) -> None:
        self.actions[action] += 1
        self.statuses[str(status)] += 1
        self.latencies.append(time.perf_counter() - started)


class Server:
    """`python -m tui.local.serve` on a free port in a workspace of its own."""

    def __init__(self, workspace: Path, model: str) -> None:
        self.key = "sk-soak-" + secrets.token_urlsafe(16)
        port_file = workspace / "soak.port"
        args = [
            sys.executable, "-m", "tui.local.serve", "--port", "0", "--port-file",
            str(port_file), "--workspace", str(workspace), "--log-level", "warning",
        ]  # fmt: skip
        self.model_prefix: str | None = None  # which listed model to load (the first: None)
        if model == "tiny":
            from tests.helpers.tiny_model import build_tiny_gguf

            path = build_tiny_gguf(workspace / "tiny-soak.gguf")
            args += ["--model", str(path), "--preload", "none"]
            self.model_prefix = path.stem
        elif model != "default":
            args += ["--model", model, "--preload", "none"]
            self.model_prefix = Path(model).stem
        env = dict(os.environ, DISTILL_LOCAL_API_KEY=self.key, HF_HUB_OFFLINE="1")
        self.log_path = workspace / "soak-serve.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 600
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start; see {self.log_path}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"

    def status(self, field_name: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def chat_body(
    model: str, rng: random.Random, max_tokens: int, **extra: object
) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        **extra,
    }


async def one_action(
    action: str,
    http: httpx2.AsyncClient,
    model: str,
    rng: random.Random,
    args: argparse.Namespace,
    tally: Tally,
    oversized: bytes,
) -> None:
    started = time.perf_counter()
    if action in ("stream", "cancel"):
        body = chat_body(model, rng, args.max_tokens, stream=True)
        async with http.stream("POST", "chat/completions", json=body) as response:
            chunks = 0
            stop_after = rng.randint(1, 4) if action == "cancel" else None
            async for _ in response.aiter_lines():
                chunks += 1
                if stop_after is not None and chunks >= stop_after:
                    break  # leaving the block drops the connection mid-stream
            tally.record(action, response.status_code, started)
    elif action == "chat":
        response = await http.post("chat/completions", json=chat_body(model, rng, args.max_tokens))
        tally.record(action, response.status_code, started)
    elif action == "models":
        tally.record(action, (await http.get("models")).status_code, started)
    elif action == "bad_key":
        response = await http.get("models", headers={"authorization": "Bearer sk-wrong"})
        tally.record(action, response.status_code, started)
    elif action == "invalid":
        text = json.dumps(chat_body(model, rng, args.max_tokens)).replace("0.8", "NaN")
        response = await http.post(
            "chat/completions", content=text, headers={"content-type": "application/json"}
        )
        tally.record(action, response.status_code, started)
    elif action == "upload":
        purpose = rng.choice(["fine-tune", "user_data"])
        data = TRAINING_LINE.encode() * rng.randint(1, 50)
        response = await http.post(
            "files", files={"file": ("soak.jsonl", data)}, data={"purpose": purpose}
        )
        tally.record(action, response.status_code, started)
        if response.status_code == 200:
            started = time.perf_counter()
            deleted = await http.delete(f"files/{response.json()['id']}")
            tally.record("delete", deleted.status_code, started)
    elif action == "oversized":
        response = await http.post(
            "chat/completions", content=oversized, headers={"content-type": "application/json"}
        )
        tally.record(action, response.status_code, started)


async def client_loop(
    index: int,
    url: str,
    key: str,
    model: str,
    args: argparse.Namespace,
    deadline: float,
    tally: Tally,
    oversized: bytes,
) -> None:
    rng = random.Random(args.seed * 1000 + index)
    names, weights = zip(*ACTIONS.items(), strict=True)
    async with httpx2.AsyncClient(
        base_url=url + "/", headers={"authorization": f"Bearer {key}"}, timeout=args.timeout
    ) as http:
        while time.monotonic() < deadline:
            action = rng.choices(names, weights)[0]
            started = time.perf_counter()
            try:
                await one_action(action, http, model, rng, args, tally, oversized)
            except Exception as error:  # a client-side failure: counted, the loop goes on
                tally.errors[f"{action}: {type(error).__name__}"] += 1
                tally.statuses["client error"] += 1
                tally.latencies.append(time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def soak(server: Server, args: argparse.Namespace) -> Tally:
    async with httpx2.AsyncClient(
        base_url=server.url + "/", headers={"authorization": f"Bearer {server.key}"}, timeout=60
    ) as http:
        listed = [m["id"] for m in (await http.get("models")).json()["data"]]
        prefix = server.model_prefix or listed[0]
        model = next(m for m in listed if m.startswith(prefix))
        # One request first, so the start figures are of a warm server.
        await http.post("chat/completions", json=chat_body(model, random.Random(0), 4))
    tally = Tally()
    oversized = b" " * (MAX_BODY + 1)
    deadline = time.monotonic() + args.duration
    await asyncio.gather(
        *(
            client_loop(i, server.url, server.key, model, args, deadline, tally, oversized)
            for i in range(args.clients)
        )
    )
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=1800, help="seconds (default 1800)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--model", default="tiny", help="tiny (default), default, or a .gguf")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300, help="a client's request timeout")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="distill-soak-") as tmp:
        server = Server(Path(tmp), args.model)
        try:
            load_start = os.getloadavg()
            rss_start, fds_start = server.status("VmRSS"), server.open_fds()
            started = time.perf_counter()
            tally = asyncio.run(soak(server, args))
            elapsed = time.perf_counter() - started
            load_end = os.getloadavg()
            rss_end, fds_end = server.status("VmRSS"), server.open_fds()
            peak = server.status("VmHWM")
            try:
                alive = httpx2.get(
                    server.url + "/models",
                    headers={"authorization": f"Bearer {server.key}"},
                    timeout=60,
                ).status_code
            except httpx2.HTTPError as error:
                alive = type(error).__name__
        finally:
            server.close()

    served = sum(n for status, n in tally.statuses.items() if status != "client error")
    print(f"soak: {args.clients} clients for {elapsed:.0f} s, model {args.model}")
    print(f"requests served      {served} ({served / elapsed:.1f}/s)")
    print(
        "by status            " + ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses.items()))
    )
    print(
        "by action            " + ", ".join(f"{a}: {n}" for a, n in sorted(tally.actions.items()))
    )
    if tally.errors:
        print(
            "client errors        " + ", ".join(f"{e}: {n}" for e, n in tally.errors.most_common())
        )
    lat = tally.latencies
    worst = max(lat, default=float("nan"))
    print(
        f"latency              p50 {percentile(lat, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(lat, 0.99) * 1000:.0f} ms, max {worst * 1000:.0f} ms"
    )
    print(
        f"server RSS           start {rss_start:.0f} MB, end {rss_end:.0f} MB, peak {peak:.0f} MB"
    )
    print(f"server open fds      start {fds_start}, end {fds_end}")
    print(f"answers afterwards   GET /v1/models -> {alive}")
    print(
        f"machine load         start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
        f"end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
