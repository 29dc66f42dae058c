"""The Completions screen: `screen` (the stored completions across runs, filtered as the
dashboard filters them, the set handed to Evaluate or Distill), `dialog` (one completion
opened in full) and `stored` (the "From backend…" dialog that imports the backend's stored
completions as a run)."""

from screens.completions.dialog import CompletionDialog
from screens.completions.screen import CompletionsScreen, completion_cells

__all__ = ["CompletionDialog", "CompletionsScreen", "completion_cells"]
