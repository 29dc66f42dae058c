"""The fake OpenAI server's Batch API (`FakeOpenAI(batches=True)`, or `like_openai()`):
`POST /v1/batches`, `GET /v1/batches` (newest first, `after`/`limit`), `GET
/v1/batches/{id}`, `POST /v1/batches/{id}/cancel`, with OpenAI's shapes and statuses, the
input and result files in the server's `/v1/files`.

A batch's input file is checked as OpenAI checks it (purpose "batch", one JSON object a
line with a unique `custom_id`, `method` POST, `url` the batch's endpoint, a `body`; at most
50,000 lines): a bad file fails the batch with `errors`. Otherwise it plays out over
`batch_seconds`: validating → in_progress (its request counts growing with the clock) →
finalizing → completed, with an output file of the answers and an error file of the
requests that failed. Each request is answered as a chat request would be: the server's
`policy`, else the markers (FAIL500 → a 500 in the error file...), else a normal reply, and
counted per message like a live request (`server.count(text)`).

The knobs, settable while it runs:
  - `batch_seconds`: how long a batch takes (a slow batch for restart tests);
  - `batch_expire_after`: the batch expires after answering this many requests (its output
    file holds those; the rest are never answered), as when the 24 h window ends first;
  - `batch_fail`: every new batch fails validation with this message.
A cancelled batch answers what its clock reached and stops (`cancelling` → `cancelled`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.helpers.fake_openai import FakeOpenAIApp

MAX_REQUESTS = 50_000
WINDOW_SECONDS = 24 * 3600
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class FakeBatch:
    data: dict[str, Any]  # the batch object as the API returns it
    started: float  # time.monotonic() at creation
    seconds: float
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body)
    expire_after: int | None
    answered: int = 0  # requests answered so far
    outputs: list[bytes] = field(default_factory=list)
    errors: list[bytes] = field(default_factory=list)


class FakeBatchAPI:
    """The routes; the app calls `route` under its lock."""

    def __init__(self, app: FakeOpenAIApp) -> None:
        self.app = app
        self.batches: dict[str, FakeBatch] = {}
        self.batch_seconds = 0.5
        self.batch_expire_after: int | None = None
        self.batch_fail: str | None = None
        self.created = 0  # POST /v1/batches that made a batch

    def route(
        self, method: str, rest: list[str], body: Any, query: dict[str, str]
    ) -> tuple[int, Any, str | None]:
        if not rest and method == "POST":
            return self._create(body if isinstance(body, dict) else {})
        if not rest and method == "GET":
            return self._list(query)
        batch = self.batches.get(rest[0])
        if batch is None:
            return 404, {"message": f"No batch found with id '{rest[0]}'.", "code": None}, "id"
        self._play(batch)
        if rest[1:] == [] and method == "GET":
            return 200, batch.data, None
        if rest[1:] == ["cancel"] and method == "POST":
            if batch.data["status"] in TERMINAL:
                message = f"Cannot cancel a batch with status '{batch.data['status']}'."
                return 409, {"message": message, "code": None}, None
            batch.data.update(status="cancelling", cancelling_at=int(time.time()))
            return 200, batch.data, None
        return 404, {"message": "Not found", "code": None}, None

    # -- creating

    def _create(self, body: dict[str, Any]) -> tuple[int, Any, str | None]:
        endpoint = body.get("endpoint")
        if endpoint not in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings"):
            return 400, {"message": f"Invalid endpoint: {endpoint!r}", "code": None}, "endpoint"
        if body.get("completion_window") != "24h":
            message = "Invalid completion_window: only '24h' is supported."
            return 400, {"message": message, "code": None}, "completion_window"
        file_id = str(body.get("input_file_id") or "")
        stored = self.app.files.get(file_id)
        if stored is None:
            return 400, {"message": f"Invalid input_file_id: {file_id}", "code": None}, None
        if stored[0]["purpose"] != "batch":
            message = f"{file_id} has purpose {stored[0]['purpose']!r}; a batch needs 'batch'."
            return 400, {"message": message, "code": "invalid_file_purpose"}, "input_file_id"
        now = int(time.time())
        data: dict[str, Any] = {
            "id": "batch_" + uuid.uuid4().hex[:24],
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + WINDOW_SECONDS,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        requests, problem = _parse(stored[1], str(endpoint))
        if problem is None and self.batch_fail:
            problem = {"code": "invalid_request", "message": self.batch_fail, "line": None}
        batch = FakeBatch(data, time.monotonic(), self.batch_seconds, requests, None)
        batch.expire_after = self.batch_expire_after
        if problem is not None:
            errors = {"object": "list", "data": [{**problem, "param": None}]}
            data.update(status="failed", failed_at=now, errors=errors)
        else:
            data["request_counts"]["total"] = len(requests)
        self.batches[data["id"]] = batch
        self.created += 1
        return 200, data, None

    def _list(self, query: dict[str, str]) -> tuple[int, Any, str | None]:
        batches = [self._play(b).data for b in reversed(self.batches.values())]
        after = query.get("after")
        if after:
            ids = [b["id"] for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        limit = int(query.get("limit", 20))
        page = batches[:limit]
        body = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(batches) > limit,
        }
        return 200, body, None

    # -- playing out

    def _play(self, batch: FakeBatch) -> FakeBatch:
        """Apply what has happened to the batch by now (statuses move with the clock)."""
        data = batch.data
        if data["status"] in TERMINAL:
            return batch
        elapsed = time.monotonic() - batch.started
        d = max(batch.seconds, 1e-6)
        now = int(time.time())
        if data["status"] == "cancelling":
            self._answer(batch, batch.answered)  # nothing more is answered
            self._finish(batch, "cancelled", cancelled_at=now)
            return batch
        if data["status"] == "validating" and elapsed >= 0.1 * d:
            data.update(status="in_progress", in_progress_at=now)
        if data["status"] == "in_progress":
            share = min(1.0, max(0.0, (elapsed - 0.1 * d) / (0.8 * d)))
            self._answer(batch, int(len(batch.requests) * share))
            if batch.expire_after is not None and batch.answered >= batch.expire_after:
                self._finish(batch, "expired", expired_at=now)
                return batch
            if elapsed >= 0.9 * d:
                data.update(status="finalizing", finalizing_at=now)
        if data["status"] == "finalizing" and elapsed >= d:
            self._answer(batch, len(batch.requests))
            self._finish(batch, "completed", completed_at=now)
        return batch

    def _answer(self, batch: FakeBatch, upto: int) -> None:
        if batch.expire_after is not None:
            upto = min(upto, batch.expire_after)
        counts = batch.data["request_counts"]
        while batch.answered < upto:
            custom_id, body = batch.requests[batch.answered]
            batch.answered += 1
            ok, response = self.app.batch_answer(body)
            line = {
                "id": "batch_req_" + uuid.uuid4().hex[:24],
                "custom_id": custom_id,
                "response": {
                    "status_code": 200 if ok else response.get("_status", 500),
                    "request_id": "req_" + uuid.uuid4().hex[:16],
                    "body": {k: v for k, v in response.items() if k != "_status"},
                },
                "error": None,
            }
            (batch.outputs if ok else batch.errors).append(json.dumps(line).encode() + b"\n")
            counts["completed" if ok else "failed"] += 1

    def _finish(self, batch: FakeBatch, status: str, **stamps: int) -> None:
        batch.data.update(status=status, **stamps)
        for kind, lines in (("output_file_id", batch.outputs), ("error_file_id", batch.errors)):
            if lines:
                batch.data[kind] = self.app.add_file(
                    b"".join(lines), f"{batch.data['id']}_{kind[:-8]}.jsonl", "batch_output"
                )
        batch.outputs, batch.errors = [], []


def _parse(
    content: bytes, endpoint: str
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any] | None]:
    """The requests of an input file, or the first problem OpenAI would fail the batch for."""
    requests: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], {"code": "invalid_json_line", "message": "Invalid JSON.", "line": number}
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            message = "The custom_id must be a non-empty string."
            return [], {"code": "missing_custom_id", "message": message, "line": number}
        if custom_id in seen:
            message = f"The custom_id {custom_id!r} is not unique within the batch."
            return [], {"code": "duplicate_custom_id", "message": message, "line": number}
        seen.add(custom_id)
        if line.get("method") != "POST" or line.get("url") != endpoint:
            message = f"Each request must be a POST to the batch's endpoint {endpoint}."
            return [], {"code": "mismatched_endpoint", "message": message, "line": number}
        if not isinstance(line.get("body"), dict):
            return [], {"code": "missing_body", "message": "A body is required.", "line": number}
        requests.append((custom_id, line["body"]))
    if not requests:
        return [], {"code": "empty_file", "message": "The input file is empty.", "line": None}
    if len(requests) > MAX_REQUESTS:
        message = (
            f"A batch may hold at most {MAX_REQUESTS} requests; this file has {len(requests)}."
        )
        return [], {"code": "too_many_requests", "message": message, "line": None}
    return requests, None
