"""The Carerix page inside Airflow's UI: a read-only view of the event store, behind Airflow's own access checks.

Served by the provider's plugin in the API server (``/carerix/ui/``) and shown in Airflow's navigation as an
external view (an iframe on the same origin, so the browser sends Airflow's session cookie with every call).
Every route, the HTML included, depends on ``authorize``: in the API server that is Airflow's
``requires_access_asset("GET")`` — whoever may read assets may read the events that feed them —, so an
unauthenticated request gets 401 and a user without that permission 403, before the store is touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.ui.queries import EventBrowser, EventQuery

__all__ = ["airflow_authorization", "create_ui_router"]


def airflow_authorization() -> Callable[..., Any]:
    """Airflow's check for reading assets, resolved at app build time (only the API server has it)."""
    from airflow.api_fastapi.core_api.security import requires_access_asset

    return requires_access_asset("GET")


# Sequences are 64-bit signed integers in every store; a cursor beyond is a client's mistake, not a 500.
MAX_SEQUENCE = 2**63 - 1


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"{name}: expected an ISO 8601 time, got {value!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        # The store compares in UTC: a time with no UTC equivalent (year 9999 west of UTC) is out of range.
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise HTTPException(400, f"{name}: out of the representable range once converted to UTC") from None


def _sequence(value: int | None, name: str) -> int | None:
    if value is not None and not -MAX_SEQUENCE - 1 <= value <= MAX_SEQUENCE:
        raise HTTPException(400, f"{name}: out of the range of sequence numbers (64-bit integers)")
    return value


def create_ui_router(
    store: EventStore, *, authorize: Callable[..., Any], extra: dict[str, Callable[[], Any]] | None = None
) -> APIRouter:
    """Routes of the page; ``extra`` adds JSON sections (consumers, webhooks) computed by other modules."""
    browser = EventBrowser(store)
    router = APIRouter(dependencies=[Depends(authorize)])
    page = resources.files("airflow_provider_carerix.ui").joinpath("page.html").read_text(encoding="utf-8")

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @router.get("/api/events")
    async def list_events(
        type: Annotated[str | None, Query(max_length=255)] = None,
        entity_id: Annotated[str | None, Query(max_length=255)] = None,
        since: str | None = None,
        until: str | None = None,
        before: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        query = EventQuery(
            event_type=type or None,
            entity_id=entity_id or None,
            since=_time(since, "since"),
            until=_time(until, "until"),
            before=_sequence(before, "before"),
            limit=limit,
        )
        return await asyncio.to_thread(browser.events, query)

    @router.get("/api/events/{sequence}")
    async def get_event(sequence: int) -> dict[str, Any]:
        _sequence(sequence, "sequence")
        found = await asyncio.to_thread(browser.event, sequence)
        if found is None:
            raise HTTPException(404, f"no stored event with sequence {sequence}")
        return found

    @router.get("/api/types")
    async def types() -> list[str]:
        return await asyncio.to_thread(browser.event_types)

    @router.get("/api/chart")
    async def chart() -> dict[str, Any]:
        return await asyncio.to_thread(browser.per_minute)

    @router.get("/api/health")
    async def health() -> dict[str, Any]:
        return await asyncio.to_thread(browser.health)

    for name, compute in (extra or {}).items():

        def _section(compute: Callable[[], Any] = compute) -> Any:
            return compute()

        router.add_api_route(f"/api/{name}", _wrap(_section), methods=["GET"], name=f"carerix_{name}")
    return router


def _wrap(func: Callable[[], Any]) -> Callable[[], Any]:
    async def route() -> Any:
        return await asyncio.to_thread(func)

    return route


def create_ui_app(store: EventStore, *, authorize: Callable[..., Any] | None = None) -> FastAPI:
    """The page as an app of its own (tests, or mounting outside the plugin)."""
    app = FastAPI(title="Carerix events", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(create_ui_router(store, authorize=authorize or airflow_authorization()), prefix="/ui")
    return app
