"""Reading request bodies: JSON, and runbook documents as JSON or YAML.

A body that cannot be read is refused with 400 and a problem naming why and where: not
UTF-8, not JSON (or YAML with a YAML content type), nested deeper than ``MAX_DEPTH``, a
number that is not finite, a string with a lone surrogate; a body over 1 MiB is 413 and an unknown content type 415. What comes back is
plain data; ``gateway.inputs`` turns it into the small request values the views use.
"""

from __future__ import annotations

import json
from typing import Any

from quart import request

from gateway.problems import ApiProblem
from runtime import Problem, ValidationError
from runtime.model.jsonsafe import MAX_DEPTH, first_problem
from runtime.model.wire import load_document

MAX_BODY_BYTES = 1024 * 1024
MAX_NODES = 600_000  # more values than any 1 MiB of JSON can hold
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


async def raw_body() -> bytes:
    """The request body (werkzeug raises 413 past ``MAX_CONTENT_LENGTH``)."""
    data = await request.get_data(cache=True, as_text=False)
    assert isinstance(data, bytes)
    if len(data) > MAX_BODY_BYTES:
        raise ApiProblem(413, "the request body is larger than 1 MiB")
    return data


def _media_type() -> str:
    return (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


def _is_json_type(media_type: str) -> bool:
    return media_type in ("", "application/json") or media_type.endswith("+json")


async def json_body(*, required: bool = True) -> Any:
    """The parsed JSON body; ``None`` when it is empty and not required."""
    data = await raw_body()
    media_type = _media_type()
    if not _is_json_type(media_type):
        raise ApiProblem(415, f"the body must be application/json, not {media_type!r}")
    if not data.strip():
        if required:
            raise ApiProblem(400, "a JSON body is required", [Problem("$", "the body is empty")])
        return None
    return parse_json(data)


def parse_json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _unreadable(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise _unreadable(f"the JSON is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except json.JSONDecodeError as exc:
        raise _unreadable(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise _unreadable(f"malformed JSON: {exc}") from None
    check_shape(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_shape(value: Any) -> None:
    """Refuse a value JSON and the stores cannot hold (``runtime.model.jsonsafe``): nested deeper
    than ``MAX_DEPTH``, more than ``MAX_NODES`` values (only YAML aliases get there from 1 MiB:
    a "billion laughs" document, 413), non-finite numbers, lone surrogates (``"\\ud800"`` is
    valid JSON syntax but no text), and for YAML, values JSON has no type for. 400 naming the path: the body cannot be read as data."""
    problem = first_problem(value, "", max_depth=MAX_DEPTH, max_values=MAX_NODES)
    if problem is None:
        return
    if problem.message.startswith("more than"):
        raise ApiProblem(413, "the document expands past 1 MiB (YAML aliases)",
                         [Problem("$", f"more than {MAX_NODES} values once aliases are expanded")])
    path = problem.path or "$"
    raise ApiProblem(400, f"the body cannot be read: {path}: {problem.message}", [Problem(path, problem.message)])


def _unreadable(message: str) -> ApiProblem:
    return ApiProblem(400, message, [Problem("$", message)])


async def document_body() -> dict[str, Any]:
    """A runbook document sent as JSON, or as YAML with a YAML content type."""
    data = await raw_body()
    media_type = _media_type()
    if media_type in YAML_TYPES:
        return _yaml_document(data)
    if not _is_json_type(media_type):
        raise ApiProblem(415, f"a runbook document is JSON or YAML ({', '.join(YAML_TYPES)}), "
                              f"not {media_type!r}")
    document = parse_json(data) if data.strip() else None
    if not isinstance(document, dict):
        raise _unreadable("a runbook document must be a JSON object")
    return document


def _yaml_document(data: bytes) -> dict[str, Any]:
    try:
        document = load_document(data)
    except ValidationError as error:
        if getattr(error, "code", None) == "tooLarge":
            raise
        raise ApiProblem(400, "the YAML document cannot be read", error.problems) from None
    check_shape(document)
    return document
