"""`/v1/files`: uploads (multipart, up to `max_upload_bytes`), list, retrieve, content,
delete. Files live under the workspace, named by their id; a client's file name is only a
label."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from tui.engine.training_data import check_chat_jsonl
from tui.local.config import ServerConfig
from tui.local.db import LocalDB, new_id
from tui.local.errors import APIError, bad_request, not_found, too_large_message
from tui.local.request_checks import CONTROL
from tui.local.routes.common import Local, list_object, page_or_404

FILE_PURPOSES = ("fine-tune", "assistants", "batch", "vision", "user_data", "evals")


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "expires_at": None,
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": row.get("status_details"),
    }


def fine_tune_file_problem(path: Path) -> str | None:
    """Why an upload for fine-tuning is not a file of chat examples (OpenAI's JSONL of
    {"messages": [...]}), or None. Its status becomes "error" with this as its details; the
    10-example minimum is checked when a job uses it as training data, as OpenAI does."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"Invalid file format: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); fine-tuning needs JSONL, one chat example per line."
        )
    report = check_chat_jsonl(text, min_examples=1)
    if report.ok():
        return None
    return f"Invalid file format for fine-tuning: {report.summary()}"


def stored_file(db: LocalDB, file_id: str) -> dict[str, Any]:
    row = db.get_file(file_id)
    if row is None:
        raise not_found(f"No such File object: {file_id}", "id")
    return row


def _copy_upload(upload: UploadFile, target: Path, limit: int) -> int | None:
    """Copy the spooled upload to its final place; None (and nothing kept) if over the limit."""
    upload.file.seek(0)
    size = 0
    tmp = target.with_name(target.name + ".part")
    try:
        with open(tmp, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    tmp.unlink(missing_ok=True)
                    return None
                out.write(chunk)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


async def upload_file(
    local: Local,
    file: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
    purpose: str = Form(...),
) -> dict[str, Any]:
    if purpose not in FILE_PURPOSES:
        raise bad_request(
            f"Invalid value: {purpose!r}. Supported values are: "
            + ", ".join(repr(p) for p in FILE_PURPOSES)
            + ".",
            "purpose",
            "invalid_value",
        )
    db, limit = local.db, local.config.max_upload_bytes
    file_id = new_id("file-")
    # The client's name is only a label: it is shown, never used as a path.
    raw_name = file.filename or "upload"
    if found := CONTROL.search(raw_name):
        raise bad_request(
            f"Invalid file name: it contains a control character (U+{ord(found.group()):04X}).",
            "file",
            "invalid_value",
        )
    filename = Path(raw_name.replace("\\", "/")).name[:255] or "upload"
    size = await asyncio.to_thread(_copy_upload, file, db.file_path(file_id), limit)
    if size is None:
        raise APIError(413, too_large_message(limit), code="request_too_large")
    status, details = "processed", None
    if purpose == "fine-tune":
        details = await asyncio.to_thread(fine_tune_file_problem, db.file_path(file_id))
        status = "error" if details else "processed"
    row = await asyncio.to_thread(
        db.add_file, file_id, size, filename, purpose, status=status, status_details=details
    )
    return file_object(row)


def list_files(
    local: Local,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    page = page_or_404(
        local.db.list_files(purpose=purpose, after=after, limit=limit, order=order), after
    )
    return list_object([file_object(r) for r in page.rows], page.has_more)


def retrieve_file(file_id: str, local: Local) -> dict[str, Any]:
    return file_object(stored_file(local.db, file_id))


def file_content(file_id: str, local: Local) -> FileResponse:
    row = stored_file(local.db, file_id)
    return FileResponse(
        local.db.file_path(row["id"]),
        media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="{row["id"]}"'},
    )


def delete_file(file_id: str, local: Local) -> dict[str, Any]:
    stored_file(local.db, file_id)
    local.db.delete_file(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


def router(config: ServerConfig) -> APIRouter:
    r = APIRouter()
    r.add_api_route(
        "/v1/files", upload_file, methods=["POST"], max_body_size=config.max_upload_bytes
    )
    r.add_api_route("/v1/files", list_files, methods=["GET"])
    r.add_api_route("/v1/files/{file_id}", retrieve_file, methods=["GET"])
    r.add_api_route(
        "/v1/files/{file_id}/content", file_content, methods=["GET"], response_model=None
    )
    r.add_api_route("/v1/files/{file_id}", delete_file, methods=["DELETE"])
    return r
