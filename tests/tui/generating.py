"""How the Generate screen's tests reach it: the fake OpenAI server as the app's backend, the
screen opened with its model box set, and the status column of its items table."""

from __future__ import annotations

import openai
from pydantic import SecretStr
from textual.widgets import Input

from screens.generate import GenerateScreen
from tests.helpers.fake_openai import FakeOpenAI
from tests.tui.conftest import Driver
from tui.engine.backend import Backend, BackendSpec


def backend_for(fake: FakeOpenAI, api_key: str | None = None) -> Backend:
    """The fake server as the app's backend (with another key: one it refuses)."""
    key = api_key or fake.api_key
    spec = BackendSpec("url", fake.base_url, SecretStr(key), "test")
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=key, max_retries=0, timeout=10)
    return Backend(spec, client, "test")


def generate_screen(t: Driver) -> GenerateScreen:
    screen = t.app.screen
    assert isinstance(screen, GenerateScreen), screen
    return screen


async def open_generate(t: Driver, model: str = "fake-model") -> GenerateScreen:
    """Key 2, then the fake server's model typed into the model box."""
    await t.press("2")
    await t.settle()
    screen = generate_screen(t)
    # The dataset open on the Dataset screen is the default.
    assert screen.dataset is not None
    assert screen.dataset.id == t.app.current_dataset_id
    # The runs table has the focus (number keys still switch screens); click the model box
    # and replace the default with the fake server's model.
    assert t.app.focused is screen.runs_table
    await t.pilot.click("#model")
    assert t.app.focused is screen.query_one("#model", Input)
    await t.press("end", "ctrl+u")
    await t.type(model)
    return screen


def statuses(screen: GenerateScreen) -> list[str]:
    """The status column of the items table, row by row."""
    table = screen.items_table
    return [table._rows[i][1] for i in range(table.row_count)]
