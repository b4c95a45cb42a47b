"""The config of a ``call-service`` step, checked without I/O, and its ``SPEC``: in the
execution core it is a task step (``runtime.kinds.task``); its executor is ``runtime.io.http``.

``check_config`` validates a step's config at document validation and lists every problem;
a config with ``protocol: grpc`` is checked by ``runtime.kinds.grpc_config``. A value that
is a template is checked again, resolved, by the executor (``runtime.io.http``) when the
step runs (``problems(config, path, templates=False)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from runtime.kinds import grpc_config
from runtime.kinds.spec import KindSpec, ignoring_types
from runtime.kinds.task import TASK
from runtime.model.errors import Problem
from runtime.model.limits import duration_problem
from runtime.model.suggest import unknown_field

__all__ = ["DEFAULT_TIMEOUT_MS", "SPEC", "check_config", "problems"]

METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
DEFAULT_TIMEOUT_MS: Final = 30_000
#: a Host header would send the request to another virtual host at an address the allowlist
#: admits for a different name, so the engine always sends the URL's own host
HOST_HEADER: Final = ("a Host header cannot be set: the request goes to the URL's host (another name at the "
                      "same address would pass the allowlist under the URL's name)")
_FIELDS: Final = frozenset(
    {"url", "method", "headers", "query", "body", "timeoutMs", "expectStatus",
     "idempotencyKey", "protocol"}
)


# ---- validation ----------------------------------------------------------------------------


def check_config(config: Mapping[str, Any], path: str) -> list[Problem]:
    """Every problem of a call-service ``config`` at once; ``path`` locates the config.

    A value that is not a string by type (``method``, ``headers``, ``query``, ``timeoutMs``,
    ``expectStatus``) may also be a template string (``"${input.timeout}"``): it is checked
    again, resolved, when the step runs.
    """
    if config.get("protocol") == "grpc":
        return grpc_config.check_config(config, path)
    return problems(config, path, templates=True)


def problems(config: Mapping[str, Any], path: str, *, templates: bool) -> list[Problem]:
    problems = [unknown_field(path, key, _FIELDS) for key in config if key not in _FIELDS]
    url = config.get("url")
    if url is None:
        problems.append(Problem(f"{path}.url", "required: an absolute URL or a path"))
    elif not isinstance(url, str) or not url.strip():
        problems.append(Problem(f"{path}.url", "must be a non-empty string"))
    elif templates and grpc_config.secret_in_host(url, scheme=True):
        problems.append(Problem(f"{path}.url", grpc_config.SECRET_IN_HOST))
    for key, check in _CHECKS.items():
        if key in config and not (templates and _is_template(config[key])):
            problems += [Problem(f"{path}.{key}{where}", message) for where, message in check(config[key])]
    return problems


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _check_method(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str) and value.upper() in METHODS:
        return []
    return [("", f"must be one of {', '.join(METHODS)}")]


def _check_headers(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, Mapping):
        return [("", "must be a mapping (object) of header names to strings")]
    problems = [(f".{name}", HOST_HEADER) for name in value if is_host_header(name)]
    return problems + [(f".{name}", "must be a string") for name, item in value.items() if not isinstance(item, str)]


def is_host_header(name: Any) -> bool:
    """Whether a header name is ``Host`` (in any case, with any white space around it)."""
    return str(name).strip().lower() == "host"


def _check_query(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, Mapping):
        return [("", "must be a mapping (object) of parameter names to values")]
    scalar = (str, int, float, bool, type(None))
    return [
        (f".{name}", "must be a string, number, boolean or null")
        for name, item in value.items()
        if not isinstance(item, scalar)
    ]


def _check_body(value: Any) -> list[tuple[str, str]]:
    return [] if _is_json(value) else [("", "must be JSON (objects, lists, strings, numbers, booleans, null)")]


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


def _check_timeout(value: Any) -> list[tuple[str, str]]:
    problem = duration_problem(value)
    return [] if problem is None else [("", problem)]


def _check_expect_status(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        return [("", "must be a non-empty list of HTTP status codes")]
    return [
        (f"[{index}]", "must be an HTTP status code (an integer from 100 to 599)")
        for index, item in enumerate(value)
        if not _is_status(item)
    ]


def _is_status(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


def _check_idempotency_key(value: Any) -> list[tuple[str, str]]:
    return [] if isinstance(value, str) and value else [("", "must be a non-empty string")]


def _check_protocol(value: Any) -> list[tuple[str, str]]:
    return [] if value in ("http", "grpc") else [("", "unknown protocol: 'http' (the default) or 'grpc'")]


_CHECKS: Final = {
    "method": _check_method,
    "headers": _check_headers,
    "query": _check_query,
    "body": _check_body,
    "timeoutMs": _check_timeout,
    "expectStatus": _check_expect_status,
    "idempotencyKey": _check_idempotency_key,
    "protocol": _check_protocol,
}


SPEC = KindSpec(TASK, ignoring_types(check_config))
