"""Runs that were not generated here: outputs imported from a file (JSONL of input/output
pairs, or an export of OpenAI stored completions), or a dataset's own references. Either can
stand in for a teacher run, so a teacher's outputs produced elsewhere can be distilled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles

from tui.engine.datasets import (
    MAX_IMPORT_BYTES,
    DatasetFormatError,
    _chat_item,
    _decode,
    _ItemProblem,
    normalise_request,
)
from tui.engine.store import Item, Store, StoreError

INPUT_KEYS = ("input", "request", "prompt")
OUTPUT_KEYS = ("output", "completion", "response", "reference", "ideal")


@dataclass(frozen=True)
class ImportedOutput:
    line: int
    input: str
    output: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    remote_id: str | None


def _first_str(record: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            return value
    return None


def _choice_text(record: dict[str, Any]) -> str | None:
    """The reply of a chat.completion object (or of its `response` wrapper)."""
    for holder in (record, record.get("response")):
        if isinstance(holder, dict) and isinstance(holder.get("choices"), list):
            choices = holder["choices"]
            if choices and isinstance(choices[0], dict):
                message = choices[0].get("message") or {}
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str):
                    return content
    return None


def _messages_of(record: dict[str, Any]) -> list[Any] | None:
    for holder, key in (
        (record, "messages"),
        (record, "input_messages"),
        (record.get("request"), "messages"),
    ):
        if isinstance(holder, dict) and isinstance(holder.get(key), list):
            return list(holder[key])
    return None


def _usage(record: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = record.get("usage")
    if not isinstance(usage, dict) and isinstance(record.get("response"), dict):
        usage = record["response"].get("usage")
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def parse_outputs(data: bytes, name: str | Path) -> list[ImportedOutput]:
    """Each JSONL line: {"input", "output"} (or aliases), a chat record {"messages": [...]}
    whose assistant turn is the output, or a stored chat.completion with its request
    messages and `choices`. Raises DatasetFormatError naming the line."""
    path = Path(name)
    text = _decode(data, path)
    records: list[ImportedOutput] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(path, f"not valid JSON ({exc.msg})", number) from None
        if not isinstance(record, dict):
            raise DatasetFormatError(path, "expected a JSON object", number)
        request = _first_str(record, INPUT_KEYS)
        output = _first_str(record, OUTPUT_KEYS)
        messages = _messages_of(record)
        if request is None and messages is not None:
            reply = _choice_text(record)
            if reply is not None:
                messages = [*messages, {"role": "assistant", "content": reply}]
            try:
                draft, _ = _chat_item(messages)
            except _ItemProblem as problem:
                raise DatasetFormatError(path, str(problem), number) from None
            request, output = draft.input, draft.reference
        if not request or not request.strip():
            raise DatasetFormatError(
                path, 'no request: expected "input" (or a chat "messages" list)', number
            )
        if output is None:
            raise DatasetFormatError(
                path, 'no output: expected "output" (or an assistant turn / "choices")', number
            )
        prompt_tokens, completion_tokens = _usage(record)
        model = record.get("model")
        remote = record.get("id")
        records.append(
            ImportedOutput(
                line=number,
                input=request.strip(),
                output=output,
                model=model if isinstance(model, str) else None,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                remote_id=remote if isinstance(remote, str) else None,
            )
        )
    if not records:
        raise DatasetFormatError(path, "the file has no outputs")
    return records


async def read_outputs(path: Path) -> list[ImportedOutput]:
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise DatasetFormatError(
                path,
                f"the file is {size / 1024**2:,.1f} MB; the limit is "
                f"{MAX_IMPORT_BYTES // 1024**2} MB",
            )
        async with aiofiles.open(path, "rb") as fh:
            data = await fh.read()
    except OSError as exc:
        raise DatasetFormatError(path, f"cannot read the file ({exc.strerror})") from None
    return parse_outputs(data, path)


def import_run(
    store: Store,
    dataset_id: int,
    outputs: list[ImportedOutput],
    *,
    source_name: str,
    model: str | None = None,
    role: str = "teacher",
) -> int:
    """Store imported outputs as a finished run of `dataset_id`, matching each to an item by
    its request (exactly, else ignoring case, spaces and punctuation). All or nothing: any
    output matching no item is refused, with the first few named."""
    items = store.items(dataset_id)
    exact = {item.input: item for item in items}
    loose: dict[str, Item] = {}
    for entry in items:
        loose.setdefault(normalise_request(entry.input), entry)
    matched: dict[int, ImportedOutput] = {}
    missing: list[ImportedOutput] = []
    for out in outputs:
        found = exact.get(out.input) or loose.get(normalise_request(out.input))
        if found is None:
            missing.append(out)
        else:
            matched[found.id] = out  # a later line for the same request wins
    if missing:
        shown = "; ".join(f"line {m.line}: {m.input[:60]!r}" for m in missing[:3])
        raise StoreError(
            f"{source_name}: {len(missing)} of {len(outputs)} outputs match no request of the "
            f"dataset ({shown}). Import the requests into the dataset first."
        )
    models = {o.model for o in outputs if o.model}
    run_model = model or (models.pop() if len(models) == 1 else "imported")
    completions = [
        (
            item_id,
            {
                "output": out.output,
                "status": "done",
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens,
                "finish_reason": "stop",
                "remote_id": out.remote_id,
            },
        )
        for item_id, out in matched.items()
    ]
    return store.add_finished_run(
        completions,
        dataset_id=dataset_id,
        model=run_model,
        role=role,
        source="imported",
        params={"item_ids": sorted(matched), "imported_from": source_name},
        name=f"imported: {source_name}",
    )


def references_as_run(store: Store, dataset_id: int, split: str | None = None) -> int:
    """A finished run whose outputs are the dataset's references (items without one are
    left out), so hand-written answers can be evaluated or distilled like a teacher's."""
    items = [i for i in store.items(dataset_id, split=split) if i.reference.strip()]
    if not items:
        raise StoreError("the dataset has no references to use as a run")
    completions = [
        (item.id, {"output": item.reference, "status": "done", "finish_reason": "stop"})
        for item in items
    ]
    return store.add_finished_run(
        completions,
        dataset_id=dataset_id,
        model="references",
        role="teacher",
        source="references",
        split=split or "",
        params={"item_ids": [i.id for i in items]},
        name="references" + (f" ({split})" if split else ""),
    )
