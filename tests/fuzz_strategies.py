"""Hypothesis strategies for hostile input: arbitrary JSON-ish values, runbook documents with
wrong types in every field, and runbooks close enough to valid that many are accepted.

Values include what broke the engine before: lone surrogates, NUL, huge and non-finite
numbers, keys JSON cannot have (in Python values), YAML-looking keys, template syntax in
every string, and nesting deep enough to hit the limits.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NASTY_TEXT = ["\ud800", "\udfff", "\x00", "a\x00b", "", " ", "\x1f", "\u2028", "é", "😀", "${input.x}", "${",
              "${nope.x}", "{executionId}", "on", "yes", "~", "null", "1e400", "validate", "-", "a" * 300,
              "../../etc", "%00", "role:x"]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**26, 1.5, -0.0, 1e300,
                 float("nan"), float("inf"), float("-inf")]

texts = st.one_of(st.text(max_size=20), st.sampled_from(NASTY_TEXT))
numbers = st.one_of(st.integers(), st.floats(), st.sampled_from(NASTY_NUMBERS),
                    st.builds(lambda: 10**5000))  # too many digits to write (built: no repr of it)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)


def json_values(*, python_keys: bool = False, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Arbitrary values; with ``python_keys``, mappings may have keys JSON cannot (ints, None,
    booleans, tuples), and values may be sets or bytes, as an embedding program could pass."""
    keys: st.SearchStrategy[Any] = texts
    leaves: st.SearchStrategy[Any] = scalars
    if python_keys:
        keys = st.one_of(texts, st.integers(), st.booleans(), st.none(), st.tuples(st.integers()))
        leaves = st.one_of(scalars, st.frozensets(st.integers(), max_size=2), st.binary(max_size=3))
    return st.recursive(leaves, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)), max_leaves=max_leaves)


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


anything = st.one_of(json_values(), st.sampled_from([deep(63), deep(65), deep(300)]))
STEP_TYPES = ["echo", "fail", "call-service", "wait-for-event", "human-approval", "conditional", "loop", "nope"]
IDS = ["a", "b", "c", "input", "A.b-c_d", "bad id", "", "x" * 129, "validate"]


def maybe(strategy: st.SearchStrategy[Any], value_of_wrong_type: st.SearchStrategy[Any] = anything,
          *, clean: bool = False) -> st.SearchStrategy[Any]:
    """Mostly the field's own kind of value, sometimes anything at all (never, when ``clean``)."""
    return strategy if clean else st.one_of(strategy, strategy, strategy, value_of_wrong_type)


def durations(clean: bool = False) -> st.SearchStrategy[Any]:
    good = st.integers(1, 200)
    return good if clean else maybe(st.one_of(good, st.sampled_from([0, -5, 31_536_000_000, 31_536_000_001, 10**26])))


GOOD_CONDITIONS = [
    {"field": "input.x", "operator": "eq", "value": 1}, {"field": "s0.ok", "operator": "exists"},
    {"field": "input.x", "operator": "in", "value": [1, "a", None]}, {"field": "input", "operator": "contains", "value": "x"},
    {"field": "input.x", "operator": "matches", "value": "^a+$"}, {"not": {"field": "input.y", "operator": "gt", "value": 2}},
    {"any": [{"field": "input.x", "operator": "lt", "value": 0}, {"field": "payload.status", "operator": "eq", "value": "done"}]},
]
CLEAN_TEXTS = st.one_of(st.text(alphabet=st.characters(blacklist_characters="${}\x00", blacklist_categories=("Cs",)),
                                max_size=10), st.sampled_from(["${input.x}", "plain", "${executionId}", "é 😀"]))


def conditions(clean: bool = False) -> st.SearchStrategy[Any]:
    good = st.sampled_from(GOOD_CONDITIONS)
    if clean:
        return good
    return maybe(st.one_of(good, st.fixed_dictionaries({
        "field": maybe(st.sampled_from(["input.x", "a.value", "input", "nope.x", "payload.status"])),
        "operator": maybe(st.sampled_from(["eq", "ne", "gt", "lt", "in", "contains", "exists", "matches", "bogus"])),
    }, optional={"value": anything})))


def retry_policies(clean: bool = False) -> st.SearchStrategy[Any]:
    fields = {"maxRetries": st.integers(0, 3), "initialDelayMs": st.integers(0, 50),
              "backoffMultiplier": st.sampled_from([1, 2, 10, 1.5]), "maxDelayMs": durations(True),
              "jitter": st.booleans()}
    if clean:
        return st.fixed_dictionaries({}, optional=fields)
    return st.fixed_dictionaries({}, optional={
        **{key: maybe(value) for key, value in fields.items()},
        "backoffMultiplier": maybe(st.sampled_from([1, 2, 10, 0.5, 11, 1e308])), "maxDelayMs": durations(),
        "extra": anything})


@st.composite
def configs(draw: st.DrawFn, step_type: str, later: list[str], clean: bool = False) -> dict[str, Any]:
    def m(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return maybe(strategy, clean=clean)

    text = CLEAN_TEXTS if clean else texts
    value = fz_values(clean)
    if step_type == "call-service":
        urls = ["/ok", "/fail", "/odd", "http://h.test/x", "${input.url}", "/ok?${input.x}"]
        config = {"url": draw(m(st.sampled_from(urls if clean else [*urls, "ftp://x"])))}
        optional = {"method": m(st.sampled_from(["GET", "POST"] if clean else ["GET", "POST", "TRACE"])),
                    "body": value, "timeoutMs": durations(clean),
                    "expectStatus": m(st.lists(st.integers(100, 599), min_size=1, max_size=2)),
                    "headers": m(st.dictionaries(st.sampled_from(["X-A", "X-B"]), text, max_size=2))}
    elif step_type == "wait-for-event":
        config = {"eventType": draw(m(st.sampled_from(["e", "ticket.closed"]))),
                  "correlationKey": draw(m(st.sampled_from(["k", "${input.x}"])))}
        optional = {"timeoutMs": durations(clean), "filter": conditions(clean)}
    elif step_type == "human-approval":
        config = {"approvers": draw(m(st.lists(st.sampled_from(["boss", "role:sre", "x"] if clean else
                                                               ["boss", "role:sre", ""]), min_size=1, max_size=3,
                                               unique=clean)))}
        optional = {"minApprovals": st.just(1) if clean else m(st.integers(1, 3)), "timeoutMs": durations(clean),
                    "timeoutAction": m(st.sampled_from(["fail", "approve", "reject"] if clean else
                                                       ["fail", "approve", "reject", "explode"]))}
    elif step_type == "conditional":
        config = {"condition": draw(conditions(clean))}
        targets = later or ["missing"]
        optional = {"trueBranch": m(st.sampled_from(targets)), "falseBranch": m(st.lists(st.sampled_from(targets),
                                                                                         max_size=2))}
    elif step_type == "loop":
        body = st.fixed_dictionaries({"type": st.sampled_from(["echo", "fail"] if clean else ["echo", "fail", "loop"])},
                                     optional={"config": st.dictionaries(st.sampled_from(["value", "raise"]),
                                                                         scalars if not clean else
                                                                         st.sampled_from(["no", "step", 1]), max_size=2),
                                               "timeoutMs": durations(clean)})
        config = {"items": draw(m(st.one_of(st.lists(st.integers(0, 9), max_size=4), st.just("${input.items}")))),
                  "step": draw(m(body))}
        optional = {"maxIterations": m(st.integers(1, 5)), "concurrency": m(st.integers(1, 3)),
                    "failFast": m(st.booleans())}
    else:
        config = {}
        optional = {"value": value, "raise": st.sampled_from(["no", "step", "crash", "set", "nan"])}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            config[key] = draw(strategy)
    return config


def fz_values(clean: bool) -> st.SearchStrategy[Any]:
    if not clean:
        return anything
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-1000, 10**30), st.floats(allow_nan=False,
                                                                                       allow_infinity=False), CLEAN_TEXTS)
    return st.recursive(leaves, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(CLEAN_TEXTS, c, max_size=3)),
                        max_leaves=8)


@st.composite
def runbooks(draw: st.DrawFn) -> dict[str, Any]:
    """Documents shaped like runbooks: half of them clean (most of those are accepted), the
    others with a wrong value in any field now and then."""
    clean = draw(st.booleans())
    # wrong values that are still plain JSON half the time, so the checks past the JSON one run
    junk = anything if draw(st.booleans()) else st.one_of(fz_values(True), st.sampled_from([{}, [], None, [{}]]))

    def m(strategy: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
        return maybe(strategy, junk if wrong is None else wrong, clean=clean)

    count = draw(st.integers(1, 5))
    ids = [f"s{i}" for i in range(count)]
    steps = []
    for index, step_id in enumerate(ids):
        step_type = draw(st.sampled_from(STEP_TYPES[:-1] if clean else STEP_TYPES))
        step: dict[str, Any] = {"id": draw(m(st.just(step_id), st.sampled_from(IDS))),
                                "type": draw(m(st.just(step_type)))}
        if step_type in ("call-service", "wait-for-event", "human-approval", "conditional", "loop") \
                or draw(st.booleans()):
            step["config"] = draw(m(configs(step_type, ids[index + 1:], clean)))
        if index and draw(st.booleans()):
            step["dependsOn"] = draw(m(st.lists(st.sampled_from(ids[:index] if clean else [*ids[:index], "ghost"]),
                                                max_size=2, unique=True),
                                       st.lists(st.sampled_from([*ids, {}, [], None, 1, "ghost"]), min_size=1,
                                                max_size=3)))
        for key, strategy in (("retryPolicy", retry_policies(clean)), ("timeoutMs", durations(clean)),
                              ("continueOnError", m(st.booleans())), ("when", conditions(clean)),
                              ("name", m(CLEAN_TEXTS if clean else texts))):
            if draw(st.integers(0, 3)) == 0:
                step[key] = draw(strategy)
        steps.append(step)
    document: dict[str, Any] = {"id": draw(m(st.just("fuzzed"), st.sampled_from(IDS))),
                                "steps": draw(m(st.just(steps)))}
    schemas = [{"type": "object"}, {"type": ["object", "array", "null", "string", "number", "boolean"]}]
    for key, strategy in (("timeoutMs", durations(clean)), ("maxConcurrentSteps", m(st.integers(1, 3))),
                          ("inputSchema", m(st.sampled_from(schemas if clean else
                                                            [*schemas, {"$ref": "#/nope"}, {"type": "bogus"}]))),
                          ("requireLegalBasis", m(st.booleans())), ("description", m(CLEAN_TEXTS if clean else texts)),
                          ("output", st.sampled_from(["${s0}", "x"]) if clean else junk),
                          ("unknown", junk)):
        if draw(st.integers(0, 3)) == 0 and not (clean and key == "unknown"):
            document[key] = draw(strategy)
    return document


def bodies_for(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A request body: its fields with good or wrong values, sometimes not an object at all."""
    return maybe(st.fixed_dictionaries({}, optional={**fields, "extra": anything}))


start_bodies = bodies_for({"runbookId": maybe(st.sampled_from(["fuzz-target", "ghost"])),
                           "version": maybe(st.sampled_from([1, 1.0, 2, 0, 2**40])), "input": anything,
                           "context": maybe(st.dictionaries(st.sampled_from(["legalBasis", "reason", "x"]),
                                                            anything, max_size=3))})
event_bodies = bodies_for({"type": maybe(st.sampled_from(["e", ""])), "correlationKey": maybe(texts),
                           "payload": anything})
approval_bodies = bodies_for({"decision": maybe(st.sampled_from(["approve", "reject", "maybe"])),
                              "comment": maybe(texts)})
control_bodies = bodies_for({"reason": maybe(texts)})


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` with what JSON cannot hold (or nesting past 12) replaced by None; the
    structure stays as wrong as it was."""
    from runtime.model.jsonsafe import first_problem

    if isinstance(value, dict | list) and depth > 12:
        return None
    if isinstance(value, dict):
        return {key: _plain(item, depth + 1) for key, item in value.items()
                if isinstance(key, str) and first_problem(key) is None}
    if isinstance(value, list):
        return [_plain(item, depth + 1) for item in value]
    return value if first_problem(value) is None else None


def plain_runbooks() -> st.SearchStrategy[dict[str, Any]]:
    """Runbook-shaped documents that are plain JSON, so every check past the JSON one runs."""
    return st.builds(_plain, runbooks())
