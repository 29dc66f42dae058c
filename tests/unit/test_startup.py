"""`distill-tui --version` and `--help` import nothing heavy: building the argument parser
used to import the recipe and with it the whole openai package (0.9 s before a word was
printed). Checked by what a fresh interpreter has imported, not by a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.deps import ROOT

HEAVY = (
    "openai",
    "textual",
    "pydantic",
    "rich",
    "httpx2",
    "tui.engine.recipe",
    "tui.engine.store",
    "tui.app",
    "tui.recipe_console",
    "fastapi",
    "uvicorn",
    "llama_cpp",
    "torch",
    "numpy",
)

PROBE = """
import json, sys
from tui.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize("flag", ["--version", "--help", "run --help", "--workspace ws --help"])
def test_the_parser_imports_nothing_heavy(flag: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", PROBE, *flag.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip(), "nothing printed"
    modules = set(json.loads(child.stderr.strip().splitlines()[-1]))
    loaded = sorted(m for m in HEAVY if m in modules)
    assert loaded == [], f"{flag} imported {loaded}"
