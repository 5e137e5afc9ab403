"""The records the emulator serves over GraphQL: their types (a subset of Carerix's schema) and a small data set.

``TYPES`` lists, for each record type the emulator serves, the fields it holds with their GraphQL types exactly
as Carerix's schema declares them (``tests/test_data_schema.py`` checks every one against the copy of the
live schema in ``definitions/carerix_schema.graphql``). ``generate`` makes a deterministic data set from a
seed: candidates with their user records, contacts, companies, vacancies, placements, matches, publications,
to-dos and the status nodes they point at. Names and e-mail addresses are made up (``@example.com``).

Records are plain dicts keyed by field name; a reference (``toUser``, ``toStatusNode``) holds the referenced
record itself, so a change to a user shows through every record pointing at it, as in Carerix. Keys starting
with ``__`` are the emulator's own (never served).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_provider_carerix.definitions.entities import format_carerix_date

__all__ = ["ENTITY_ROOTS", "MIRRORED_USER_FIELDS", "PAGE_FIELDS", "TYPES", "EntityRoot", "generate"]

_DATES = {"creationDate": "NSCalendarDate!", "modificationDate": "NSCalendarDate"}

#: Record types and fields the emulator serves, with their types as in Carerix's schema.
TYPES: dict[str, dict[str, str]] = {
    "CREmployee": {
        "_id": "ID!",
        "_kind": "ID!",
        "employeeID": "Int!",
        "firstName": "String",
        "lastName": "String",
        "lastNamePrefix": "String",
        "emailAddress": "String",
        "phoneNumber": "String",
        "mobileNumber": "String",
        "birthDate": "NSCalendarDate",
        "city": "String",
        **_DATES,
        "deleted": "Int!",
        "toStatusNode": "CRDataNode",
        "toUser": "CRUser!",
        "owner": "CRUser",
    },
    "CRUser": {
        "_id": "ID!",
        "_kind": "ID!",
        "userID": "Int!",
        "firstName": "String",
        "lastName": "String",
        "lastNamePrefix": "String",
        "emailAddress": "String",
        "phoneNumber": "String",
        "mobileNumber": "String",
        "birthDate": "NSCalendarDate",
        "city": "String",
        "jobTitle": "String",
        **_DATES,
        "deleted": "Int!",
        "toCompany": "CRCompany",
        "toEmployee": "CREmployee",
        "toStatusNode": "CRDataNode",
    },
    "CRDataNode": {
        "_id": "ID!",
        "_kind": "ID!",
        "dataNodeID": "Int!",
        "value": "String",
        "tag": "String",
        **_DATES,
        "deleted": "Int!",
    },
    "CRStatusInfo": {
        "_id": "ID!",
        "_kind": "ID!",
        "statusInfoID": "Int!",
        "statusName": "String",
        **_DATES,
    },
    "CRCompany": {
        "_id": "ID!",
        "_kind": "ID!",
        "companyID": "Int!",
        "name": "String",
        "emailAddress": "String",
        "phoneNumber": "String",
        **_DATES,
        "deleted": "Int!",
        "toStatusNode": "CRDataNode",
        "owner": "CRUser",
    },
    "CRVacancy": {
        "_id": "ID!",
        "_kind": "ID!",
        "vacancyID": "Int!",
        "jobTitle": "String",
        "companyName": "String",
        "startDate": "NSCalendarDate",
        "endDate": "NSCalendarDate",
        **_DATES,
        "deleted": "Int!",
        "toCompany": "CRCompany",
        "toContact": "CRUser",
        "toStatusNode": "CRDataNode",
        "owner": "CRUser",
    },
    "CRJob": {
        "_id": "ID!",
        "_kind": "ID!",
        "jobID": "Int!",
        "name": "String",
        "startDate": "NSCalendarDate",
        "endDate": "NSCalendarDate",
        **_DATES,
        "deleted": "Int!",
        "toEmployee": "CREmployee",
        "toVacancy": "CRVacancy",
        "toCompany": "CRCompany",
        "toStatusNode": "CRDataNode",
    },
    "CRMatch": {
        "_id": "ID!",
        "_kind": "ID!",
        "notes": "String",
        **_DATES,
        "toEmployee": "CREmployee!",
        "toVacancy": "CRVacancy!",
        "toPublication": "CRPublication",
        "statusInfo": "CRStatusInfo",
    },
    "CRPublication": {
        "_id": "ID!",
        "_kind": "ID!",
        "publicationID": "Int!",
        "publicationStart": "NSCalendarDate",
        "publicationEnd": "NSCalendarDate",
        "creationDate": "NSCalendarDate",  # nullable on CRPublication, unlike the other types
        "modificationDate": "NSCalendarDate",
        "deleted": "Int!",
        "toVacancy": "CRVacancy",
        "toStatusNode": "CRDataNode",
    },
    "CRToDo": {
        "_id": "ID!",
        "_kind": "ID!",
        "todoID": "Int!",
        "toDoID": "Int",
        "todoTypeKey": "Int!",
        "subject": "String",
        "startDate": "NSCalendarDate",
        "endDate": "NSCalendarDate",
        **_DATES,
        "deleted": "Int!",
        "toEmployee": "CREmployee",
        "toContact": "CRUser",
    },
}

#: The fields of every ``crXPage`` answer besides ``items`` (Carerix's page object).
PAGE_FIELDS: dict[str, str] = {
    "first": "Boolean",
    "last": "Boolean",
    "numberOfElements": "Int",
    "page": "Int",
    "size": "Int",
    "sort": "String",
    "totalElements": "Int",
    "totalPages": "Int",
}

#: A candidate's name and contact fields live on its user (``toUser``): Carerix reports a change to them as
#: ``touser.lastname`` (the guide's sample event), and the emulator keeps both records in step.
MIRRORED_USER_FIELDS = (
    "firstName",
    "lastName",
    "lastNamePrefix",
    "emailAddress",
    "phoneNumber",
    "mobileNumber",
    "birthDate",
    "city",
)


@dataclass(frozen=True)
class EntityRoot:
    """One webhook entity as the emulator serves it: root fields, record type, key, and which records."""

    entity: str
    query: str
    type_name: str
    key: str | None
    role: str | None = None  # CRUser records: "contact" (crContact) or "candidate" (a candidate's user)

    @property
    def page_query(self) -> str:
        return f"{self.query}Page"


ENTITY_ROOTS: dict[str, EntityRoot] = {
    r.entity: r
    for r in (
        EntityRoot("cremployee", "crEmployee", "CREmployee", "employeeID"),
        EntityRoot("crvacancy", "crVacancy", "CRVacancy", "vacancyID"),
        EntityRoot("crjob", "crJob", "CRJob", "jobID"),
        EntityRoot("crmatch", "crMatch", "CRMatch", None),
        EntityRoot("crpublication", "crPublication", "CRPublication", "publicationID"),
        EntityRoot("crcompany", "crCompany", "CRCompany", "companyID"),
        EntityRoot("crcontact", "crContact", "CRUser", "userID", role="contact"),
        EntityRoot("crtodo", "crToDo", "CRToDo", "todoID"),
    )
}

#: How many records of each kind ``generate`` makes by default.
DEFAULT_SIZES = {
    "cremployee": 150,
    "crcontact": 30,
    "crcompany": 20,
    "crvacancy": 40,
    "crjob": 60,
    "crmatch": 80,
    "crpublication": 40,
    "crtodo": 40,
}

_FIRST = ("Anna", "Bram", "Chloé", "Daan", "Eva", "Finn", "Gijs", "Hanna", "Iris", "Jens", "Lotte", "Milan")
_LAST = ("de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "de Boer", "Bos", "Vos")
_CITIES = ("Amsterdam", "Utrecht", "Rotterdam", "Den Haag", "Eindhoven", "Groningen")
_TITLES = ("Nurse", "Welder", "Data engineer", "Accountant", "Truck driver", "Teacher")
_EMPLOYEE_STATUSES = ("Active", "Open for work", "Placed", "Inactive")
_JOB_STATUSES = ("Planned", "Active", "Closed")
_VACANCY_STATUSES = ("Open", "On hold", "Filled")
_MATCH_STATUSES = ("Intake", "Proposed", "Rejected", "Placed")


def _ids(start: int, count: int) -> Iterator[int]:
    return iter(range(start, start + count))


def generate(
    seed: int = 29, sizes: dict[str, int] | None = None, now: datetime | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """A deterministic data set: type name -> ``_id`` -> record. Dates lie 2 to 400 days before ``now``."""
    rng = random.Random(seed)
    counts = {**DEFAULT_SIZES, **(sizes or {})}
    now = now or datetime.now(timezone.utc)
    data: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in TYPES}

    def dates() -> dict[str, str]:
        created = now - timedelta(days=rng.uniform(30, 400), seconds=rng.randrange(86400))
        modified = created + (now - timedelta(days=2) - created) * rng.random()
        return {
            "creationDate": format_carerix_date(created),
            "modificationDate": format_carerix_date(modified),
        }

    def add(type_name: str, key: str, number: int, **values: Any) -> dict[str, Any]:
        record = {"_id": str(number), "_kind": type_name, key: number, **values}
        if "deleted" in TYPES[type_name]:
            record.setdefault("deleted", 0)
        data[type_name][record["_id"]] = record
        return record

    def person(n: int) -> dict[str, Any]:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        return {
            "firstName": first,
            "lastName": last,
            "lastNamePrefix": None,
            "emailAddress": f"{first.lower()}.{last.replace(' ', '').lower()}{n}@example.com",
            "phoneNumber": f"+31 20 {rng.randrange(1000000, 9999999)}",
            "mobileNumber": f"+31 6 {rng.randrange(10000000, 99999999)}",
            "birthDate": format_carerix_date(
                datetime(rng.randrange(1960, 2004), rng.randrange(1, 13), 1, 12)
            ),
            "city": rng.choice(_CITIES),
        }

    node_id = iter(range(1, 1000))

    def nodes(values: tuple[str, ...], tag: str) -> list[dict[str, Any]]:
        return [add("CRDataNode", "dataNodeID", next(node_id), value=v, tag=tag, **dates()) for v in values]

    employee_statuses = nodes(_EMPLOYEE_STATUSES, "EmployeeStatus")
    job_statuses = nodes(_JOB_STATUSES, "JobStatus")
    vacancy_statuses = nodes(_VACANCY_STATUSES, "VacancyStatus")
    company_statuses = nodes(("Prospect", "Client"), "CompanyStatus")
    match_statuses = [
        add("CRStatusInfo", "statusInfoID", n, statusName=name, **dates())
        for n, name in enumerate(_MATCH_STATUSES, 1)
    ]
    owner = add(
        "CRUser",
        "userID",
        1,
        **person(0),
        jobTitle="Recruiter",
        __role="office",
        toStatusNode=None,
        **dates(),
    )
    companies = [
        add(
            "CRCompany",
            "companyID",
            n,
            name=f"{rng.choice(_LAST)} {rng.choice(('BV', 'NV', 'Zorg', 'Logistiek'))}",
            emailAddress=f"info{n}@example.com",
            phoneNumber=f"+31 30 {rng.randrange(1000000, 9999999)}",
            toStatusNode=rng.choice(company_statuses),
            owner=owner,
            **dates(),
        )
        for n in _ids(1, counts["crcompany"])
    ]
    contacts = [
        add(
            "CRUser",
            "userID",
            n,
            **person(n),
            jobTitle="HR manager",
            toCompany=rng.choice(companies),
            toStatusNode=None,
            __role="contact",
            **dates(),
        )
        for n in _ids(5001, counts["crcontact"])
    ]
    employees = []
    for n in _ids(1, counts["cremployee"]):
        details = person(n)
        stamps = dates()
        user = add("CRUser", "userID", 1000 + n, **details, jobTitle=None, __role="candidate", **stamps)
        employee = add(
            "CREmployee",
            "employeeID",
            n,
            **details,
            toStatusNode=rng.choice(employee_statuses),
            toUser=user,
            owner=owner,
            **stamps,
        )
        user["toEmployee"] = employee
        employees.append(employee)
    vacancies = []
    for n in _ids(1, counts["crvacancy"]):
        company = rng.choice(companies)
        vacancies.append(
            add(
                "CRVacancy",
                "vacancyID",
                n,
                jobTitle=rng.choice(_TITLES),
                companyName=company["name"],
                startDate=None,
                endDate=None,
                toCompany=company,
                toContact=rng.choice(contacts),
                toStatusNode=rng.choice(vacancy_statuses),
                owner=owner,
                **dates(),
            )
        )
    for n in _ids(1, counts["crjob"]):
        vacancy = rng.choice(vacancies)
        add(
            "CRJob",
            "jobID",
            n,
            name=vacancy["jobTitle"],
            startDate=format_carerix_date(now + timedelta(days=rng.randrange(-200, 60))),
            endDate=None,
            toEmployee=rng.choice(employees),
            toVacancy=vacancy,
            toCompany=vacancy["toCompany"],
            toStatusNode=rng.choice(job_statuses),
            **dates(),
        )
    publications = [
        add(
            "CRPublication",
            "publicationID",
            n,
            publicationStart=format_carerix_date(now - timedelta(days=rng.randrange(1, 90))),
            publicationEnd=None,
            toVacancy=rng.choice(vacancies),
            toStatusNode=None,
            **dates(),
        )
        for n in _ids(1, counts["crpublication"])
    ]
    for n in _ids(1, counts["crmatch"]):
        record: dict[str, Any] = {
            "_id": str(n),
            "_kind": "CRMatch",
            "notes": None,
            "toEmployee": rng.choice(employees),
            "toVacancy": rng.choice(vacancies),
            "toPublication": rng.choice(publications),
            "statusInfo": rng.choice(match_statuses),
            **dates(),
        }
        data["CRMatch"][record["_id"]] = record
    for n in _ids(1, counts["crtodo"]):
        add(
            "CRToDo",
            "todoID",
            n,
            toDoID=n,
            todoTypeKey=0,
            subject=rng.choice(("Call back", "Intake interview", "Send contract")),
            startDate=format_carerix_date(now + timedelta(days=rng.randrange(-30, 30))),
            endDate=None,
            toEmployee=rng.choice(employees),
            toContact=rng.choice(contacts),
            **dates(),
        )
    return data
