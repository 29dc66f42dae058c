"""distill-tui: model distillation from the terminal."""

# The one place the version is written (pyproject reads it: [tool.hatch.version]); a literal,
# not importlib.metadata, which alone cost `distill-tui --version` 0.1-0.3 s to import.
__version__ = "0.1.0"
