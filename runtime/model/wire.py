"""The one cattrs converter (camelCase JSON <-> snake_case attrs) and document loading.

``converter`` turns model values into JSON-ready dicts and back: keys in camelCase, times as
RFC 3339 UTC strings, enums as their values, tuples as lists, sets as sorted lists. The store
writes exactly this shape, and the gateway answers with it, so there is one JSON form of
every value. A field marked ``LOCAL`` (a reply token) never leaves the process: it is left
out of the JSON and read back as its default. ``tagged``/``from_tagged`` carry a value of a
union with its class name as the tag (the commands table: the tag in one column, the value
in another).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import json.encoder
import pathlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, get_origin

import attrs
import cattrs
import yaml
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from runtime.model.errors import Problem, ValidationError

T = TypeVar("T")

MAX_DOCUMENT_BYTES = 1024 * 1024
LOCAL: Final = {"wire.local": True}
"""``attrs.field(metadata=LOCAL)``: a field that never leaves the process (a reply token)."""


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _renames(cls: type) -> dict[str, Any]:
    return {a.name: override(omit=True) if a.metadata.get("wire.local") else override(rename=camel(a.name))
            for a in attrs.fields(cls)}


def _is_set(cls: Any) -> bool:
    return cls in (set, frozenset) or get_origin(cls) in (set, frozenset)


@functools.lru_cache(maxsize=1024)  # the records of one turn share one time: formatted once
def format_time(value: datetime) -> str:
    if value.tzinfo is UTC:  # (most times: no conversion to make)
        return value.isoformat(timespec="microseconds")[:-6] + "Z"
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def parse_time(value: Any, _: Any = None) -> datetime:
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(datetime, format_time)
    conv.register_unstructure_hook_func(
        lambda cls: isinstance(cls, type) and issubclass(cls, enum.Enum), lambda value: value.value
    )
    conv.register_unstructure_hook_func(_is_set, sorted)  # one JSON text per set, whatever its order
    conv.register_structure_hook(datetime, parse_time)
    conv.register_unstructure_hook_factory(
        attrs.has, lambda cls: make_dict_unstructure_fn(cls, conv, **_renames(cls))
    )
    conv.register_structure_hook_factory(
        attrs.has, lambda cls: make_dict_structure_fn(cls, conv, **_renames(cls))
    )
    conv.register_structure_hook(Any, lambda value, _: value)
    return conv


converter = _make_converter()


def to_json(value: Any) -> Any:
    """A model value as JSON-ready data (camelCase keys)."""
    return converter.unstructure(value)


def from_json(data: Any, cls: type[T]) -> T:
    return converter.structure(data, cls)


def tagged(value: Any) -> tuple[str, Any]:
    """A value of a union as (tag, JSON): the tag is its class name."""
    return type(value).__name__, to_json(value)


def from_tagged(tag: str, data: Any, classes: Mapping[str, type[T]]) -> T:
    """The value ``tagged`` gave (``classes``: the union's classes by name)."""
    cls = classes.get(tag)
    if cls is None:
        raise ValueError(f"unknown tag {tag!r} (expected one of {', '.join(sorted(classes))})")
    return converter.structure(data, cls)


def dumps(value: Any) -> str:
    """Compact JSON of a model value or plain data."""
    return json.dumps(to_json(value), separators=(",", ":"), ensure_ascii=False)


def dumps_data(value: Any) -> str:
    """``dumps`` of the free-form data of a record (mostly None or plain JSON already: the
    converter is only needed when it holds a model value, such as a time)."""
    if value is None:
        return "null"
    try:
        return _compact(value)
    except TypeError:
        return dumps(value)


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False)`` without making an
    encoder at every call (a record's data is written at every step): CPython's C encoder,
    made once, if this Python's has the shape it had in 3.11; else ``json.dumps``. It keeps
    no state between calls (no circular-reference check), so threads may share it."""
    def plain(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    try:
        encoder = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, True)
        sample = {"b": [1, None, True, 1.5], "a": "\u00e9\n"}
        if "".join(encoder(sample, 0)) != plain(sample):
            return plain
    except (AttributeError, TypeError):
        return plain
    return lambda value: "".join(encoder(value, 0))


_compact = _compact_encoder()


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace (the input hash and evidence hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def load_document(source: Any) -> dict[str, Any]:
    """A runbook document from a dict, JSON/YAML text or bytes, or a ``pathlib.Path``."""
    if isinstance(source, pathlib.Path):
        source = source.read_bytes()
    if isinstance(source, (bytes, str)):
        source = parse_data(source)
    if not isinstance(source, dict):
        raise ValidationError([Problem("$", "a runbook document must be a mapping (object)")])
    return source


def parse_data(source: bytes | str) -> Any:
    """JSON or YAML text (or its UTF-8 bytes) as read, within the size and expansion bounds of
    a document; ``ValidationError`` says what is wrong."""
    if isinstance(source, bytes):
        if len(source) > MAX_DOCUMENT_BYTES:
            raise _too_large()
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError([Problem("$", f"document is not valid UTF-8: {exc}")]) from None
    if len(source.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:  # the parser refuses surrogates
        raise _too_large()
    data = _parse_text(source)
    _check_expansion(data)
    return data


def _parse_text(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise ValidationError([Problem("$", "document is nested too deeply")]) from None
    except yaml.MarkedYAMLError as exc:
        raise ValidationError([_parse_problem(exc)]) from None
    except yaml.YAMLError as exc:
        raise ValidationError([Problem("$", f"not valid YAML or JSON: {exc}")]) from None
    except Exception as exc:  # a constructor's own error: ``!!int foo``, ``!!bool maybe``, ...
        raise ValidationError([Problem("$", f"not valid YAML or JSON: a value cannot be read "
                                            f"({type(exc).__name__}: {exc})")]) from None


def _parse_problem(exc: yaml.MarkedYAMLError) -> Problem:
    """Where the text stops being YAML, in its own words: line and column, no stream name."""
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or exc.context or "cannot be read"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    started = exc.context_mark if exc.context and exc.context_mark is not None and exc.problem_mark else None
    context = f" ({exc.context} at line {started.line + 1}, column {started.column + 1})" if started else ""
    return Problem("$", f"not valid YAML or JSON: {what}{where}{context}",
                   line=mark.line + 1 if mark is not None else None)


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings (JSON has no date type) and reads every
    plain (unquoted) mapping key as the text written: ``on: weekdays`` has the key ``"on"``,
    not ``True`` (YAML 1.1 would read ``on``/``yes``/``1``/``null`` keys as other types,
    which JSON cannot hold as keys). Values keep YAML's types."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.style is None:
                    key_node.tag = _STR_TAG
        return super().construct_mapping(node, deep=deep)


_STR_TAG = "tag:yaml.org,2002:str"


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


MAX_VALUES = 600_000  # more values than 1 MiB of JSON can hold: only YAML aliases get past it


def _check_expansion(value: Any) -> None:
    """Refuse a document whose YAML aliases expand it past 1 MiB ("billion laughs"), counting
    shared values once per use and stopping at the budget, so the check itself is cheap."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise _too_large(f"document expands past 1 MiB (more than {MAX_VALUES} values once YAML aliases are expanded)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _too_large(message: str = "document is larger than 1 MiB") -> ValidationError:
    error = ValidationError([Problem("$", message)], title="document too large")
    error.code = "tooLarge"
    return error
