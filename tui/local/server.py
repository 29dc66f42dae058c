"""`distill-tui serve`: an OpenAI-compatible HTTP API over local models.

Routes and response bodies follow OpenAI's (the openai SDK's types are the reference):
models, chat completions (streamed or not, `usage` always reported, `n` choices), stored
completions (`store=true` + `metadata`), files, fine-tuning jobs with events and
checkpoints, and batches (answered in the background through the chat route).

The app is assembled here from parts that each do one thing:
- tui/local/guard.py: every request needs `Authorization: Bearer <key>`; bodies are limited
  in size (413): JSON bodies by `max_body_bytes`, uploads by `max_upload_bytes`;
- tui/local/errors.py: every error is `{"error": {"message", "type", "param", "code"}}` with
  OpenAI's statuses (an invalid body is a 400, not FastAPI's 422);
- tui/local/routes/: one APIRouter module per endpoint family, working on the `LocalState`
  (database, model registry, job manager) that lives from startup to shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI

from tui.local.batches import BatchManager, asgi_poster
from tui.local.config import MiB, ServerConfig
from tui.local.db import LocalDB
from tui.local.errors import APIError, install_error_handlers
from tui.local.guard import Guard
from tui.local.jobs import JobManager
from tui.local.models import ModelInfo, ModelRegistry
from tui.local.request_checks import check_json_body
from tui.local.routes import routers
from tui.local.routes.common import LocalState

__all__ = ["APIError", "MiB", "ServerConfig", "create_app", "serve_in_thread"]

log = logging.getLogger("distill.local.server")


async def _start(config: ServerConfig, app: FastAPI) -> LocalState:
    """Open the database, list the models (fine-tuned ones included), start the job manager
    and the batch manager (which answers through `app`'s own chat route), and load the models
    to preload."""
    db = await asyncio.to_thread(LocalDB, config.workspace)
    registry = ModelRegistry(
        extra_paths=list(config.models), n_threads=config.n_threads, max_queue=config.max_queue
    )
    for row in await asyncio.to_thread(db.ft_models):
        path = Path(row["path"])
        if not path.exists():
            log.warning("fine-tuned model %s is missing at %s; not served", row["id"], path)
            continue
        registry.add(
            ModelInfo(
                id=row["id"],
                kind=row["kind"],
                path=path,
                created=row["created"],
                owned_by="ft",
                base=row["base"],
            )
        )
    jobs = JobManager(db, registry, python=config.trainer_python)
    await jobs.start()
    batches = BatchManager(db, asgi_poster(app, "/v1/chat/completions", config.api_key))
    await batches.start()
    listed = registry.list()
    preload = config.preload if config.preload is not None else [m.id for m in listed[:1]]
    for model_id in preload:
        await registry.engine(model_id)
    return LocalState(config=config, db=db, registry=registry, jobs=jobs, batches=batches)


async def _stop(state: LocalState) -> None:
    await state.batches.aclose()
    await state.jobs.aclose()
    await state.registry.aclose()
    await asyncio.to_thread(state.db.close)


def create_app(config: ServerConfig) -> FastAPI:
    """The server as an ASGI app; its state (`app.state.local`, a LocalState) lives from
    startup to shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await _start(config, app)
        app.state.local = state  # the routes' `Local` dependency; tests and benchmarks look too
        try:
            yield
        finally:
            await _stop(state)

    app = FastAPI(
        title="distill-tui local backend",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Every JSON body: no NaN/Infinity, no control characters (tui/local/request_checks.py).
        dependencies=[Depends(check_json_body)],
    )
    # Size limits are per route (FastAPI's max_body_size), not app-wide: an app-wide limiter
    # sits outside Guard and would replace its JSON 413 with a plain-text one.
    app.add_middleware(
        Guard,
        api_key=config.api_key,
        max_body=config.max_body_bytes,
        max_upload=config.max_upload_bytes,
    )
    install_error_handlers(app, config)
    for router in routers(config):
        app.include_router(router)
    return app


def serve_in_thread(config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Start the server with uvicorn in a background thread (tests and benchmarks).

    Returns an object with `.port` and `.stop()`.
    """
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="local-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the local server failed to start (see the log)")
        if time.monotonic() > deadline:
            raise TimeoutError("the local server did not start within 120 s")
        time.sleep(0.02)

    class Running:
        app = server.config.app
        port = sock.getsockname()[1]
        url = f"http://{host}:{sock.getsockname()[1]}/v1"

        @staticmethod
        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()

    return Running()
