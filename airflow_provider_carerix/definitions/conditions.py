"""Carerix's webhook condition language: parse it, print it canonically, and evaluate it on events locally.

Carerix accepts any condition text without checking it, so a typo means a webhook that silently never fires.
This module is the single place that knows the language, so that what we send to Carerix and what we filter
locally (emulator, triggers) agree. It is a hand-written tokenizer plus a recursive-descent parser: small
enough to read, and able to say *where* and *why* a condition is wrong.

Grammar (keywords are case-insensitive; precedence ``not`` > ``and`` > ``or``)::

    condition  = or_expr
    or_expr    = and_expr { "or" and_expr }
    and_expr   = not_expr { "and" not_expr }
    not_expr   = "not" not_expr | primary
    primary    = "(" or_expr ")" | field ( compare_op value | "has" ( "any" | "all" ) "of" list )
    compare_op = "eq" | "ne" | "gt" | "ge" | "lt" | "le"
    field      = name { "." name }              name = letter_or_underscore { letter | digit | "_" }
    value      = string | number | "true" | "false" | "null"
    list       = "[" value { "," value } "]"
    string     = "'" { any character, with '' for a quote } "'"
    number     = [ "-" ] digits [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ]

Matching semantics (``Condition.matches``) are documented on :meth:`Condition.matches` and in
the README's "Webhook definitions"; in short: a missing field or a type mismatch makes a comparison false, and a
number compares equal to a string that spells the same number (Carerix ids arrive as strings).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "COMPARISON_OPERATORS",
    "KEYWORDS",
    "And",
    "Comparison",
    "Condition",
    "ConditionSyntaxError",
    "Field",
    "Has",
    "Literal",
    "Not",
    "Or",
    "canonical",
    "parse",
]

COMPARISON_OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le")
KEYWORDS = frozenset(
    {"and", "or", "not", "has", "any", "all", "of", "true", "false", "null", *COMPARISON_OPERATORS}
)
# What people coming from other languages type instead of our operators; difflib cannot guess these.
_OPERATOR_SYNONYMS = {
    "=": "eq",
    "==": "eq",
    "===": "eq",
    "equals": "eq",
    "equal": "eq",
    "is": "eq",
    "!=": "ne",
    "<>": "ne",
    "!==": "ne",
    ">": "gt",
    ">=": "ge",
    "=>": "ge",
    "<": "lt",
    "<=": "le",
    "=<": "le",
    "contains": "has any of",
    "in": "has any of",
}
_MAX_DEPTH = 64
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class ConditionSyntaxError(ValueError):
    """A condition that cannot be parsed; ``str()`` quotes the text with a caret under ``position``."""

    def __init__(self, reason: str, text: str, position: int) -> None:
        self.reason = reason
        self.text = text
        self.position = position
        super().__init__(f"{reason}\n{self.excerpt}")

    @property
    def excerpt(self) -> str:
        """The condition and a caret line under the fault (tabs and line breaks shown as spaces to align)."""
        shown = "".join(" " if ch in "\t\r\n" else ch for ch in self.text)
        return f"  {shown}\n  {' ' * self.position}^"


# ---------------------------------------------------------------------------------------------------- AST


class Condition:
    """Base of the condition AST. Nodes are frozen dataclasses, so ``==`` compares structure."""

    # Binding strength for printing: a child binding weaker than (or as weak as, for and/or) its parent
    # needs parentheses, so that ``parse(str(c)) == c`` holds for every tree, not only parsed ones.
    _precedence: ClassVar[int] = 4

    def matches(self, event: Any) -> bool:
        """Whether ``event`` (a decoded JSON payload, normally a dict) satisfies the condition.

        Never raises, whatever JSON it gets. Rules:

        * A field path walks nested objects from the event's top level (``data.tostatusnode`` is
          ``event["data"]["tostatusnode"]``); an exact key wins, else a unique case-insensitive match is
          used. A missing path, or one running into a non-object, makes the comparison **false**, for every
          operator including ``ne`` (so ``not x eq 'a'`` is true when ``x`` is missing).
        * ``eq``/``ne`` need comparable types; otherwise both are false. Numbers compare as numbers; a
          string that spells a number (``'1234'``, ``'-1.5'``) compares equal to that number, both ways,
          because Carerix sends ids as strings and people write them with or without quotes. Strings
          compare exactly (case-sensitive). Booleans only compare to booleans (``1`` is not ``true``).
          ``eq null`` is true when the field is present and null; ``ne null`` when present and not null.
        * ``gt ge lt le`` order numbers (with the same number/string rule) or two strings (code point
          order, which suits ISO dates); anything else is false.
        * ``has any of`` / ``has all of`` need a list field (a non-list, including a string, is false);
          elements compare like ``eq``.
        """
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Literal:
    """A value in a condition. Equality includes the type: ``1``, ``1.0``, ``true`` and ``'1'`` differ."""

    value: str | int | float | bool | None

    def __post_init__(self) -> None:
        v = self.value
        if not (v is None or isinstance(v, (str, int, float))):
            raise TypeError(f"a literal is a string, number, boolean or None, not {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("a number literal must be finite")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Literal):
            return NotImplemented
        return type(self.value) is type(other.value) and self.value == other.value

    def __hash__(self) -> int:
        return hash((type(self.value).__name__, self.value))

    def __str__(self) -> str:
        v = self.value
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return "'" + v.replace("'", "''") + "'"
        return repr(v)


@dataclass(frozen=True)
class Field:
    """A dotted path into the event, e.g. ``data.touser.tosinglestatusnode``."""

    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.parts or not all(_is_name(p) for p in self.parts):
            raise ValueError(f"invalid field path {self.parts!r}")
        if self.parts[0].lower() in KEYWORDS:
            raise ValueError(f"a field path cannot start with the keyword {self.parts[0]!r}")

    def __str__(self) -> str:
        return ".".join(self.parts)

    def resolve(self, event: Any) -> tuple[bool, Any]:
        """``(found, value)``; never raises."""
        current = event
        for part in self.parts:
            if not isinstance(current, dict):
                return False, None
            if part in current:
                current = current[part]
                continue
            folded = [k for k in current if isinstance(k, str) and k.lower() == part.lower()]
            if len(folded) != 1:
                return False, None
            current = current[folded[0]]
        return True, current


@dataclass(frozen=True)
class Comparison(Condition):
    field: Field
    op: str
    value: Literal

    def __post_init__(self) -> None:
        if self.op not in COMPARISON_OPERATORS:
            raise ValueError(f"unknown operator {self.op!r}")

    def matches(self, event: Any) -> bool:
        found, actual = self.field.resolve(event)
        return found and _compare(actual, self.op, self.value.value)

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value}"


@dataclass(frozen=True)
class Has(Condition):
    """``field has any of [...]`` / ``field has all of [...]``."""

    field: Field
    quantifier: str
    values: tuple[Literal, ...]

    def __post_init__(self) -> None:
        if self.quantifier not in ("any", "all"):
            raise ValueError(f"quantifier must be 'any' or 'all', not {self.quantifier!r}")
        if not self.values:
            raise ValueError("a 'has' list needs at least one value")

    def matches(self, event: Any) -> bool:
        found, actual = self.field.resolve(event)
        if not found or not isinstance(actual, list):
            return False
        hits = (any(_compare(item, "eq", lit.value) for item in actual) for lit in self.values)
        return any(hits) if self.quantifier == "any" else all(hits)

    def __str__(self) -> str:
        return f"{self.field} has {self.quantifier} of [{', '.join(str(v) for v in self.values)}]"


@dataclass(frozen=True)
class Not(Condition):
    operand: Condition
    _precedence: ClassVar[int] = 3

    def matches(self, event: Any) -> bool:
        return not self.operand.matches(event)

    def __str__(self) -> str:
        inner = str(self.operand)
        return f"not ({inner})" if self.operand._precedence < self._precedence else f"not {inner}"


@dataclass(frozen=True)
class _Junction(Condition):
    operands: tuple[Condition, ...]
    keyword: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ValueError(f"'{self.keyword}' needs at least two operands")

    def __str__(self) -> str:
        # A child as weak as this node is parenthesised too: ``a and (b and c)`` is a different tree
        # from ``a and b and c`` and must print differently to round-trip.
        parts = [f"({o})" if o._precedence <= self._precedence else str(o) for o in self.operands]
        return f" {self.keyword} ".join(parts)


@dataclass(frozen=True)
class And(_Junction):
    keyword: ClassVar[str] = "and"
    _precedence: ClassVar[int] = 2

    def matches(self, event: Any) -> bool:
        return all(o.matches(event) for o in self.operands)


@dataclass(frozen=True)
class Or(_Junction):
    keyword: ClassVar[str] = "or"
    _precedence: ClassVar[int] = 1

    def matches(self, event: Any) -> bool:
        return any(o.matches(event) for o in self.operands)


# ---------------------------------------------------------------------------------------- value semantics


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_number(text: str) -> int | float | None:
    if not _NUMBER_TEXT.fullmatch(text):
        return None
    try:
        number = int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:  # more digits than Python converts (sys.int_info.default_max_str_digits)
        return None
    return number


def _comparable(actual: Any, expected: Any) -> tuple[Any, Any] | None:
    """Both sides as one comparable type, or None when the types do not compare (then the test is false)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return (actual, expected) if isinstance(actual, bool) and isinstance(expected, bool) else None
    if _is_number(expected):
        if _is_number(actual):
            return actual, expected
        number = _as_number(actual) if isinstance(actual, str) else None
        return None if number is None else (number, expected)
    if isinstance(expected, str):
        if isinstance(actual, str):
            return actual, expected
        if _is_number(actual):
            number = _as_number(expected)
            return None if number is None else (actual, number)
    return None


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if expected is None:
        if op == "eq":
            return actual is None
        if op == "ne":
            return actual is not None
        return False
    pair = _comparable(actual, expected)
    if pair is None:
        return False
    a, b = pair
    try:
        if op == "eq":
            return bool(a == b)
        if op == "ne":
            return bool(a != b)
        if isinstance(a, bool):
            return False
        if op == "gt":
            return bool(a > b)
        if op == "ge":
            return bool(a >= b)
        if op == "lt":
            return bool(a < b)
        if op == "le":
            return bool(a <= b)
    except (TypeError, ValueError, OverflowError):
        return False
    return False


# ---------------------------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class _Token:
    kind: str  # word, string, number, symbol, punct, end
    text: str
    pos: int
    value: Any = None


def _is_name(text: str) -> bool:
    return (
        bool(text)
        and (text[0].isascii() and (text[0].isalpha() or text[0] == "_"))
        and all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in text)
    )


def _name_char(ch: str, first: bool = False) -> bool:
    return ch.isascii() and (ch.isalpha() or ch == "_" or (not first and ch.isdigit()))


_WHITESPACE_NAMES = {"\t": "tab", "\n": "line break", "\r": "line break"}


class _Tokenizer:
    def __init__(self, text: str, strict: bool) -> None:
        self.text = text
        self.strict = strict
        self.pos = 0
        self.tokens: list[_Token] = []

    def fail(self, reason: str, pos: int) -> ConditionSyntaxError:
        return ConditionSyntaxError(reason, self.text, pos)

    def run(self) -> list[_Token]:
        text = self.text
        while True:
            self.skip_space()
            if self.pos >= len(text):
                self.tokens.append(_Token("end", "", len(text)))
                return self.tokens
            ch = text[self.pos]
            if ch in "()[],":
                self.tokens.append(_Token("punct", ch, self.pos))
                self.pos += 1
            elif ch == "'":
                self.string()
            elif ch == '"':
                raise self.fail("strings use single quotes: write '...' instead of \"...\"", self.pos)
            elif ch.isdigit() or (ch == "-" and text[self.pos + 1 : self.pos + 2].isdigit()):
                self.number()
            elif _name_char(ch, first=True):
                self.word()
            elif ch in "=!<>&|":
                start = self.pos
                while self.pos < len(text) and text[self.pos] in "=!<>&|":
                    self.pos += 1
                self.tokens.append(_Token("symbol", text[start : self.pos], start))
            elif ch == ".":
                raise self.fail(
                    "unexpected '.': a field path starts with a name, like data.tostatusnode", self.pos
                )
            else:
                raise self.fail(f"unexpected character {ch!r}", self.pos)

    def skip_space(self) -> None:
        text, start = self.text, self.pos
        while self.pos < len(text) and text[self.pos].isspace():
            self.pos += 1
        if not self.strict or self.pos == start:
            return
        run = text[start : self.pos]
        odd = next((i for i, ch in enumerate(run) if ch != " "), None)
        if odd is not None:
            name = _WHITESPACE_NAMES.get(run[odd], f"whitespace character {run[odd]!r}")
            raise self.fail(f"{name} at {start + odd}: use a single space between words", start + odd)
        if start == 0:
            raise self.fail("leading space: remove the space(s) before the condition", 0)
        if self.pos == len(text):
            raise self.fail(f"trailing space at {start}: remove the space(s) after the condition", start)
        if len(run) > 1:
            raise self.fail(f"double space at {start}: use a single space", start)
        before, after = text[start - 1], text[self.pos]
        if before in "([":
            raise self.fail(f"stray space at {start} after {before!r}", start)
        if after in ")],":
            raise self.fail(f"stray space at {start} before {after!r}", start)

    def string(self) -> None:
        text, start = self.text, self.pos
        chars: list[str] = []
        i = start + 1
        while True:
            if i >= len(text):
                raise self.fail(f"unterminated string: the quote at {start} is never closed", start)
            if text[i] == "'":
                if text[i + 1 : i + 2] == "'":
                    chars.append("'")
                    i += 2
                    continue
                break
            chars.append(text[i])
            i += 1
        self.pos = i + 1
        self.tokens.append(_Token("string", text[start : self.pos], start, "".join(chars)))

    def number(self) -> None:
        text, start = self.text, self.pos
        end = start + 1
        while end < len(text) and (text[end].isalnum() or text[end] in "._+-"):
            # Take ``e+5``/``e-5`` but stop at a ``-`` that is not part of an exponent.
            if text[end] in "+-" and text[end - 1] not in "eE":
                break
            end += 1
        raw = text[start:end]
        if not _NUMBER_TEXT.fullmatch(raw):
            raise self.fail(f"invalid number {raw!r}", start)
        value = _as_number(raw)
        if value is None:
            raise self.fail(f"number {raw[:20]}... has too many digits", start)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"number {raw!r} is out of range", start)
        self.pos = end
        self.tokens.append(_Token("number", raw, start, value))

    def word(self) -> None:
        text, start = self.text, self.pos
        i = start
        while True:
            while i < len(text) and _name_char(text[i]):
                i += 1
            if i < len(text) and text[i] == ".":
                if i + 1 < len(text) and _name_char(text[i + 1], first=True):
                    i += 1
                    continue
                raise self.fail("expected a field name after '.'", i + 1)
            break
        self.pos = i
        self.tokens.append(_Token("word", text[start:i], start))


# ------------------------------------------------------------------------------------------------- parser


def _describe(token: _Token) -> str:
    return "end of condition" if token.kind == "end" else repr(token.text)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.5)
    return f": did you mean '{close[0]}'?" if close else ""


class _Parser:
    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, reason: str, token: _Token | None = None) -> ConditionSyntaxError:
        return ConditionSyntaxError(reason, self.text, (token or self.token).pos)

    def is_keyword(self, *words: str) -> bool:
        return self.token.kind == "word" and self.token.text.lower() in words

    def parse(self) -> Condition:
        if self.token.kind == "end":
            raise self.fail("empty condition")
        condition = self.or_expr()
        token = self.token
        if token.kind == "end":
            return condition
        if token.kind == "punct" and token.text == ")":
            raise self.fail("unmatched ')'")
        if token.kind == "symbol" and token.text in ("&&", "&", "||", "|"):
            word = "and" if "&" in token.text else "or"
            raise self.fail(f"unknown operator {token.text!r}: did you mean '{word}'?")
        hint = _suggest(token.text, ["and", "or"]) if token.kind == "word" else ""
        if hint:
            raise self.fail(f"unknown keyword {token.text!r}{hint}")
        raise self.fail(f"expected 'and', 'or' or the end of the condition, found {_describe(token)}")

    def or_expr(self) -> Condition:
        operands = [self.and_expr()]
        while self.is_keyword("or"):
            self.advance()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Condition:
        operands = [self.not_expr()]
        while self.is_keyword("and"):
            self.advance()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_expr(self) -> Condition:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(f"condition nested too deeply (more than {_MAX_DEPTH} levels)")
        try:
            if self.is_keyword("not"):
                self.advance()
                return Not(self.not_expr())
            return self.primary()
        finally:
            self.depth -= 1

    def primary(self) -> Condition:
        token = self.token
        if token.kind == "punct" and token.text == "(":
            self.advance()
            inner = self.or_expr()
            if not (self.token.kind == "punct" and self.token.text == ")"):
                found = self.token
                if found.kind == "end":
                    raise self.fail(f"missing ')' to close the '(' at {token.pos}")
                raise self.fail(f"expected ')' to close the '(' at {token.pos}, found {_describe(found)}")
            self.advance()
            return inner
        if token.kind != "word" or token.text.lower() in KEYWORDS:
            what = "keyword " + repr(token.text) if token.kind == "word" else _describe(token)
            raise self.fail(f"expected a field (like data.tostatusnode), 'not' or '(', found {what}")
        field = Field(tuple(self.advance().text.split(".")))
        op = self.token
        if op.kind == "word" and op.text.lower() in COMPARISON_OPERATORS:
            self.advance()
            return Comparison(field, op.text.lower(), self.literal())
        if op.kind == "word" and op.text.lower() == "has":
            self.advance()
            return self.has(field)
        if op.kind in ("word", "symbol"):
            synonym = _OPERATOR_SYNONYMS.get(op.text.lower())
            if synonym:
                raise self.fail(f"unknown operator {op.text!r}: did you mean '{synonym}'?", op)
            hint = _suggest(op.text, [*COMPARISON_OPERATORS, "has"])
            raise self.fail(
                f"unknown operator {op.text!r}{hint or ': expected eq, ne, gt, ge, lt, le or has'}"
            )
        raise self.fail(
            f"expected an operator (eq, ne, gt, ge, lt, le, has) after '{field}', found {_describe(op)}"
        )

    def has(self, field: Field) -> Condition:
        if not self.is_keyword("any", "all"):
            raise self.fail(f"expected 'any of' or 'all of' after 'has', found {_describe(self.token)}")
        quantifier = self.advance().text.lower()
        if not self.is_keyword("of"):
            raise self.fail(f"expected 'of' after 'has {quantifier}', found {_describe(self.token)}")
        self.advance()
        opening = self.token
        if not (opening.kind == "punct" and opening.text == "["):
            raise self.fail(
                f"expected '[' to start the list after 'has {quantifier} of', found {_describe(opening)}"
            )
        self.advance()
        if self.token.kind == "punct" and self.token.text == "]":
            raise self.fail(f"empty list: 'has {quantifier} of' needs at least one value")
        values = [self.literal()]
        while self.token.kind == "punct" and self.token.text == ",":
            self.advance()
            values.append(self.literal())
        if not (self.token.kind == "punct" and self.token.text == "]"):
            found = self.token
            if found.kind == "end":
                raise self.fail(f"missing ']' to close the '[' at {opening.pos}")
            raise self.fail(f"expected ',' or ']' in the list, found {_describe(found)}")
        self.advance()
        return Has(field, quantifier, tuple(values))

    def literal(self) -> Literal:
        token = self.token
        if token.kind in ("string", "number"):
            self.advance()
            return Literal(token.value)
        if token.kind == "word":
            word = token.text.lower()
            if word in ("true", "false", "null"):
                self.advance()
                return Literal({"true": True, "false": False, "null": None}[word])
            raise self.fail(
                f"expected a value ('quoted string', number, true, false or null), found {token.text!r}: "
                f"quote strings like '{token.text}' (comparing two fields is not supported)"
            )
        raise self.fail(
            f"expected a value ('quoted string', number, true, false or null), found {_describe(token)}"
        )


def parse(text: str, *, strict: bool = True) -> Condition:
    """Parse a condition; raises :class:`ConditionSyntaxError` with the position of the first fault.

    ``strict`` (the default) also rejects what Carerix's guide warns about: leading, trailing, doubled or
    stray spaces and tabs or line breaks between words. Pass ``strict=False`` to read text someone else
    wrote (for example a webhook created by hand in Carerix) where only the meaning matters.
    """
    if not isinstance(text, str):
        raise TypeError(f"a condition is a string, not {type(text).__name__}")
    tokens = _Tokenizer(text, strict).run()
    return _Parser(text, tokens).parse()


def canonical(text: str, *, strict: bool = True) -> str:
    """The canonical spelling of a condition (lowercase keywords, single spaces, minimal parentheses)."""
    return str(parse(text, strict=strict))
