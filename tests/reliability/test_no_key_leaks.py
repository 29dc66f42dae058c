"""A planted API key, after `distill-tui run` has done the whole recipe against the fake
OpenAI server (generation, grading, the training file, a fine-tuning job, the report), is in
none of: the workspace (database, exports, reports, the local backend's files and logs), the
config file the Settings screen writes, the recipe's config, or what the command printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.fake_openai import like_openai
from tui.engine.datasets import ItemDraft
from tui.engine.settings import Settings, save_settings
from tui.engine.store import Store

COMMAND = Path(sys.executable).parent / "distill-tui"
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-planted-9f3e1c7a5b2d4e6f8a0c"


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_no_key_anywhere_after_a_full_recipe(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = home / "config.toml"
    store = Store.open(workspace)
    items = [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
        for i in range(20)
    ]
    dataset = store.create_dataset("tiny-git", "Reply with a git command.", items)
    store.random_split(dataset, 0.25, seed=3)
    store.close()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[recipe]\ndataset = "tiny-git"\nmax_tokens = 8\nconcurrency = 4\n')

    with like_openai(api_key=KEY, tokens_per_reply=3, job_seconds=0.3) as fake:
        # What the Settings screen writes, with the key in the settings it saves from.
        save_settings(Settings(api_key=KEY, base_url=fake.base_url, backend="openai"), config)
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DISTILL_", "OPENAI_"))
        }
        env.update(
            OPENAI_API_KEY=KEY,
            DISTILL_BACKEND="openai",
            DISTILL_BASE_URL=fake.base_url,
            DISTILL_CONFIG=str(config),
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
        )
        result = subprocess.run(
            [str(COMMAND), "--workspace", str(workspace), "run", "--config", str(recipe), "--yes"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        requests = list(fake.requests)
    assert result.returncode == 0, result.stdout + result.stderr

    # The recipe really ran, with the key on every request.
    paths = {f"{r.method} {r.path}" for r in requests}
    assert "POST /v1/chat/completions" in paths
    assert "POST /v1/files" in paths and "POST /v1/fine_tuning/jobs" in paths
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in requests)
    assert (workspace / "reports" / "recipe.json").is_file()
    assert list((workspace / "exports").glob("train-*.jsonl"))

    # Anywhere it could have been written: the full key, or its distinctive part.
    core = KEY.removeprefix("sk-planted-").encode()
    written = [*files_under(workspace, home), recipe]
    assert len(written) > 5
    for path in written:
        data = path.read_bytes()
        assert KEY.encode() not in data and core not in data, path
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        assert core.decode() not in text, name
