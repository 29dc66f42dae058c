"""Fine-tuning jobs: validate the files, queue, run the trainer process, record its events.

A job moves validating_files -> queued -> running -> succeeded | failed | cancelled, as on
OpenAI. Validation runs right away (off the event loop); training runs one job at a time
(two trainings would fight over the 2 cores and the memory) in a separate process,
`python -m tui.local.trainer SPEC.json`, whose JSON lines on stdout become job events,
checkpoints and the job's trained_tokens / estimated_finish. The server never waits on it:
the trainer's output is read by an asyncio task.

Restarts: a job that was validating, queued or running when the server stopped is marked
failed with code "server_stopped" and a message that says so. We chose failing over resuming
because the trainer keeps no resumable optimizer state and a half-trained adapter is not a
model anyone asked for; the uploaded files remain, so creating the job again is one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tui.engine.host import pid_alive
from tui.engine.training_data import check_chat_jsonl
from tui.local.db import ACTIVE_JOB_STATUSES, LocalDB, new_id, now
from tui.local.lifetime import die_with_parent

log = logging.getLogger("distill.local.jobs")


def _trainer_dies_with_server() -> None:
    die_with_parent(signal.SIGKILL)


# Seconds a cancelled / stopped trainer gets to exit on SIGTERM before SIGKILL.
TERMINATE_GRACE = 10.0

TRAINER_MODULE = "tui.local.trainer"


class JobError(Exception):
    """A request about a job that cannot be honoured (mapped to an HTTP 400 by the server)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    """A jobs-table row as OpenAI's `fine_tuning.job` object."""
    hp = row["hyperparameters"]
    return {
        "object": "fine_tuning.job",
        "id": row["id"],
        "created_at": row["created_at"],
        "error": row["error"],
        "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"],
        "hyperparameters": dict(hp),
        "model": row["model"],
        "organization_id": "org-local",
        "result_files": row.get("result_files") or [],
        "seed": row["seed"],
        "status": row["status"],
        "trained_tokens": row["trained_tokens"],
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "estimated_finish": row["estimated_finish"],
        "integrations": [],
        "metadata": row["metadata"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": dict(hp)}},
        "user_provided_suffix": row["suffix"],
    }


def fine_tuned_model_id(base: str, suffix: str | None, job_id: str) -> str:
    # OpenAI's shape, ft:<base>:<org>:<suffix>:<short id>, with "local" as the organisation.
    return f"ft:{base}:local:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


# Names of the trainer's metrics that OpenAI also reports (events' data and checkpoints).
METRIC_NAMES = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


class JobManager:
    """Owns every job's progress. The server creates one at start-up and closes it at exit.

    `registry` is the server's ModelRegistry: the base model's path and kind come from it and
    a finished model is added to it. `python` and `env` choose how the trainer is launched
    (tests keep the defaults: the same interpreter, this environment).
    """

    def __init__(
        self,
        db: LocalDB,
        registry: Any,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.python = python
        self.env = env
        self.cache_dir = db.root / "cache"
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._running_id: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._cancel_requested: set[str] = set()
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.recover)
        self._worker = asyncio.create_task(self._work(), name="fine-tuning worker")

    def recover(self) -> list[str]:
        """Mark jobs the previous server left unfinished as failed. Returns their ids.

        Only a server that holds the store (LocalDB takes its lock, one server per workspace)
        gets here, so the server those jobs ran under is gone: a second server on a running
        one's store is refused before this, and a second app uses the running server."""
        failed = []
        for job in self.db.active_jobs():
            pid = job.get("pid")
            if pid and pid_alive(pid) and _is_trainer(pid):
                # A trainer that outlived its server (it should have died with it) would keep
                # writing into a job nobody reads; stop it.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            message = (
                f"The local server stopped while this job was {job['status']}, so the job did "
                "not finish (jobs are not resumed after a restart). The training file is still "
                "uploaded: create a new job to train again."
            )
            self._finish(job["id"], "failed", error=_error("server_stopped", message))
            failed.append(job["id"])
        return failed

    async def aclose(self) -> None:
        """Stop everything: a running trainer is terminated and its job marked failed."""
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Cancelling the worker terminated a running trainer (see _run's finally).
        for job in await asyncio.to_thread(self.db.active_jobs):
            message = (
                f"The local server was stopped while this job was {job['status']}; "
                "create a new job to train again."
            )
            await asyncio.to_thread(
                self._finish, job["id"], "failed", error=_error("server_stopped", message)
            )

    # ---- requests --------------------------------------------------------------------------

    async def create(self, job: dict[str, Any]) -> dict[str, Any]:
        """Record a new job (already validated by the server) and start validating its files."""
        row = {
            "id": new_id("ftjob-"),
            "created_at": now(),
            "status": "validating_files",
            **job,
        }
        await asyncio.to_thread(self.db.add_job, row)
        await asyncio.to_thread(
            self.db.add_event, row["id"], f"Validating training file: {row['training_file']}"
        )
        if row.get("validation_file"):
            await asyncio.to_thread(
                self.db.add_event,
                row["id"],
                f"Validating validation file: {row['validation_file']}",
            )
        self._spawn(self._validate(row["id"]))
        stored = await asyncio.to_thread(self.db.get_job, row["id"])
        assert stored is not None
        return stored

    async def cancel(self, job_id: str) -> dict[str, Any]:
        job = await asyncio.to_thread(self.db.get_job, job_id)
        if job is None:
            raise KeyError(job_id)
        if job["status"] not in ACTIVE_JOB_STATUSES:
            raise JobError(
                f"Job {job_id} has already {job['status']} and cannot be cancelled.",
                param="fine_tuning_job_id",
            )
        self._cancel_requested.add(job_id)
        if self._running_id == job_id and self._proc is not None:
            # The run task sees the process exit and records "cancelled".
            await _terminate(self._proc)
            await self._wait_status(job_id)
        else:
            await asyncio.to_thread(self._finish, job_id, "cancelled")
        job = await asyncio.to_thread(self.db.get_job, job_id)
        assert job is not None
        return job

    async def _wait_status(self, job_id: str, timeout: float = TERMINATE_GRACE + 5) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            job = await asyncio.to_thread(self.db.get_job, job_id)
            if job is None or job["status"] not in ACTIVE_JOB_STATUSES:
                return
            await asyncio.sleep(0.05)

    # ---- internals -------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(
        self,
        job_id: str,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """Move a job to a terminal status once (a job already finished stays as it was)."""
        changed = self.db.update_job(
            job_id,
            only_if_status=ACTIVE_JOB_STATUSES,
            status=status,
            error=error,
            finished_at=now(),
            pid=None,
            **fields,
        )
        if not changed:
            return
        if status == "failed" and error is not None:
            self.db.add_event(job_id, error["message"], level="error")
        elif status == "cancelled":
            self.db.add_event(job_id, "Fine-tuning job cancelled")
        elif status == "succeeded":
            self.db.add_event(job_id, "The job has successfully completed")

    async def _validate(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.db.get_job, job_id)
        if job is None:
            return
        problems: list[tuple[str, str]] = []
        for param in ("training_file", "validation_file"):
            file_id = job[param]
            if not file_id:
                continue
            summary = await asyncio.to_thread(self._check_file, file_id, param)
            if summary:
                problems.append((param, summary))
        if job_id in self._cancel_requested:
            return
        if problems:
            param, _ = problems[0]
            details = " ".join(f"{p} {job[p]}: {s}." for p, s in problems)
            message = f"The job failed due to an invalid training file. {details}"
            await asyncio.to_thread(
                self._finish,
                job_id,
                "failed",
                error=_error("invalid_training_file", message, param),
            )
            return
        queued = await asyncio.to_thread(
            self.db.update_job, job_id, only_if_status=("validating_files",), status="queued"
        )
        if not queued:
            return  # cancelled meanwhile
        await asyncio.to_thread(
            self.db.add_event, job_id, "Files validated, moving job to queued state"
        )
        await self._queue.put(job_id)

    def _check_file(self, file_id: str, param: str) -> str | None:
        """None when the file is a valid chat JSONL, else why not (the cookbook's names)."""
        if self.db.get_file(file_id) is None:
            return "the file has been deleted"
        try:
            text = self.db.file_path(file_id).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            return "the file is not UTF-8 text (JSONL expected)"
        except OSError as exc:
            return f"the file could not be read ({exc.strerror})"
        # A validation file only needs to be well formed; OpenAI's 10-example minimum is for
        # training data.
        report = check_chat_jsonl(text, min_examples=10 if param == "training_file" else 1)
        return None if report.ok() else report.summary()

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            job = await asyncio.to_thread(self.db.get_job, job_id)
            if job is None or job["status"] != "queued":
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must fail the job, not kill the worker
                log.exception("fine-tuning job %s crashed", job_id)
                await asyncio.to_thread(
                    self._finish,
                    job_id,
                    "failed",
                    error=_error("training_failed", f"Internal error while training: {exc}"),
                )
            finally:
                self._running_id = None
                self._proc = None

    def _spec(self, job: dict[str, Any]) -> dict[str, Any]:
        info = self.registry.info(job["model"])
        hp = job["hyperparameters"]
        return {
            "base_model_id": info.base or info.id,
            "base_kind": info.kind,
            "base_path": str(info.path),
            "training_file": str(self.db.file_path(job["training_file"])),
            "validation_file": (
                str(self.db.file_path(job["validation_file"])) if job["validation_file"] else None
            ),
            "output_dir": str(self.db.models_dir / job["id"]),
            "cache_dir": str(self.cache_dir),
            "method": job["train_method"],
            "n_epochs": hp["n_epochs"],
            "batch_size": hp["batch_size"],
            "learning_rate_multiplier": hp["learning_rate_multiplier"],
            "seed": job["seed"],
            "suffix": job["suffix"],
        }

    async def _run(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        job_dir = self.db.jobs_dir / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        try:
            spec = self._spec(job)
        except KeyError:
            await asyncio.to_thread(
                self._finish,
                job_id,
                "failed",
                error=_error("model_not_found", f"The model {job['model']} is no longer served."),
            )
            return
        spec_path = job_dir / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        ft_model = fine_tuned_model_id(spec["base_model_id"], job["suffix"], job_id)

        env = dict(self.env if self.env is not None else os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        stderr_log = open(job_dir / "trainer.log", "ab")  # noqa: SIM115 - closed in finally
        self._running_id = job_id
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                TRAINER_MODULE,
                str(spec_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr_log,
                env=env,
                limit=1 << 20,
                # The trainer dies with the server, even when the server is SIGKILLed: at
                # once (SIGKILL), since no one is left to read its work, and a SIGTERM waits
                # for the trainer's main thread to leave the C call it is in (a torch import
                # or op under load: a fresh-clone CI once saw it alive 15 s after the server).
                preexec_fn=_trainer_dies_with_server if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            stderr_log.close()
            await asyncio.to_thread(
                self._finish,
                job_id,
                "failed",
                error=_error("training_failed", f"Could not start the trainer: {exc}"),
            )
            return
        self._proc = proc
        started = await asyncio.to_thread(
            self.db.update_job, job_id, only_if_status=("queued",), status="running", pid=proc.pid
        )
        if started:
            await asyncio.to_thread(self.db.add_event, job_id, "Fine-tuning job started")
        else:
            await _terminate(proc)  # cancelled between the queue and the start

        state = _RunState()
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if not isinstance(msg, dict):
                    # Something other than the protocol reached stdout (a library's print);
                    # keep it with the trainer's log rather than lose or misread it.
                    stderr_log.write(b"[stdout] " + raw)
                    continue
                await asyncio.to_thread(self._on_message, job, ft_model, msg, state)
            await proc.wait()
        finally:
            stderr_log.close()
            if proc.returncode is None:
                # We are being cancelled (server shutdown): don't leave the trainer behind.
                await _terminate(proc)

        if job_id in self._cancel_requested:
            await asyncio.to_thread(self._finish, job_id, "cancelled")
            return
        if proc.returncode == 0 and state.result is not None:
            await asyncio.to_thread(self._succeed, job, ft_model, state)
            return
        if state.error is not None:
            error = state.error
        else:
            tail = _tail(job_dir / "trainer.log")
            error = _error(
                "training_failed",
                f"The trainer exited with code {proc.returncode} before finishing."
                + (f" Last output: {tail}" if tail else ""),
            )
        await asyncio.to_thread(self._finish, job_id, "failed", error=error)

    def _on_message(
        self, job: dict[str, Any], ft_model: str, msg: dict[str, Any], state: _RunState
    ) -> None:
        job_id = job["id"]
        kind = msg.get("type")
        if kind == "message":
            level = msg.get("level", "info")
            if level not in ("info", "warn", "error"):
                level = "info"
            self.db.add_event(job_id, str(msg.get("message", "")), level=level)
        elif kind == "hyperparameters":
            hp = {
                k: msg[k]
                for k in ("n_epochs", "batch_size", "learning_rate_multiplier")
                if k in msg
            }
            if hp:
                self.db.update_job(job_id, hyperparameters={**job["hyperparameters"], **hp})
        elif kind == "metrics":
            step = int(msg.get("step", 0))
            total = msg.get("total_steps")
            data: dict[str, Any] = {"step": step}
            if total is not None:
                data["total_steps"] = total
            if msg.get("epoch") is not None:
                data["epoch"] = msg["epoch"]
            for name in METRIC_NAMES:
                if msg.get(name) is not None:
                    data[name] = msg[name]
            text = f"Step {step}/{total}" if total is not None else f"Step {step}"
            if data.get("train_loss") is not None:
                text += f": training loss={data['train_loss']:.4f}"
            if data.get("valid_loss") is not None:
                text += f", validation loss={data['valid_loss']:.4f}"
            self.db.add_event(job_id, text, type="metrics", data=data)
            state.metrics.append(data)
            updates: dict[str, Any] = {}
            if msg.get("trained_tokens") is not None:
                updates["trained_tokens"] = int(msg["trained_tokens"])
            if msg.get("estimated_finish") is not None:
                updates["estimated_finish"] = int(msg["estimated_finish"])
            if updates:
                self.db.update_job(job_id, **updates)
        elif kind == "checkpoint":
            step = int(msg.get("step", 0))
            raw = msg.get("metrics") or {}
            metrics: dict[str, Any] = {"step": float(step)}
            for name in METRIC_NAMES:
                if raw.get(name) is not None:
                    metrics[name] = raw[name]
            self.db.add_checkpoint(job_id, step, metrics, f"{ft_model}:ckpt-step-{step}")
            self.db.add_event(job_id, f"Checkpoint created at step {step}")
        elif kind == "result":
            state.result = msg
        elif kind == "error":
            state.error = _error(
                str(msg.get("code") or "training_failed"),
                str(msg.get("message") or "The trainer reported an error."),
                msg.get("param"),
            )
        # Unknown types are ignored: a newer trainer may say more than this server knows.

    def _succeed(self, job: dict[str, Any], ft_model: str, state: _RunState) -> None:
        from tui.local.models import ModelInfo

        assert state.result is not None
        job_id = job["id"]
        path = Path(state.result["path"])
        kind = str(state.result.get("kind", "hf"))
        base = self.registry.info(job["model"])
        root_base = base.base or base.id
        created = now()
        self.db.add_ft_model(ft_model, root_base, kind, path, job_id)
        self.registry.add(
            ModelInfo(
                id=ft_model, kind=kind, path=path, created=created, owned_by="ft", base=root_base
            )
        )
        self.db.add_event(job_id, f"New fine-tuned model created: {ft_model}")
        results = self._results_file(job_id, state.metrics)
        trained = state.result.get("trained_tokens")
        fields: dict[str, Any] = {"fine_tuned_model": ft_model, "estimated_finish": None}
        if trained is not None:
            fields["trained_tokens"] = int(trained)
        if results is not None:
            fields["result_files"] = [results]
        self._finish(job_id, "succeeded", **fields)

    def _results_file(self, job_id: str, metrics: list[dict[str, Any]]) -> str | None:
        """Per-step metrics as a CSV file, as OpenAI attaches to a finished job."""
        if not metrics:
            return None
        columns = [
            "step",
            "train_loss",
            "train_accuracy",
            "valid_loss",
            "valid_mean_token_accuracy",
        ]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for m in metrics:
            writer.writerow(
                [
                    m.get("step"),
                    m.get("train_loss", ""),
                    m.get("train_mean_token_accuracy", ""),
                    m.get("valid_loss", ""),
                    m.get("valid_mean_token_accuracy", ""),
                ]
            )
        data = buf.getvalue().encode("utf-8")
        file_id = new_id("file-")
        self.db.file_path(file_id).write_bytes(data)
        self.db.add_file(file_id, len(data), "step_metrics.csv", "fine-tune-results")
        return file_id


class _RunState:
    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None


def _error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), TERMINATE_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _is_trainer(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return TRAINER_MODULE.encode() in cmdline


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = path.read_text("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-n:])
