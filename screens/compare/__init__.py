"""The Compare screen, its panels and its item dialog."""

from screens.compare.dialog import CompareItemDialog
from screens.compare.marks import DIFF_NEW, DIFF_OLD
from screens.compare.screen import CompareScreen

__all__ = ["DIFF_NEW", "DIFF_OLD", "CompareItemDialog", "CompareScreen"]
