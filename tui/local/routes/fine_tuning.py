"""`/v1/fine_tuning/jobs`: create (validated here, run by tui/local/jobs.py), list, retrieve,
cancel, events, checkpoints."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict

from tui.local.config import ServerConfig
from tui.local.db import LocalDB
from tui.local.errors import bad_request, not_found
from tui.local.jobs import JobError, job_object
from tui.local.request_checks import check_range
from tui.local.routes.common import (
    Local,
    list_object,
    metadata_filter,
    page_or_404,
    validate_metadata,
)

# A job's seed is a 31-bit integer, as OpenAI's are (it is stored, and seeds the trainer).
MAX_SEED = 2**31 - 1


class SupervisedHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    n_epochs: int | Literal["auto"] | None = None
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    # A local extension: LoRA (default) or a full fine-tune. OpenAI has no such knob.
    training_type: Literal["auto", "lora", "full"] | None = None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    hyperparameters: SupervisedHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    hyperparameters: SupervisedHyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, Any] | None = None
    integrations: list[Any] | None = None


def stored_job(db: LocalDB, job_id: str) -> dict[str, Any]:
    row = db.get_job(job_id)
    if row is None:
        raise not_found(
            f"Could not find fine-tuning job: {job_id}",
            "fine_tuning_job_id",
            "fine_tuning_job_not_found",
        )
    return row


def _hyperparameters(hp: SupervisedHyperparameters) -> dict[str, Any]:
    n_epochs = "auto" if hp.n_epochs is None else hp.n_epochs
    batch_size = "auto" if hp.batch_size is None else hp.batch_size
    lrm = "auto" if hp.learning_rate_multiplier is None else hp.learning_rate_multiplier
    if n_epochs != "auto" and not 1 <= int(n_epochs) <= 50:
        raise bad_request(
            "Invalid 'n_epochs': expected an integer from 1 to 50 or 'auto'.",
            "hyperparameters.n_epochs",
            "invalid_value",
        )
    if batch_size != "auto" and not 1 <= int(batch_size) <= 256:
        raise bad_request(
            "Invalid 'batch_size': expected an integer from 1 to 256 or 'auto'.",
            "hyperparameters.batch_size",
            "invalid_value",
        )
    if lrm != "auto" and not 0 < float(lrm) <= 10:
        raise bad_request(
            "Invalid 'learning_rate_multiplier': expected a number above 0 and at most 10, "
            "or 'auto'.",
            "hyperparameters.learning_rate_multiplier",
            "invalid_value",
        )
    return {"batch_size": batch_size, "learning_rate_multiplier": lrm, "n_epochs": n_epochs}


async def _check_files(db: LocalDB, body: JobRequest) -> None:
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id is None:
            continue
        row = await asyncio.to_thread(db.get_file, file_id)
        if row is None:
            raise bad_request(f"invalid {param}: {file_id}", param, "invalid_file")
        if row["purpose"] != "fine-tune":
            raise bad_request(
                f"invalid {param}: {file_id} was uploaded with purpose "
                f"{row['purpose']!r}; fine-tuning needs purpose 'fine-tune'.",
                param,
                "invalid_file",
            )


def _suffix(body: JobRequest) -> str | None:
    suffix = body.suffix or None
    if suffix is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", suffix):
        raise bad_request(
            "Invalid 'suffix': up to 64 letters, digits, '-', '_' or '.' (it becomes part "
            "of the model id).",
            "suffix",
            "invalid_value",
        )
    return suffix


def _requested_hyperparameters(body: JobRequest) -> SupervisedHyperparameters:
    """The hyperparameters from `method.supervised` or the deprecated top-level field."""
    if body.method is not None and body.method.type != "supervised":
        raise bad_request(
            f"Fine-tuning method {body.method.type!r} is not supported by this server; "
            "use 'supervised'.",
            "method.type",
            "unsupported_value",
        )
    from_method = (
        body.method.supervised.hyperparameters
        if body.method is not None and body.method.supervised is not None
        else None
    )
    if from_method is not None and body.hyperparameters is not None:
        raise bad_request(
            "Pass hyperparameters either in 'method' or at the top level (deprecated), not both.",
            "hyperparameters",
        )
    return from_method or body.hyperparameters or SupervisedHyperparameters()


async def create_job(body: JobRequest, local: Local) -> dict[str, Any]:
    try:
        info = local.registry.info(body.model)
    except KeyError:
        raise bad_request(
            f"Model {body.model} is not available for fine-tuning or does not exist.",
            "model",
            "model_not_available",
        ) from None
    await _check_files(local.db, body)
    suffix = _suffix(body)
    hp_in = _requested_hyperparameters(body)
    hp = _hyperparameters(hp_in)
    metadata = validate_metadata(body.metadata) if body.metadata is not None else None
    check_range("seed", body.seed, 0, MAX_SEED)
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    job = await local.jobs.create(
        {
            "model": info.id,
            "training_file": body.training_file,
            "validation_file": body.validation_file,
            "suffix": suffix,
            "seed": seed,
            "hyperparameters": hp,
            "train_method": hp_in.training_type or "auto",
            "metadata": metadata,
        }
    )
    return job_object(job)


def list_jobs(
    request: Request,
    local: Local,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
) -> dict[str, Any]:
    jobs = local.db.list_jobs(after=after, limit=limit, metadata=metadata_filter(request))
    page = page_or_404(jobs, after)
    return list_object([job_object(r) for r in page.rows], page.has_more, ids=False)


def retrieve_job(job_id: str, local: Local) -> dict[str, Any]:
    return job_object(stored_job(local.db, job_id))


async def cancel_job(job_id: str, local: Local) -> dict[str, Any]:
    await asyncio.to_thread(stored_job, local.db, job_id)
    try:
        job = await local.jobs.cancel(job_id)
    except JobError as exc:
        raise bad_request(exc.message, exc.param, exc.code) from None
    return job_object(job)


def list_job_events(
    job_id: str, local: Local, after: str | None = None, limit: int = Query(20, ge=1, le=1000)
) -> dict[str, Any]:
    stored_job(local.db, job_id)
    page = page_or_404(local.db.list_events(job_id, after=after, limit=limit), after)
    return list_object(page.rows, page.has_more, ids=False)


def list_job_checkpoints(
    job_id: str, local: Local, after: str | None = None, limit: int = Query(10, ge=1, le=1000)
) -> dict[str, Any]:
    stored_job(local.db, job_id)
    page = page_or_404(local.db.list_checkpoints(job_id, after=after, limit=limit), after)
    return list_object(page.rows, page.has_more)


def router(config: ServerConfig) -> APIRouter:
    r = APIRouter()
    jobs = "/v1/fine_tuning/jobs"
    r.add_api_route(jobs, create_job, methods=["POST"], max_body_size=config.max_body_bytes)
    r.add_api_route(jobs, list_jobs, methods=["GET"])
    r.add_api_route(jobs + "/{job_id}", retrieve_job, methods=["GET"])
    r.add_api_route(jobs + "/{job_id}/cancel", cancel_job, methods=["POST"])
    r.add_api_route(jobs + "/{job_id}/events", list_job_events, methods=["GET"])
    r.add_api_route(jobs + "/{job_id}/checkpoints", list_job_checkpoints, methods=["GET"])
    return r
