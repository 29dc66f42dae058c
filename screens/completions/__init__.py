"""The Completions screen: `screen` (the stored completions across runs, filtered as the
dashboard filters them, one opened, the set handed to Evaluate or Distill) and `stored` (the
"From backend…" dialog that imports the backend's stored completions as a run)."""

from screens.completions.screen import CompletionDialog, CompletionsScreen, completion_cells

__all__ = ["CompletionDialog", "CompletionsScreen", "completion_cells"]
