"""`/v1/batches`: create (checked here, run by tui/local/batches.py), list, retrieve, cancel.
The input file comes from `/v1/files` (purpose "batch"); the output and error files go there
too (purpose "batch_output")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from tui.local.batches import BatchError, batch_object
from tui.local.config import ServerConfig
from tui.local.errors import APIError
from tui.local.routes.common import Local, list_object, page_or_404, validate_metadata


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None = None


def _api_error(error: BatchError) -> APIError:
    code = "not_found" if error.status == 404 else None
    return APIError(error.status, error.message, param=error.param, code=code)


async def create_batch(body: BatchRequest, local: Local) -> dict[str, Any]:
    metadata = validate_metadata(body.metadata) if body.metadata is not None else None
    try:
        row = await local.batches.create(
            input_file_id=body.input_file_id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=metadata,
        )
    except BatchError as error:
        raise _api_error(error) from None
    return batch_object(row)


def list_batches(
    local: Local, after: str | None = None, limit: int = Query(20, ge=1, le=100)
) -> dict[str, Any]:
    page = page_or_404(local.db.list_batches(after=after, limit=limit), after)
    return list_object([batch_object(r) for r in page.rows], page.has_more)


def retrieve_batch(batch_id: str, local: Local) -> dict[str, Any]:
    row = local.db.get_batch(batch_id)
    if row is None:
        raise _api_error(BatchError(404, f"No batch found with id {batch_id!r}.", "batch_id"))
    return batch_object(row)


async def cancel_batch(batch_id: str, local: Local) -> dict[str, Any]:
    try:
        row = await local.batches.cancel(batch_id)
    except BatchError as error:
        raise _api_error(error) from None
    return batch_object(row)


def router(config: ServerConfig) -> APIRouter:
    r = APIRouter()
    batches = "/v1/batches"
    r.add_api_route(batches, create_batch, methods=["POST"], max_body_size=config.max_body_bytes)
    r.add_api_route(batches, list_batches, methods=["GET"])
    r.add_api_route(batches + "/{batch_id}", retrieve_batch, methods=["GET"])
    r.add_api_route(batches + "/{batch_id}/cancel", cancel_batch, methods=["POST"])
    return r
