"""The Generate screen, built from panels: `form` (the run form), `runs` (the dataset's runs),
`live` (the run on view and its progress figures); `screen` composes them."""

from screens.generate.screen import GenerateScreen

__all__ = ["GenerateScreen"]
