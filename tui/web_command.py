"""`distill-tui web`: the same TUI in a browser (textual-serve), for demos to people without a
terminal. Loopback by default: anyone who can reach the port drives the app, with your keys."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tui.engine.extras import web_missing
from tui.engine.host import is_loopback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding to a non-loopback address (anyone who reaches it controls the app)",
    )
    parser.add_argument("--public-url", help="the URL browsers use, when behind a proxy")


def run(args: argparse.Namespace, workspace: Path | None) -> int:
    missing = web_missing()
    if missing is not None:
        print(f"distill-tui web: {missing}.", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.allow_remote:
        print(
            f"distill-tui web: refusing to bind {args.host}: anyone who can reach it would "
            "control the app. Add --allow-remote if that is what you want.",
            file=sys.stderr,
        )
        return 2
    from textual_serve.server import Server

    command = [sys.executable, "-m", "tui.cli"]
    if workspace is not None:
        command += ["--workspace", str(workspace.resolve())]
    server = Server(
        shlex.join(command),
        host=args.host,
        port=args.port,
        title="distill-tui",
        public_url=args.public_url,
    )
    server.serve()
    return 0
