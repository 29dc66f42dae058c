"""The `distill-tui` command: the TUI by default, plus `serve` (the embedded local backend)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tui import __version__

if TYPE_CHECKING:
    from tui.engine.settings import Settings
    from tui.engine.store import Store


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (its first word that is not an option)."""
    words = iter(argv)
    for word in words:
        if len(word) > 2 and "--workspace".startswith(word):  # argparse takes "--work" too
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, with the options of `command` only: each subcommand's module is
    imported when that subcommand is used, so `--version` and `--help` import nothing else."""
    parser = argparse.ArgumentParser(
        prog="distill-tui",
        description=(
            "Distil a large model into a small one from the terminal: edit a dataset, "
            "generate student and teacher outputs, grade them, fine-tune, compare."
        ),
        epilog=(
            "With no OPENAI_API_KEY and no DISTILL_BASE_URL the embedded local backend is "
            "started on 127.0.0.1. Settings: DISTILL_* environment variables, .env, or the "
            "TOML file named by DISTILL_CONFIG."
        ),
    )
    parser.add_argument("--version", action="version", version=f"distill-tui {__version__}")
    parser.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="workspace directory (default: ./distill-workspace or DISTILL_WORKSPACE)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("tui", help="open the terminal app (the default)")
    serve = commands.add_parser(
        "serve", help="run the embedded OpenAI-compatible backend with local models"
    )
    if command == "serve":
        from tui.local import serve as local_serve

        local_serve.add_arguments(serve)
    recipe = commands.add_parser(
        "run",
        help="run the whole recipe headless: baseline, teacher, fine-tune, compare",
        description=(
            "Run the seven steps of the distillation recipe without the TUI and print the "
            "comparison. Re-running skips finished steps and resumes a half-done one."
        ),
    )
    if command == "run":
        from tui import run_command

        run_command.add_arguments(recipe)
    web = commands.add_parser("web", help="serve the TUI in a browser (textual-serve)")
    if command == "web":
        from tui import web_command

        web_command.add_arguments(web)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(_command_of(argv)).parse_args(argv)
    if args.command == "serve":
        from tui.local import serve as local_serve

        if args.workspace is not None and getattr(args, "serve_workspace", None) is None:
            args.serve_workspace = args.workspace
        return local_serve.run(args)
    if args.command == "web":
        from tui import web_command

        return web_command.run(args, args.workspace)
    opened = _open(args.workspace, args.command or "tui")
    if isinstance(opened, int):
        return opened
    settings, store = opened
    try:
        if args.command == "run":
            from tui import run_command

            return run_command.run(args, settings, store)
        return _run_tui(settings, store)
    finally:
        store.close()


def _open(workspace: Path | None, command: str = "tui") -> tuple[Settings, Store] | int:
    """Settings and the workspace, or the exit code after a clear message. One writer per
    workspace: `run` refuses one that another process has open (exit code 2); the TUI opens
    it read-only and says so."""
    from pydantic import ValidationError

    from tui.engine.settings import config_path, load_settings
    from tui.engine.store import Store, WorkspaceBusy, WorkspaceError

    overrides = {"workspace": workspace} if workspace is not None else {}
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        print(
            f"distill-tui: invalid settings ({problems}). Check DISTILL_* variables, .env and "
            f"{config_path()}.",
            file=sys.stderr,
        )
        return 2
    try:
        store = Store.open(settings.workspace)
    except WorkspaceBusy as busy:
        if command != "tui":
            print(f"distill-tui {command}: {busy}", file=sys.stderr)
            return 2
        try:
            store = Store.open(settings.workspace, read_only=True)
        except WorkspaceError as exc:
            print(f"distill-tui: {busy} (and it cannot be read: {exc})", file=sys.stderr)
            return 2
    except WorkspaceError as exc:
        print(f"distill-tui: {exc}", file=sys.stderr)
        return 1
    return settings, store


def _run_tui(settings: Settings, store: Store) -> int:
    from tui.app import DistillApp
    from tui.engine.examples import ensure_shipped_dataset

    if not store.read_only:
        ensure_shipped_dataset(store)
    app = DistillApp(settings=settings, store=store)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
