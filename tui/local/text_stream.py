"""Generated tokens to the text deltas a client sees: whole UTF-8 characters only, and never
a stop string or any part of one. Both engines use this (llama.cpp hands over each token's
bytes; transformers' tokenizers hand over text through ``WindowDecoder``)."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class TextOut:
    """One completion's output text, fed piece by piece.

    Bytes go through an incremental UTF-8 decoder, so a character split over two tokens (most
    emoji and CJK with byte-level BPE) comes out whole once its last byte arrives. Stop strings
    are matched on the text. Only the end of the text that could still become a stop string is
    held back (the longest end that is a proper prefix of one), so a stop spanning two tokens
    is never partly sent and everything else is sent at once. After a stop, nothing more is
    sent; ``stopped`` says so.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes | str) -> str:
        """The text that can be sent now."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data) if isinstance(data, bytes) else data
        return self._release(final=False)

    def flush(self) -> str:
        """Everything still held, at the end of generation."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        # Released text never holds the start of a stop: whatever could start one is kept in
        # _pending, so searching _pending alone finds every stop.
        hits = [i for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            text, self._pending = self._pending[: min(hits)], ""
            self.stopped = True
            return text
        keep = len(self._pending) if final else len(self._pending) - self._held_back()
        text, self._pending = self._pending[:keep], self._pending[keep:]
        return text

    def _held_back(self) -> int:
        """Length of the longest end of the pending text that is a proper prefix of a stop."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(s[:n]):
                    best = n
                    break
        return best


class WindowDecoder:
    """Token ids in, new text out, for tokenizers that decode id lists rather than hand out
    each token's bytes (transformers). The usual prefix/read offset scheme: decode a small
    window and emit only what grew and does not end in a half character (U+FFFD)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self.decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""
