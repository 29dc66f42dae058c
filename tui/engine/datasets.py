"""Import, export and validate datasets: the seed's JSON, JSONL (plain or OpenAI chat) and CSV.

Everything here is plain Python (no Textual): the dataset screen and the CLI call it.
Parsing is a synchronous core (`parse_dataset`) over bytes already in memory; the async
wrappers do the file I/O and the parsing in a thread so a big import never blocks the UI loop.
Only regular files are read: a named pipe would block a reader forever.

An import is all-or-nothing: the first problem raises `DatasetFormatError`, whose message
names the file, the line (or CSV row) and the problem, and nothing is returned.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import errno
import io
import itertools
import json
import os
import re
import secrets
import stat
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "MAX_IMPORT_BYTES",
    "MAX_INPUT_CHARS",
    "DatasetFormatError",
    "ItemDraft",
    "ParsedDataset",
    "csv_columns",
    "detect_format",
    "file_problem",
    "find_duplicates",
    "normalise_request",
    "parse_dataset",
    "read_dataset",
    "validate_request",
    "write_dataset",
]

MAX_IMPORT_BYTES = 100 * 1024 * 1024
MAX_INPUT_CHARS = 32_000

IMPORT_FORMATS = ("json", "jsonl", "csv")
# "chat-jsonl" writes OpenAI chat lines ({"messages": [...]}); on import it is plain "jsonl",
# which recognises chat lines by itself.
EXPORT_FORMATS = ("json", "jsonl", "chat-jsonl", "csv")

# Keys (JSON/JSONL objects) and columns (CSV) recognised when the caller names none; the first
# one present wins. Compared case-insensitively for CSV headers.
INPUT_KEYS = ("input", "request", "prompt", "question")
REFERENCE_KEYS = ("reference", "output", "ideal", "expected", "answer", "completion", "response")
SPLIT_KEYS = ("split",)

_SPLITS = {
    "": "",
    "train": "train",
    "training": "train",
    "eval": "eval",
    "evaluation": "eval",
    "test": "eval",
    "val": "eval",
    "valid": "eval",
    "validation": "eval",
}

_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_WS = " \t\n\r"
_SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ItemDraft:
    """One dataset item before it is stored: the request, its reference answer, its split."""

    input: str
    reference: str = ""
    split: str = ""  # "train" | "eval" | "" (unassigned)


@dataclass
class ParsedDataset:
    """The result of a successful import."""

    items: list[ItemDraft]
    source: Path
    format: str  # "json" | "jsonl" | "csv"
    system_prompt: str | None = None
    warnings: list[str] = field(default_factory=list)


class DatasetFormatError(ValueError):
    """A file that cannot be imported. `str(e)` is one message for the user."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None, unit: str = "line"):
        self.path = Path(path)
        self.problem = problem
        self.line = line
        self.unit = unit  # "line", or "row" for CSV (spreadsheet numbering: the header is row 1)
        where = f"{self.path.name}, {unit} {line}" if line is not None else self.path.name
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------- requests


# Control characters other than tab, newline and carriage return: a file may spell them as
# JSON escapes ("\u0000"), which decoding turns into the raw characters a text file refuses.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _control_problem(text: str, what: str) -> str | None:
    found = _CONTROL.search(text)
    if found is None:
        return None
    return (
        f"{what} contains a control character (U+{ord(found.group()):04X} at character "
        f"{found.start() + 1:,}); remove it"
    )


def _request_problem(text: str) -> str | None:
    if not text:
        return "the request is empty"
    if len(text) > MAX_INPUT_CHARS:
        return (
            f"the request is longer than {MAX_INPUT_CHARS:,} characters ({len(text):,} characters)"
        )
    return _control_problem(text, "the request")


def validate_request(text: str) -> str:
    """Return the request stripped, or raise ValueError saying why it cannot be used."""
    stripped = text.strip()
    problem = _request_problem(stripped)
    if problem:
        raise ValueError(problem[0].upper() + problem[1:] + ".")
    return stripped


@cache
def _punctuation() -> frozenset[str]:
    # Every punctuation (P*) and symbol (S*) character; built on first use (~0.15 s).
    return frozenset(
        chr(cp) for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] in "PS"
    )


_ASCII_PUNCTUATION = bytes(c for c in range(128) if unicodedata.category(chr(c))[0] in "PS")


def normalise_request(text: str) -> str:
    """Fold a request for duplicate detection: NFKC, casefold, drop punctuation and symbols
    (any script), collapse whitespace. "Create a branch 'Foo'!" -> "create a branch foo".

    Punctuation is removed, not replaced by a space, so "don't" and "dont" match.
    """
    if text.isascii():
        # Bytes operations are several times faster than str.translate here.
        folded = text.encode("ascii").translate(None, _ASCII_PUNCTUATION).lower()
        return b" ".join(folded.split()).decode("ascii")
    folded_text = unicodedata.normalize("NFKC", text).casefold()
    # A request holds few distinct punctuation characters: replacing each is faster than
    # str.translate with a table of all of them.
    for ch in _punctuation().intersection(folded_text):
        folded_text = folded_text.replace(ch, "")
    return " ".join(folded_text.split())


def find_duplicates(inputs: Sequence[str]) -> list[str]:
    """Flag duplicates, per item: "" (first occurrence or unique), "exact" (a later identical
    copy), or "normalised" (later, and equal to an earlier one only after normalise_request)."""
    exact: set[str] = set()
    normalised: set[str] = set()
    flags: list[str] = []
    for text in inputs:
        if text in exact:
            flags.append("exact")
            continue
        exact.add(text)
        key = normalise_request(text)
        if key in normalised:
            flags.append("normalised")
        else:
            normalised.add(key)
            flags.append("")
    return flags


# --------------------------------------------------------------------------- files


def _kind_problem(mode: int) -> str | None:
    """What is wrong with a file of this st_mode for an import, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "it is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "it is a named pipe (FIFO), not a regular file; save the data to a file first"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "it is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "it is a socket, not a regular file"
    return "it is not a regular file"


def _os_problem(error: OSError) -> str:
    return f"cannot read the file ({error.strerror or error})"


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be imported, from its metadata alone (it is never opened, so a FIFO
    cannot block the caller): missing, a directory, a named pipe, a device, a socket, or
    unreadable. None for a readable regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return _os_problem(e)
    problem = _kind_problem(mode)
    if problem is None and not os.access(path, os.R_OK):
        return f"cannot read the file ({os.strerror(errno.EACCES)})"
    return problem


def _open_regular(path: Path) -> io.BufferedReader:
    """Open `path` for reading only if it is a regular file. Opened non-blocking and checked
    on the open descriptor, so neither a FIFO nor a file swapped for one after a check can
    make the read wait forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DatasetFormatError(path, _os_problem(e)) from None
    try:
        problem = _kind_problem(os.fstat(fd).st_mode)
        if problem is not None:
            raise DatasetFormatError(path, problem)
        os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _read_file(path: Path) -> bytes:
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_IMPORT_BYTES:
            raise DatasetFormatError(path, _size_problem(size))
        try:
            # Never more than the limit (+1 to notice a file that grew since the fstat).
            return f.read(MAX_IMPORT_BYTES + 1)
        except OSError as e:
            raise DatasetFormatError(path, _os_problem(e)) from None


# --------------------------------------------------------------------------- formats


def _format_from_suffix(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".jsonl", ".ndjson", ".jsonlines"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".tab"):
        return "csv"
    return None


def _sniff_format(head: bytes) -> str:
    text = head.removeprefix(_UTF8_BOM).decode("utf-8", errors="replace").lstrip()
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        first = text.split("\n", 1)[0]
        try:
            obj = json.loads(first)
        except ValueError:
            return "json"  # an object spread over several lines: one JSON document
        if isinstance(obj, dict) and "requests" not in obj:
            return "jsonl"
        return "json"
    return "csv"


def detect_format(path: Path, data: bytes | None = None) -> str:
    """Return "json", "jsonl" or "csv": by the file's extension, else by sniffing its first bytes
    (`data` if given, else read from `path`)."""
    found = _format_from_suffix(Path(path))
    if found:
        return found
    if data is None:
        try:
            with _open_regular(Path(path)) as f:
                data = f.read(_SNIFF_BYTES)
        except (OSError, DatasetFormatError):
            return "csv"  # reading it for the import says what is wrong
    return _sniff_format(data[:_SNIFF_BYTES])


def _canonical_format(fmt: str) -> tuple[str, str | None]:
    """(format, csv delimiter) for an import format name."""
    f = fmt.lower()
    if f in ("json",):
        return "json", None
    if f in ("jsonl", "ndjson", "chat-jsonl"):
        return "jsonl", None
    if f == "tsv":
        return "csv", "\t"
    if f == "csv":
        return "csv", None
    raise ValueError(f"unknown dataset format {fmt!r}; use one of {', '.join(IMPORT_FORMATS)}")


# --------------------------------------------------------------------------- decoding


def _size_problem(size: int) -> str:
    return (
        f"the file is {size / 1024**2:,.1f} MB; files larger than "
        f"{MAX_IMPORT_BYTES // 1024**2} MB cannot be imported"
    )


def _decode(data: bytes, name: Path) -> str:
    """Bytes -> text, refusing empty, oversized, binary and non-UTF-8 files."""
    if len(data) > MAX_IMPORT_BYTES:
        raise DatasetFormatError(name, _size_problem(len(data)))
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DatasetFormatError(name, "the file is UTF-16 text; save it as UTF-8 and try again")
    offset = 0
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
        offset = len(_UTF8_BOM)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DatasetFormatError(
            name, f"looks like a binary file (a NUL byte at byte offset {nul + offset:,})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 1].hex()
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetFormatError(
            name,
            f"not UTF-8 text (byte 0x{bad} at byte offset {e.start + offset:,}); "
            "save the file as UTF-8 and try again",
            line,
        ) from None
    if not text.strip():
        raise DatasetFormatError(name, "the file is empty")
    return text


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


_DECODER = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _JSON_WS:
        i += 1
    return i


def _json_line(text: str, path: Sequence[str | int]) -> int | None:
    """The line where the value at `path` (object keys and list indices) starts in a JSON
    document. Only used on the error path, so it may walk the whole document."""
    try:
        i = _skip_ws(text, 0)
        for step in path:
            if isinstance(step, str):
                if text[i] != "{":
                    return None
                i += 1
                while True:
                    i = _skip_ws(text, i)
                    if text[i] == "}":
                        return None
                    key, i = _DECODER.raw_decode(text, i)
                    i = _skip_ws(text, i)
                    i = _skip_ws(text, i + 1)  # the ':'
                    if key == step:
                        break
                    _, i = _DECODER.raw_decode(text, i)
                    i = _skip_ws(text, i)
                    if text[i] == ",":
                        i += 1
            else:
                if text[i] != "[":
                    return None
                i += 1
                k = 0
                while True:
                    i = _skip_ws(text, i)
                    if text[i] == "]":
                        return None
                    if k == step:
                        break
                    _, i = _DECODER.raw_decode(text, i)
                    k += 1
                    i = _skip_ws(text, i)
                    if text[i] == ",":
                        i += 1
        return _line_of(text, i)
    except (IndexError, ValueError):
        return None


def _load_json(text: str, name: Path, line: int | None = None) -> Any:
    """json.loads with the error turned into one message; `line` is the file line of `text`
    when it is a single JSONL line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at column {e.colno})"
        raise DatasetFormatError(name, problem, e.lineno if line is None else line) from None
    except RecursionError:
        raise DatasetFormatError(name, "not valid JSON (nested too deeply)", line) from None


# --------------------------------------------------------------------------- items


class _ItemProblem(Exception):
    """A problem with one item; the caller knows where it is and adds the file and line."""


def _split_value(value: Any, what: str = '"split"') -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _ItemProblem(f"{what} is {_type_name(value)}, expected a string")
    split = _SPLITS.get(value.strip().lower())
    if split is None:
        raise _ItemProblem(f'unknown split {value!r} (use "train", "eval" or leave it empty)')
    return split


def _request_value(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _ItemProblem(f"{what} is {_type_name(value)}, expected a string")
    text = value.strip()
    problem = _request_problem(text)
    if problem:
        raise _ItemProblem(problem)
    return text


def _reference_value(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _ItemProblem(f"{what} is {_type_name(value)}, expected a string")
    problem = _control_problem(value, "the reference")
    if problem:
        raise _ItemProblem(problem)
    return value


def _message_text(message: dict[str, Any], n: int) -> str | None:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _ItemProblem(f'message {n} has a text part with no "text" string')
                parts.append(text)
            else:
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise _ItemProblem(f"message {n} has a {kind!s} part; only text can be imported")
        return "\n".join(parts)
    raise _ItemProblem(f'message {n} "content" is {_type_name(content)}, expected a string')


def _chat_item(messages: Any) -> tuple[ItemDraft, str | None]:
    """An OpenAI chat record: the last user turn is the request, the (last) assistant turn
    after it is the reference, the system (or developer) turn is the system prompt."""
    if not isinstance(messages, list):
        raise _ItemProblem(f'"messages" is {_type_name(messages)}, expected a list')
    roles: list[str] = []
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise _ItemProblem(f"message {n} is {_type_name(message)}, expected an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise _ItemProblem(f'message {n} has no "role"')
        roles.append(role)
    if "user" not in roles:
        raise _ItemProblem('"messages" has no user turn')
    # Only the turns imported are read, so an image in an earlier turn does not matter.
    last_user = len(roles) - 1 - roles[::-1].index("user")
    request = _request_value(_message_text(messages[last_user], last_user + 1) or "", "it")
    reference = ""
    for n in range(last_user + 1, len(roles)):
        if roles[n] == "assistant":
            reference = _message_text(messages[n], n + 1) or reference
    reference = _reference_value(reference, "the reference")
    system = None
    for n, role in enumerate(roles):
        if role in ("system", "developer"):
            system = _message_text(messages[n], n + 1)
            if system:
                if problem := _control_problem(system, "the system prompt"):
                    raise _ItemProblem(problem)
                break
    return ItemDraft(request, reference), system


def _object_item(
    obj: Any,
    input_keys: Sequence[str],
    reference_keys: Sequence[str],
    split_keys: Sequence[str],
) -> tuple[ItemDraft, str | None]:
    """One JSON object (a JSONL line or an element of a top-level list)."""
    if type(obj) is not dict:
        if isinstance(obj, str):
            return ItemDraft(_request_value(obj, "the request")), None
        raise _ItemProblem(f'expected an object like {{"input": "..."}}, found {_type_name(obj)}')
    for key in input_keys:
        if key in obj:
            break
    else:
        if "messages" in obj:
            return _chat_item(obj["messages"])
        wanted = ", ".join(f'"{k}"' for k in input_keys)
        found = ", ".join(f'"{k}"' for k in obj) or "none"
        raise _ItemProblem(f'no request: expected a key {wanted} or "messages"; found {found}')
    request = _request_value(obj[key], f'"{key}"')
    reference = ""
    for k in reference_keys:
        if k in obj:
            reference = _reference_value(obj[k], f'"{k}"')
            break
    split = ""
    for k in split_keys:
        if k in obj:
            split = _split_value(obj[k], f'"{k}"')
            break
    return ItemDraft(request, reference, split), None


def _keys(chosen: str | None, defaults: tuple[str, ...]) -> tuple[str, ...]:
    return (chosen,) if chosen else defaults


def _most_common_system(systems: list[str], unit: str, warnings: list[str]) -> str | None:
    if not systems:
        return None
    counts = Counter(systems)
    system, count = counts.most_common(1)[0]
    others = len(systems) - count
    if others:
        warnings.append(
            f"{others:,} {unit}s have a different system prompt; the dataset keeps the most "
            f"common one (used by {count:,})"
        )
    return system


# --------------------------------------------------------------------------- parsers


def _parse_json(
    text: str,
    name: Path,
    input_keys: tuple[str, ...],
    reference_keys: tuple[str, ...],
    split_keys: tuple[str, ...],
) -> tuple[list[ItemDraft], str | None, list[str]]:
    doc = _load_json(text, name)
    warnings: list[str] = []
    if isinstance(doc, list):
        elements: list[ItemDraft] = []
        systems = []
        for i, element in enumerate(doc):
            try:
                item, chat_system = _object_item(element, input_keys, reference_keys, split_keys)
            except _ItemProblem as e:
                line = _json_line(text, [i])
                raise DatasetFormatError(name, f"item {i + 1}: {e}", line) from None
            elements.append(item)
            if chat_system:
                systems.append(chat_system)
        return elements, _most_common_system(systems, "item", warnings), warnings
    if not isinstance(doc, dict):
        raise DatasetFormatError(
            name,
            f'expected an object like {{"requests": [...]}} or a list, found {_type_name(doc)}',
            1,
        )
    if "requests" not in doc:
        keys = ", ".join(f'"{k}"' for k in doc) or "none"
        raise DatasetFormatError(
            name, f'expected an object with a "requests" list; found the keys {keys}', 1
        )

    def where(*path: str | int) -> int | None:
        return _json_line(text, path)

    requests = doc["requests"]
    if not isinstance(requests, list):
        raise DatasetFormatError(
            name, f'"requests" is {_type_name(requests)}, expected a list', where("requests")
        )
    parallel: dict[str, list[Any]] = {}
    for key in ("references", "splits"):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise DatasetFormatError(
                name, f'"{key}" is {_type_name(value)}, expected a list', where(key)
            )
        if len(value) != len(requests):
            raise DatasetFormatError(
                name,
                f'"{key}" has {len(value):,} entries but "requests" has {len(requests):,}; '
                "they must be the same length",
                where(key),
            )
        parallel[key] = value
    system = doc.get("system_prompt")
    if system is not None and not isinstance(system, str):
        raise DatasetFormatError(
            name,
            f'"system_prompt" is {_type_name(system)}, expected a string',
            where("system_prompt"),
        )
    if system and (problem := _control_problem(system, '"system_prompt"')):
        raise DatasetFormatError(name, problem, where("system_prompt"))
    ignored = [k for k in doc if k not in ("requests", "references", "splits", "system_prompt")]
    if ignored:
        warnings.append("ignored the keys " + ", ".join(f'"{k}"' for k in ignored))

    references = parallel.get("references")
    splits = parallel.get("splits")
    items: list[ItemDraft] = []
    append = items.append
    for i, request in enumerate(requests):
        # The common case first, inline: this loop runs 100k times for a big dataset.
        if type(request) is str:
            request = request.strip()
            reference = references[i] if references is not None else ""
            split = splits[i] if splits is not None else ""
            if (
                request
                and len(request) <= MAX_INPUT_CHARS
                and type(reference) is str
                and (split == "" or split == "train" or split == "eval")
                and not _CONTROL.search(request)
                and not _CONTROL.search(reference)
            ):
                append(ItemDraft(request, reference, split))
                continue
        # Anything else: normalise it (null reference, split aliases) or say what is wrong.
        key = "requests"
        try:
            request = _request_value(requests[i], f'"requests" item {i + 1}')
            key = "references"
            reference = (
                _reference_value(references[i], f'"references" item {i + 1}')
                if references is not None
                else ""
            )
            key = "splits"
            split = _split_value(splits[i], f'"splits" item {i + 1}') if splits is not None else ""
        except _ItemProblem as e:
            problem = str(e) if str(e).startswith('"') else f'"{key}" item {i + 1}: {e}'
            raise DatasetFormatError(name, problem, where(key, i)) from None
        append(ItemDraft(request, reference, split))
    return items, system or None, warnings


def _parse_jsonl(
    text: str,
    name: Path,
    input_keys: tuple[str, ...],
    reference_keys: tuple[str, ...],
    split_keys: tuple[str, ...],
) -> tuple[list[ItemDraft], str | None, list[str]]:
    items: list[ItemDraft] = []
    systems: list[str] = []
    warnings: list[str] = []
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends, which
    # json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    for n, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            obj, end = _DECODER.raw_decode(stripped)  # ~2x faster than json.loads per line
        except ValueError:
            end = -1
        if end != len(stripped):
            _load_json(line, name, n)  # raises the message for this line, columns as in the file
        try:
            item, system = _object_item(obj, input_keys, reference_keys, split_keys)
        except _ItemProblem as e:
            raise DatasetFormatError(name, str(e), n) from None
        items.append(item)
        if system:
            systems.append(system)
    return items, _most_common_system(systems, "line", warnings), warnings


_DELIMITERS = (",", "\t", ";", "|")
_SNIFF_RECORDS = 50


def _csv_delimiter(name: Path, text: str, chosen: str | None) -> str:
    """The chosen delimiter, else tab for .tsv/.tab, else the one of `,` tab `;` `|` that
    splits the header into columns and every sampled row into as many (comma on a tie or
    when none does)."""
    if chosen:
        return chosen
    if name.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    head = text[:_SNIFF_BYTES]
    best, best_agree = ",", -1.0
    for delimiter in _DELIMITERS:
        reader = csv.reader(io.StringIO(head, newline=""), delimiter=delimiter)
        try:
            rows = [
                r for r in itertools.islice(reader, _SNIFF_RECORDS) if any(f.strip() for f in r)
            ]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        # The last row read may be cut by the sniffing window.
        body = rows[1:-1] if len(head) < len(text) else rows[1:]
        agree = sum(len(r) == len(rows[0]) for r in body) / len(body) if body else 1.0
        if agree > best_agree:
            best, best_agree = delimiter, agree
    return best


def _unclosed_quote(lines: list[str], start: int) -> int | None:
    """The line of a quote that opens a field and is never closed, in the record starting on
    physical line `start` and running to the end of the file (the csv module reads the rest of
    the file into that one field), or None if every quote there is closed."""
    tail = "".join(lines[start - 1 :])
    quoted, opened = False, 0
    for i, char in enumerate(tail):
        if char == '"':
            quoted = not quoted  # a doubled "" inside a quoted field toggles twice
            if quoted:
                opened = i
    if not quoted:
        return None
    return start + tail.count("\n", 0, opened)


def _unclosed_quote_problem(line: int) -> str:
    return (
        f'a quote (") opened on line {line} is never closed, so the rest of the file would be '
        'one field; close it (a quote inside a quoted field is written "")'
    )


def _find_column(header: list[str], chosen: str | None, defaults: tuple[str, ...]) -> int | None:
    folded = [h.casefold() for h in header]
    if chosen:
        if chosen in header:
            return header.index(chosen)
        if chosen.strip().casefold() in folded:
            return folded.index(chosen.strip().casefold())
        return None
    for name in defaults:
        if name in folded:
            return folded.index(name)
    return None


def _columns_list(header: list[str]) -> str:
    return ", ".join(f'"{h}"' for h in header) if header else "none"


def _parse_csv(
    text: str,
    name: Path,
    delimiter: str | None,
    input_column: str | None,
    reference_column: str | None,
    split_column: str | None,
) -> tuple[list[ItemDraft], str | None, list[str]]:
    delimiter = _csv_delimiter(name, text, delimiter)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetFormatError(name, "the file is empty") from None
    except csv.Error as e:
        raise DatasetFormatError(name, f"not valid CSV ({e})", 1, "row") from None
    if reader.line_num > 1:  # a header over several lines: only an unclosed quote does that
        quote = _unclosed_quote(io.StringIO(text, newline="").readlines(), 1)
        if quote is not None:
            raise DatasetFormatError(name, _unclosed_quote_problem(quote), 1, "row")

    def column(chosen: str | None, defaults: tuple[str, ...], what: str) -> int | None:
        index = _find_column(header, chosen, defaults)
        if index is None and (chosen or what == "request"):
            wanted = f'"{chosen}"' if chosen else " or ".join(f'"{d}"' for d in defaults)
            hint = ""
            if len(header) == 1:
                other = next((d for d in _DELIMITERS[1:] if d in header[0]), None)
                if other is not None:
                    hint = (
                        f" (one column: is the file separated by {other!r}? choose the delimiter)"
                    )
            raise DatasetFormatError(
                name,
                f"no {what} column {wanted}; the columns are {_columns_list(header)}{hint}",
                1,
                "row",
            )
        return index

    i_in = column(input_column, INPUT_KEYS, "request")
    i_ref = column(reference_column, REFERENCE_KEYS, "reference")
    i_split = column(split_column, SPLIT_KEYS, "split")
    assert i_in is not None
    needed = max(i for i in (i_in, i_ref, i_split) if i is not None) + 1

    items: list[ItemDraft] = []
    append = items.append
    row_number = 1
    line = 1  # the first physical line of the current record, for multi-line fields
    lines: list[str] | None = None  # the file's physical lines, split only if needed
    try:
        for row in reader:
            row_number += 1
            start, line = line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            try:
                if start != line:  # a multi-line record: does it run to the end unclosed?
                    if lines is None:
                        lines = io.StringIO(text, newline="").readlines()
                    quote = _unclosed_quote(lines, start) if line == len(lines) else None
                    if quote is not None:
                        raise _ItemProblem(_unclosed_quote_problem(quote))
                if len(row) < needed:
                    raise _ItemProblem(
                        f"has {len(row)} field{'s' if len(row) != 1 else ''} "
                        f"but the header has {len(header)}"
                    )
                request = row[i_in].strip()
                if problem := _request_problem(request):
                    raise _ItemProblem(problem)
                reference = _reference_value(row[i_ref], "") if i_ref is not None else ""
                split = _split_value(row[i_split]) if i_split is not None else ""
            except _ItemProblem as e:
                problem = str(e) if start == row_number else f"{e} (line {start} of the file)"
                raise DatasetFormatError(name, problem, row_number, "row") from None
            append(ItemDraft(request, reference, split))
    except csv.Error as e:
        raise DatasetFormatError(name, f"not valid CSV ({e})", row_number, "row") from None
    return items, None, []


def parse_dataset(
    data: bytes,
    *,
    name: str | Path,
    format: str | None = None,
    input_column: str | None = None,
    reference_column: str | None = None,
    split_column: str | None = None,
) -> ParsedDataset:
    """Parse a whole file's bytes. `name` is only used in messages and `ParsedDataset.source`.

    For CSV the *_column arguments choose the header columns (default: the first of
    INPUT_KEYS / REFERENCE_KEYS / SPLIT_KEYS present); for JSON and JSONL they name the keys
    of each object instead of the default aliases.
    """
    source = Path(name)
    fmt, delimiter = _canonical_format(format or detect_format(source, data))
    text = _decode(data, source)
    if fmt == "csv":
        items, system, warnings = _parse_csv(
            text, source, delimiter, input_column, reference_column, split_column
        )
    else:
        keys = (
            _keys(input_column, INPUT_KEYS[:3]),
            _keys(reference_column, REFERENCE_KEYS[:4]),
            _keys(split_column, SPLIT_KEYS),
        )
        parse = _parse_json if fmt == "json" else _parse_jsonl
        items, system, warnings = parse(text, source, *keys)
    if not items:
        raise DatasetFormatError(source, "the file has no requests")
    return ParsedDataset(items, source, fmt, system, warnings)


async def read_dataset(
    path: Path,
    *,
    format: str | None = None,
    input_column: str | None = None,
    reference_column: str | None = None,
    split_column: str | None = None,
) -> ParsedDataset:
    """Read and parse a dataset file. The file is only read, never written; a file larger
    than MAX_IMPORT_BYTES, or anything but a regular file (a directory, a named pipe, a
    device), is refused without reading it."""
    path = Path(path)
    data = await asyncio.to_thread(_read_file, path)
    return await asyncio.to_thread(
        parse_dataset,
        data,
        name=path,
        format=format,
        input_column=input_column,
        reference_column=reference_column,
        split_column=split_column,
    )


def csv_columns(data_or_path: bytes | str | Path, *, delimiter: str | None = None) -> list[str]:
    """The header row of a CSV/TSV (bytes, text, or a file whose start is read), so the user
    can choose the request / reference / split columns."""
    if isinstance(data_or_path, Path):
        name = data_or_path
        try:
            with _open_regular(name) as f:
                head = f.read(_SNIFF_BYTES)
        except OSError as e:
            raise DatasetFormatError(name, _os_problem(e)) from None
        if len(head) == _SNIFF_BYTES and b"\n" in head:
            # Cut at a newline so the read cannot end inside a multi-byte character.
            head = head[: head.rfind(b"\n") + 1]
        text = _decode(head, name)
    elif isinstance(data_or_path, bytes):
        name = Path("data.csv")
        text = _decode(data_or_path, name)
    else:
        name = Path("data.csv")
        text = data_or_path.removeprefix("\ufeff")
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=_csv_delimiter(name, text, delimiter)
    )
    try:
        return [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetFormatError(name, "the file is empty") from None
    except csv.Error as e:
        raise DatasetFormatError(name, f"not valid CSV ({e})", 1, "row") from None


# --------------------------------------------------------------------------- export


def _serialise(items: list[ItemDraft], fmt: str, system_prompt: str | None, path: Path) -> str:
    if fmt == "json":
        doc: dict[str, Any] = {}
        if system_prompt:
            doc["system_prompt"] = system_prompt
        doc["requests"] = [item.input for item in items]
        if any(item.reference for item in items):
            doc["references"] = [item.reference for item in items]
        if any(item.split for item in items):
            doc["splits"] = [item.split for item in items]
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        return "".join(
            dumps({"input": i.input, "reference": i.reference, "split": i.split}) + "\n"
            for i in items
        )
    if fmt == "chat-jsonl":
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        lines = []
        for item in items:
            messages = [*head, {"role": "user", "content": item.input}]
            if item.reference:
                messages.append({"role": "assistant", "content": item.reference})
            lines.append(dumps({"messages": messages}) + "\n")
        return "".join(lines)
    if fmt in ("csv", "tsv"):
        out = io.StringIO(newline="")
        tab = fmt == "tsv" or path.suffix.lower() in (".tsv", ".tab")
        writer = csv.writer(out, delimiter="\t" if tab else ",")
        writer.writerow(["input", "reference", "split"])
        writer.writerows((i.input, i.reference, i.split) for i in items)
        return out.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")


async def write_dataset(
    path: Path,
    items: Iterable[ItemDraft],
    *,
    format: str,
    system_prompt: str | None = None,
) -> int:
    """Write `items` to `path` as "json" (the seed's shape), "jsonl", "chat-jsonl" or "csv";
    return how many were written.

    Atomic: the text goes to a temporary file beside `path`, is flushed to disk, and then
    replaces `path`, so a reader never sees a half-written file and a failure leaves any
    previous file as it was. Plain JSONL and CSV have no place for the system prompt;
    chat JSONL carries no split.
    """
    path = Path(path)
    fmt = format.lower()
    if fmt not in (*EXPORT_FORMATS, "tsv"):
        raise ValueError(
            f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}"
        )
    items = list(items)
    text = await asyncio.to_thread(_serialise, items, fmt, system_prompt, path)
    data = text.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    created = False
    try:
        # 'x': never clobber an existing file; the new file gets the umask's mode.
        async with aiofiles.open(tmp, "xb") as f:
            created = True
            await f.write(data)
            await f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        try:
            mode = stat.S_IMODE((await aiofiles.os.stat(path)).st_mode)
        except FileNotFoundError:
            pass
        else:
            await asyncio.to_thread(os.chmod, tmp, mode)  # keep an overwritten file's mode
        await aiofiles.os.replace(tmp, path)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                await aiofiles.os.remove(tmp)
        raise
    return len(items)
