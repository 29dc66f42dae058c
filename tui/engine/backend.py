"""Which backend the app talks to, the one factory of its OpenAI clients, and the embedded
local server's life (one per workspace, shared by its apps, stopped after the last of them).

Rule (settings.backend == "auto"): a base URL set -> that URL; else an API key set -> OpenAI;
else the local backend, `distill-tui serve`: the workspace's running one, or a child process
started here. No textual here.

A backend per role: the teacher, the student and the judge may each have their own
(`Settings.backend_owner`); `open_backends` opens one client per distinct backend (the local
server started once however many roles use it) and closes them all. A role with no backend of
its own uses the default one, so nothing changes when no role names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import openai
from pydantic import SecretStr

from tui.engine import local_instance
from tui.engine.extras import local_missing_message, missing_local
from tui.engine.local_instance import Membership
from tui.engine.redact import redact_url, url_host
from tui.engine.retry import describe
from tui.engine.settings import ROLES, BackendKind, Role

# The local server reads its key from this variable: an argument would be visible to every
# user of the machine in `ps`, the environment only to us.
LOCAL_KEY_ENV = "DISTILL_LOCAL_API_KEY"
LOCAL_LOG_NAME = "server.log"
START_TIMEOUT = 180.0  # the first start may build the GGUF model's caches
STOP_TIMEOUT = 10.0


class BackendError(RuntimeError):
    """The backend cannot be used as configured (a missing key, a server that won't start)."""


@dataclass(frozen=True)
class BackendSpec:
    kind: BackendKind
    base_url: str | None  # None for OpenAI's default URL, or a local server not started yet
    api_key: SecretStr | None
    label: str  # what the status line shows: "local", "openai", or the URL's host


def resolve_backend(settings: Any) -> BackendSpec:
    """Decide the backend from settings (see the module docstring for the rule)."""
    kind: str = settings.backend
    base_url: str | None = settings.base_url or None
    api_key: SecretStr | None = settings.api_key
    if api_key is not None and not api_key.get_secret_value():
        api_key = None
    if kind == "auto":
        kind = "url" if base_url else "openai" if api_key is not None else "local"
    if kind == "url":
        if not base_url:
            raise BackendError(
                "backend 'url' needs a base URL: set DISTILL_BASE_URL (or OPENAI_BASE_URL)."
            )
        return BackendSpec("url", base_url, api_key, url_host(base_url))
    if kind == "openai":
        if api_key is None:
            raise BackendError(
                "backend 'openai' needs an API key: set OPENAI_API_KEY (or DISTILL_API_KEY)."
            )
        return BackendSpec("openai", base_url, api_key, "openai")
    if kind == "local":
        return BackendSpec("local", None, settings.local_api_key, "local")
    raise BackendError(f"unknown backend {kind!r}: use auto, local, openai or url")


def _key(value: SecretStr | None) -> SecretStr | None:
    return value if value is not None and value.get_secret_value() else None


def resolve_role_backend(settings: Any, role: Role) -> BackendSpec:
    """The backend a role uses: the default one (resolve_backend) unless the role has its own
    (`Settings.backend_owner`). A role's key is its own; failing that, the shared key only
    where it was meant for the same server: OPENAI_API_KEY for a role on OpenAI (unless the
    default backend is a URL, whose key it is), the default URL's key for a role on that URL.
    A key is never sent to a server it was not given for."""
    owner: Role | None = settings.backend_owner(role)
    if owner is None:
        return resolve_backend(settings)
    kind: BackendKind = settings.backend_kind(owner)
    env = f"DISTILL_{owner.upper()}"
    base_url: str | None = getattr(settings, f"{owner}_base_url") or None
    api_key = _key(getattr(settings, f"{owner}_api_key"))
    default_kind = settings.backend_kind()
    if kind == "local":
        return BackendSpec("local", None, settings.local_api_key, "local")
    if kind == "url":
        if not base_url:
            raise BackendError(
                f"the {owner}'s backend 'url' needs a base URL: set {env}_BASE_URL "
                f'(or {owner}_backend = "http://..." in the recipe config).'
            )
        if api_key is None and base_url == settings.base_url:
            api_key = _key(settings.api_key)
        return BackendSpec("url", base_url, api_key, url_host(base_url))
    if api_key is None and default_kind != "url":
        api_key = _key(settings.api_key)
    if base_url is None and default_kind == "openai":
        base_url = settings.base_url or None  # OpenAI's rules at the address the user gave
    if api_key is None:
        raise BackendError(
            f"the {owner}'s backend 'openai' needs an API key: set {env}_API_KEY "
            "(or OPENAI_API_KEY)."
        )
    return BackendSpec("openai", base_url, api_key, "openai")


def make_client(
    spec: BackendSpec, timeout: float = 60.0, max_retries: int = 2
) -> openai.AsyncOpenAI:
    """The app's only way to build an OpenAI client, whatever the backend."""
    if spec.kind == "local" and not spec.base_url:
        raise BackendError("the local server is not started yet (LocalServer.start)")
    # OpenAI-compatible servers without auth still need some key for the SDK to send.
    key = spec.api_key.get_secret_value() if spec.api_key is not None else "not-needed"
    return openai.AsyncOpenAI(
        api_key=key, base_url=spec.base_url, timeout=timeout, max_retries=max_retries
    )


def client_for_thread(client: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
    """The same client (address, key, timeout, retries) with a connection pool of its own,
    for a job on another thread's event loop (tui/engine/offloop.py): a pool's connections
    belong to the loop that opened them. The job closes it when it ends."""
    return client.copy(http_client=openai.DefaultAsyncHttpxClient())


T = TypeVar("T")


async def closing(client: openai.AsyncOpenAI | None, start: Callable[[], Awaitable[T]]) -> T:
    """A job for another thread's loop (`EngineThread.run(partial(closing, client, start))`):
    it awaits `start()`, then closes the client made for it (`client_for_thread`) on that same
    loop, however the work ends."""
    try:
        return await start()
    finally:
        if client is not None:
            await client.close()


class LocalServer:
    """The workspace's embedded backend, `python -m tui.local.serve`: the one already running
    for this workspace if there is one (another window's, a `distill-tui web` session's, one
    started by hand), else a child process started here.

    One server per workspace (tui/engine/local_instance.py): a second server on the same
    `local/` store would fail the jobs the first one runs. A server started here listens on a
    free loopback port with a random key (passed in its environment, never in argv); it
    publishes its address and key in `<workspace>/local/server.json` (0600), serves every app
    registered as using it, and stops when the last of them leaves or dies (even by SIGKILL:
    it watches their pids). Its output goes to `<workspace>/local/server.log`.
    """

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.proc: asyncio.subprocess.Process | None = None  # set when we started it
        self.spec: BackendSpec | None = None
        self.log_path: Path | None = None
        self.shared_pid: int | None = None  # the running server we joined instead
        self._membership: Membership | None = None
        self._log: IO[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else self.shared_pid

    @property
    def started_here(self) -> bool:
        return self.proc is not None

    def ends_with_this_app(self) -> bool:
        """Whether the server stops when this app leaves it (and its fine-tuning jobs with
        it): no other app (a window, `distill-tui run`) alive uses it."""
        if self._membership is None:
            return False
        clients = local_instance.live_clients(self._membership.workspace)
        return all(pid == os.getpid() for pid in clients)

    async def start(
        self,
        workspace: Path,
        models: list[Path] | None = None,
        on_progress: Callable[[str], None] | None = None,
        *,
        timeout: float = START_TIMEOUT,
        extra_args: list[str] | None = None,
        api_key: SecretStr | None = None,
    ) -> BackendSpec:
        """Join the workspace's running server, or start one; `models`, `extra_args` and
        `api_key` apply only to a server started here."""
        if self.spec is not None or (self.proc is not None and self.proc.returncode is None):
            raise BackendError("the local server is already running")
        progress = on_progress or (lambda _msg: None)
        workspace = Path(workspace)
        local_dir = workspace / "local"
        local_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = local_dir / LOCAL_LOG_NAME
        membership = Membership(workspace)
        self._membership = membership
        deadline = time.monotonic() + timeout
        said_waiting = False
        try:
            while True:
                # Registered before looking: a server deciding to stop counts us first.
                info = await asyncio.to_thread(membership.join)
                if info is not None:
                    spec = BackendSpec("local", info.url, info.api_key, "local")
                    n_models = await self._answers(spec)
                    if n_models is not None:
                        self.shared_pid = info.pid
                        progress(
                            f"local: using the server this workspace already runs (pid "
                            f"{info.pid}, {n_models} model{'s' if n_models != 1 else ''})"
                        )
                        self.spec = spec
                        return spec
                elif local_instance.server_holder(workspace) is None:
                    launched = await self._launch(
                        workspace, models, progress, timeout, extra_args, api_key
                    )
                    if launched is not None:
                        self.spec = launched
                        return launched
                    continue  # another app's server took the store first: join that one
                if time.monotonic() > deadline:
                    holder = local_instance.server_holder(workspace)
                    who = holder.describe() if holder is not None else "another server"
                    raise BackendError(
                        f"the local server of this workspace ({who}) did not become ready "
                        f"within {timeout:.0f} s" + self._log_tail()
                    )
                if not said_waiting:
                    progress("local: waiting for the local server of this workspace to start…")
                    said_waiting = True
                await asyncio.sleep(0.1)
        except BaseException:
            await self.stop()
            raise

    async def _answers(self, spec: BackendSpec) -> int | None:
        """How many models a published server lists, or None if it does not answer (it is
        stopping): then we look again."""
        client = make_client(spec, timeout=10.0, max_retries=0)
        try:
            page = await client.models.list()
            return len(page.data)
        except openai.APIError:
            return None
        finally:
            await client.close()

    async def _launch(
        self,
        workspace: Path,
        models: list[Path] | None,
        progress: Callable[[str], None],
        timeout: float,
        extra_args: list[str] | None,
        api_key: SecretStr | None,
    ) -> BackendSpec | None:
        """Start the server; None if it found another server holding the store (two apps
        starting at once: the loser joins the winner)."""
        if self.python == sys.executable and (missing := missing_local()):
            # Said before spawning: the child would only die with an ImportError in its log.
            raise BackendError(local_missing_message(missing))
        assert self.log_path is not None
        self._tmp = tempfile.TemporaryDirectory(prefix="distill-serve-")
        port_file = Path(self._tmp.name) / "port"
        # A fresh key per launch unless the user fixed one (settings.local_api_key).
        key = api_key.get_secret_value() if api_key else "sk-local-" + secrets.token_urlsafe(32)

        args = [
            self.python,
            "-m",
            "tui.local.serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--exit-when-unused",
            "--workspace",
            str(workspace),
        ]
        for model in models or []:
            args += ["--model", str(model)]
        args += extra_args or []
        env = dict(os.environ)
        env[LOCAL_KEY_ENV] = key
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"

        progress("local: starting server…")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n--- distill-tui serve started {time.ctime()} ---\n".encode())
        self._log.flush()
        # A session of its own: a Ctrl+C meant for this terminal's command must not stop a
        # server other windows use. It stops when the last app using it is gone.
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        try:
            port = await self._wait_port(port_file, timeout, progress)
        except BackendError:
            proc = self.proc
            holder = local_instance.server_holder(workspace)
            if proc.returncode is not None and holder is not None and holder.pid != proc.pid:
                self._forget_launch()
                return None
            raise
        # The port is known: its file goes now rather than at stop(), which an app killed
        # with -9 (or a test that kills one) never reaches.
        self._tmp.cleanup()
        self._tmp = None
        base_url = f"http://127.0.0.1:{port}/v1"
        spec = BackendSpec("local", base_url, SecretStr(key), "local")
        progress(f"local: server on 127.0.0.1:{port}, checking /v1/models…")
        n_models = await self._wait_models(spec, timeout)
        progress(f"local: ready ({n_models} model{'s' if n_models != 1 else ''})")
        return spec

    def _forget_launch(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def _wait_port(
        self, port_file: Path, timeout: float, progress: Callable[[str], None]
    ) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        said_loading = False
        started = time.monotonic()
        while True:
            if port_file.exists():
                text = port_file.read_text(encoding="utf-8").strip()
                if text.isdigit():
                    return int(text)
            if self.proc.returncode is not None:
                raise BackendError(
                    f"the local server exited with code {self.proc.returncode} while starting"
                    + self._log_tail()
                )
            if time.monotonic() > deadline:
                raise BackendError(
                    f"the local server did not start within {timeout:.0f} s" + self._log_tail()
                )
            if not said_loading and time.monotonic() - started > 1.0:
                progress("local: loading model…")
                said_loading = True
            await asyncio.sleep(0.05)

    async def _wait_models(self, spec: BackendSpec, timeout: float) -> int:
        assert self.proc is not None
        client = make_client(spec, timeout=10.0, max_retries=0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    page = await client.models.list()
                    return len(page.data)
                except openai.APIConnectionError:
                    if self.proc.returncode is not None or time.monotonic() > deadline:
                        raise BackendError(
                            "the local server does not answer /v1/models" + self._log_tail()
                        ) from None
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    def _log_tail(self, n: int = 8) -> str:
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        tail = "\n".join(lines[-n:])
        return f" (see {self.log_path}):\n{tail}" if tail else ""

    async def stop(self) -> None:
        """Leave the server. One started here is stopped (SIGTERM, then SIGKILL if it has not
        exited in STOP_TIMEOUT s) unless other apps still use it; then it stops by itself
        after the last of them."""
        proc, self.proc = self.proc, None
        membership, self._membership = self._membership, None
        try:
            last = True
            if membership is not None:
                server_pid = proc.pid if proc is not None and proc.returncode is None else None
                last = await asyncio.to_thread(membership.leave, server_pid)
            if proc is not None and proc.returncode is None and last:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
            self.spec = None
            self.shared_pid = None

    async def __aenter__(self) -> LocalServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@dataclass
class Backend:
    """An open backend: the client the app uses, and the local server if we started one."""

    spec: BackendSpec
    client: openai.AsyncOpenAI
    label: str  # for the status line: "local · 127.0.0.1:51234", "openai", "url · <base url>"
    server: LocalServer | None = None

    async def aclose(self) -> None:
        try:
            await self.client.close()
        finally:
            if self.server is not None:
                await self.server.stop()


async def open_backend(settings: Any, on_progress: Callable[[str], None] | None = None) -> Backend:
    """Resolve the backend from settings, start the local server if that is the one, and
    return a ready client."""
    return await _open(resolve_backend(settings), settings, on_progress)


async def _open(
    spec: BackendSpec, settings: Any, on_progress: Callable[[str], None] | None
) -> Backend:
    timeout = float(getattr(settings, "request_timeout", 60.0))
    max_retries = int(getattr(settings, "max_retries", 2))
    if spec.kind != "local":
        label = "openai" if spec.kind == "openai" else f"url · {redact_url(spec.base_url)}"
        if spec.kind == "openai" and spec.base_url:
            label = f"openai · {redact_url(spec.base_url)}"
        return Backend(spec, make_client(spec, timeout, max_retries), label)
    server = LocalServer()
    spec = await server.start(
        Path(settings.workspace),
        list(getattr(settings, "local_models", []) or []),
        on_progress,
        api_key=getattr(settings, "local_api_key", None),
    )
    assert spec.base_url is not None
    label = "local · " + url_host(spec.base_url)
    try:
        client = make_client(spec, timeout, max_retries)
    except BaseException:
        await server.stop()
        raise
    return Backend(spec, client, label, server)


def _identity(spec: BackendSpec) -> tuple[str, ...]:
    """Two roles share a backend when they would talk to the same server with the same key;
    every local role shares the one local server."""
    if spec.kind == "local":
        return ("local",)
    key = spec.api_key.get_secret_value() if spec.api_key is not None else ""
    return (spec.kind, spec.base_url or "", key)


@dataclass
class Backends:
    """The open backends, by role: `backends.teacher.client` carries the teacher's requests.
    Roles on the same backend share one Backend (one client, one local server)."""

    by_role: dict[Role, Backend]

    @property
    def teacher(self) -> Backend:
        return self.by_role["teacher"]

    @property
    def student(self) -> Backend:
        return self.by_role["student"]

    @property
    def judge(self) -> Backend:
        return self.by_role["judge"]

    @property
    def distinct(self) -> list[Backend]:
        """Each open backend once, in the order of the roles."""
        out: list[Backend] = []
        for backend in self.by_role.values():
            if not any(b is backend for b in out):
                out.append(backend)
        return out

    def roles_of(self, backend: Backend) -> tuple[Role, ...]:
        return tuple(role for role, b in self.by_role.items() if b is backend)

    @property
    def label(self) -> str:
        """For the status line: the backend's label, or each backend with its roles."""
        distinct = self.distinct
        if len(distinct) == 1:
            return distinct[0].label
        return " | ".join(f"{', '.join(self.roles_of(b))}: {b.label}" for b in distinct)

    async def aclose(self) -> None:
        """Close every client and stop the local server; all of them, even if one fails."""
        await _close_all(self.distinct)

    async def __aenter__(self) -> Backends:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _close_all(backends: list[Backend]) -> None:
    errors: list[Exception] = []
    for backend in backends:
        try:
            await backend.aclose()
        except Exception as error:  # closing the others matters more; raised below
            errors.append(error)
    if errors:
        raise errors[0]


async def open_backends(
    settings: Any, on_progress: Callable[[str], None] | None = None
) -> Backends:
    """Open the backend of every role: one client per distinct backend, the local server
    started once even if several roles use it. Every role's settings are checked before
    anything is started; if one backend fails to open, those already open are closed."""
    specs = {role: resolve_role_backend(settings, role) for role in ROLES}
    opened: dict[tuple[str, ...], Backend] = {}
    by_role: dict[Role, Backend] = {}
    try:
        for role, spec in specs.items():
            identity = _identity(spec)
            if identity not in opened:
                opened[identity] = await _open(spec, settings, on_progress)
            by_role[role] = opened[identity]
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            await _close_all(list(opened.values()))
        raise
    return Backends(by_role)


@dataclass(frozen=True)
class ModelGroup:
    """The models one backend serves, for a model picker: under its label, with the roles
    that use it; `error` says why the list is missing (the backend did not answer)."""

    backend: Backend
    roles: tuple[Role, ...]
    models: tuple[str, ...]
    error: str | None = None

    @property
    def label(self) -> str:
        return self.backend.label


async def list_models_by_backend(backends: Backends) -> list[ModelGroup]:
    """The models of every open backend, grouped by backend (in the order of the roles), each
    list sorted. A backend that cannot list its models gives a group with the reason and no
    models, so the others still show."""

    async def group(backend: Backend) -> ModelGroup:
        roles = backends.roles_of(backend)
        try:
            models = sorted({m.id async for m in backend.client.models.list()})
        except openai.APIError as error:
            return ModelGroup(backend, roles, (), describe(error))
        return ModelGroup(backend, roles, tuple(models))

    return list(await asyncio.gather(*(group(b) for b in backends.distinct)))
