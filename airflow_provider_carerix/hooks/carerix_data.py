"""Records behind events: batched, paged GraphQL reads through :class:`~.carerix.CarerixHook`.

The hook's ``get_entities`` and ``iter_entities`` are these functions; they live here so the hook module keeps
to the connection, token and retry policy they share. Every request goes through ``CarerixHook.graphql``:
one session, one token cache, one retry policy (429 and 5xx waited out, ``Retry-After`` honoured).

* **Batching.** Ids are asked for ``batch_size`` (100) at a time in one ``crXPage`` query whose qualifier is an
  ``OR`` chain of the numeric key, a page as large as the batch, sorted by the key, so one batch is one
  request; pages are followed when Carerix answers with smaller ones (it caps ``size``; the emulator at 100).
  Entities without a numeric key (CRMatch) are read ``crMatch(_id:)`` under aliases, a batch per request.
* **Nothing dropped in silence.** GraphQL errors, and data that comes with errors (a ``null`` item, a
  ``null`` page), raise ``CarerixGraphQLError`` naming the entity and ids; a 403 raises ``CarerixScopeError``
  naming the scope to add to the connection.
* **Personal data.** Records are returned, never logged: log lines carry the entity, counts and requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.definitions import entities
from airflow_provider_carerix.definitions.entities import DEFAULT_BATCH_SIZE, Entity
from airflow_provider_carerix.exceptions import CarerixAuthError, CarerixGraphQLError, CarerixScopeError

if TYPE_CHECKING:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

__all__ = ["get_entities", "iter_entities"]

log = logging.getLogger(__name__)


class _Requests:
    """Counts the GraphQL requests one call made (for its log line and the benchmark)."""

    def __init__(self, hook: CarerixHook, ent: Entity) -> None:
        self.hook = hook
        self.ent = ent
        self.sent = 0

    def ask(self, query: str, variables: dict[str, Any], ids: list[str]) -> dict[str, Any]:
        from airflow_provider_carerix.hooks.carerix import DATA_SCOPE

        self.sent += 1
        try:
            return self.hook.graphql(query, variables)
        except CarerixGraphQLError as exc:
            raise exc.about(self.ent.name, ids) from None
        except CarerixAuthError as exc:
            if exc.status_code != 403:
                raise
            settings = self.hook.settings
            missing = DATA_SCOPE not in settings.scopes
            raise CarerixScopeError(
                exc.status_code,
                exc.method,
                exc.url,
                exc.body,
                scope=DATA_SCOPE,
                reason=(
                    f"the token may not read {self.ent.type_name} records: "
                    + (
                        f"add {DATA_SCOPE} to the scope field of the connection {self.hook.carerix_conn_id!r} "
                        f"(space-separated: '{settings.scope} {DATA_SCOPE}'), and give the client that scope in "
                        "Carerix"
                        if missing
                        else f"the connection asks for {DATA_SCOPE}, but Carerix did not grant it: give the "
                        f"client {settings.client_id} that scope (and read permissions) in Carerix"
                    )
                ),
            ) from None


def _page_items(data: dict[str, Any], field: str, requests: _Requests, ids: list[str]) -> dict[str, Any]:
    """The page object, checked whole: a ``null`` page or item is an error, even without an ``errors`` entry."""
    page = data.get(field)
    if not isinstance(page, dict) or not isinstance(page.get("items"), list):
        raise CarerixGraphQLError(
            requests.hook.graphql_url,
            [{"message": f"{field} answered no page", "path": [field]}],
            entity=requests.ent.name,
            ids=ids,
        )
    holes = [n for n, item in enumerate(page["items"]) if not isinstance(item, dict)]
    if holes:
        raise CarerixGraphQLError(
            requests.hook.graphql_url,
            [{"message": "an item is null", "path": [field, "items", n]} for n in holes],
            partial=True,
            entity=requests.ent.name,
            ids=ids,
        )
    return page


def _last(page: dict[str, Any], number: int) -> bool:
    """Whether ``page`` (number ``number``) is the last, by what Carerix says of it."""
    total_pages = page.get("totalPages")
    return (
        not page["items"]
        or page.get("last") is True
        or (isinstance(total_pages, int) and number + 1 >= total_pages)
    )


def _unique(ids: Iterable[str | int]) -> list[str]:
    seen: dict[str, None] = {}
    for value in ids:
        seen.setdefault(str(value).strip(), None)
    return list(seen)


def get_entities(
    hook: CarerixHook,
    entity: str,
    ids: Iterable[str | int],
    fields: Iterable[str] | None = None,
    *,
    deleted: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, dict[str, Any]]:
    """See :meth:`CarerixHook.get_entities`."""
    ent = entities.entity(entity)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    wanted = _unique(ids)
    fields = None if fields is None else list(fields)
    if ent.key:
        entities.ids_qualifier(ent, wanted or ["0"])  # every id checked before the first request
        query = entities.page_query(ent, fields)
    found: dict[str, dict[str, Any]] = {}
    requests = _Requests(hook, ent)
    for start in range(0, len(wanted), batch_size):
        batch = wanted[start : start + batch_size]
        if ent.key is None:
            data = requests.ask(
                entities.by_id_query(ent, len(batch), fields),
                {f"i{n}": entity_id for n, entity_id in enumerate(batch)},
                batch,
            )
            records = [data.get(f"r{n}") for n in range(len(batch))]
            found.update({ent.record_id(r): r for r in records if isinstance(r, dict)})
            continue
        number = 0
        while True:
            variables = {
                "qualifier": entities.ids_qualifier(ent, batch),
                "pageable": {
                    "page": number,
                    "size": len(batch),
                    "sort": [{"property": ent.key, "direction": "ASC"}],
                },
                "norestrict": deleted,
            }
            page = _page_items(requests.ask(query, variables, batch), ent.page_query, requests, batch)
            for record in page["items"]:
                record_id = ent.record_id(record)
                if record_id in batch:
                    found[record_id] = record
            if _last(page, number):
                break
            number += 1
    log.info(
        "Carerix %s: %d of %d record(s) found in %d request(s)%s",
        ent.name,
        len(found),
        len(wanted),
        requests.sent,
        " (deleted ones included)" if deleted else "",
    )
    return found


def iter_entities(
    hook: CarerixHook,
    entity: str,
    *,
    modified_since: datetime,
    fields: Iterable[str] | None = None,
    deleted: bool = False,
    page_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[dict[str, Any]]:
    """See :meth:`CarerixHook.iter_entities`."""
    ent = entities.entity(entity)
    if ent.key is None:
        raise entities.EntityError(
            f"{ent.name}: {ent.type_name} has no key to page by; read it through the records it belongs to"
        )
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    query = entities.page_query(ent, None if fields is None else list(fields))
    qualifier = entities.modified_since_qualifier(modified_since)
    requests = _Requests(hook, ent)
    seen: set[str] = set()
    number = 0
    while True:
        variables = {
            "qualifier": qualifier,
            "pageable": {
                "page": number,
                "size": page_size,
                "sort": [
                    {"property": "modificationDate", "direction": "DESC"},
                    {"property": ent.key, "direction": "ASC"},
                ],
            },
            "norestrict": deleted,
        }
        page = _page_items(requests.ask(query, variables, []), ent.page_query, requests, [])
        for record in page["items"]:
            record_id = ent.record_id(record)
            if record_id not in seen:
                seen.add(record_id)
                yield record
        if _last(page, number):
            break
        number += 1
    log.info(
        "Carerix %s: %d record(s) changed since %s, read in %d request(s)",
        ent.name,
        len(seen),
        modified_since.isoformat(),
        requests.sent,
    )
