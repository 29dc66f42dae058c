"""The embedded OpenAI-compatible backend: real small models on CPU (no textual imports)."""
