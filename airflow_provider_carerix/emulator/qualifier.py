"""Carerix's ``qualifier`` language, the part the provider sends, parsed and evaluated on the emulator's records.

Carerix documents by example (notes: docs/data.md): comparisons ``=``, ``==``, ``!=``, ``<``, ``<=``, ``>``,
``>=`` of a dotted key path (``toUser.userID``) with a number, a quoted string, ``nil`` or a typed date
``(NSCalendarDate) 'yyyy-MM-dd HH:mm:ss'`` (Amsterdam time), combined with ``AND``/``OR`` (any case) and
parentheses. That is what this parser accepts; anything else (``in (...)``, ``like``, ``NOT``, an unknown key
path, a date that is not one) is refused with an error, as Carerix's parser refuses what it cannot read, so a
client that sends it fails here before it fails at Carerix. ``max_terms`` stands for a server limit on the
length of an ``OR`` chain (none is published: off unless a test sets one).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_carerix.definitions.entities import AMSTERDAM

__all__ = ["QualifierError", "parse_qualifier"]


class QualifierError(ValueError):
    """A qualifier the emulator (like Carerix) cannot parse or evaluate."""


_TOKEN = re.compile(
    r"""
    (?P<skip>\s+)
    | (?P<date>\(\s*NSCalendarDate\s*\)\s*'(?P<datevalue>[^']*)')
    | (?P<op>==|!=|<=|>=|=|<|>)
    | (?P<paren>[()])
    | (?P<string>'[^']*'|"[^"]*")
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<word>[_A-Za-z][_0-9A-Za-z]*(?:\.[_A-Za-z][_0-9A-Za-z]*)*)
    """,
    re.VERBOSE,
)
_DATE = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    at: int
    value: Any = None


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise QualifierError(
                f"cannot parse qualifier at offset {pos}: unexpected {text[pos : pos + 10]!r}"
            )
        kind = match.lastgroup or ""
        if kind == "datevalue":
            kind = "date"
        if kind != "skip":
            value: Any = None
            if kind == "date":
                raw = match.group("datevalue")
                try:
                    value = datetime.strptime(raw, _DATE).replace(tzinfo=AMSTERDAM)
                except ValueError:
                    raise QualifierError(
                        f"cannot parse qualifier at offset {pos}: {raw!r} is not a date 'yyyy-MM-dd HH:mm:ss'"
                    ) from None
            elif kind == "string":
                value = match.group()[1:-1]
            elif kind == "number":
                value = float(match.group()) if "." in match.group() else int(match.group())
            out.append(_Token(kind, match.group(), pos, value))
        pos = match.end()
    return out


Predicate = Callable[[dict[str, Any]], bool]
#: Reads a dotted key path of a record; raises ``QualifierError`` for a path the record's type does not have.
Reader = Callable[[dict[str, Any], str], Any]


class _Parser:
    def __init__(self, text: str, check_path: Callable[[str], None], max_terms: int | None) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.check_path = check_path
        self.max_terms = max_terms
        self.terms = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def fail(self, what: str) -> QualifierError:
        token = self.peek()
        where = "the end" if token is None else f"offset {token.at} ({token.text!r})"
        return QualifierError(f"cannot parse qualifier at {where}: {what}")

    def keyword(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.text.upper() == word

    def parse(self, reader: Reader) -> Predicate:
        if not self.tokens:
            raise QualifierError("cannot parse qualifier: it is empty")
        predicate = self.disjunction(reader)
        if self.peek() is not None:
            raise self.fail("expected AND, OR or the end")
        return predicate

    def disjunction(self, reader: Reader) -> Predicate:
        parts = [self.conjunction(reader)]
        while self.keyword("OR"):
            self.pos += 1
            parts.append(self.conjunction(reader))
        return parts[0] if len(parts) == 1 else (lambda r: any(p(r) for p in parts))

    def conjunction(self, reader: Reader) -> Predicate:
        parts = [self.factor(reader)]
        while self.keyword("AND"):
            self.pos += 1
            parts.append(self.factor(reader))
        return parts[0] if len(parts) == 1 else (lambda r: all(p(r) for p in parts))

    def factor(self, reader: Reader) -> Predicate:
        token = self.peek()
        if token is not None and token.kind == "paren" and token.text == "(":
            self.pos += 1
            inner = self.disjunction(reader)
            closing = self.peek()
            if closing is None or closing.text != ")":
                raise self.fail("expected ')'")
            self.pos += 1
            return inner
        return self.comparison(reader)

    def comparison(self, reader: Reader) -> Predicate:
        token = self.peek()
        if token is None or token.kind != "word" or token.text.upper() in ("AND", "OR", "NOT", "NIL"):
            raise self.fail("expected a key path such as employeeID or toUser.lastName")
        path = token.text
        self.check_path(path)
        self.pos += 1
        op_token = self.peek()
        if op_token is None or op_token.kind != "op":
            raise self.fail(f"expected a comparison operator (=, ==, !=, <, <=, >, >=) after {path}")
        self.pos += 1
        value_token = self.peek()
        if value_token is None:
            raise self.fail("expected a value")
        if value_token.kind in ("number", "string", "date"):
            value = value_token.value
        elif value_token.kind == "word" and value_token.text.lower() == "nil":
            value = None
        else:
            raise self.fail("expected a number, a quoted string, nil or (NSCalendarDate) '...'")
        self.pos += 1
        self.terms += 1
        if self.max_terms is not None and self.terms > self.max_terms:
            raise QualifierError(f"qualifier too complex: more than {self.max_terms} comparisons")
        return _compare(reader, path, op_token.text, value)


def _compare(reader: Reader, path: str, op: str, value: Any) -> Predicate:
    def predicate(record: dict[str, Any]) -> bool:
        left = reader(record, path)
        if isinstance(value, datetime) and isinstance(left, str):
            try:
                left = datetime.strptime(left, _DATE).replace(tzinfo=AMSTERDAM)
            except ValueError:
                return False
        elif isinstance(value, (int, float)) and isinstance(left, str) and left.lstrip("-").isdigit():
            left = int(left)
        if op in ("=", "=="):
            return bool(left == value)
        if op == "!=":
            return bool(left != value)
        if left is None or value is None:
            return False
        try:
            if op == "<":
                return bool(left < value)
            if op == "<=":
                return bool(left <= value)
            if op == ">":
                return bool(left > value)
            return bool(left >= value)
        except TypeError:
            return False

    return predicate


def parse_qualifier(
    text: str, *, check_path: Callable[[str], None], reader: Reader, max_terms: int | None = None
) -> Predicate:
    """A predicate on records for ``text``; :class:`QualifierError` for anything outside the language."""
    return _Parser(text, check_path, max_terms).parse(reader)
