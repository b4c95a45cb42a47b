"""A runbook's ``inputSchema``: checked whole at registration, applied safely at every start.

``schema_problems`` refuses, when a runbook is registered, a schema that could only fail
later: a ``$schema`` dialect jsonschema does not know, a schema its meta-schema refuses (bad
keywords, bad regexes), and any ``$ref`` that does not resolve within the schema itself.
References are resolved against the schema (and the JSON Schema meta-schemas) only: nothing
is ever fetched, so a remote ``$ref`` is refused like a missing one.

``input_problems`` checks a start's input; it never raises for the schema's sake: anything
the validator trips over becomes a problem of the start, never an internal error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final, cast

import jsonschema
import referencing
import referencing.jsonschema
from jsonschema_specifications import REGISTRY as META_SCHEMAS  # type: ignore[import-untyped]
from referencing.exceptions import Unresolvable

from runtime.model.errors import Problem

__all__ = ["input_problems", "schema_problems"]

logger = logging.getLogger("runbooks.runtime")
BASE_URI: Final = "urn:runbooks:input-schema"


def schema_problems(schema: Any, path: str = "inputSchema") -> list[Problem]:
    """Every problem of ``schema`` as an input schema (empty: it can be used)."""
    if not isinstance(schema, Mapping):
        return [Problem(path, "must be a JSON Schema object")]
    dialect = schema.get("$schema")
    if dialect is not None and (not isinstance(dialect, str)
                                or jsonschema.validators.validator_for(schema, default=cast(Any, None)) is None):
        return [Problem(f"{path}.$schema", f"unknown JSON Schema dialect {str(dialect)[:100]!r}")]
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        return [Problem(f"{path}{where}", f"not a valid JSON Schema: {exc.message}")]
    except RecursionError:
        return [Problem(path, "the schema is nested too deeply")]
    return _reference_problems(schema, path)


def input_problems(schema: Mapping[str, Any], value: Any, path: str = "input") -> list[Problem]:
    """Every problem of ``value`` against ``schema``; a schema that cannot be applied to it is
    one problem too (logged), never an exception."""
    try:
        validator = jsonschema.validators.validator_for(schema)(schema, registry=_registry(schema))
        errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    except Exception as exc:  # the schema passed registration, so this is a jsonschema corner
        logger.warning("inputSchema could not be applied: %s: %s", type(exc).__name__, exc)
        return [Problem(path, f"cannot be checked against the runbook's inputSchema ({type(exc).__name__})")]
    return [Problem(path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path),
                    error.message) for error in errors]


def _registry(schema: Mapping[str, Any], resource: referencing.Resource[Any] | None = None) -> referencing.Registry[Any]:
    """The schema itself under ``BASE_URI``, and the meta-schemas; no retrieval."""
    resource = resource or _resource(schema)
    registry: referencing.Registry[Any] = META_SCHEMAS.with_resource(resource.id() or BASE_URI, resource)
    return registry.crawl()


def _resource(schema: Mapping[str, Any]) -> referencing.Resource[Any]:
    dialect = jsonschema.validators.validator_for(schema).META_SCHEMA.get("$schema", "")
    specification = referencing.jsonschema.specification_with(dialect)
    return specification.create_resource(schema)


def _reference_problems(schema: Mapping[str, Any], path: str) -> list[Problem]:
    resource = _resource(schema)
    resolver = _registry(schema, resource).resolver(base_uri=resource.id() or BASE_URI)
    paths = dict(_paths(schema, path))
    problems: list[Problem] = []
    for subschema, sub_resolver in _subschemas(resource, resolver):
        for keyword in ("$ref", "$dynamicRef"):
            ref = subschema.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                sub_resolver.lookup(ref)
            except Unresolvable:
                where = paths.get(id(subschema), path)
                problems.append(Problem(f"{where}.{keyword}", f"'{ref[:200]}' does not resolve within the schema "
                                                               "(remote references are never fetched)"))
    return problems


def _subschemas(resource: referencing.Resource[Any], resolver: Any) -> Iterator[tuple[Mapping[str, Any], Any]]:
    """Every subschema that is an object, with the resolver its ``$ref`` is resolved by."""
    stack = [(resource, resolver)]
    while stack:
        current, current_resolver = stack.pop()
        if isinstance(current.contents, Mapping):
            yield current.contents, current_resolver
        for sub in current.subresources():
            stack.append((sub, current_resolver.in_subresource(sub)))


def _paths(value: Any, path: str) -> Iterator[tuple[int, str]]:
    """``id(node) -> path`` of every object in the schema, for naming where a ``$ref`` is."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, Mapping):
            yield id(node), where
            stack.extend((child, f"{where}.{key}") for key, child in node.items())
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(node))
