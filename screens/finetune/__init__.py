"""The Fine-tune screen, built from panels: `training` (the training set and its validation
report), `launch` (the base model and the job's settings), `jobs` (the jobs and the selected
one's detail); `screen` composes them."""

from screens.finetune.screen import FineTuneScreen
from screens.finetune.training import SELECTION, references_source, run_source

__all__ = ["SELECTION", "FineTuneScreen", "references_source", "run_source"]
