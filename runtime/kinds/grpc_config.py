"""The config of a ``call-service`` step with ``protocol: grpc``, checked without I/O.

``check_config`` lists every problem at once (``runtime.kinds.call_service.check_config``
hands a config with ``protocol: grpc`` here); with ``templates``, a value holding ``${...}``
is checked only once it is resolved, when the step runs. ``parse_target`` reads
``host:port`` for the checks and for the executor (``runtime.io.grpc_call``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from runtime.model.errors import Problem
from runtime.model.limits import duration_problem
from runtime.model.suggest import did_you_mean

__all__ = ["FIELDS", "check_config", "parse_target"]

FIELDS: Final = frozenset({"protocol", "target", "service", "method", "message", "metadata", "tls",
                           "timeoutMs", "idempotencyKey", "protoset"})
_SERVICE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")


def check_config(config: Mapping[str, Any], path: str, *, templates: bool = True) -> list[Problem]:
    """Every problem of a gRPC call-service ``config``; with ``templates``, a value holding
    ``${...}`` is checked only once it is resolved, when the step runs."""
    problems = [Problem(f"{path}.{key}", f"unknown field '{key}' for protocol grpc{did_you_mean(key, FIELDS)}")
                for key in config if key not in FIELDS]
    for key in ("target", "service", "method"):
        if config.get(key) is None:
            problems.append(Problem(f"{path}.{key}", f"required with protocol grpc: {_REQUIRED[key]}"))
    for key, check in _CHECKS.items():
        if key in config and config[key] is not None and not (templates and _is_template(config[key])):
            problems += [Problem(f"{path}.{key}{where}", message) for where, message in check(config[key])]
    target = config.get("target")
    if templates and isinstance(target, str) and secret_in_host(target, scheme=False):
        problems.append(Problem(f"{path}.target", SECRET_IN_HOST))
    return problems


_SECRET_REFERENCE: Final = re.compile(r"\$\{\s*secret\.")
SECRET_IN_HOST: Final = ("a ${secret.NAME} in the host is refused: resolving the host would send the secret "
                         "out through DNS")


def secret_in_host(template: str, *, scheme: bool) -> bool:
    """Whether the host part of a URL template (``scheme``) or of a ``host:port`` template refers
    to a secret. A template whose scheme or authority is itself a template cannot be told."""
    text = template
    if scheme:
        head, sep, text = template.partition("://")
        if not sep or "${" in head:
            return False
    host = re.split(r"[/?#]", text, maxsplit=1)[0].rpartition("@")[2]  # after any user:password@
    return _SECRET_REFERENCE.search(host) is not None


_REQUIRED: Final = {"target": "host:port", "service": "the full service name, e.g. pkg.Service",
                    "method": "the method name"}


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def parse_target(target: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``[ipv6]:port``; ``ValueError`` says what is wrong."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # ValueError when it is not one
    elif not _HOST.fullmatch(host):
        raise ValueError(f"'{host}' is not a host name or IPv4 address")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port '{port_text}' must be an integer from 1 to 65535")
    return host, int(port_text)


def _check_target(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, str):
        return [("", "must be a string host:port")]
    try:
        parse_target(value.strip())
    except ValueError as exc:
        return [("", str(exc))]
    return []


def _check_name(pattern: re.Pattern[str], what: str) -> Callable[[Any], list[tuple[str, str]]]:
    def check(value: Any) -> list[tuple[str, str]]:
        if isinstance(value, str) and pattern.fullmatch(value):
            return []
        return [("", f"must be {what}")]
    return check


def _check_message(value: Any) -> list[tuple[str, str]]:
    return [] if isinstance(value, Mapping) else [("", "must be an object: the request message as JSON")]


def _check_metadata(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, Mapping):
        return [("", "must be a mapping (object) of metadata keys to strings")]
    problems: list[tuple[str, str]] = []
    for key, item in value.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            problems.append((f".{key}", "a metadata key is lower-case letters, digits, '-', '_' and '.'"))
        elif key.endswith("-bin") or key.startswith("grpc-"):
            problems.append((f".{key}", "binary (-bin) and grpc- keys cannot be set here"))
        elif key == "host":
            problems.append((f".{key}", "a host key cannot be set: the call goes to the target's host"))
        if not isinstance(item, str):
            problems.append((f".{key}", "must be a string"))
        elif not _is_template(item) and not all(" " <= ch <= "~" for ch in item):
            problems.append((f".{key}", "must be printable ASCII"))
    return problems


def _check_bool(value: Any) -> list[tuple[str, str]]:
    return [] if isinstance(value, bool) else [("", "must be true or false")]


def _check_timeout(value: Any) -> list[tuple[str, str]]:
    problem = duration_problem(value)  # the bounds of every duration (one year at most)
    return [] if problem is None else [("", problem)]


def _check_text(value: Any) -> list[tuple[str, str]]:
    return [] if isinstance(value, str) and value.strip() else [("", "must be a non-empty string")]


_CHECKS: Final = {
    "target": _check_target,
    "service": _check_name(_SERVICE, "a full service name, e.g. pkg.Service"),
    "method": _check_name(_METHOD, "a method name, e.g. GetHost"),
    "message": _check_message,
    "metadata": _check_metadata,
    "tls": _check_bool,
    "timeoutMs": _check_timeout,
    "idempotencyKey": _check_text,
    "protoset": _check_text,
}
