"""A key written into a base URL (`http://user:KEY@host/v1`) is never shown: not in the
backend's label (the status line, `distill-tui run`'s "Backend …" line), not in messages, not
in what the workspace keeps about a fine-tuning job."""

from __future__ import annotations

import pytest

from tui.engine.backend import open_backends, resolve_backend, resolve_role_backend
from tui.engine.redact import redact_url, url_host
from tui.engine.settings import Settings

KEY = "sk-planted-in-the-url-4f9c"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://user:{KEY}@gpu-box:8000/v1", "http://***@gpu-box:8000/v1"),
        (f"https://{KEY}@api.example.com/v1/", "https://***@api.example.com/v1/"),
        (f"http://:{KEY}@[::1]:8000/v1?x=1", "http://***@[::1]:8000/v1?x=1"),
        # A password holding '@' (written unencoded): everything before the last '@' goes.
        (f"http://u:{KEY}@x@host/v1", "http://***@host/v1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("", ""),
        (None, ""),
    ],
)
def test_redact_url(url: str | None, shown: str) -> None:
    assert redact_url(url) == shown
    assert KEY not in url_host(url)


def test_url_host_is_host_and_port_only() -> None:
    assert url_host(f"http://user:{KEY}@gpu-box:8000/v1") == "gpu-box:8000"
    assert url_host("http://127.0.0.1:51234/v1") == "127.0.0.1:51234"


async def test_backend_labels_never_show_the_key() -> None:
    """Settings refuse such a URL (tests/reliability/test_url_keys.py); the labels are the
    second line of defence, for settings that skipped validation (`model_copy(update=...)`)."""
    url = f"http://user:{KEY}@gpu-box:8000/v1"
    settings = Settings(backend="url", api_key="sk-separate").model_copy(update={"base_url": url})
    spec = resolve_backend(settings)
    assert spec.base_url == url
    assert KEY not in spec.label and spec.label == "gpu-box:8000"
    roles = Settings(student_backend="url", student_api_key="sk-separate").model_copy(
        update={"student_base_url": url}
    )
    assert KEY not in resolve_role_backend(roles, "student").label
    # The label the status line and `distill-tui run` print (no request is sent to open it).
    backends = await open_backends(settings)
    try:
        assert backends.label and KEY not in backends.label
        for backend in backends.distinct:
            assert KEY not in backend.label
            assert "***@gpu-box:8000" in backend.label or backend.label == "gpu-box:8000"
    finally:
        await backends.aclose()
