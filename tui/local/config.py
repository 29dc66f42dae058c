"""The local server's configuration (what `distill-tui serve` and the tests pass in)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass
class ServerConfig:
    workspace: Path
    api_key: str
    models: list[Path] = field(default_factory=list)  # extra GGUF files / HF directories
    max_body_bytes: int = 16 * MiB
    max_upload_bytes: int = 512 * MiB  # OpenAI's per-file limit
    max_queue: int = 64  # waiting generation requests per model before 429
    n_threads: int | None = None
    # Model ids to load before serving; None = the first listed model (the default one).
    preload: list[str] | None = field(default_factory=list)
    trainer_python: str = sys.executable
