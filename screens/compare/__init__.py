"""The Compare screen, its panels and its dialogs (the choice of runs, one item in full)."""

from screens.compare.choose import CompareDialog, CompareRequest
from screens.compare.dialog import CompareItemDialog
from screens.compare.marks import DIFF_NEW, DIFF_OLD
from screens.compare.screen import CompareScreen

__all__ = [
    "DIFF_NEW",
    "DIFF_OLD",
    "CompareDialog",
    "CompareItemDialog",
    "CompareRequest",
    "CompareScreen",
]
