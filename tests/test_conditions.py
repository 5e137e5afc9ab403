"""The condition language: the guide's conditions, precedence, canonical text, errors users see, properties."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_carerix.definitions.conditions import (
    KEYWORDS,
    And,
    Comparison,
    Condition,
    ConditionSyntaxError,
    Field,
    Has,
    Literal,
    Not,
    Or,
    canonical,
    parse,
)

GUIDE_CONDITIONS = [
    "data.tostatusnode eq '1234'",
    "data.tostatusnode eq '1234' or data.tostatusnode eq '5678'",
    "data.touser.tosinglestatusnode eq '1234'",
    "data.statusinfo eq '1234'",
    "metadata.paths has any of ['toStatusNode']",
]


def cmp(path: str, op: str, value: Any) -> Comparison:
    return Comparison(Field(tuple(path.split("."))), op, Literal(value))


@pytest.mark.parametrize("text", GUIDE_CONDITIONS)
def test_every_guide_condition_parses_and_is_already_canonical(text: str) -> None:
    condition = parse(text)
    assert str(condition) == text
    assert parse(str(condition)) == condition


def test_guide_conditions_structure() -> None:
    assert parse(GUIDE_CONDITIONS[1]) == Or(
        (cmp("data.tostatusnode", "eq", "1234"), cmp("data.tostatusnode", "eq", "5678"))
    )
    assert parse(GUIDE_CONDITIONS[4]) == Has(Field(("metadata", "paths")), "any", (Literal("toStatusNode"),))


def test_precedence_not_binds_tighter_than_and_tighter_than_or() -> None:
    a, b, c = cmp("a", "eq", 1), cmp("b", "eq", 2), cmp("c", "eq", 3)
    assert parse("a eq 1 or b eq 2 and c eq 3") == Or((a, And((b, c))))
    assert parse("a eq 1 and b eq 2 or c eq 3") == Or((And((a, b)), c))
    assert parse("not a eq 1 and b eq 2") == And((Not(a), b))
    assert parse("not (a eq 1 and b eq 2)") == Not(And((a, b)))
    assert parse("(a eq 1 or b eq 2) and c eq 3") == And((Or((a, b)), c))
    assert parse("a eq 1 or b eq 2 or c eq 3") == Or((a, b, c))


def test_keywords_are_case_insensitive_and_canonical_text_is_lowercase() -> None:
    text = "NOT data.x EQ TRUE And data.y Has ALL Of [NULL, False, 'A'] OR data.z Le -1.5"
    assert canonical(text) == "not data.x eq true and data.y has all of [null, false, 'A'] or data.z le -1.5"


def test_canonical_text_drops_redundant_parentheses_and_keeps_needed_ones() -> None:
    assert canonical("((a eq 1))") == "a eq 1"
    assert canonical("(a eq 1 and b eq 2) or c eq 3") == "a eq 1 and b eq 2 or c eq 3"
    assert canonical("a eq 1 and (b eq 2 or c eq 3)") == "a eq 1 and (b eq 2 or c eq 3)"
    assert canonical("a eq 1 and (b eq 2 and c eq 3)") == "a eq 1 and (b eq 2 and c eq 3)"
    assert canonical("not(a eq 1)") == "not a eq 1"


def test_literals() -> None:
    assert parse("a eq 'it''s'") == cmp("a", "eq", "it's")
    assert str(parse("a eq 'it''s'")) == "a eq 'it''s'"
    assert parse("a eq ''") == cmp("a", "eq", "")
    assert parse("a eq 'two  spaces inside are data'") == cmp("a", "eq", "two  spaces inside are data")
    assert parse("a gt 10") == cmp("a", "gt", 10)
    assert parse("a gt 1e3") == cmp("a", "gt", 1000.0)
    assert parse("a gt 1e3") != cmp("a", "gt", 1000)  # literal equality includes the type
    assert parse("a eq true") != cmp("a", "eq", 1)
    assert parse("a eq null") == cmp("a", "eq", None)


# ------------------------------------------------------------------------------------- errors users see


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        (
            "data.tostatusnode equals '1234'",
            18,
            "unknown operator 'equals': did you mean 'eq'?\n"
            "  data.tostatusnode equals '1234'\n"
            "                    ^",
        ),
        (
            "data.tostatusnode eq '1234",
            21,
            "unterminated string: the quote at 21 is never closed\n"
            "  data.tostatusnode eq '1234\n"
            "                       ^",
        ),
        (
            "data.tostatusnode eq '1234' or  data.tostatusnode eq '5678'",
            30,
            "double space at 30: use a single space\n"
            "  data.tostatusnode eq '1234' or  data.tostatusnode eq '5678'\n"
            "                                ^",
        ),
        (
            "data.tostatusnode eq '1234' ",
            27,
            "trailing space at 27: remove the space(s) after the condition\n"
            "  data.tostatusnode eq '1234' \n"
            "                             ^",
        ),
        (
            " data.tostatusnode eq '1234'",
            0,
            "leading space: remove the space(s) before the condition\n   data.tostatusnode eq '1234'\n  ^",
        ),
    ],
)
def test_error_messages_quote_the_text_with_a_caret(text: str, position: int, message: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse(text)
    assert info.value.position == position
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("", 0, "empty condition"),
        ("data.x = '1'", 7, "unknown operator '=': did you mean 'eq'?"),
        ("data.x != '1'", 7, "unknown operator '!=': did you mean 'ne'?"),
        ("data.x contains '1'", 7, "unknown operator 'contains': did you mean 'has any of'?"),
        ("data.x eqq '1'", 7, "unknown operator 'eqq': did you mean 'eq'?"),
        ("data.x foo '1'", 7, "unknown operator 'foo': expected eq, ne, gt, ge, lt, le or has"),
        (
            "data.x",
            6,
            "expected an operator (eq, ne, gt, ge, lt, le, has) after 'data.x', found end of condition",
        ),
        ("data.x eq '1' adn data.y eq '2'", 14, "unknown keyword 'adn': did you mean 'and'?"),
        ("data.x eq '1' && data.y eq '2'", 14, "unknown operator '&&': did you mean 'and'?"),
        (
            "data.x eq '1' data.y eq '2'",
            14,
            "expected 'and', 'or' or the end of the condition, found 'data.y'",
        ),
        ("(data.x eq '1'", 14, "missing ')' to close the '(' at 0"),
        ("data.x eq '1')", 13, "unmatched ')'"),
        (
            "data.x eq open",
            10,
            "expected a value ('quoted string', number, true, false or null), found 'open': "
            "quote strings like 'open' (comparing two fields is not supported)",
        ),
        ('data.x eq "1"', 10, "strings use single quotes: write '...' instead of \"...\""),
        (
            "data.x eq",
            9,
            "expected a value ('quoted string', number, true, false or null), found end of condition",
        ),
        ("data. x eq '1'", 5, "expected a field name after '.'"),
        ("data..x eq '1'", 5, "expected a field name after '.'"),
        ("data.x eq 12ab", 10, "invalid number '12ab'"),
        ("data.x eq 1e999", 10, "number '1e999' is out of range"),
        ("data.x has [1]", 11, "expected 'any of' or 'all of' after 'has', found '['"),
        ("data.x has any ['a']", 15, "expected 'of' after 'has any', found '['"),
        ("data.x has any of 'a'", 18, "expected '[' to start the list after 'has any of', found \"'a'\""),
        ("data.x has any of []", 19, "empty list: 'has any of' needs at least one value"),
        ("data.x has any of ['a'", 22, "missing ']' to close the '[' at 18"),
        ("data.x has any of ['a' 'b']", 23, "expected ',' or ']' in the list, found \"'b'\""),
        (
            "data.x has any of ['a',]",
            23,
            "expected a value ('quoted string', number, true, false or null), found ']'",
        ),
        ("and eq '1'", 0, "expected a field (like data.tostatusnode), 'not' or '(', found keyword 'and'"),
        (
            "data.x eq '1' and",
            17,
            "expected a field (like data.tostatusnode), 'not' or '(', found end of condition",
        ),
        ("( data.x eq '1')", 1, "stray space at 1 after '('"),
        ("(data.x eq '1' )", 14, "stray space at 14 before ')'"),
        ("data.x has any of ['a' , 'b']", 22, "stray space at 22 before ','"),
        ("data.x eq '1'\tand data.y eq '2'", 13, "tab at 13: use a single space between words"),
        ("data.x eq '1'\nand data.y eq '2'", 13, "line break at 13: use a single space between words"),
        ("data.x eq '1' # c", 14, "unexpected character '#'"),
        (".x eq 1", 0, "unexpected '.': a field path starts with a name, like data.tostatusnode"),
        ("not " * 70 + "a eq 1", 256, "condition nested too deeply (more than 64 levels)"),
    ],
)
def test_syntax_errors(text: str, position: int, reason: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse(text)
    assert (info.value.position, info.value.reason) == (position, reason)


def test_lenient_mode_accepts_whitespace_that_strict_mode_rejects() -> None:
    text = "  data.x  eq\t'1'\nor ( data.y eq '2' ) "
    with pytest.raises(ConditionSyntaxError):
        parse(text)
    assert canonical(text, strict=False) == "data.x eq '1' or data.y eq '2'"


def test_non_string_input_is_a_type_error() -> None:
    for text, name in ((None, "NoneType"), (b"a eq 1", "bytes")):
        with pytest.raises(TypeError) as info:
            parse(text)  # type: ignore[arg-type]
        assert str(info.value) == f"a condition is a string, not {name}"


# ------------------------------------------------------------------------------------------------ matching

EVENT = {
    "id": "8469bf71-4942-45ea-98b8-393077288785",
    "type": "cremployee:updated",
    "data": {
        "entityId": "1",
        "tostatusnode": "1234",
        "count": 5,
        "active": True,
        "note": None,
        "changedFields": ["touser", "touser.lastname"],
        "touser": {"tosinglestatusnode": "77"},
        "date": "2024-02-14",
    },
    "metadata": {"paths": ["toStatusNode", "modificationdate"]},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.tostatusnode eq '1234'", True),
        ("data.tostatusnode eq '1234' or data.tostatusnode eq '5678'", True),
        ("data.tostatusnode eq '5678'", False),
        ("data.touser.tosinglestatusnode eq '77'", True),
        ("metadata.paths has any of ['toStatusNode']", True),
        ("metadata.paths has any of ['nope', 'modificationdate']", True),
        ("metadata.paths has all of ['toStatusNode', 'nope']", False),
        ("metadata.paths has all of ['toStatusNode', 'modificationdate']", True),
        # Ids arrive as strings; a number literal matches the string that spells it, and vice versa.
        ("data.tostatusnode eq 1234", True),
        ("data.tostatusnode gt 1000", True),
        ("data.count eq '5'", True),
        ("data.count eq 5.0", True),
        ("data.count ne 5", False),
        ("data.count ne 6", True),
        ("data.count ge 5 and data.count lt 6", True),
        # Missing paths are false for every operator; `not` turns that around.
        ("data.missing eq '1'", False),
        ("data.missing ne '1'", False),
        ("not data.missing eq '1'", True),
        ("data.tostatusnode.deeper eq '1'", False),
        ("data.missing eq null", False),
        ("data.note eq null", True),
        ("data.note ne null", False),
        ("data.count ne null", True),
        # Type mismatches are false, `ne` included.
        ("data.active eq true", True),
        ("data.active eq 1", False),
        ("data.active ne 'x'", False),
        ("data.tostatusnode eq true", False),
        ("data.touser eq '77'", False),
        ("data.changedFields eq 'touser'", False),
        ("data.entityId gt 'abc'", False),
        ("data.active gt false", False),
        # `has` needs a list; a string or scalar field is not one.
        ("data.tostatusnode has any of ['1234']", False),
        ("data.count has any of [5]", False),
        # Strings order by code point (ISO dates work), field names fall back to a case-insensitive match.
        ("data.date ge '2024-01-01' and data.date lt '2024-03-01'", True),
        ("DATA.TOSTATUSNODE eq '1234'", True),
    ],
)
def test_matches(text: str, expected: bool) -> None:
    assert parse(text).matches(EVENT) is expected


def test_matches_on_non_dict_events_is_false() -> None:
    condition = parse("data.x eq '1'")
    for event in (None, [], "data", 3, [{"data": {"x": "1"}}]):
        assert condition.matches(event) is False


def test_ambiguous_case_insensitive_field_is_missing() -> None:
    assert parse("data.x eq '1'").matches({"data": {"X": "1", "x2": 0}}) is True
    assert parse("data.x eq '1'").matches({"data": {"X": "1", "x": "2"}}) is False  # exact key wins
    assert parse("data.y eq '1'").matches({"data": {"Y": "1", "yY": 0, "y_": 0, "YY": 1}}) is True
    assert parse("data.yy eq 1").matches({"data": {"YY": 1, "yY": 1}}) is False  # two candidates


# ------------------------------------------------------------------------------------------- properties

NAMES = st.sampled_from(["data", "metadata", "x", "tostatusnode", "paths", "a_1", "_b", "Field9"])
LITERALS = st.builds(
    Literal,
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
)
FIELDS = st.builds(lambda parts: Field(tuple(parts)), st.lists(NAMES, min_size=1, max_size=3))
LEAVES = st.builds(
    Comparison, FIELDS, st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"]), LITERALS
) | st.builds(
    Has, FIELDS, st.sampled_from(["any", "all"]), st.lists(LITERALS, min_size=1, max_size=3).map(tuple)
)
CONDITIONS = st.recursive(
    LEAVES,
    lambda children: (
        st.builds(Not, children)
        | st.builds(And, st.lists(children, min_size=2, max_size=3).map(tuple))
        | st.builds(Or, st.lists(children, min_size=2, max_size=3).map(tuple))
    ),
    max_leaves=12,
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["1234", "-1.5", "1e3", "x"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(NAMES | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)
# Fewer examples under mutation testing (mutmut sets MUTANT_UNDER_TEST), where these run once per mutant.
FAST = settings(max_examples=30 if "MUTANT_UNDER_TEST" in os.environ else 200, deadline=None)


def test_generated_names_are_not_keywords() -> None:
    assert not {"data", "metadata", "x", "tostatusnode", "paths", "a_1", "_b", "field9"} & KEYWORDS


@FAST
@given(CONDITIONS)
def test_round_trip_over_generated_trees(condition: Condition) -> None:
    text = str(condition)
    assert parse(text) == condition
    assert str(parse(text)) == text


@FAST
@given(CONDITIONS, JSON)
def test_matches_is_total_on_arbitrary_json(condition: Condition, event: Any) -> None:
    result = condition.matches(event)
    assert isinstance(result, bool)
    assert Not(condition).matches(event) is (not result)
    wrapped = {"data": event, "metadata": event}
    assert isinstance(condition.matches(wrapped), bool)


@FAST
@given(st.text(alphabet="ab .'()[],=<>!-1e\t", max_size=30))
def test_parse_only_ever_raises_condition_syntax_errors(text: str) -> None:
    try:
        condition = parse(text, strict=False)
    except ConditionSyntaxError as error:
        assert 0 <= error.position <= len(text)
    else:
        assert parse(str(condition)) == condition


# ------------------------------------------------------------------------ boundaries and rarely seen paths


@pytest.mark.parametrize(
    ("op", "vs_4", "vs_5", "vs_6"),
    [
        # ``data.count`` is 5: each operator against 4, 5 and 6 pins down strict versus inclusive.
        ("gt", True, False, False),
        ("ge", True, True, False),
        ("lt", False, False, True),
        ("le", False, True, True),
    ],
)
def test_ordering_operators_at_their_boundary(op: str, vs_4: bool, vs_5: bool, vs_6: bool) -> None:
    for value, expected in ((4, vs_4), (5, vs_5), (6, vs_6)):
        assert parse(f"data.count {op} {value}").matches(EVENT) is expected, (op, value)
        # The same through the number-as-string rule (ids arrive as strings) and between two strings.
        assert parse(f"data.entityId {op} {value - 4}").matches(EVENT) is expected, (op, value)
        assert parse(f"data.date {op} '2024-02-1{value - 1}'").matches(EVENT) is expected, (op, value)


@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le"])
def test_ordering_against_null_or_a_boolean_is_false(op: str) -> None:
    assert parse(f"data.note {op} null").matches(EVENT) is False
    assert parse(f"data.count {op} null").matches(EVENT) is False
    assert parse(f"data.active {op} true").matches(EVENT) is False
    assert parse(f"data.active {op} false").matches(EVENT) is False


def test_a_string_that_is_not_a_number_never_equals_or_differs_from_a_number() -> None:
    event = {"data": {"name": "abc", "count": 5}}
    assert parse("data.name ne 5").matches(event) is False
    assert parse("data.name eq 5").matches(event) is False
    assert parse("data.count ne 'abc'").matches(event) is False
    assert parse("data.count eq 'abc'").matches(event) is False
    assert parse("data.count ne '6'").matches(event) is True


def test_a_path_through_a_non_object_is_missing_even_for_eq_null() -> None:
    assert parse("data.x eq null").matches({"data": "a string"}) is False
    assert parse("data.x eq null").matches({"data": [None]}) is False
    assert parse("x eq null").matches(None) is False
    assert parse("data.x eq null").matches({"data": {"x": None}}) is True


def test_not_negates_on_the_same_event() -> None:
    assert parse("not data.count eq 5").matches(EVENT) is False
    assert parse("not data.count eq 6").matches(EVENT) is True


def test_nested_not_prints_without_parentheses() -> None:
    a = cmp("a", "eq", 1)
    assert str(Not(Not(a))) == "not not a eq 1"
    assert canonical("not (not a eq 1)") == "not not a eq 1"
    assert str(Not(And((a, a)))) == "not (a eq 1 and a eq 1)"


def test_canonical_is_strict_by_default() -> None:
    with pytest.raises(ConditionSyntaxError, match="leading space"):
        canonical(" a eq 1")
    assert canonical(" a eq 1", strict=False) == "a eq 1"


def test_literal_hash_agrees_with_equality() -> None:
    assert hash(Literal(1)) == hash(Literal(1))
    assert {Literal(1), Literal(1), Literal(1.0), Literal(True), Literal("1")} == {
        Literal(1),
        Literal(1.0),
        Literal(True),
        Literal("1"),
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [("a eq 1E-5", 1e-05), ("a eq 1e+2", 100.0), ("a eq -0.5", -0.5), ("a eq 2E3", 2000.0)],
)
def test_number_exponents_in_either_case(text: str, value: float) -> None:
    assert parse(text) == cmp("a", "eq", value)


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("data.x eq 0X1F", 10, "invalid number '0X1F'"),
        ("data.x eq 0X1F-1", 10, "invalid number '0X1F'"),
        ("data.x eq 1-2", 11, "expected 'and', 'or' or the end of the condition, found '-2'"),
        ("(data.x eq '1']", 14, "expected ')' to close the '(' at 0, found ']'"),
        ("[data.x eq '1']", 0, "expected a field (like data.tostatusnode), 'not' or '(', found '['"),
        ("data.x hasanyof ['a']", 7, "unknown operator 'hasanyof': did you mean 'has'?"),
        ("data.x has any of ('a')", 18, "expected '[' to start the list after 'has any of', found '('"),
        (
            "data.x has any of [,'a']",
            19,
            "expected a value ('quoted string', number, true, false or null), found ','",
        ),
        ("data.x has any of ['a')", 22, "expected ',' or ']' in the list, found ')'"),
        # What is left after a complete condition: only ')' is an unmatched parenthesis, only the four
        # C-style junctions get 'and'/'or' suggested, only a word close to a keyword is taken for one.
        ("data.x eq '1', data.y eq '2'", 13, "expected 'and', 'or' or the end of the condition, found ','"),
        ("data.x eq '1']", 13, "expected 'and', 'or' or the end of the condition, found ']'"),
        ("data.x eq '1' == 2", 14, "expected 'and', 'or' or the end of the condition, found '=='"),
        (
            "data.x eq '1' &&& data.y eq '2'",
            14,
            "expected 'and', 'or' or the end of the condition, found '&&&'",
        ),
        ("data.x eq '1' & data.y eq '2'", 14, "unknown operator '&': did you mean 'and'?"),
        ("data.x eq '1' || data.y eq '2'", 14, "unknown operator '||': did you mean 'or'?"),
        ("data.x eq '1' | data.y eq '2'", 14, "unknown operator '|': did you mean 'or'?"),
        ("data.x eq '1' orr data.y eq '2'", 14, "unknown keyword 'orr': did you mean 'or'?"),
        ("data.x eq '1' AN data.y eq '2'", 14, "unknown keyword 'AN': did you mean 'and'?"),
        (
            "data.x eq '1' 'or' data.y eq '2'",
            14,
            "expected 'and', 'or' or the end of the condition, found \"'or'\"",
        ),
        # A '-' ends a number unless it follows the exponent's 'e' or 'E' (an 'X' is no exponent).
        ("data.x eq 0X-1", 10, "invalid number '0X'"),
        ("data.x eq 1E-1-1", 14, "expected 'and', 'or' or the end of the condition, found '-1'"),
        # A path ending in '.', or with a part starting with a digit.
        ("data.", 5, "expected a field name after '.'"),
        ("data.x eq '1' and data.", 23, "expected a field name after '.'"),
        ("data.1 eq '1'", 5, "expected a field name after '.'"),
        ("data.x.2nd eq '1'", 7, "expected a field name after '.'"),
        # A symbol ends where the next word starts; a '-' that starts no number is no operator.
        ("data.x==X", 6, "unknown operator '==': did you mean 'eq'?"),
        ("data.x eq - 1", 10, "unexpected character '-'"),
        # Whitespace other than a space is named, with its position.
        ("data.x eq '1'\rand data.y eq '2'", 13, "line break at 13: use a single space between words"),
        (
            "data.x eq '1'\u00a0and data.y eq '2'",
            13,
            "whitespace character '\\xa0' at 13: use a single space between words",
        ),
        ("data.x eq '1' \tand data.y eq '2'", 14, "tab at 14: use a single space between words"),
    ],
)
def test_more_syntax_errors(text: str, position: int, reason: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse(text)
    assert (info.value.position, info.value.reason) == (position, reason)


def test_a_number_with_more_digits_than_python_converts_is_a_syntax_error() -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse("data.x eq " + "9" * 5000)
    assert info.value.position == 10
    assert info.value.reason == f"number {'9' * 20}... has too many digits"


def test_nesting_depth_counts_open_levels_only() -> None:
    # Each '(' holding a comparison before the next '(' is one level; closed levels do not add up.
    nested = "(a eq 1 and " * 63 + "a eq 1" + ")" * 63
    assert canonical(nested).count("(") == 62  # all but the outermost pair are needed
    with pytest.raises(ConditionSyntaxError) as info:
        parse("(a eq 1 and " * 64 + "a eq 1" + ")" * 64)
    assert (info.value.position, info.value.reason) == (
        757,
        "condition nested too deeply (more than 64 levels)",
    )
    # Many operands side by side are no nesting at all.
    flat = " and ".join(f"a eq {n}" for n in range(200))
    assert len(parse(flat).operands) == 200  # type: ignore[attr-defined]
    assert len(parse(" or ".join(["not (a eq 1 or b eq 2)"] * 100)).operands) == 100  # type: ignore[attr-defined]


def test_a_number_against_null_an_object_or_a_list_is_false_for_every_operator() -> None:
    event = {"data": {"note": None, "touser": {"id": 5}, "ids": [5], "count": 5}}
    for field in ("note", "touser", "ids"):
        for op in ("eq", "ne", "gt", "ge", "lt", "le"):
            assert parse(f"data.{field} {op} 5").matches(event) is False, (field, op)
            assert parse(f"data.{field} {op} '5'").matches(event) is False, (field, op)
    assert parse("data.count eq 5").matches(event) is True


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (
            lambda: Has(Field(("a",)), "some", (Literal(1),)),
            ValueError,
            "quantifier must be 'any' or 'all', not 'some'",
        ),
        (lambda: Has(Field(("a",)), "any", ()), ValueError, "a 'has' list needs at least one value"),
        (lambda: And((cmp("a", "eq", 1),)), ValueError, "'and' needs at least two operands"),
        (lambda: Or(()), ValueError, "'or' needs at least two operands"),
        (lambda: Comparison(Field(("a",)), "==", Literal(1)), ValueError, "unknown operator '=='"),
        (lambda: Field(()), ValueError, "invalid field path ()"),
        (lambda: Field(("a", "1b")), ValueError, "invalid field path ('a', '1b')"),
        (lambda: Field(("a", "b-c")), ValueError, "invalid field path ('a', 'b-c')"),
        (lambda: Field(("Not", "x")), ValueError, "a field path cannot start with the keyword 'Not'"),
        (lambda: Literal([1]), TypeError, "a literal is a string, number, boolean or None, not list"),  # type: ignore[arg-type]
        (lambda: Literal(float("inf")), ValueError, "a number literal must be finite"),
        (lambda: Literal(float("nan")), ValueError, "a number literal must be finite"),
    ],
)
def test_conditions_built_by_hand_are_checked_with_a_clear_error(
    build: Any, error: type, message: str
) -> None:
    with pytest.raises(error) as info:
        build()
    assert str(info.value) == message


def test_names_start_with_any_letter_and_may_hold_digits() -> None:
    assert parse("Xid eq 'X' or data.X eq -1 or X1.x2 eq 2") == Or(
        (cmp("Xid", "eq", "X"), cmp("data.X", "eq", -1), cmp("X1.x2", "eq", 2))
    )
