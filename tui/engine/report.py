"""The recipe's report: teacher, untuned student, the baselines and the fine-tuned student side
by side on the eval split, so the business case reads in one line — how much of the teacher's
lead the student recovered, and what a thousand requests cost and take on each. The Compare
screen shows any comparison the same way: its runs as the report's rows (`row_name`), their
per-request figures and, with a teacher, an untuned and a fine-tuned student among them, the
same line (`business_case`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui.engine.evals import Comparison, RunColumn, compare
from tui.engine.finetune import passing_completions
from tui.engine.graders import case, parse_graders
from tui.engine.settings import Price, Settings
from tui.engine.store import Store
from tui.engine.teaching import recovered


@dataclass(frozen=True)
class RowSource:
    """A report row: its name ("teacher", "baseline student", ...) and the recipe step whose
    run it shows."""

    name: str
    step: str
    run_id: int = 0


# The rows of a comparison, in the order the report and the Compare screen show them.
ROW_ORDER = ("teacher", "baseline student", "pool-only student", "fine-tuned student")


def row_name(role: str, name: str = "", model: str = "") -> str:
    """The report row a run stands for, from its role ("teacher", "student", "fine-tuned"),
    its name (the recipe names its runs "recipe: pool-only student (eval)"...) and its model
    (a student run of an `ft:` model is a fine-tuned student): one of ROW_ORDER, else the
    role as it is ("" for none)."""
    kind = role.strip().casefold()
    if "pool-only" in name.casefold():
        return "pool-only student"
    if kind == "teacher":
        return "teacher"
    if kind == "fine-tuned" or (kind in ("", "student", "baseline") and model.startswith("ft:")):
        return "fine-tuned student"
    if kind in ("student", "baseline"):
        return "baseline student"
    return role.strip()


def row_rank(row: str) -> int:
    """Where a row goes among the others: ROW_ORDER, then every other row."""
    return ROW_ORDER.index(row) if row in ROW_ORDER else len(ROW_ORDER)


def tokens_per_request(column: RunColumn) -> float | None:
    """Prompt + completion tokens of the mean request (None: no completion)."""
    if not column.n_completions:
        return None
    return (column.prompt_tokens + column.completion_tokens) / column.n_completions


def cost_per_1k(column: RunColumn) -> float | None:
    """What 1,000 requests cost at the run's mean usage (None: unpriced, or no completion)."""
    if not column.priced or not column.n_completions:
        return None
    return column.cost / column.n_completions * 1000


def money(dollars: float) -> str:
    """Cents, or two significant figures below a cent (a small model's thousand requests)."""
    if dollars == 0 or dollars >= 0.01:
        return f"${dollars:,.2f}"
    return f"${dollars:.2g}"


def price_by_role(settings: Settings) -> Callable[[str], Price]:
    """A run's model priced on the backend it runs on, as the recipe prices its rows: the
    teacher model at the teacher's prices, any other (the student and its fine-tuned models)
    at the student's."""
    return lambda model: settings.price(
        model, "teacher" if model == settings.teacher else "student"
    )


def _rate(column: RunColumn, grader: str) -> float | None:
    return column.pass_rates.get(grader)


def lead_recovered(
    graders: Sequence[str],
    untuned: RunColumn | None,
    tuned: RunColumn | None,
    teacher: RunColumn | None,
) -> dict[str, float | None]:
    """Per grader, the share of the teacher's lead over the untuned student recovered."""
    return {
        grader: recovered(
            _rate(untuned, grader) if untuned else None,
            _rate(tuned, grader) if tuned else None,
            _rate(teacher, grader) if teacher else None,
        )
        for grader in graders
    }


def mcnemar_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar test: the chance of a split of the discordant pairs at least
    this uneven if neither run were better (a fair coin over wins + losses)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(
    comparison: Comparison, run_id: int, other_id: int, grader: str
) -> dict[str, Any] | None:
    """Two runs request by request under one grader: on how many items the first passes where
    the other fails (wins) and the reverse (losses), and the exact McNemar p of that split.
    Items either run has no verdict on are left out; None when no item has both."""
    wins = losses = both = 0
    for item in comparison.items:
        mine, theirs = item.cells.get(run_id), item.cells.get(other_id)
        a = mine.passed.get(grader) if mine else None
        b = theirs.passed.get(grader) if theirs else None
        if a is None or b is None:
            continue
        both += 1
        wins += a and not b
        losses += b and not a
    if not both:
        return None
    return {"items": both, "wins": wins, "losses": losses, "p": mcnemar_p(wins, losses)}


# The rows the fine-tuned student is set against, request by request (`chance_line`).
PAIRED_ROWS = ("baseline student", "pool-only student", "teacher")


def _paired_against(
    comparison: Comparison, named: dict[str, RunColumn]
) -> dict[str, dict[str, Any]]:
    """The fine-tuned student request by request against each of PAIRED_ROWS there is, on
    the main grader (exact match when it is there), for `chance_line`. `named`: the
    comparison's columns by report row name."""
    tuned = named.get("fine-tuned student")
    if tuned is None or not comparison.graders:
        return {}
    main = _main(comparison.graders)
    out = {}
    for name in PAIRED_ROWS:
        other = named.get(name)
        if other is not None and (pair := paired(comparison, tuned.run_id, other.run_id, main)):
            out[name] = {"grader": main, **pair}
    return out


def chance_line(report: dict[str, Any]) -> str:
    """Whether the fine-tuned student's differences from each other row (the untuned and the
    pool-only student, the teacher) are more than chance, in one sentence: on a 91-item eval
    split a request or two either way is what two equally good models show."""
    pairs = report.get("paired") or {}
    if not pairs:
        return ""
    grader = next(iter(pairs.values()))["grader"]
    said: list[str] = []
    for name, pair in pairs.items():
        verdict = "could be chance" if pair["p"] >= 0.05 else "more than chance"
        test = "" if said else "McNemar "
        said.append(
            f"beats the {name} on {pair['wins']} and loses on {pair['losses']} "
            f"({test}p = {pair['p']:.2f}: {verdict})"
        )
    return f"Request by request ({grader}), the fine-tuned student " + "; ".join(said) + "."


def _main(graders: Sequence[str]) -> str:
    """The grader the business case is told in: exact match when it is there (the last)."""
    return graders[-1] if len(graders) > 1 else graders[0]


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
        row["cost / 1k requests"] = money(column.cost / n * 1000) if column.priced else "unpriced"
        out_rows.append(row)

    teacher = named.get("teacher")
    untuned = named.get("baseline student")
    tuned = named.get("fine-tuned student")
    lead = lead_recovered(comparison.graders, untuned, tuned, teacher)
    report: dict[str, Any] = {
        "eval": comparison.eval_name,
        "graders": comparison.graders,
        "rows": out_rows,
        "pass_rates": {by_run[c.run_id].name: c.pass_rates for c in comparison.runs},
        "recovered": lead,
        "improvements": len(comparison.rows("improvements")),
        "regressions": len(comparison.rows("regressions")),
        "items": len(comparison.items),
        "paired": _paired_against(comparison, named),
    }
    report["summary"] = summary_line(report, teacher, tuned, comparison.graders)
    report["chance"] = chance_line(report)
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
    main = _main(graders)
    rate = tuned.pass_rates.get(main)
    # Short enough for one line of a 120-column terminal (the Compare screen shows it).
    head = f"fine-tuned student {rate:.0%} {main}" if rate is not None else ""
    parts = []
    if teacher is not None:
        t_rate = teacher.pass_rates.get(main)
        if t_rate is not None:
            head += f" vs teacher {t_rate:.0%}"
        share = report["recovered"].get(main)
        if share is not None:
            head += f" ({share:.0%} of its lead recovered)"
        if teacher.mean_latency_ms and tuned.mean_latency_ms:
            speed = teacher.mean_latency_ms / tuned.mean_latency_ms
            parts.append(f"{speed:.1f}× faster" if speed >= 1 else f"{1 / speed:.1f}× slower")
        t_cost, s_cost = cost_per_1k(teacher), cost_per_1k(tuned)
        if t_cost is not None and s_cost is not None:
            parts.append(f"{money(s_cost)} vs {money(t_cost)} / 1k req")
    return ", ".join(p for p in [head, *parts] if p)


def business_case(comparison: Comparison) -> str:
    """A comparison's business case in one line (`summary_line`), when a teacher, an untuned
    student and a fine-tuned student are among its runs, all graded ("" otherwise), and
    whether the fine-tuned student's differences from the other rows are more than chance
    (`chance_line`) on a second line. The untuned student is the comparison's baseline when
    it is one; every other row is the newest run of its kind."""
    kinds: dict[str, list[RunColumn]] = {}
    for column in comparison.runs:
        kinds.setdefault(row_name(column.role, column.label, column.model), []).append(column)
    named = {kind: max(columns, key=lambda c: c.run_id) for kind, columns in kinds.items()}
    untuned = kinds.get("baseline student")
    if untuned:  # the comparison's baseline when it is one, else the oldest
        named["baseline student"] = next(
            (c for c in untuned if c.run_id == comparison.baseline_run_id),
            min(untuned, key=lambda c: c.run_id),
        )
    base, teacher, student = (
        named.get(k) for k in ("baseline student", "teacher", "fine-tuned student")
    )
    if base is None or teacher is None or student is None:
        return ""
    if any(c.eval_run_id is None for c in (base, teacher, student)):
        return ""  # not graded yet: no case to make
    lead = lead_recovered(comparison.graders, base, student, teacher)
    case = summary_line({"recovered": lead}, teacher, student, comparison.graders)
    chance = chance_line({"paired": _paired_against(comparison, named)})
    return f"{case}\n{chance}" if case and chance else case


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
    kept_ids = None if gate_eval_run_id is None else passing_completions(store, gate_eval_run_id)
    check = checks[-1]  # the strictest (exact match when configured)
    scorer = check.scorer()

    def right(r: Any) -> bool:
        return scorer(case(r.output, r.reference, r.input, r.item_id)).passed is True

    kept = [
        r
        for r in rows
        if (kept_ids is None or r.id in kept_ids)
        and (1.0 if r.confidence is None else r.confidence) >= min_confidence
    ]
    name = check.name or check.default_name()
    note = f"teacher labels {name}: {sum(map(right, rows))}/{len(rows)} right"
    note += f"; kept {len(kept)}, of which {sum(map(right, kept))} right"
    return note


def _chosen(how: str | None) -> str:
    """How the pool was chosen, as the report's first line says it."""
    if how == "diverse":
        return " (the requests that best stand for the rest)"
    return " (chosen at random)" if how == "random" else ""


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["# distill-tui recipe: comparison", ""]
    models = report.get("models", {})
    teaching = report.get("teaching", {})
    lines.append(
        f"Student `{models.get('student')}`, teacher `{models.get('teacher')}` "
        f"(with {teaching.get('teacher_examples', 0)} retrieved examples from a labelled pool "
        f"of {teaching.get('pool', 0)}{_chosen(teaching.get('pool_choice'))}, "
        f"{teaching.get('samples', 1)} sample(s) per request), "
        f"fine-tuned `{models.get('fine_tuned')}`."
    )
    lines.append("")
    if report.get("summary"):
        lines += [f"**{report['summary']}**", ""]
    if report.get("chance"):
        lines += [report["chance"], ""]
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
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recipe.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    path = directory / "recipe.md"
    path.write_text(report_markdown(report), encoding="utf-8")
    return path
