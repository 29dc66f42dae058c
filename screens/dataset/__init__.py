"""The Dataset screen and its panels."""

from screens.dataset.screen import DatasetScreen

__all__ = ["DatasetScreen"]
