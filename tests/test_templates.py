"""Templates: resolving paths, rendering values, static checks."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.language.templates import (
    MISSING,
    TemplateError,
    render,
    resolve,
    template_paths,
    template_problems,
)
from runtime.model.errors import Problem

SCOPE: dict[str, Any] = {
    "input": {
        "hosts": [{"name": "web-1", "port": 80}, {"name": "web-2", "port": 8080}],
        "count": 3,
        "ratio": 0.5,
        "whole": 3.0,
        "enabled": True,
        "disabled": False,
        "nothing": None,
        "name": "prod",
        "tags": ["a", "b"],
        "meta": {"team": "ops", "tier": 1},
        "empty": "",
        "0": "zero-key",
        "text": "${input.name}",
    },
    "context": {"tenantId": "t-1", "userId": "alice", "legalBasis": None},
    "executionId": "ex-42",
    "stepId": "deploy",
    "tenantId": "t-1",
    "execution": {"id": "ex-42"},
    "analyze": {"riskScore": 7, "findings": []},
    "build.v2": {"url": "https://b/2"},
    "item": {"host": "db-1"},
    "index": 0,
}


# --- resolve --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("executionId", "ex-42"),
        ("input.count", 3),
        ("input.hosts.0.name", "web-1"),
        ("input.hosts.1.port", 8080),
        ("input.hosts.1", {"name": "web-2", "port": 8080}),
        ("input.nothing", None),
        ("input.0", "zero-key"),
        ("analyze.riskScore", 7),
        ("analyze.findings", []),
        ("context.userId", "alice"),
        ("context.legalBasis", None),
        ("item.host", "db-1"),
        ("index", 0),
        ("build.v2.url", "https://b/2"),
        ("build.v2", {"url": "https://b/2"}),
    ],
)
def test_resolve_finds_the_value(path: str, expected: Any) -> None:
    assert resolve(SCOPE, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "nope",
        "input.nope",
        "input.hosts.2",
        "input.hosts.-1",
        "input.hosts.name",
        "input.hosts.0.name.first",
        "input.count.x",
        "input.name.0",
        "input..count",
        "input.",
        ".input",
        "",
        "analyze.riskScore.0",
    ],
)
def test_resolve_misses_return_missing(path: str) -> None:
    assert resolve(SCOPE, path) is MISSING


def test_resolve_distinguishes_null_from_missing() -> None:
    assert resolve(SCOPE, "input.nothing") is None
    assert resolve(SCOPE, "input.absent") is MISSING


def test_resolve_looks_dict_keys_up_as_strings() -> None:
    assert resolve({"d": {0: "int-key"}}, "d.0") is MISSING
    assert resolve({"d": {"0": "str-key"}}, "d.0") == "str-key"


def test_resolve_a_non_string_path_is_a_miss() -> None:
    assert resolve(SCOPE, 5) is MISSING  # type: ignore[arg-type]


def test_missing_is_a_singleton() -> None:
    assert copy.deepcopy(MISSING) is MISSING
    assert repr(MISSING) == "MISSING"


# --- render: typed whole-value substitution -------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${input.hosts}", SCOPE["input"]["hosts"]),
        ("${input.count}", 3),
        ("${input.ratio}", 0.5),
        ("${input.enabled}", True),
        ("${input.disabled}", False),
        ("${input.nothing}", None),
        ("${input.meta}", {"team": "ops", "tier": 1}),
        ("${input.tags}", ["a", "b"]),
        ("${input.empty}", ""),
        ("${ input.count }", 3),
        ("${\tinput.tags\n}", ["a", "b"]),
        ("${input.hosts.0.port}", 80),
        ("${analyze.findings}", []),
        ("${index}", 0),
    ],
)
def test_whole_template_keeps_the_type(template: str, expected: Any) -> None:
    result = render(template, SCOPE)
    assert result == expected
    assert type(result) is type(expected)


# --- render: interpolation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("env-${input.name}", "env-prod"),
        ("n=${input.count}", "n=3"),
        ("r=${input.ratio}", "r=0.5"),
        ("w=${input.whole}", "w=3.0"),
        ("on=${input.enabled}", "on=true"),
        ("off=${input.disabled}", "off=false"),
        ("x=${input.nothing}", "x=null"),
        ("tags=${input.tags}", 'tags=["a","b"]'),
        ("meta=${input.meta}", 'meta={"team":"ops","tier":1}'),
        ("host ${input.hosts.1.name}:${input.hosts.1.port}", "host web-2:8080"),
        ("${input.name}${input.count}", "prod3"),
        (" ${input.count}", " 3"),
        ("${input.count} ", "3 "),
        ("[${ input.name }]", "[prod]"),
        ("e=${input.empty}.", "e=."),
        ("no templates here", "no templates here"),
        ("", ""),
        ("{not a template}", "{not a template}"),
        ("unclosed ${input.name", "unclosed ${input.name"),
        ("$${input.name}", "$prod"),
        ("raw ${input.text}", "raw ${input.name}"),
    ],
)
def test_interpolation_as_text(template: str, expected: str) -> None:
    assert render(template, SCOPE) == expected


def test_interpolated_json_is_compact_and_parseable() -> None:
    text = render("${input.hosts} ", SCOPE)
    assert text == json.dumps(SCOPE["input"]["hosts"], separators=(",", ":")) + " "
    assert json.loads(text) == SCOPE["input"]["hosts"]


def test_whole_template_value_is_not_rendered_again() -> None:
    assert render("${input.text}", SCOPE) == "${input.name}"


# --- render: legacy bare forms --------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/runs/{executionId}", "/runs/ex-42"),
        ("{stepId}", "deploy"),
        ("tenant={tenantId}", "tenant=t-1"),
        ("{executionId}/{stepId}/{tenantId}", "ex-42/deploy/t-1"),
        ("{executionId}-${input.name}", "ex-42-prod"),
        ("${executionId}", "ex-42"),
        ("{userId}", "{userId}"),
        ("{ executionId }", "{ executionId }"),
        ("{{executionId}}", "{ex-42}"),
    ],
)
def test_legacy_bare_forms(template: str, expected: str) -> None:
    assert render(template, SCOPE) == expected


def test_legacy_form_without_scope_key_is_left_untouched() -> None:
    assert render("/runs/{executionId}/{stepId}", {"stepId": "s"}) == "/runs/{executionId}/s"


# --- render: errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("${input.nope}", "input.nope"),
        ("url/${input.hosts.5.name}", "input.hosts.5.name"),
        ("${ missing.step }", "missing.step"),
        ("ok ${input.name} then ${input.hosts.-1}", "input.hosts.-1"),
        ("${}", ""),
    ],
)
def test_missing_path_raises_naming_the_path(template: str, path: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template, SCOPE)
    assert caught.value.path == path
    assert f"'{path}'" in caught.value.message
    assert "not found" in str(caught.value)


def test_missing_path_deep_inside_a_structure_raises() -> None:
    with pytest.raises(TemplateError, match=r"input\.absent"):
        render({"a": [{"b": "x"}, {"c": "${input.absent}"}]}, SCOPE)


def test_template_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(TemplateError("a.b", "template path 'a.b' not found")))
    assert (error.path, error.message, error.code) == (
        "a.b",
        "template path 'a.b' not found",
        "template",
    )


# --- render: structures ---------------------------------------------------------------


def test_nested_structures_are_rendered_and_input_not_mutated() -> None:
    config = {
        "url": "https://api/${input.name}/{executionId}",
        "hosts": "${input.hosts}",
        "body": {"count": "${input.count}", "list": ["${input.tags}", "x-${index}", 5, None]},
        "${input.name}": "keys are not rendered",
        "pair": ("${input.count}", "t"),
        "flag": True,
    }
    before = copy.deepcopy(config)
    result = render(config, SCOPE)
    assert result == {
        "url": "https://api/prod/ex-42",
        "hosts": SCOPE["input"]["hosts"],
        "body": {"count": 3, "list": [["a", "b"], "x-0", 5, None]},
        "${input.name}": "keys are not rendered",
        "pair": (3, "t"),
        "flag": True,
    }
    assert config == before
    assert result is not config
    assert result["body"] is not config["body"]


@pytest.mark.parametrize("value", [None, 5, 2.5, True, b"bytes", {1, 2}])
def test_non_string_scalars_pass_through(value: Any) -> None:
    assert render(value, SCOPE) == value


# --- template_problems ----------------------------------------------------------------


def test_template_problems_reports_every_problem_with_its_path() -> None:
    config = {
        "url": "https://x/${input.host",
        "ok": "${input.name} and ${ input.hosts.0.name } and {executionId}",
        "hosts": ["${a}", "${b}", "${a..b}", "${}"],
        "body": {"deep": ["fine", {"x": "${.lead} ${trail.} ${has space} ${a/b}"}]},
        "num": 5,
    }
    problems = template_problems(config, "steps[0].config")
    assert [p.path for p in problems] == [
        "steps[0].config.url",
        "steps[0].config.hosts[2]",
        "steps[0].config.hosts[3]",
        "steps[0].config.body.deep[1].x",
        "steps[0].config.body.deep[1].x",
        "steps[0].config.body.deep[1].x",
        "steps[0].config.body.deep[1].x",
    ]
    messages = [p.message for p in problems]
    assert "unclosed" in messages[0] and "${input.host" in messages[0]
    assert "${a..b}" in messages[1] and "empty segment" in messages[1]
    assert "empty template" in messages[2] and "${}" in messages[2]
    assert "${.lead}" in messages[3]
    assert "${trail.}" in messages[4]
    assert "${has space}" in messages[5]
    assert "${a/b}" in messages[6]
    assert all(isinstance(p, Problem) for p in problems)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "${input.x}",
        "${ input.x }",
        "${step-1.out_2.0}",
        "{executionId} $x {x} $ {",
        ["${a.b}", {"c": "${d}"}],
        {"${bad key": "keys are not checked"},
        42,
        None,
    ],
)
def test_template_problems_accepts_valid_values(value: Any) -> None:
    assert template_problems(value, "$") == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${", "unclosed"),
        ("a ${x} b ${y", "unclosed"),
        ("${  }", "empty template"),
        ("${a..b}", "empty segment"),
        ("${.a}", "empty segment"),
        ("${a.}", "empty segment"),
        ("${a b}", "letters, digits"),
        ("${a${b}}", "letters, digits"),
        ("${é}", "letters, digits"),
    ],
)
def test_template_problems_flags_bad_templates(text: str, fragment: str) -> None:
    problems = template_problems({"v": text}, "doc")
    assert len(problems) == 1
    assert problems[0].path == "doc.v"
    assert fragment in problems[0].message


def test_template_problems_on_a_bare_string_uses_the_given_path() -> None:
    assert template_problems("${a..b}", "output") == [
        Problem("output", "bad template '${a..b}': the path has an empty segment")
    ]


# --- template_paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", []),
        ("${a.b}", ["a.b"]),
        ("${ a.b } and ${c}", ["a.b", "c"]),
        ({"x": "${a}", "y": ["${b}", {"z": "${c.0}"}], "${key}": 1}, ["a", "b", "c.0"]),
        (["${a}", "${a}"], ["a", "a"]),
        ("{executionId} ${} ${unclosed", []),
        (7, []),
    ],
)
def test_template_paths_in_order(value: Any, expected: list[str]) -> None:
    assert template_paths(value) == expected


# --- properties -----------------------------------------------------------------------


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    )
    return st.recursive(
        scalars | text,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=20,
    )


JSON = json_values(st.text())
JSON_WITHOUT_BRACES = json_values(st.text().filter(lambda s: "{" not in s))
SEGMENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True)


@given(value=JSON, key=SEGMENT)
def test_whole_template_returns_the_scope_value_unchanged(value: Any, key: str) -> None:
    scope = {"input": {key: value}}
    assert render(f"${{input.{key}}}", scope) == value
    assert render(f"${{ input.{key} }}", scope) == value


@given(value=JSON_WITHOUT_BRACES)
def test_render_without_templates_is_identity(value: Any) -> None:
    assert render(value, SCOPE) == value


@given(segments=st.lists(SEGMENT, min_size=1, max_size=5))
def test_well_formed_paths_have_no_problems(segments: list[str]) -> None:
    path = ".".join(segments)
    assert template_problems(f"x ${{{path}}} y", "p") == []
    assert template_paths(f"x ${{{path}}} y") == [path]


@given(value=JSON, prefix=st.text(alphabet="abc -:/", min_size=1, max_size=5))
def test_interpolated_value_text_round_trips(value: Any, prefix: str) -> None:
    text = render(prefix + "${input.v}", {"input": {"v": value}})
    assert text.startswith(prefix)
    rest = text[len(prefix) :]
    if isinstance(value, str):
        assert rest == value
    else:
        assert json.loads(rest) == value
