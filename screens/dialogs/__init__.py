"""Modal dialogs shared by the screens, one module a family. Each returns a typed result (None
when cancelled). A screen's own dialogs live beside it (screens/evals/dialogs.py, ...)."""

from screens.dialogs.base import ConfirmDialog, Dialog, TextPromptDialog
from screens.dialogs.datasets import DatasetAction, DatasetsDialog
from screens.dialogs.files import (
    EXPORT_FORMATS,
    FORMATS,
    ExportDialog,
    ExportRequest,
    ImportDialog,
    ImportRequest,
)
from screens.dialogs.items import (
    SPLIT_CHOICES,
    EditItemDialog,
    ItemEdit,
    SplitDialog,
    SplitRequest,
    SystemPromptDialog,
)

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "SPLIT_CHOICES",
    "ConfirmDialog",
    "DatasetAction",
    "DatasetsDialog",
    "Dialog",
    "EditItemDialog",
    "ExportDialog",
    "ExportRequest",
    "ImportDialog",
    "ImportRequest",
    "ItemEdit",
    "SplitDialog",
    "SplitRequest",
    "SystemPromptDialog",
    "TextPromptDialog",
]
