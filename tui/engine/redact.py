"""URLs as they may be shown, logged or stored: without the credentials a user may have
written into them (`http://user:KEY@host/v1`). Every place that displays a backend's URL, or
keeps it in the workspace, goes through `redact_url` (or `url_host`)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"


def _host_port(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def redact_url(url: object) -> str:
    """`url` (a string or a URL object) with any user name and password replaced by `***`
    ("" for None). A URL without credentials comes back unchanged, character for character."""
    if url is None:
        return ""
    text = str(url)
    if not text:
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:  # not a URL we can take apart: show nothing that could be secret
        return HIDDEN if "@" in text else text
    if "@" not in parts.netloc:
        return text
    return urlunsplit(parts._replace(netloc=f"{HIDDEN}@{_host_port(parts.netloc)}"))


def url_host(url: object) -> str:
    """The URL's host and port for a short label ("gpu-box:8000"), never its credentials."""
    if url is None or not str(url):
        return ""
    try:
        netloc = urlsplit(str(url)).netloc
    except ValueError:
        return redact_url(url)
    return _host_port(netloc) or redact_url(url)
