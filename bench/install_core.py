"""A backend-only user's install, measured: `pip install -e .` (the core) into a fresh venv
with every compiler on PATH replaced by one that fails, how long it takes and how much it
puts on disk; then `distill-tui --version`; then the core-only paths (the recipe, the TUI,
the embedded backend's refusal: tests/helpers/core_only.py) against the fake OpenAI server.
Optionally the `metrics` extra on top (`--metrics`), to see what it weighs.

    .venv/bin/python bench/install_core.py [--metrics] [--keep]

Prints figures with the machine's load; asserts only what makes the figures meaningless
(a failed install, a compiler called).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.core_only import BLOCKED_ENV, RESULT_PREFIX  # noqa: E402
from tests.helpers.fake_openai import like_openai  # noqa: E402

COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "clang++", "cmake", "make", "ninja", "rustc")


def load() -> str:
    return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def no_compilers(folder: Path, log: Path) -> dict[str, str]:
    """An environment whose PATH finds a failing, logging stand-in for every compiler."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COMPILERS:
        shim = folder / name
        # `--version` alone is a probe, not a build (pip asks `rustc --version` for its
        # User-Agent): answered as "not there" without being counted.
        shim.write_text(
            f'#!/bin/sh\n[ "$*" = "--version" ] && exit 1\necho "{name} $*" >> {log}\nexit 1\n'
        )
        shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{folder}:{env['PATH']}"
    env["CC"] = str(folder / "cc")
    env["CXX"] = str(folder / "c++")
    return env


def pip_install(venv: Path, spec: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-cache-dir", "-q", "-e", spec],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", action="store_true", help="also install the metrics extra")
    parser.add_argument("--keep", action="store_true", help="keep the venv and print its path")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="distill-core-"))
    venv = work / "venv"
    log = work / "compilers.log"
    env = no_compilers(work / "shims", log)
    print(f"fresh venv {venv}; {load()}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    before = size_mb(site)

    seconds = pip_install(venv, ".", env)
    core_mb = size_mb(site) - before
    compiled = log.read_text() if log.exists() else ""
    print(f"pip install -e . : {seconds:.1f} s, {core_mb:.0f} MB in site-packages; {load()}")
    print(f"compilers called: {compiled.strip() or 'none'}")
    freeze = subprocess.run(
        [str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True
    ).stdout
    print(f"distributions installed: {len(freeze.splitlines())}")

    times = []
    for _ in range(5):
        started = time.monotonic()
        subprocess.run([str(venv / "bin" / "distill-tui"), "--version"], check=True,
                       capture_output=True)  # fmt: skip
        times.append(time.monotonic() - started)
    print(f"distill-tui --version: median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}); {load()}")  # fmt: skip

    with like_openai(tokens_per_reply=3, job_seconds=0.3) as fake:
        child_env = {
            **os.environ,
            BLOCKED_ENV: "[]",  # nothing to block: this venv has no extras
            "DISTILL_BACKEND": "openai",
            "DISTILL_BASE_URL": fake.base_url,
            "DISTILL_API_KEY": fake.api_key,
            "DISTILL_CONFIG": str(work / "config.toml"),
        }
        started = time.monotonic()
        child = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "tests.helpers.core_only", str(work / "run")],
            cwd=ROOT,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        elapsed = time.monotonic() - started
    lines = [x for x in child.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if child.returncode != 0 or not lines:
        print(child.stdout[-3000:], child.stderr[-3000:])
        return 1
    result = json.loads(lines[0][len(RESULT_PREFIX) :])
    errored = sum(1 for g in result["grades"] if g[2] is None)
    print(
        f"core-only against the fake server ({elapsed:.1f} s): recipe exit {result['run_exit']}, "
        f"{result['completions']} completions, {len(result['grades'])} grades "
        f"({errored} errored: bleu without the metrics extra), report rows "
        f"{len(result['report']['rows'])}; TUI: {result['app_backend']}, screens "
        f"{len(set(result['app_screens']))}; no key/URL: run exit {result['local_run_exit']}, "
        f"serve exit {result['serve_exit']}"
    )
    print(f"  status line without the local extra: {result['local_app_backend']}")

    if args.metrics:
        before = size_mb(site)
        seconds = pip_install(venv, ".[metrics]", env)
        compiled = log.read_text() if log.exists() else ""
        print(
            f"pip install -e '.[metrics]' on top: {seconds:.1f} s, "
            f"{size_mb(site) - before:.0f} MB more; compilers: {compiled.strip() or 'none'}; "
            f"{load()}"
        )
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
