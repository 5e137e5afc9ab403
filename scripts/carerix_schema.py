"""Cut the part of Carerix's GraphQL schema the provider uses out of a full introspection dump.

The dump is public: repository ``jwvantriet/confair-api``, file ``docs/carerix-schema.graphql`` (SDL, read
from Carerix's live API in 2026-04). This script keeps, without descriptions:

* the root fields ``crX(_id, ...)`` and ``crXPage(language, norestrict, pageable, qualifier)`` of the entities
  webhooks name (:data:`ROOT_FIELDS`), in a ``type Query`` holding only them,
* their record types and page types, the input types ``Pageable``/``Order``, the enums they use, and the
  scalars (with their descriptions, which say how dates are written),

and writes it to ``airflow_provider_carerix/definitions/carerix_schema.graphql``, which the provider reads for
field names (``changedFields`` -> GraphQL paths) and which the emulator's schema is checked against
(``tests/test_data_schema.py``). Run it again when a newer dump is published::

    git clone https://github.com/jwvantriet/confair-api /tmp/confair-api
    .venv/bin/python scripts/carerix_schema.py /tmp/confair-api/docs/carerix-schema.graphql \
        --source "jwvantriet/confair-api docs/carerix-schema.graphql @ $(git -C /tmp/confair-api rev-parse HEAD)"
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "airflow_provider_carerix" / "definitions" / "carerix_schema.graphql"

#: Root fields kept: one record and one page per entity webhooks name.
ROOT_FIELDS = [
    f"{name}{suffix}"
    for name in (
        "crCompany",
        "crContact",
        "crEmployee",
        "crJob",
        "crMatch",
        "crPublication",
        "crToDo",
        "crVacancy",
    )
    for suffix in ("", "Page")
]
#: Record types kept whole (every field): the entities' types and the two the webhooks' ``to*`` fields
#: most often name (status nodes and match statuses).
RECORD_TYPES = [
    "CRCompany",
    "CRDataNode",
    "CREmployee",
    "CRJob",
    "CRMatch",
    "CRPublication",
    "CRStatusInfo",
    "CRToDo",
    "CRUser",
    "CRVacancy",
]
INPUTS_AND_ENUMS = ["Pageable", "Order", "Direction", "Language", "ToDoEkeyEnum"]

_BLOCK = re.compile(
    r'^(?:"""(?P<doc>[\s\S]*?)"""\s*\n)?(?P<kind>type|input|enum|interface|scalar|union)\s+(?P<name>\w+)'
    r"(?P<head>[^{\n]*)(?:\{(?P<body>[\s\S]*?)^\})?",
    re.M,
)


def _strip_descriptions(text: str) -> str:
    text = re.sub(r'"""[\s\S]*?"""', "", text)
    return re.sub(r'^\s*"[^"\n]*"\s*$', "", text, flags=re.M)


def _fields(body: str) -> list[str]:
    """One line per field, arguments folded onto it: ``name(arg: T, ...): Type``."""
    body = _strip_descriptions(body)
    body = re.sub(
        r"\(([^()]*)\)",
        lambda m: (
            "(" + ", ".join(f"{n}: {t}" for n, t in re.findall(r"(\w+)\s*:\s*([\w!\[\]]+)", m.group(1))) + ")"
        ),
        body,
    )
    lines = []
    for line in body.splitlines():
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return lines


def trim(dump: str) -> dict[str, str]:
    """The kept definitions by name, each as SDL text."""
    blocks = {m["name"]: m for m in _BLOCK.finditer(dump)}
    kept: dict[str, str] = {}
    query = [f for f in _fields(blocks["Query"]["body"]) if f.split("(")[0].split(":")[0] in ROOT_FIELDS]
    missing = set(ROOT_FIELDS) - {f.split("(")[0].split(":")[0] for f in query}
    if missing:
        raise SystemExit(f"the dump has no root field(s) {sorted(missing)}")
    kept["Query"] = "type Query {\n" + "".join(f"  {f}\n" for f in query) + "}"
    pages = sorted({f.rsplit(":", 1)[1].strip().rstrip("!") for f in query if "Page(" in f})
    for name in [*RECORD_TYPES, *pages, *INPUTS_AND_ENUMS]:
        block = blocks[name]
        head = " ".join(block["head"].split())
        kept[name] = (
            f"{block['kind']} {name}{' ' + head if head else ''} {{\n"
            + "".join(f"  {f}\n" for f in _fields(block["body"]))
            + "}"
        )
    for match in blocks.values():
        if match["kind"] == "scalar":
            doc = " ".join((match["doc"] or "").split())
            kept[match["name"]] = (f"# {doc}\n" if doc else "") + f"scalar {match['name']}"
    return kept


def render(kept: dict[str, str], source: str) -> str:
    header = (
        "# Part of Carerix's GraphQL schema: what airflow-provider-carerix reads records with.\n"
        f"# Cut by scripts/carerix_schema.py from the full introspection dump {source}\n"
        "# (descriptions dropped but for the scalars'; every field of the record types kept).\n"
    )
    order = ["Query", *sorted(n for n in kept if n != "Query")]
    return header + "\n" + "\n\n".join(kept[n] for n in order) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path, help="the full SDL dump (docs/carerix-schema.graphql)")
    parser.add_argument("--source", required=True, help="where the dump came from (repository, path, commit)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.write_text(render(trim(args.dump.read_text()), args.source))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
