"""What the Generate screen says when a run ends (`run_notice`): its title, message and
severity, by how it ended. Plain text: a run's message may hold a model's or a file's name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tui.engine.generation import RunFinished


@dataclass(frozen=True)
class RunNotice:
    message: str
    title: str
    severity: Literal["information", "warning", "error"] = "information"
    timeout: float | None = None  # None: the app's default


def run_notice(finished: RunFinished) -> RunNotice:
    title = f"Run {finished.run_id}"
    if finished.status == "failed":
        message = finished.message
        if "HTTP 401" in message or "HTTP 403" in message:
            message += (
                "\nThe backend refused the request: check the API key (OPENAI_API_KEY or "
                "DISTILL_API_KEY) and that it may use this model."
            )
        return RunNotice(message, f"{title} stopped", "error", timeout=15)
    if finished.status == "budget":
        return RunNotice(finished.message, f"{title} stopped", "warning")
    if finished.status == "batch":
        return RunNotice(
            "The batches go on at the backend; ctrl+r on the run follows them again.",
            f"{title}: stopped following",
        )
    if finished.status == "cancelled":
        return RunNotice(
            "In-flight items were recorded as cancelled; ctrl+r resumes the rest.",
            f"{title} cancelled",
        )
    return RunNotice(finished.message, f"{title} finished")
