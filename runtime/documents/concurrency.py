"""The ``concurrency`` block of a runbook or a step: ``{key: "<template>", limit: N}``.

``concurrency_problems`` checks the block as written (at registration): ``key`` a non-empty
string whose templates refer only to what a start knows (``input``, ``context``,
``tenantId``), ``limit`` an integer from 1 to ``MAX_CONCURRENCY``. ``slot_of`` renders the
key of one start: executions of a tenant with the same rendered key take turns, at most
``limit`` of them running at once; the others are ``queued`` in arrival order (the store
keeps the queue, ``runtime/store/slots.py``). A step's block is rendered by the core when the
step could start (``core/schedule.py``): the step stays ``pending`` until it holds a slot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from runtime.language.templates import TemplateError, render, template_paths, template_problems
from runtime.model import Runbook
from runtime.model.errors import Problem, ValidationError
from runtime.model.limits import MAX_CONCURRENCY, count_problem
from runtime.model.records import SlotClaim

KEY_ROOTS = frozenset({"input", "context", "tenantId"})  # what a start knows
MAX_KEY_CHARS = 512
_FIELDS = frozenset({"key", "limit"})


def concurrency_problems(value: Any, path: str = "concurrency",
                         known: Callable[[str], bool] | None = None) -> list[Problem]:
    """Every problem of a ``concurrency`` block. ``known``: whether a template path may be
    used (a step's block: what its scope holds, the outputs of other steps too); default:
    only what a start knows."""
    if not isinstance(value, Mapping):
        return [Problem(path, "must be an object {key, limit}")]
    problems = [Problem(f"{path}.{name}", f"unknown field '{name}' (expected key, limit)")
                for name in value if name not in _FIELDS]
    key = value.get("key")
    if not isinstance(key, str) or not key.strip():
        problems.append(Problem(f"{path}.key", "required: a non-empty string (a template such as "
                                               "'${input.service}')"))
    else:
        found = template_problems(key, f"{path}.key")
        problems += found
        if not found:
            if known is None:
                problems += [Problem(f"{path}.key", f"template '${{{ref}}}': a concurrency key may use only "
                                                    "input, context and tenantId (what a start knows)")
                             for ref in template_paths(key) if ref.split(".")[0] not in KEY_ROOTS]
            else:
                problems += [Problem(f"{path}.key", f"template '${{{ref}}}' refers to nothing a step sees "
                                                    "(input, context, tenantId, executionId, a step's output)")
                             for ref in template_paths(key) if not known(ref)]
    if "limit" not in value:
        problems.append(Problem(f"{path}.limit", f"required: an integer from 1 to {MAX_CONCURRENCY}"))
    elif problem := count_problem(value["limit"], 1, MAX_CONCURRENCY):
        problems.append(Problem(f"{path}.limit", problem))
    return problems


def slot_of(runbook: Runbook, input: Any, context: Mapping[str, Any]) -> SlotClaim | None:
    """The slot a start of ``runbook`` asks for (None: the runbook has no concurrency key).
    A key that cannot be rendered from this start refuses the start (``ValidationError``)."""
    block = runbook.concurrency
    if not block:
        return None
    tenant = str(context["tenantId"])
    scope = {"input": input, "context": dict(context), "tenantId": tenant}
    try:
        rendered = render(block["key"], scope)
    except TemplateError as exc:
        raise ValidationError([Problem("concurrency.key", f"cannot be rendered for this start: {exc}")],
                              title="input refused") from None
    key = rendered if isinstance(rendered, str) else json.dumps(rendered, separators=(",", ":"), default=str)
    if len(key) > MAX_KEY_CHARS:
        raise ValidationError([Problem("concurrency.key", f"renders to more than {MAX_KEY_CHARS} characters")],
                              title="input refused")
    return SlotClaim(tenant, key, int(block["limit"]))
