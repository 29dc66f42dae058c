"""`/v1/models`: the models this server offers (listed whether loaded or not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tui.local.config import ServerConfig
from tui.local.errors import not_found
from tui.local.models import ModelInfo, ModelRegistry
from tui.local.routes.common import Local


def model_object(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": info.owned_by}


def model_info(registry: ModelRegistry, model_id: str, param: str | None = "model") -> ModelInfo:
    """The model's registry entry, or OpenAI's 404 for a model that does not exist."""
    try:
        return registry.info(model_id)
    except KeyError:
        raise not_found(
            f"The model `{model_id}` does not exist or you do not have access to it.",
            param,
            "model_not_found",
        ) from None


async def list_models(local: Local) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m) for m in local.registry.list()]}


async def retrieve_model(model_id: str, local: Local) -> dict[str, Any]:
    return model_object(model_info(local.registry, model_id, None))


def router(config: ServerConfig) -> APIRouter:
    r = APIRouter()
    r.add_api_route("/v1/models", list_models, methods=["GET"])
    r.add_api_route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"])
    return r
