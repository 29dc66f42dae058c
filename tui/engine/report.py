"""The recipe's report: teacher, untuned student, the baselines and the fine-tuned student side
by side on the eval split, so the business case reads in one line — how much of the teacher's
lead the student recovered, and what a thousand requests cost and take on each."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui.engine.evals import RunColumn, compare
from tui.engine.graders import case, parse_graders
from tui.engine.settings import Price
from tui.engine.store import Store
from tui.engine.teaching import recovered


@dataclass(frozen=True)
class RowSource:
    """A report row: its name ("teacher", "baseline student", ...) and the recipe step whose
    run it shows."""

    name: str
    step: str
    run_id: int = 0


def _rate(column: RunColumn, grader: str) -> float | None:
    return column.pass_rates.get(grader)


def build_report(
    store: Store,
    eval_id: int,
    rows: Sequence[RowSource],
    *,
    price: Callable[[str], Price] | None = None,
) -> dict[str, Any]:
    """The rows of the comparison, with per-1,000-request figures and the share of the
    teacher's lead recovered (against the row named "baseline student")."""
    by_run = {r.run_id: r for r in rows}
    baseline = next((r.run_id for r in rows if r.name == "baseline student"), rows[0].run_id)
    comparison = compare(store, eval_id, [r.run_id for r in rows], baseline, price=price)
    columns = {c.run_id: c for c in comparison.runs}
    named = {by_run[run_id].name: column for run_id, column in columns.items()}
    out_rows = []
    for source in rows:
        column = columns[source.run_id]
        row: dict[str, Any] = {"run": source.name, "model": column.model}
        for grader in comparison.graders:
            rate = _rate(column, grader)
            summary = column.results.get(grader)
            cell = "n/a" if rate is None else f"{rate:.1%}"
            if summary is not None:
                cell += f" ({summary.passed}/{summary.passed + summary.failed})"
            row[grader] = cell
        n = column.n_completions or 1
        row["mean latency"] = (
            f"{column.mean_latency_ms:.0f} ms" if column.mean_latency_ms else "n/a"
        )
        row["tokens / request"] = f"{(column.prompt_tokens + column.completion_tokens) / n:.0f}"
        row["cost / 1k requests"] = (
            f"${column.cost / n * 1000:.2f}" if column.priced else "unpriced"
        )
        out_rows.append(row)

    teacher = named.get("teacher")
    untuned = named.get("baseline student")
    tuned = named.get("fine-tuned student")
    lead: dict[str, float | None] = {}
    for grader in comparison.graders:
        lead[grader] = recovered(
            _rate(untuned, grader) if untuned else None,
            _rate(tuned, grader) if tuned else None,
            _rate(teacher, grader) if teacher else None,
        )
    report: dict[str, Any] = {
        "eval": comparison.eval_name,
        "graders": comparison.graders,
        "rows": out_rows,
        "pass_rates": {by_run[c.run_id].name: c.pass_rates for c in comparison.runs},
        "recovered": lead,
        "improvements": len(comparison.rows("improvements")),
        "regressions": len(comparison.rows("regressions")),
        "items": len(comparison.items),
    }
    report["summary"] = summary_line(report, teacher, tuned, comparison.graders)
    return report


def summary_line(
    report: dict[str, Any],
    teacher: RunColumn | None,
    tuned: RunColumn | None,
    graders: Sequence[str],
) -> str:
    """The business case in one line."""
    if tuned is None or not graders:
        return ""
    main = graders[-1] if len(graders) > 1 else graders[0]  # exact match when it is there
    rate = tuned.pass_rates.get(main)
    parts = [f"fine-tuned student {main} {rate:.0%}" if rate is not None else ""]
    if teacher is not None:
        t_rate = teacher.pass_rates.get(main)
        if t_rate is not None:
            parts.append(f"teacher {t_rate:.0%}")
        share = report["recovered"].get(main)
        if share is not None:
            parts.append(f"{share:.0%} of the teacher's lead recovered")
        if teacher.mean_latency_ms and tuned.mean_latency_ms:
            parts.append(f"{teacher.mean_latency_ms / tuned.mean_latency_ms:.1f}× faster")
        if teacher.priced and tuned.priced and tuned.n_completions and teacher.n_completions:
            t_cost = teacher.cost / teacher.n_completions * 1000
            s_cost = tuned.cost / tuned.n_completions * 1000
            parts.append(f"${s_cost:.2f} vs ${t_cost:.2f} per 1k requests")
    return "; ".join(p for p in parts if p)


def label_quality(
    store: Store,
    run_id: int,
    graders: list[dict[str, Any]],
    gate_eval_run_id: int | None,
    min_confidence: float,
) -> str:
    """How many of a teacher's labels were right, judged against the references of the items
    that have them (deterministic graders only), overall and among those the gate kept."""
    checks = [g for g in parse_graders(graders) if not g.is_async]
    rows = [r for r in store.completions(run_id) if r.status == "done" and r.reference.strip()]
    if not checks or not rows:
        return "no references to judge the labels by"
    kept_ids: set[int] | None = None
    if gate_eval_run_id is not None:
        verdicts: dict[int, bool] = {}
        for grade in store.grades(gate_eval_run_id):
            verdicts[grade.completion_id] = verdicts.get(grade.completion_id, True) and bool(
                grade.passed
            )
        kept_ids = {cid for cid, ok in verdicts.items() if ok}
    check = checks[-1]  # the strictest (exact match when configured)
    scorer = check.scorer()

    def right(r: Any) -> bool:
        return scorer(case(r.output, r.reference, r.input, r.item_id)).passed is True

    kept = [
        r
        for r in rows
        if (kept_ids is None or r.id in kept_ids) and (r.confidence or 1.0) >= min_confidence
    ]
    name = check.name or check.default_name()
    note = f"teacher labels {name}: {sum(map(right, rows))}/{len(rows)} right"
    note += f"; kept {len(kept)}, of which {sum(map(right, kept))} right"
    return note


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["# distill-tui recipe: comparison", ""]
    models = report.get("models", {})
    teaching = report.get("teaching", {})
    lines.append(
        f"Student `{models.get('student')}`, teacher `{models.get('teacher')}` "
        f"(with {teaching.get('teacher_examples', 0)} retrieved examples from a labelled pool "
        f"of {teaching.get('pool', 0)}, {teaching.get('samples', 1)} sample(s) per request), "
        f"fine-tuned `{models.get('fine_tuned')}`."
    )
    lines.append("")
    if report.get("summary"):
        lines += [f"**{report['summary']}**", ""]
    lines.append(
        f"Eval `{report.get('eval')}` on {report.get('items')} eval-split items: "
        f"{report.get('improvements')} improved, {report.get('regressions')} regressed "
        "(fine-tuned student against the baseline student)."
    )
    lines.append("")
    rows = report.get("rows", [])
    if rows:
        headers = list(rows[0].keys())
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        for row in rows:
            lines.append("| " + " | ".join(str(row[h]) for h in headers) + " |")
    recovered_rates = {k: v for k, v in report.get("recovered", {}).items() if v is not None}
    if recovered_rates:
        lines.append("")
        lines.append(
            "Share of the teacher's lead recovered: "
            + ", ".join(f"{k} {v:.0%}" for k, v in recovered_rates.items())
        )
    notes = teaching.get("notes") or {}
    if notes:
        lines += ["", "## Steps", ""]
        lines += [f"- {step}: {note}" for step, note in notes.items()]
    return "\n".join(lines) + "\n"


def write_report(directory: Path, report: dict[str, Any]) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "recipe.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    path = directory / "recipe.md"
    path.write_text(report_markdown(report), encoding="utf-8")
    return path
