"""Batches: a file of chat requests answered in the background, as OpenAI's Batch API does.

A batch moves validating → in_progress → finalizing → completed, or failed (its input file
was refused: `errors` says which line and why), expired (its 24 h window ended first) or
cancelling → cancelled. Each request goes through the server's own `POST
/v1/chat/completions` in-process (the same checks, engine and error bodies as a live
request), a few at a time, so live requests keep being served beside it. Its answer is
appended to the batch's output file, or, when the route answered an error, to its error
file; at the end both become files (`/v1/files`, purpose "batch_output").

Restarts: the answers so far are on disk under `<workspace>/local/batches/` and the batch's
status in the database, so a server started again resumes every unfinished batch where it
stopped, without answering any request twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tui.local.db import ACTIVE_BATCH_STATUSES, LocalDB, new_id, now

log = logging.getLogger("distill.local.batches")

ENDPOINTS = ("/v1/chat/completions",)
COMPLETION_WINDOWS = {"24h": 24 * 3600}
# OpenAI's limits on one batch (platform.openai.com/docs/guides/batch): at most 50,000
# requests in its input file, at most 200 MB.
MAX_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1000 * 1000
# Requests of a batch in flight at once: enough to fill the engine's parallel slots, few
# enough that live requests still get a place in its queue.
CONCURRENCY = 8
# A request the engine refused for a full queue (429) is tried again after this long.
BUSY_RETRY = 0.5

# POST a JSON body to a route of this server; returns (HTTP status, response body).
Call = Callable[[bytes], Awaitable[tuple[int, bytes]]]


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    """A batches-table row as OpenAI's `batch` object."""
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": None
        if not row["errors"]
        else {"object": "list", "data": [dict(e) for e in row["errors"]]},
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": row["created_at"],
        "in_progress_at": row["in_progress_at"],
        "expires_at": row["expires_at"],
        "finalizing_at": row["finalizing_at"],
        "completed_at": row["completed_at"],
        "failed_at": row["failed_at"],
        "expired_at": row["expired_at"],
        "cancelling_at": row["cancelling_at"],
        "cancelled_at": row["cancelled_at"],
        "request_counts": {
            "total": row["total"],
            "completed": row["completed"],
            "failed": row["failed"],
        },
        "metadata": row["metadata"],
    }


class BatchError(Exception):
    """A request about a batch that cannot be honoured (an HTTP 4xx from the route)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def asgi_poster(app: Any, path: str, api_key: str) -> Call:
    """POST to `path` of the ASGI `app` in-process, as a client would over HTTP (auth, size
    limits and error bodies included), without a socket."""

    async def call(body: bytes) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"batch.local"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"authorization", f"Bearer {api_key}".encode()),
            ],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0),
        }
        sent = False
        forever = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await forever.wait()  # the caller never goes away mid-answer
            return {"type": "http.disconnect"}

        status = 500
        parts: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await app(scope, receive, send)
        return status, b"".join(parts)

    return call


def _lines(path: Path) -> list[dict[str, Any]]:
    """The answers written so far; a line cut short by a crash is dropped (and the file
    trimmed to the last whole line, so appending goes on cleanly)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        path.write_bytes(whole)
    out = []
    for raw in whole.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(raw))
    return out


def parse_input(content: bytes, endpoint: str) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """The requests of a batch's input file, or (empty, the errors OpenAI fails it with)."""

    def error(code: str, message: str, line: int | None = None) -> list[dict[str, Any]]:
        return [{"code": code, "message": message, "param": None, "line": line}]

    if len(content) > MAX_INPUT_BYTES:
        return [], error(
            "file_too_large", f"The input file is over the {MAX_INPUT_BYTES:,} bytes allowed."
        )
    requests: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], error("invalid_json_line", "This line is not valid JSON.", number)
        if not isinstance(line, dict):
            return [], error("invalid_json_line", "Each line must be a JSON object.", number)
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return [], error("missing_custom_id", "custom_id must be a non-empty string.", number)
        if custom_id in seen:
            return [], error(
                "duplicate_custom_id",
                f"The custom_id {custom_id!r} is used more than once in this batch.",
                number,
            )
        seen.add(custom_id)
        if line.get("method") != "POST":
            return [], error("invalid_method", "method must be 'POST'.", number)
        if line.get("url") != endpoint:
            return [], error(
                "mismatched_url",
                f"The url {line.get('url')!r} does not match the batch's endpoint {endpoint}.",
                number,
            )
        if not isinstance(line.get("body"), dict):
            return [], error("missing_body", "body must be a JSON object.", number)
        requests.append((custom_id, line["body"]))
    if not requests:
        return [], error("empty_file", "The input file has no requests.")
    if len(requests) > MAX_REQUESTS:
        return [], error(
            "too_many_requests",
            f"A batch may hold at most {MAX_REQUESTS:,} requests; this file has {len(requests):,}.",
        )
    return requests, None


class BatchManager:
    """Owns every batch's progress: one batch at a time, `concurrency` of its requests at
    once. The server creates one at start-up (resuming what a previous run left) and closes
    it at exit."""

    def __init__(self, db: LocalDB, call: Call, *, concurrency: int = CONCURRENCY) -> None:
        self.db = db
        self.call = call
        self.concurrency = concurrency
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._cancelled: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for row in await asyncio.to_thread(self.db.active_batches):
            self._queue.put_nowait(row["id"])
        self._worker = asyncio.create_task(self._work(), name="batch worker")

    async def aclose(self) -> None:
        """Stop working; unfinished batches stay as they are and resume at the next start."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    # ---- requests --------------------------------------------------------------------------

    async def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise BatchError(
                400,
                f"Invalid endpoint {endpoint!r}: this server's batches support "
                + ", ".join(ENDPOINTS)
                + ".",
                "endpoint",
            )
        if completion_window not in COMPLETION_WINDOWS:
            raise BatchError(
                400,
                f"Invalid completion_window {completion_window!r}: only '24h' is supported.",
                "completion_window",
            )
        file = await asyncio.to_thread(self.db.get_file, input_file_id)
        if file is None:
            raise BatchError(400, f"Invalid input_file_id: {input_file_id}", "input_file_id")
        if file["purpose"] != "batch":
            raise BatchError(
                400,
                f"{input_file_id} was uploaded with purpose {file['purpose']!r}; a batch's "
                "input file needs purpose 'batch'.",
                "input_file_id",
            )
        created = now()
        row: dict[str, Any] = {
            "id": new_id("batch_"),
            "created_at": created,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "metadata": metadata,
            "expires_at": created + COMPLETION_WINDOWS[completion_window],
        }
        await asyncio.to_thread(self.db.add_batch, row)
        self._queue.put_nowait(row["id"])
        return await self._row(row["id"])

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        row = await self._row(batch_id)
        if row["status"] not in ACTIVE_BATCH_STATUSES:
            raise BatchError(
                409, f"Cannot cancel a batch with status {row['status']!r}.", "batch_id"
            )
        self._cancelled.add(batch_id)
        await asyncio.to_thread(
            self.db.update_batch,
            batch_id,
            only_if_status=("validating", "in_progress", "finalizing"),
            status="cancelling",
            cancelling_at=now(),
        )
        return await self._row(batch_id)

    async def _row(self, batch_id: str) -> dict[str, Any]:
        row = await asyncio.to_thread(self.db.get_batch, batch_id)
        if row is None:
            raise BatchError(404, f"No batch found with id {batch_id!r}.", "batch_id")
        return row

    # ---- the work --------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            batch_id = await self._queue.get()
            try:
                await self._process(batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # one broken batch must not stop the others
                log.exception("batch %s failed", batch_id)
                await asyncio.to_thread(
                    self._end,
                    batch_id,
                    "failed",
                    errors=[
                        {
                            "code": "server_error",
                            "message": "The server failed while processing this batch.",
                            "param": None,
                            "line": None,
                        }
                    ],
                )

    def _paths(self, batch_id: str) -> tuple[Path, Path]:
        root = self.db.batches_dir
        return root / f"{batch_id}.output.jsonl", root / f"{batch_id}.errors.jsonl"

    def _stopping(self, batch_id: str) -> bool:
        return batch_id in self._cancelled

    async def _process(self, batch_id: str) -> None:
        row = await self._row(batch_id)
        if row["status"] == "cancelling":
            await asyncio.to_thread(self._end, batch_id, "cancelled")
            return
        content = await asyncio.to_thread(self.db.file_path(row["input_file_id"]).read_bytes)
        requests, errors = await asyncio.to_thread(parse_input, content, row["endpoint"])
        if errors is not None:
            await asyncio.to_thread(self._end, batch_id, "failed", errors=errors)
            return
        out_path, err_path = self._paths(batch_id)
        answered = {
            line.get("custom_id")
            for path in (out_path, err_path)
            for line in await asyncio.to_thread(_lines, path)
        }
        completed = len(await asyncio.to_thread(_lines, out_path))
        failed = len(answered) - completed
        await asyncio.to_thread(
            self.db.update_batch,
            batch_id,
            only_if_status=("validating", "in_progress"),
            status="in_progress",
            in_progress_at=row["in_progress_at"] or now(),
            total=len(requests),
            completed=completed,
            failed=failed,
        )
        todo = [(cid, body) for cid, body in requests if cid not in answered]
        counts = {"completed": completed, "failed": failed}
        expired = await self._answer_all(batch_id, row["expires_at"], todo, counts)
        if self._stopping(batch_id):
            await asyncio.to_thread(self._end, batch_id, "cancelled")
        elif expired:
            await asyncio.to_thread(self._end, batch_id, "expired")
        else:
            await asyncio.to_thread(
                self.db.update_batch,
                batch_id,
                only_if_status=("in_progress",),
                status="finalizing",
                finalizing_at=now(),
            )
            await asyncio.to_thread(self._end, batch_id, "completed")

    async def _answer_all(
        self,
        batch_id: str,
        expires_at: int | None,
        todo: list[tuple[str, dict[str, Any]]],
        counts: dict[str, int],
    ) -> bool:
        """Answer the requests, `concurrency` at a time, appending each answer as it comes.
        Returns whether the window ended first."""
        out_path, err_path = self._paths(batch_id)
        pending = iter(todo)
        expired = False
        lock = asyncio.Lock()

        with open(out_path, "ab") as out, open(err_path, "ab") as err:

            async def worker() -> None:
                nonlocal expired
                for custom_id, body in pending:
                    if self._stopping(batch_id):
                        return
                    if expires_at is not None and now() >= expires_at:
                        expired = True
                        return
                    status, answer = await self._answer(batch_id, body)
                    line = {
                        "id": new_id("batch_req_"),
                        "custom_id": custom_id,
                        "response": {
                            "status_code": status,
                            "request_id": new_id("req_"),
                            "body": answer,
                        },
                        "error": None,
                    }
                    data = json.dumps(line, ensure_ascii=False).encode() + b"\n"
                    async with lock:
                        target = out if status == 200 else err
                        target.write(data)
                        target.flush()
                        counts["completed" if status == 200 else "failed"] += 1
                        await asyncio.to_thread(
                            self.db.update_batch,
                            batch_id,
                            completed=counts["completed"],
                            failed=counts["failed"],
                        )

            await asyncio.gather(*(worker() for _ in range(max(1, self.concurrency))))
        return expired

    async def _answer(self, batch_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        """One request through the chat route; a full engine queue is waited out."""
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        payload = json.dumps(request).encode()
        while True:
            status, raw = await self.call(payload)
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:
                answer = {"error": {"message": raw.decode("utf-8", "replace")[:500]}}
            busy = (
                status == 429 and (answer.get("error") or {}).get("code") == "rate_limit_exceeded"
            )
            if not busy or self._stopping(batch_id):
                return status, answer
            await asyncio.sleep(BUSY_RETRY)

    def _end(
        self, batch_id: str, status: str, *, errors: list[dict[str, Any]] | None = None
    ) -> None:
        """Turn what was answered into the output and error files and close the batch."""
        out_path, err_path = self._paths(batch_id)
        files: dict[str, Any] = {}
        for column, path in (("output_file_id", out_path), ("error_file_id", err_path)):
            lines = _lines(path)
            if lines:
                file_id = new_id("file-")
                path.replace(self.db.file_path(file_id))
                self.db.add_file(
                    file_id, self.db.file_path(file_id).stat().st_size, path.name, "batch_output"
                )
                files[column] = file_id
            else:
                path.unlink(missing_ok=True)
        fields: dict[str, Any] = {"status": status, f"{status}_at": now(), **files}
        if errors is not None:
            fields["errors"] = errors
        self.db.update_batch(batch_id, only_if_status=ACTIVE_BATCH_STATUSES, **fields)
        self._cancelled.discard(batch_id)
