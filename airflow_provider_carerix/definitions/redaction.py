"""How a webhook's URL and header values are shown without their secrets (plans, logs, errors, the page).

Kept with the definitions rather than with provisioning: validation names an unreachable URL in its problems,
and provisioning renders plans with the same function, so neither imports the other.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "display_url"]

MASK = "***"


def display_url(url: str | None) -> str:
    """The URL without what may be a secret: credentials and the query string."""
    if not url:
        return "<no url>"
    try:
        parts = urlsplit(url)
        port = parts.port  # parsed lazily: a port out of range or not a number raises here
    except ValueError:
        return "<invalid url>"
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 address keeps its brackets
        netloc = f"[{netloc}]"
    if port:
        netloc += f":{port}"
    if parts.username or parts.password:
        netloc = f"{MASK}@{netloc}"
    query = MASK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
