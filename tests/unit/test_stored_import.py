"""Stored completions from the backend, imported as a run over real HTTP with the openai SDK:
from the fake server behaving as OpenAI (pages, the metadata and date filters, messages read
page by page, idempotent re-imports, a backend without the endpoint, an import stopped by
errors or cancelled and then resumed, two imports racing) and from the embedded local
backend (completions it stored itself with store=true)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import Action, FakeOpenAI, like_openai
from tui.engine.store import Store
from tui.engine.stored_import import (
    ImportProgress,
    StoredCompletionsUnsupported,
    StoredFilter,
    StoredImportError,
    count_stored,
    fill_run_from_stored,
    import_stored,
    list_stored,
    model_matches,
    parse_metadata,
    parse_time,
)

SYSTEM = "Reply with the git command."
T0 = 1_740_000_000  # unix seconds: when the seeded logs start


def client(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)


def seed(
    fake: FakeOpenAI,
    n: int,
    *,
    task: str = "git",
    model: str = "gpt-4o",
    start: int = 0,
    created: int = T0,
) -> list[str]:
    """n logged completions: request i answered "git cmd-i", one a minute from `created`."""
    return [
        fake.stored.add(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Request {i}."},
            ],
            f"git cmd-{i}",
            model=model,
            metadata={"task": task, "env": "prod"},
            created=created + 60 * (i - start),
        )
        for i in range(start, start + n)
    ]


def requests_to(fake: FakeOpenAI, suffix: str) -> list[Any]:
    return [r for r in fake.requests if r.method == "GET" and r.path.endswith(suffix)]


GIT = StoredFilter(model="gpt-4o", metadata={"task": "git"})


async def test_pages_filters_count_and_an_idempotent_reimport(store: Store) -> None:
    with like_openai() as fake:
        ids = seed(fake, 120)
        seed(fake, 15, task="other", start=500)  # other metadata
        seed(fake, 10, model="gpt-4o-mini", start=600)  # another model
        # A conversation: the request is its last user message; messages come in 2 pages.
        turns = [{"role": "system", "content": SYSTEM}]
        for k in range(60):
            turns += [
                {"role": "user", "content": f"earlier {k}"},
                {"role": "assistant", "content": f"git earlier-{k}"},
            ]
        turns.append({"role": "user", "content": "Undo the last commit."})
        long_id = fake.stored.add(
            turns, "git reset --soft HEAD~1", metadata={"task": "git"}, created=T0 + 10_000
        )
        async with client(fake) as c:
            count = await count_stored(store, c, GIT, backend="fake", page_size=50)
            assert (count.matching, count.imported, count.new, count.run_id) == (121, 0, 121, None)
            # Three pages of 50, each after the last one's id; model and metadata sent.
            pages = requests_to(fake, "/v1/chat/completions")
            assert len(pages) == 3
            assert all(
                "model=gpt-4o" in r.query and "metadata%5Btask%5D=git" in r.query for r in pages
            )
            assert [("after=" in r.query) for r in pages] == [False, True, True]

            seen: list[ImportProgress] = []
            result = await import_stored(
                store, c, GIT, backend="fake", listing=count.listing, on_progress=seen.append
            )
        assert (result.matching, result.added, result.already, result.failed) == (121, 121, 0, [])
        assert seen[-1].listed == seen[-1].total == 121
        # The listing was reused: no second listing; every completion's messages read, the
        # long conversation's in two pages.
        assert len(requests_to(fake, "/v1/chat/completions")) == 3
        assert len(requests_to(fake, "/messages")) == 122

        run = store.get_run(result.run_id)
        assert (run.source, run.role, run.model, run.status) == (
            "stored",
            "teacher",
            "gpt-4o",
            "done",
        )
        assert run.metadata == {"task": "git"} and run.system_prompt == SYSTEM
        assert run.dataset_id is not None
        dataset = store.get_dataset(run.dataset_id)
        assert dataset.name == "stored: gpt-4o task=git" and dataset.system_prompt == SYSTEM
        rows = {r.stored_id: r for r in store.completions(result.run_id)}
        assert set(rows) == {*ids, long_id}
        first = rows[ids[0]]
        assert (first.input, first.output, first.status) == ("Request 0.", "git cmd-0", "done")
        assert first.remote_id == ids[0] and first.metadata == {"task": "git", "env": "prod"}
        assert first.prompt_tokens and first.completion_tokens == 2
        assert first.created_at.startswith("2025-02-19T21:20:00")  # T0, in UTC
        assert rows[long_id].input == "Undo the last commit."

        # Five more logged since: counting again says so, importing adds only those.
        fake.reset()
        new = seed(fake, 5, start=120, created=T0 + 20_000)
        async with client(fake) as c:
            again = await count_stored(store, c, GIT, backend="fake")
            assert (again.matching, again.imported, again.new) == (126, 121, 5)
            assert again.run_id == result.run_id
            second = await import_stored(store, c, GIT, backend="fake")
        assert (second.run_id, second.added, second.already) == (result.run_id, 5, 121)
        assert len(requests_to(fake, "/messages")) == 5  # only the new ones were read
        assert {r.stored_id for r in store.completions(result.run_id)} == {*ids, long_id, *new}
        assert store.get_dataset(run.dataset_id).n_items == 126
        # The same filter on another backend is another run.
        async with client(fake) as c:
            other = await import_stored(store, c, GIT, backend="elsewhere")
        assert other.run_id != result.run_id and other.added == 126


async def test_dates_are_filtered_here_and_end_the_listing_early(store: Store) -> None:
    with like_openai() as fake:
        seed(fake, 300)  # one a minute from T0
        after, before = T0 + 60 * 10, T0 + 60 * 20
        query = StoredFilter(metadata={"task": "git"}, created_after=after, created_before=before)
        async with client(fake) as c:
            found = await list_stored(c, query, page_size=50)
        assert [c.created for c in found] == list(range(after, before, 60))
        # Oldest first: the second page is all well past `before`, so listing stops there.
        assert len(requests_to(fake, "/v1/chat/completions")) == 2


async def test_a_backend_without_the_endpoint_says_so(store: Store) -> None:
    with FakeOpenAI() as fake:  # like a plain vLLM server: GET /v1/chat/completions is a 404
        async with client(fake) as c:
            with pytest.raises(StoredCompletionsUnsupported) as caught:
                await count_stored(store, c, GIT, backend="vllm")
            assert "this backend does not list stored completions (HTTP 404" in str(caught.value)
            fake.app.stored.enabled = True
            fake.stored.policy = lambda method, path, query: Action(status=405)
            with pytest.raises(StoredCompletionsUnsupported, match=r"HTTP 405"):
                await import_stored(store, c, GIT, backend="vllm")
    assert store.list_runs() == []  # nothing was made


async def test_an_interrupted_import_resumes_without_duplicates(store: Store) -> None:
    with like_openai() as fake:
        ids = seed(fake, 250)
        broken = set(ids[150:])
        calls: dict[str, int] = {}

        def flaky(method: str, path: str, query: dict[str, str]) -> Action | None:
            # Listing: every page fails once, and is retried. From the 151st completion on,
            # messages cannot be read (a 500 the server says not to retry: the test is quick).
            calls[path] = calls.get(path, 0) + 1
            if path.endswith("/v1/chat/completions") and calls[path] % 2 == 1:
                return Action(status=503)
            if path.endswith("/messages") and path.split("/")[-2] in broken:
                return Action(status=500, headers={"x-should-retry": "false"})
            return None

        fake.stored.policy = flaky
        async with client(fake) as c:
            with pytest.raises(StoredImportError) as caught:
                await import_stored(store, c, GIT, backend="fake", retries=1)
        message = str(caught.value)
        assert "importing stored completions stopped: HTTP 500" in message
        assert "the 150 imported into run" in message and "import again to resume" in message
        (run,) = store.list_runs()
        assert (run.status, run.n_done) == ("failed", 150)
        assert len(requests_to(fake, "/v1/chat/completions")) == 2 * 3  # 3 pages, each twice

        # Cancelled part-way (Esc, a closed terminal): what was written stays.
        fake.stored.policy = None
        progress: list[ImportProgress] = []
        task: asyncio.Task[Any] | None = None

        def stop_after_a_page(p: ImportProgress) -> None:
            progress.append(p)
            if p.added:  # the first page that brought something in
                assert task is not None
                task.cancel()

        async with client(fake) as c:
            task = asyncio.ensure_future(
                import_stored(store, c, GIT, backend="fake", on_progress=stop_after_a_page)
            )
            with pytest.raises(asyncio.CancelledError):
                await task
        assert store.get_run(run.id).status == "cancelled"
        assert store.get_run(run.id).n_done == 200

        fake.reset()
        async with client(fake) as c:
            result = await import_stored(store, c, GIT, backend="fake")
        assert (result.run_id, result.added, result.already) == (run.id, 50, 200)
        assert len(requests_to(fake, "/messages")) == 50
        final = store.get_run(run.id)
        assert (final.status, final.n_done, final.n_completions) == ("done", 250, 250)
        assert {r.stored_id for r in store.completions(run.id)} == set(ids)


async def test_completions_that_cannot_be_imported_are_reported(store: Store) -> None:
    with like_openai() as fake:
        ids = seed(fake, 4)
        tool_call = fake.stored.add(
            [{"role": "user", "content": "List files."}], None, metadata={"task": "git"}
        )
        no_user = fake.stored.add(
            [{"role": "system", "content": SYSTEM}], "git status", metadata={"task": "git"}
        )
        async with client(fake) as c:
            count = await count_stored(store, c, GIT, backend="fake")
            assert count.matching == 6
            # Deleted from the backend between the count and the import.
            await c.chat.completions.delete(ids[1])
            result = await import_stored(store, c, GIT, backend="fake", listing=count.listing)
    why = dict(result.failed)
    assert set(why) == {ids[1], tool_call, no_user}
    assert why[ids[1]] == "gone from the backend (404 on its messages)"
    assert why[tool_call] == "no text reply (a tool call or a refusal)"
    assert "no user turn" in why[no_user]
    assert result.added == 3 and "3 could not be imported" in result.summary()
    assert store.get_run(result.run_id).status == "done"


async def test_two_imports_of_one_filter_racing_make_one_run(store: Store) -> None:
    with like_openai() as fake:
        ids = seed(fake, 60)
        async with client(fake) as c:
            first, second = await asyncio.gather(
                import_stored(store, c, GIT, backend="fake", concurrency=4),
                import_stored(store, c, GIT, backend="fake", concurrency=4),
            )
    assert first.run_id == second.run_id
    assert first.added + second.added == 60
    assert sorted(r.stored_id or "" for r in store.completions(first.run_id)) == sorted(ids)
    # The database itself refuses a second copy of a stored completion in a run.
    row = store.completions(first.run_id)[0]
    with pytest.raises(sqlite3.IntegrityError):
        store._conn.execute(
            "INSERT INTO completions(run_id, item_id, status, created_at, stored_id)"
            " VALUES (?, ?, 'done', 'now', ?)",
            (first.run_id, store.completions(first.run_id)[1].item_id, row.stored_id),
        )


async def test_filling_a_run_matches_requests_to_its_items(store: Store) -> None:
    """The recipe's use: stored completions answer an existing run's items by request."""
    from tui.engine.datasets import ItemDraft
    from tui.engine.generation import RunSpec, create_run

    items = [ItemDraft(f"request {i}", "", "train") for i in range(6)]
    dataset = store.create_dataset("requests", SYSTEM, items)
    run_id = create_run(store, RunSpec(dataset, "gpt-4o", role="teacher", split="train"))
    with like_openai() as fake:
        seed(fake, 4)  # "Request 0." … "Request 3.": the same once case and dots are ignored
        fake.stored.add(
            [{"role": "user", "content": "request 1"}],
            "git again",
            metadata={"task": "git"},
            created=T0 + 9_999,
        )
        fake.stored.add(
            [{"role": "user", "content": "Something else"}], "x", metadata={"task": "git"}
        )
        async with client(fake) as c:
            result = await fill_run_from_stored(store, c, run_id, GIT)
            again = await fill_run_from_stored(store, c, run_id, GIT)
    assert (result.added, result.duplicates, result.unmatched) == (4, 1, ["Something else"])
    outputs = {r.input: r.output for r in store.completions(run_id)}
    assert outputs == {f"request {i}": f"git cmd-{i}" for i in range(4)}  # the older one kept
    assert (again.added, again.already) == (0, 4)
    assert store.pending_items(run_id) == [
        i for i in store.items(dataset) if i.input in ("request 4", "request 5")
    ]


def test_the_filter_as_typed() -> None:
    assert parse_metadata("task=git, env=prod") == {"task": "git", "env": "prod"}
    assert parse_metadata('note="two words"') == {"note": "two words"}
    assert parse_metadata("") == {}
    with pytest.raises(ValueError, match="'task' is not key=value"):
        parse_metadata("task")
    with pytest.raises(ValueError, match="at most 16"):
        parse_metadata(" ".join(f"k{i}=v" for i in range(17)))
    assert parse_time("") is None
    assert parse_time("1740000000") == 1_740_000_000
    assert parse_time("2025-02-19T21:20:00Z") == T0
    assert parse_time("2025-02-19 21:20+00:00") == T0
    with pytest.raises(ValueError, match="not a date"):
        parse_time("last tuesday")
    with pytest.raises(ValueError, match="later than"):
        StoredFilter(created_after=T0, created_before=T0)
    assert model_matches("gpt-4o", "gpt-4o-2024-08-06")
    assert not model_matches("gpt-4o", "gpt-4o-mini-2024-07-18")
    assert GIT.describe() == "gpt-4o task=git"
    assert json.loads(GIT.key("local"))["backend"] == "local"


async def test_an_imported_run_is_evaluated_and_searched_like_any_run(store: Store) -> None:
    from tui.engine.evals import EvalRunner, create_eval, start_eval_run
    from tui.engine.selection import find_completions, parse_filter

    with like_openai() as fake:
        seed(fake, 6)
        async with client(fake) as c:
            result = await import_stored(store, c, GIT, backend="fake")
    grader = {
        "type": "string_check",
        "name": "cmd-1",
        "input": "{{sample.output_text}}",
        "reference": "git cmd-1",
        "operation": "eq",
    }
    eval_run = start_eval_run(store, create_eval(store, "exact", [grader]), run_id=result.run_id)
    finished = await EvalRunner(store).run(eval_run)
    assert finished.status == "done"
    summary = store.get_eval_run(eval_run).results["cmd-1"]
    assert (summary.passed, summary.failed) == (1, 5)
    # The Completions screen's dashboard filter finds it by the model and metadata.
    found = find_completions(store, parse_filter("model:gpt-4o meta:task=git role:teacher"))
    assert set(found.runs) == {result.run_id} and len(found.completions) == 6
