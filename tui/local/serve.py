"""`distill-tui serve`: run the local OpenAI-compatible backend.

The app starts it itself (tui/engine/backend.py: LocalServer) on a free loopback port with a
one-time key, `--port-file` to learn the port and `--exit-when-unused` so that it never
outlives the apps using it. By hand: `distill-tui serve --port 8000` and point any OpenAI
client at http://127.0.0.1:8000/v1 with the printed key.

One server per workspace (tui/engine/local_instance.py): a second one on the same workspace
refuses to start and says where the running one listens; the running one publishes its URL
and key in `<workspace>/local/server.json` (readable by its owner only), where the apps of
that workspace find it instead of starting their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

from tui.engine import local_instance
from tui.engine.extras import local_missing_message, missing_local
from tui.engine.host import is_loopback, pid_alive
from tui.local.lifetime import die_with_parent

log = logging.getLogger("distill.local.serve")

ENV_API_KEY = "DISTILL_LOCAL_API_KEY"
PARENT_POLL_SECONDS = 0.5
# After the parent died we ask uvicorn to stop; if it has not within this time (a stuck
# stream, a model still loading), the process exits anyway.
HARD_EXIT_SECONDS = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on; 0 picks a free port"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"bearer token clients must send (default: ${ENV_API_KEY}, else a random one "
        "that is printed; required when binding beyond loopback)",
    )
    parser.add_argument(
        "--workspace",
        dest="serve_workspace",
        type=Path,
        default=None,
        metavar="DIR",
        help="workspace directory; the server keeps its data in <workspace>/local "
        "(default: $DISTILL_WORKSPACE or ./distill-workspace)",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="serve another model: a GGUF file or a transformers directory (repeatable)",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=None,
        metavar="MODEL_ID",
        help="load this model before accepting requests (repeatable; default: the first "
        "model listed; 'none' to load lazily)",
    )
    parser.add_argument(
        "--port-file", type=Path, default=None, help="write the bound port here once listening"
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process (the app that started the server) exits",
    )
    parser.add_argument(
        "--exit-when-unused",
        action="store_true",
        help="exit once no app registered in <workspace>/local/clients is alive (how the app "
        "starts it: it serves every app of the workspace, not only the one that started it)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for generation")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="waiting requests per model before answering 429 (default 64)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    parser.add_argument("--access-log", action="store_true", help="log every request")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _already_running(workspace: Path) -> str | None:
    """Why this server must not start: another one holds the workspace's local store (its job
    recovery would fail the running server's jobs). None when the store is free."""
    holder = local_instance.server_holder(workspace)
    if holder is None:
        return None
    info = local_instance.running(workspace)
    where = (
        f" at {info.url}; its key is in {info.path} (readable by you only)"
        if info is not None
        else " (still starting)"
    )
    return (
        f"a local server is already running for the workspace {workspace}: "
        f"{holder.describe()}{where}. Use that one, or stop it first."
    )


def _client_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


def _write_port_file(path: Path, port: int) -> None:
    # Atomic: the launcher polls for the file and must never read half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    missing = missing_local()
    if missing:
        print(f"distill-tui serve: {local_missing_message(missing)}.", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # `distill-tui --workspace DIR serve` passes the global option as args.workspace.
    workspace = getattr(args, "serve_workspace", None) or getattr(args, "workspace", None)
    if workspace is None:
        workspace = Path(os.environ.get("DISTILL_WORKSPACE", "distill-workspace"))
    workspace = Path(workspace).expanduser()
    busy = _already_running(workspace)
    if busy is not None:
        print(f"distill-tui serve: {busy}", file=sys.stderr)
        return 2

    api_key = args.api_key or os.environ.get(ENV_API_KEY) or None
    if api_key is None:
        if not is_loopback(args.host):
            print(
                f"distill-tui serve: refusing to listen on {args.host} without an API key; "
                f"pass --api-key or set {ENV_API_KEY}.",
                file=sys.stderr,
            )
            return 2
        api_key = "sk-local-" + secrets.token_urlsafe(24)
        print(f"API key for this run: {api_key}", flush=True)

    if args.parent_pid is not None and os.getppid() == args.parent_pid:
        # The kernel's guarantee: SIGTERM us when the app dies, even by SIGKILL.
        die_with_parent(signal.SIGTERM)

    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"distill-tui serve: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, api_key, workspace, sock))
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()


async def _serve(
    args: argparse.Namespace, api_key: str, workspace: Path, sock: socket.socket
) -> int:
    import uvicorn

    from tui.local.server import ServerConfig, create_app

    # None = the first listed model (the default one), which is what the app asks for first.
    preload = None if args.preload is None else [p for p in args.preload if p.lower() != "none"]
    config = ServerConfig(
        workspace=workspace,
        api_key=api_key,
        models=list(args.models),
        max_queue=args.max_queue,
        n_threads=args.threads,
        preload=preload,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level=str(args.log_level).lower(),
            access_log=bool(args.access_log),
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            # Startup failed (uvicorn logged why); a lifespan error makes serve() return.
            with contextlib.suppress(BaseException):
                await serving
            return 1
        await asyncio.sleep(0.02)
    port = sock.getsockname()[1]
    log.info("listening on http://%s:%d/v1", args.host, port)
    # Now that our store is ours (the lifespan took its lock), say how to reach us.
    local_instance.publish(
        workspace, pid=os.getpid(), url=_client_url(args.host, port), api_key=api_key
    )
    if args.port_file is not None:
        _write_port_file(args.port_file, port)

    watchers = []
    if args.parent_pid is not None:
        watchers.append(asyncio.create_task(_watch_parent(server, args.parent_pid)))
    if getattr(args, "exit_when_unused", False):
        watchers.append(asyncio.create_task(_watch_clients(server, workspace)))
    try:
        await serving
    finally:
        for watcher in watchers:
            watcher.cancel()
        local_instance.unpublish(workspace, os.getpid())
    return 0


async def _watch_clients(server: object, workspace: Path) -> None:
    # The apps using us register in <workspace>/local/clients; the last one to leave (or die)
    # ends us. Unpublishing happens under the same lock an app joins with, so no app joins a
    # server that has decided to stop.
    while not await asyncio.to_thread(local_instance.unpublish_if_unused, workspace, os.getpid()):
        await asyncio.sleep(PARENT_POLL_SECONDS)
    log.warning("no app uses this server any more; shutting down")
    server.should_exit = True  # type: ignore[attr-defined]
    await asyncio.sleep(HARD_EXIT_SECONDS)
    log.error("shutdown took longer than %.0f s; exiting now", HARD_EXIT_SECONDS)
    os._exit(1)


async def _watch_parent(server: object, parent_pid: int) -> None:
    # Our direct parent's death shows as re-parenting (getppid changes); for a parent further
    # up (started through a wrapper) we watch its pid instead.
    direct = os.getppid() == parent_pid
    while (os.getppid() == parent_pid) if direct else pid_alive(parent_pid):
        await asyncio.sleep(PARENT_POLL_SECONDS)
    log.warning("parent process %d is gone; shutting down", parent_pid)
    server.should_exit = True  # type: ignore[attr-defined]
    await asyncio.sleep(HARD_EXIT_SECONDS)
    log.error("shutdown took longer than %.0f s; exiting now", HARD_EXIT_SECONDS)
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distill-tui serve", description="Run the local OpenAI-compatible backend."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
