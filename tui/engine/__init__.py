"""The app's brain: no textual imports here (the TUI, the CLI and the tests all use it)."""
