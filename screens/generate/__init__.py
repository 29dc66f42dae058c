"""The Generate screen, built from panels: `form` (the run form), `runs` (the dataset's runs),
`live` (the run on view: its header (`run_header`), `/` filter (`item_filter`), items table
(`items_table`) and stream panel (`stream_panel`)), `progress` (the progress line's figures);
`screen` composes them."""

from screens.generate.screen import GenerateScreen

__all__ = ["GenerateScreen"]
