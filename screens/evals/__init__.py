"""The Evals screen (steps 4 and 7 of the recipe): `screen.py` composes the eval editor
(`editor.py`) and the results panel (`results.py`); `grader_form.py` and `dialogs.py` hold its
dialogs."""

from screens.evals.screen import EvalsScreen

__all__ = ["EvalsScreen"]
