"""Grader configs the tests share."""

from __future__ import annotations

from typing import Any

# A model judge answering pass or fail: the fake server's replies decide each grade.
JUDGE: dict[str, Any] = {
    "type": "label_model",
    "name": "judge",
    "input": [{"role": "user", "content": "Answer: {{sample.output_text}}"}],
    "labels": ["pass", "fail"],
    "passing_labels": ["pass"],
}
