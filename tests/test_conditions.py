"""Conditions: evaluation and static checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.language.conditions import OPERATORS, PatternError, condition_problems, evaluate
from runtime.model.errors import Problem

SCOPE: dict[str, Any] = {
    "input": {
        "env": "prod",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "off": False,
        "zero": 0,
        "one": 1,
        "nothing": None,
        "tags": ["a", "b", 1, True],
        "nums": [1, 2],
        "bools": [True],
        "hosts": [{"name": "web-1"}, {"name": "web-2"}],
        "meta": {"team": "ops", "tier": 1},
        "limit": 5,
        "allowed": ["prod", "staging"],
        "version": "v1.2.3",
    },
    "analyze": {"riskScore": 7, "summary": "low risk, no findings"},
    "executionId": "ex-42",
    "tenantId": "t-1",
}


def cond(field: str, operator: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    condition = {"field": field, "operator": operator, **extra}
    if operator != "exists":
        condition["value"] = value
    return condition


# --- operators ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    [
        # eq / ne
        ("input.env", "eq", "prod", True),
        ("input.env", "eq", "dev", False),
        ("input.count", "eq", 3, True),
        ("input.count", "eq", 3.0, True),
        ("input.count", "eq", "3", False),
        ("input.nothing", "eq", None, True),
        ("input.tags", "eq", ["a", "b", 1, True], True),
        ("input.tags", "eq", ["a", "b", True, 1], False),
        ("input.meta", "eq", {"tier": 1, "team": "ops"}, True),
        ("input.meta", "eq", {"tier": True, "team": "ops"}, False),
        ("input.hosts.1.name", "eq", "web-2", True),
        ("input.env", "ne", "dev", True),
        ("input.env", "ne", "prod", False),
        ("input.nothing", "ne", None, False),
        ("input.nothing", "ne", 0, True),
        # bool is not a number
        ("input.flag", "eq", True, True),
        ("input.flag", "eq", 1, False),
        ("input.one", "eq", True, False),
        ("input.off", "eq", 0, False),
        ("input.zero", "eq", False, False),
        ("input.off", "eq", False, True),
        ("input.flag", "ne", 1, True),
        ("input.zero", "ne", False, True),
        # gt / gte / lt / lte
        ("analyze.riskScore", "gt", 5, True),
        ("analyze.riskScore", "gt", 7, False),
        ("analyze.riskScore", "gte", 7, True),
        ("analyze.riskScore", "gte", 7.5, False),
        ("analyze.riskScore", "lt", 7.5, True),
        ("analyze.riskScore", "lt", 7, False),
        ("analyze.riskScore", "lte", 7.0, True),
        ("analyze.riskScore", "lte", 6, False),
        ("input.ratio", "lt", 1, True),
        ("input.env", "gt", "dev", True),
        ("input.env", "lt", "dev", False),
        ("input.env", "gte", "prod", True),
        ("input.env", "lte", "proc", False),
        # in
        ("input.env", "in", ["prod", "staging"], True),
        ("input.env", "in", ["dev"], False),
        ("input.env", "in", "preprod-eu", True),
        ("input.env", "in", "staging", False),
        ("input.count", "in", [1, 2, 3], True),
        ("input.count", "in", [3.0], True),
        ("input.flag", "in", [1, 2], False),
        ("input.one", "in", [True], False),
        ("input.flag", "in", [True], True),
        ("input.count", "in", "123", False),
        ("input.env", "in", {"prod": 1}, False),
        ("input.env", "in", None, False),
        ("input.env", "in", [], False),
        # contains
        ("input.tags", "contains", "a", True),
        ("input.tags", "contains", "z", False),
        ("input.tags", "contains", 1, True),
        ("input.tags", "contains", True, True),
        ("input.nums", "contains", True, False),
        ("input.bools", "contains", 1, False),
        ("input.nums", "contains", 2.0, True),
        ("input.hosts", "contains", {"name": "web-1"}, True),
        ("input.hosts", "contains", {"name": "web-3"}, False),
        ("analyze.summary", "contains", "no findings", True),
        ("analyze.summary", "contains", "high", False),
        ("analyze.summary", "contains", 1, False),
        ("input.meta", "contains", "team", True),
        ("input.meta", "contains", "ops", False),
        ("input.meta", "contains", ["team"], False),
        ("input.count", "contains", 3, False),
        ("input.nothing", "contains", None, False),
        # matches
        ("input.version", "matches", r"^v\d+\.\d+\.\d+$", True),
        ("input.version", "matches", r"^\d", False),
        ("input.version", "matches", r"2\.3", True),
        ("input.version", "matches", "", True),
        ("input.count", "matches", "3", False),
    ],
)
def test_operator(field: str, operator: str, value: Any, expected: bool) -> None:
    assert evaluate(cond(field, operator, value), SCOPE) is expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("input.env", True),
        ("input.nothing", True),
        ("input.hosts.0", True),
        ("input.hosts.2", False),
        ("input.absent", False),
        ("missingStep.output", False),
        ("executionId", True),
    ],
)
def test_exists(field: str, expected: bool) -> None:
    assert evaluate(cond(field, "exists"), SCOPE) is expected


@pytest.mark.parametrize("operator", [o for o in OPERATORS if o != "exists"])
@pytest.mark.parametrize("value", [None, 0, "", "x", [], ["x"], {}, True])
def test_missing_field_is_false_for_every_operator_but_exists(operator: str, value: Any) -> None:
    assert evaluate(cond("input.absent", operator, value), SCOPE) is False
    assert evaluate({"not": cond("input.absent", operator, value)}, SCOPE) is True


@pytest.mark.parametrize("operator", ["gt", "gte", "lt", "lte"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input.env", 3),
        ("input.count", "3"),
        ("input.count", None),
        ("input.nothing", 0),
        ("input.nothing", None),
        ("input.meta", {"team": "ops"}),
        ("input.count", {"a": 1}),
        ("input.tags", ["a"]),
        ("input.count", [3]),
        ("input.flag", 0),
        ("input.one", True),
        ("input.flag", True),
        ("input.count", float("nan")),
    ],
)
def test_incomparable_types_are_false(operator: str, field: str, value: Any) -> None:
    assert evaluate(cond(field, operator, value), SCOPE) is False


@pytest.mark.parametrize("pattern", ["(", "[a-", "*x", r"(a)\1", "(?=a)", "a{1001}", 1, None, ["a"]])
def test_a_pattern_that_cannot_run_is_bad_pattern_at_run_time(pattern: Any) -> None:
    with pytest.raises(PatternError) as caught:
        evaluate(cond("input.version", "matches", pattern), SCOPE)
    assert caught.value.code == "bad_pattern"
    with pytest.raises(PatternError):  # rendered from the scope: the same
        evaluate(cond("input.version", "matches", "${input.re}"), {**SCOPE, "input": {"re": pattern, "version": "v"}})


CATASTROPHIC = "^(a+)+$"  # backtracking engines take time doubling per character on a's and a '!'


def test_a_catastrophic_pattern_runs_in_linear_time_written_or_templated() -> None:
    """The probe's pattern and text: Python's re took seconds (doubling per character); RE2 is
    linear, so even 100,000 characters are a blink. Bounded: the test fails by hanging, and a
    subprocess-free timer would not stop a C-level match, so the text is the bound."""
    text = "a" * 26 + "!"
    scope = {"input": {"re": CATASTROPHIC, "text": text}, "payload": {"re": CATASTROPHIC}}
    assert evaluate(cond("input.text", "matches", CATASTROPHIC), scope) is False
    assert evaluate(cond("input.text", "matches", "${input.re}"), scope) is False
    assert evaluate(cond("input.text", "matches", "${payload.re}"), scope) is False
    long_scope = {"input": {"text": "a" * 100_000 + "!"}}
    assert evaluate(cond("input.text", "matches", "(x+x+)+y|" + CATASTROPHIC), long_scope) is False


def test_value_templates_are_rendered() -> None:
    assert evaluate(cond("analyze.riskScore", "gt", "${input.limit}"), SCOPE) is True
    assert evaluate(cond("input.env", "in", "${input.allowed}"), SCOPE) is True
    assert evaluate(cond("input.env", "eq", "pr${input.nothing}"), SCOPE) is False
    assert evaluate(cond("input.env", "eq", "${ input.env }"), SCOPE) is True
    assert evaluate(cond("input.env", "in", ["${input.env}", "x"]), SCOPE) is True
    assert evaluate(cond("input.version", "matches", "^${input.version}$"), SCOPE) is True


@pytest.mark.parametrize("operator", [o for o in OPERATORS if o != "exists"])
def test_value_template_that_does_not_resolve_is_false(operator: str) -> None:
    condition = cond("input.env", operator, "${input.absent}")
    assert evaluate(condition, SCOPE) is False


def test_unknown_operator_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown condition operator 'approx'"):
        evaluate(cond("input.env", "approx", "x"), SCOPE)
    with pytest.raises(ValueError, match="unknown condition operator"):
        evaluate({"field": "input.absent"}, SCOPE)


def test_non_string_field_is_a_miss() -> None:
    assert evaluate({"field": 5, "operator": "exists"}, SCOPE) is False


# --- combinators ----------------------------------------------------------------------

TRUE = cond("input.env", "eq", "prod")
FALSE = cond("input.env", "eq", "dev")
MISS = cond("input.absent", "ne", "x")


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"all": []}, True),
        ({"any": []}, False),
        ({"all": [TRUE]}, True),
        ({"all": [TRUE, FALSE]}, False),
        ({"any": [FALSE, TRUE]}, True),
        ({"any": [FALSE, FALSE]}, False),
        ({"not": TRUE}, False),
        ({"not": FALSE}, True),
        ({"not": {"not": TRUE}}, True),
        ({"not": {"all": []}}, False),
        ({"not": {"any": []}}, True),
        ({"all": [TRUE, {"any": [FALSE, {"not": FALSE}]}]}, True),
        ({"all": [TRUE, {"any": [FALSE, {"not": TRUE}]}]}, False),
        ({"any": [MISS, {"all": [TRUE, {"not": MISS}]}]}, True),
        ({"any": [MISS]}, False),
    ],
)
def test_combinators(condition: dict[str, Any], expected: bool) -> None:
    assert evaluate(condition, SCOPE) is expected


def test_combinators_short_circuit() -> None:
    bad = cond("input.env", "approx", "x")
    assert evaluate({"any": [TRUE, bad]}, SCOPE) is True
    assert evaluate({"all": [FALSE, bad]}, SCOPE) is False


@pytest.mark.parametrize("condition", [{"all": TRUE}, {"any": "x"}, {"not": "x"}, {"not": [TRUE]}])
def test_malformed_combinators_raise_value_error(condition: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        evaluate(condition, SCOPE)


# --- condition_problems ---------------------------------------------------------------


@pytest.mark.parametrize(
    "condition",
    [
        TRUE,
        cond("input.x", "exists"),
        cond("a-b.c_d.0", "in", ["x"]),
        cond("a", "in", "abc"),
        cond("a", "in", "${input.list}"),
        cond("a", "matches", r"^v\d+$"),
        cond("a", "matches", "^${input.prefix}"),
        cond("a", "eq", None),
        cond("a", "gt", {"anything": "goes"}),
        {"all": []},
        {"any": [TRUE, {"not": FALSE}]},
        {"not": {"all": [TRUE]}},
    ],
)
def test_valid_conditions_have_no_problems(condition: Any) -> None:
    assert condition_problems(condition, "when") == []


@pytest.mark.parametrize(
    ("condition", "path", "fragment"),
    [
        ("input.x", "when", "must be a mapping"),
        (None, "when", "must be a mapping"),
        ([TRUE], "when", "must be a mapping"),
        ({}, "when", "exactly one of all, any, not"),
        ({"and": [TRUE]}, "when", "exactly one of all, any, not"),
        ({"all": [], "any": []}, "when", "exactly one of all, any, not"),
        ({"not": TRUE, **TRUE}, "when", "exactly one of all, any, not"),
        ({"all": TRUE}, "when.all", "must be a list"),
        ({"any": "x"}, "when.any", "must be a list"),
        ({"not": 5}, "when.not", "must be a mapping"),
        ({"operator": "eq", "value": 1}, "when.field", "missing field"),
        ({"field": "a", "value": 1}, "when.operator", "missing operator"),
        (cond("a", "approx", 1), "when.operator", "unknown operator 'approx'"),
        (
            cond("a", "approx", 1),
            "when.operator",
            "eq, ne, gt, gte, lt, lte, in, contains, exists, matches",
        ),
        ({"field": "a", "operator": ["eq"], "value": 1}, "when.operator", "unknown operator"),
        (cond("", "eq", 1), "when.field", "non-empty string"),
        (cond(5, "eq", 1), "when.field", "non-empty string"),  # type: ignore[arg-type]
        (cond("a..b", "eq", 1), "when.field", "empty segment"),
        (cond("a b", "eq", 1), "when.field", "letters, digits"),
        (cond("${input.x}", "eq", 1), "when.field", "not a ${...} template"),
        ({"field": "a", "operator": "eq"}, "when.value", "needs a value"),
        ({"field": "a", "operator": "matches"}, "when.value", "needs a value"),
        (cond("a", "in", 5), "when.value", "list or a string"),
        (cond("a", "in", {"k": 1}), "when.value", "list or a string"),
        (cond("a", "in", None), "when.value", "list or a string"),
        (cond("a", "matches", "("), "when.value", "missing ): ("),
        (cond("a", "matches", "a{1001}"), "when.value", "invalid repetition size"),
        (cond("a", "matches", r"(a)\1"), "when.value", "invalid escape sequence"),
        (cond("a", "matches", "(?<=a)b"), "when.value", "invalid perl operator"),
        (cond("a", "matches", 5), "when.value", "regular expression string"),
        (cond("a", "eq", "${a..b}"), "when.value", "${a..b}"),
        (cond("a", "eq", "x ${unclosed"), "when.value", "unclosed"),
        (cond("a", "in", ["ok", "${}"]), "when.value[1]", "empty template"),
    ],
)
def test_condition_problem(condition: Any, path: str, fragment: str) -> None:
    problems = condition_problems(condition, "when")
    assert any(p.path == path and fragment in p.message for p in problems), problems


def test_condition_problems_reports_every_problem_at_once() -> None:
    condition = {
        "all": [
            TRUE,
            {"field": "a", "operator": "approx", "value": 1},
            {"any": [{"field": "a..b", "operator": "matches", "value": "(["}, "oops"]},
            {"not": {"operator": "in", "value": 5}},
            {"field": "x", "operator": "gt"},
            {"field": "x", "operator": "eq", "value": {"deep": ["${bad path}"]}},
        ]
    }
    problems = condition_problems(condition, "steps[3].when")
    assert [p.path for p in problems] == [
        "steps[3].when.all[1].operator",
        "steps[3].when.all[2].any[0].field",
        "steps[3].when.all[2].any[0].value",
        "steps[3].when.all[2].any[1]",
        "steps[3].when.all[3].not.field",
        "steps[3].when.all[3].not.value",
        "steps[3].when.all[4].value",
        "steps[3].when.all[5].value.deep[0]",
    ]
    assert all(isinstance(p, Problem) and p.message for p in problems)


def test_problem_messages_are_specific() -> None:
    assert condition_problems(cond("a", "matches", "("), "c") == [
        Problem(
            "c.value",
            "bad regular expression '(': missing ): (",
        )
    ]
    assert condition_problems({"field": "a", "operator": "gt"}, "c") == [
        Problem("c.value", "operator 'gt' needs a value")
    ]


def test_every_operator_is_accepted_by_validation() -> None:
    for operator in OPERATORS:
        assert condition_problems(cond("input.x", operator, "v"), "c") == [], operator


# --- properties -----------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(["${input.f}", "${input.nope}", "x${input.f}", "(", "[a-", "${"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=16,
)


@given(actual=JSON, expected=JSON, operator=st.sampled_from(OPERATORS))
def test_evaluate_never_raises_for_known_operators(
    actual: Any, expected: Any, operator: str
) -> None:
    scope = {"input": {"f": actual}}
    try:
        result = evaluate({"field": "input.f", "operator": operator, "value": expected}, scope)
    except PatternError:  # the one refusal: a pattern RE2 cannot run, or not a string
        assert operator == "matches"
    else:
        assert isinstance(result, bool)
    missing = evaluate({"field": "input.g", "operator": operator, "value": expected}, scope)
    assert missing is False


@given(actual=JSON, expected=JSON)
def test_ne_is_the_negation_of_eq_and_eq_is_symmetric(actual: Any, expected: Any) -> None:
    scope = {"input": {"a": actual, "b": expected}}
    eq = evaluate({"field": "input.a", "operator": "eq", "value": expected}, scope)
    ne = evaluate({"field": "input.a", "operator": "ne", "value": expected}, scope)
    if _plain(expected):
        assert ne is (not eq)
    if _plain(expected) and _plain(actual):
        assert evaluate({"field": "input.b", "operator": "eq", "value": actual}, scope) is eq


@given(value=JSON)
def test_a_present_value_exists_and_equals_itself(value: Any) -> None:
    scope = {"input": {"v": value}}
    assert evaluate({"field": "input.v", "operator": "exists"}, scope) is True
    if _plain(value) and not _has_nan(value):
        assert evaluate({"field": "input.v", "operator": "eq", "value": value}, scope) is True


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _plain(value: Any) -> bool:
    """No string in ``value`` holds a template (those values would be rendered first)."""
    return not any(isinstance(leaf, str) and "${" in leaf for leaf in _leaves(value))


def _has_nan(value: Any) -> bool:
    return any(isinstance(leaf, float) and leaf != leaf for leaf in _leaves(value))
