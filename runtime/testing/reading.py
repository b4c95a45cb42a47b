"""Reading a runbook test file into ``spec`` values, with every problem at its path.

``Reader`` checks the file's shape and its references to the runbook (``StepInfo`` of each
step: replies only for steps that make calls, of the right protocol; approvals only on
approval steps; expectations on steps that exist). It never stops at the first problem:
``Reader.problems`` lists them all, and a file with any is not run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from runtime.model import ExecutionStatus, StepStatus
from runtime.model.errors import Problem
from runtime.security.secrets import NAME as SECRET_NAME
from runtime.testing.spec import (
    DEFAULT_BASE_URL,
    DEFAULT_UNTIL_MS,
    REFUSED,
    ApprovalAt,
    Case,
    Delivery,
    EventAt,
    Expect,
    Reply,
    StepExpect,
    StepReplies,
)

FILE_FIELDS: Final = ("runbook", "baseUrl", "secrets", "cases")
CASE_FIELDS: Final = ("name", "input", "context", "replies", "events", "approvals", "expect", "untilMs")
PLAN_FIELDS: Final = ("baseUrl", "secrets", "context", "replies", "events", "approvals")
EXPECT_FIELDS: Final = ("status", "steps", "outputs", "calls", "audit", "error")
REPLY_FIELDS: Final = {"http": ("status", "body", "headers", "error", "match", "delayMs"),
                       "grpc": ("code", "message", "match", "delayMs")}
REQUEST_FIELDS: Final = {"http": ("method", "url", "query", "headers", "body"),
                         "grpc": ("target", "service", "method", "message", "metadata")}
GRPC_CODES: Final = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                     "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                     "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                     "UNAUTHENTICATED")
HTTP_ERRORS: Final = ("connection", "timeout")
SCOPE_ROOTS: Final = ("input", "context", "execution")
MAX_MS: Final = 10 * 366 * 24 * 3600 * 1000
EXECUTION_STATUSES: Final = (*(s.value for s in ExecutionStatus), REFUSED)
STEP_STATUSES: Final = tuple(s.value for s in StepStatus)


@attrs.frozen
class StepInfo:
    """What a test file may say about a step: its type, and what its calls speak."""

    type: str
    calls: str | None  # "http", "grpc", or None: it makes no outbound call


class Reader:
    def __init__(self, steps: Mapping[str, StepInfo]) -> None:
        self.steps = steps
        self.problems: list[Problem] = []

    # ------------------------------------------------------------------ the file
    def file(self, data: Any) -> tuple[str, dict[str, str], tuple[Case, ...]]:
        """``(baseUrl, secrets, cases)``; check ``problems`` before using them."""
        if not isinstance(data, Mapping):
            self._fail("$", "a test file must be a mapping with 'cases'")
            return DEFAULT_BASE_URL, {}, ()
        self._fields(data, FILE_FIELDS, "", required=("cases",))
        base_url = self._base_url(data.get("baseUrl", DEFAULT_BASE_URL))
        return base_url, self._secrets(data.get("secrets", {})), self._cases(data.get("cases"))

    def _base_url(self, value: Any) -> str:
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            self._fail("baseUrl", "must be an absolute http(s) URL")
        return str(value)

    def _secrets(self, raw: Any) -> dict[str, str]:
        found = self._string_map(raw, "secrets")
        for name, value in found.items():
            if not SECRET_NAME.match(name) or not value:
                self._fail(f"secrets.{name}", "a secret needs a name of letters, digits, '_' and '-', and a value")
        return found

    def _cases(self, raw: Any) -> tuple[Case, ...]:
        if not isinstance(raw, list) or not raw:
            self._fail("cases", "must be a non-empty list of cases")
            return ()
        cases: list[Case] = []
        names: dict[str, int] = {}
        for index, item in enumerate(raw):
            case = self._case(item, f"cases[{index}]")
            if case.name in names:
                self._fail(f"cases[{index}].name", f"'{case.name}' is also the name of cases[{names[case.name]}]")
            names.setdefault(case.name, index)
            cases.append(case)
        return tuple(cases)

    def plan_file(self, data: Any, input: Any) -> tuple[str, dict[str, str], Case]:
        """A ``plan --replies`` file (``PLAN_FIELDS``) as a case without expectations."""
        if not isinstance(data, Mapping):
            self._fail("$", f"a replies file must be a mapping of some of {', '.join(PLAN_FIELDS)}")
            data = {}
        self._fields(data, PLAN_FIELDS, "")
        base_url = self._base_url(data.get("baseUrl", DEFAULT_BASE_URL))
        return base_url, self._secrets(data.get("secrets", {})), Case("plan", input, **self._setup(data, ""))

    # ------------------------------------------------------------------ a case
    def _case(self, raw: Any, path: str) -> Case:
        if not isinstance(raw, Mapping):
            self._fail(path, "must be a mapping with name and expect")
            return Case(name=path)
        self._fields(raw, CASE_FIELDS, path, required=("name", "expect"))
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            self._fail(f"{path}.name", "must be a non-empty string")
        setup = self._setup(raw, path)
        return Case(name=str(name) if isinstance(name, str) else path, input=raw.get("input", {}),
                    expect=self._expect(raw.get("expect"), f"{path}.expect"),
                    until_ms=self._ms(raw.get("untilMs", DEFAULT_UNTIL_MS), f"{path}.untilMs", 1), **setup)

    def _setup(self, raw: Mapping[str, Any], path: str) -> dict[str, Any]:
        """What a case gives the run: its context, replies, events and approvals."""
        context = raw.get("context", {})
        if not isinstance(context, Mapping):
            self._fail(_join(path, "context"), "must be a mapping")
        replies = self._replies(raw.get("replies", {}), _join(path, "replies"))
        deliveries: list[Delivery] = [*self._events(raw.get("events", []), _join(path, "events")),
                                      *self._approvals(raw.get("approvals", []), _join(path, "approvals"))]
        return {"context": dict(context) if isinstance(context, Mapping) else {}, "replies": replies,
                "deliveries": tuple(sorted(deliveries, key=lambda d: d.at_ms))}

    def _replies(self, raw: Any, path: str) -> dict[str, StepReplies]:
        found: dict[str, StepReplies] = {}
        for key, value in self._mapping(raw, path).items():
            kind = self._calling(str(key), f"{path}.{key}")
            if kind is None:
                continue
            if isinstance(value, list):
                if not value:
                    self._fail(f"{path}.{key}", "an empty list answers nothing: give one reply or more")
                entries = tuple(self._reply(v, f"{path}.{key}[{i}]", kind) for i, v in enumerate(value))
                found[str(key)] = StepReplies(entries, reusable=False)
            else:
                found[str(key)] = StepReplies((self._reply(value, f"{path}.{key}", kind),), reusable=True)
        return found

    def _reply(self, raw: Any, path: str, kind: str) -> Reply:
        if not isinstance(raw, Mapping):
            self._fail(path, f"must be a mapping ({', '.join(REPLY_FIELDS[kind])})")
            return Reply(kind)
        self._fields(raw, REPLY_FIELDS[kind], path)
        match = self._request(raw["match"], f"{path}.match", kind) if "match" in raw else None
        delay = self._ms(raw.get("delayMs", 0), f"{path}.delayMs", 0)
        if kind == "grpc":
            code = raw.get("code", "OK")
            if code not in GRPC_CODES:
                self._fail(f"{path}.code", f"must be a gRPC status name: {', '.join(GRPC_CODES)}")
            return Reply("grpc", code=str(code), message=raw.get("message"), match=match, delay_ms=delay)
        error = raw.get("error")
        if error is not None and error not in HTTP_ERRORS:
            self._fail(f"{path}.error", f"must be one of {', '.join(HTTP_ERRORS)}")
        return Reply("http", status=self._int(raw.get("status", 200), f"{path}.status", 100, 599),
                     body=raw.get("body"), headers=self._string_map(raw.get("headers", {}), f"{path}.headers"),
                     error=error, match=match, delay_ms=delay)

    def _request(self, raw: Any, path: str, kind: str) -> dict[str, Any]:
        """What a reply's ``match`` or an expected call says of a request."""
        if not isinstance(raw, Mapping) or not raw:
            self._fail(path, f"must be a mapping of some of {', '.join(REQUEST_FIELDS[kind])}")
            return {}
        self._fields(raw, REQUEST_FIELDS[kind], path)
        for field in ("url", "method", "target", "service"):
            if field in raw and not isinstance(raw[field], str):
                self._fail(f"{path}.{field}", "must be a string")
        for field in ("query", "headers", "metadata"):
            if field in raw:
                self._mapping(raw[field], f"{path}.{field}")
        return dict(raw)

    def _events(self, raw: Any, path: str) -> list[EventAt]:
        events = []
        for index, item in enumerate(self._list(raw, path)):
            where = f"{path}[{index}]"
            event = self._mapping(item, where)
            self._fields(event, ("atMs", "type", "key", "payload"), where, required=("type", "key"))
            kind = self._given_string(event, "type", where)
            key = event.get("key", "")
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                self._fail(f"{where}.key", "must be a string (the correlation key)")
            at = self._ms(event.get("atMs", 0), f"{where}.atMs", 0)
            events.append(EventAt(at, kind, str(key), event.get("payload"), where))
        return events

    def _approvals(self, raw: Any, path: str) -> list[ApprovalAt]:
        approvals = []
        for index, item in enumerate(self._list(raw, path)):
            where = f"{path}[{index}]"
            approval = self._mapping(item, where)
            self._fields(approval, ("atMs", "stepId", "approver", "decision", "comment", "roles"), where,
                         required=("stepId", "approver", "decision"))
            step = self._given_string(approval, "stepId", where)
            info = self.steps.get(step)
            if step and (info is None or info.type != "human-approval"):
                self._fail(f"{where}.stepId", f"'{step}' is not a human-approval step of the runbook")
            decision = approval.get("decision")
            if "decision" in approval and decision not in ("approve", "reject"):
                self._fail(f"{where}.decision", "must be approve or reject")
            comment = approval.get("comment")
            roles = tuple(self._string(r, f"{where}.roles[{i}]")
                          for i, r in enumerate(self._list(approval.get("roles", []), f"{where}.roles")))
            approvals.append(ApprovalAt(self._ms(approval.get("atMs", 0), f"{where}.atMs", 0), step,
                                        self._given_string(approval, "approver", where),
                                        str(decision), None if comment is None else str(comment), where, roles))
        return approvals

    # ------------------------------------------------------------------ expectations
    def _expect(self, raw: Any, path: str) -> Expect:
        expect = self._mapping(raw, path)
        self._fields(expect, EXPECT_FIELDS, path)
        if raw is not None and not expect:
            self._fail(path, f"expects nothing: give at least one of {', '.join(EXPECT_FIELDS)}")
        status = expect.get("status")
        if status is not None and status not in EXECUTION_STATUSES:
            self._fail(f"{path}.status", f"must be one of {', '.join(EXECUTION_STATUSES)}")
        return Expect(status=status, steps=self._expect_steps(expect.get("steps", {}), f"{path}.steps"),
                      outputs=self._outputs(expect.get("outputs", {}), f"{path}.outputs"),
                      calls=self._calls(expect.get("calls", {}), f"{path}.calls"),
                      audit=self._audit(expect.get("audit", []), f"{path}.audit"),
                      error=self._error(expect.get("error"), f"{path}.error"))

    def _expect_steps(self, raw: Any, path: str) -> dict[str, StepExpect]:
        found = {}
        for key, value in self._mapping(raw, path).items():
            where = f"{path}.{key}"
            if key not in self.steps:
                self._fail(where, _no_step(str(key)))
            if isinstance(value, str):
                value = {"status": value}
            item = self._mapping(value, where)
            self._fields(item, ("status", "attempts", "error"), where)
            if "status" in item and item["status"] not in STEP_STATUSES:
                self._fail(f"{where}.status", f"must be one of {', '.join(STEP_STATUSES)}")
            attempts = self._int(item["attempts"], f"{where}.attempts", 0, 10**6) if "attempts" in item else None
            error = self._string(item["error"], f"{where}.error") if "error" in item else None
            found[str(key)] = StepExpect(item.get("status"), attempts, error)
        return found

    def _outputs(self, raw: Any, path: str) -> dict[str, Any]:
        outputs = self._mapping(raw, path)
        for key in outputs:
            segments = str(key).split(".")
            roots = {".".join(segments[:n]) for n in range(1, len(segments) + 1)}
            if not roots & (set(self.steps) | set(SCOPE_ROOTS)):
                self._fail(f"{path}.{key}", f"starts with no step id nor {', '.join(SCOPE_ROOTS)}")
        return dict(outputs)

    def _calls(self, raw: Any, path: str) -> dict[str, int | tuple[Mapping[str, Any], ...]]:
        found: dict[str, int | tuple[Mapping[str, Any], ...]] = {}
        for key, value in self._mapping(raw, path).items():
            where = f"{path}.{key}"
            kind = self._calling(str(key), where)
            if isinstance(value, list):
                found[str(key)] = tuple(self._request(v, f"{where}[{i}]", kind or "http") for i, v in enumerate(value))
            else:
                found[str(key)] = self._int(value, where, 0, 10**6, "a count of calls, or a list of the calls")
        return found

    def _audit(self, raw: Any, path: str) -> tuple[Mapping[str, str], ...]:
        found = []
        for index, item in enumerate(self._list(raw, path)):
            where = f"{path}[{index}]"
            entry = {"action": item} if isinstance(item, str) else self._mapping(item, where)
            self._fields(entry, ("action", "actor", "stepId"), where, required=("action",))
            entry = {k: v for k, v in entry.items() if k in ("action", "actor", "stepId")}
            found.append({k: self._string(v, f"{where}.{k}") for k, v in entry.items()})
        return tuple(found)

    def _error(self, raw: Any, path: str) -> dict[str, str] | None:
        if raw is None:
            return None
        error = self._mapping(raw, path)
        self._fields(error, ("code", "stepId", "message"), path)
        return {k: self._string(v, f"{path}.{k}") for k, v in error.items()}

    # ------------------------------------------------------------------ shapes
    def _calling(self, key: str, path: str) -> str | None:
        """What the step's calls speak; a problem if it is no step or makes no call."""
        info = self.steps.get(key)
        if info is None:
            self._fail(path, _no_step(key))
        elif info.calls is None:
            self._fail(path, f"step '{key}' ({info.type}) makes no outbound call: a reply for it would never be used")
        return None if info is None else info.calls

    def _fields(self, value: Mapping[str, Any], allowed: Sequence[str], path: str,
                required: Sequence[str] = ()) -> None:
        for key in value:
            if key not in allowed:
                self._fail(_join(path, str(key)), f"unknown field (known: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                self._fail(_join(path, key), "required")

    def _mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        self._fail(path, "must be a mapping")
        return {}

    def _list(self, value: Any, path: str) -> list[Any]:
        if isinstance(value, list):
            return value
        self._fail(path, "must be a list")
        return []

    def _string(self, value: Any, path: str) -> str:
        if isinstance(value, str) and value:
            return value
        self._fail(path, "must be a non-empty string")
        return ""

    def _given_string(self, value: Mapping[str, Any], field: str, path: str) -> str:
        """A required string field (its absence is reported by ``_fields``)."""
        return self._string(value[field], f"{path}.{field}") if field in value else ""

    def _string_map(self, value: Any, path: str) -> dict[str, str]:
        found = {}
        for key, item in self._mapping(value, path).items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                self._fail(f"{path}.{key}", "must be a string")
            found[str(key)] = str(item)
        return found

    def _int(self, value: Any, path: str, low: int, high: int, what: str = "an integer") -> int:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        self._fail(path, f"must be {what} from {low} to {high}")
        return low

    def _ms(self, value: Any, path: str, low: int) -> int:
        return self._int(value, path, low, MAX_MS, "a number of milliseconds")

    def _fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path or "$", message))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _no_step(key: str) -> str:
    return f"no step '{key}' (name a step of the runbook, or runbook/step for a step of a sub-runbook it runs)"
