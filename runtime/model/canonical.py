"""Canonical JSON as RFC 8785 (the JSON Canonicalization Scheme) defines it, and its SHA-256.

One JSON value has exactly one canonical text, so that anyone can recompute a digest over
it with any language's RFC 8785 implementation: object members sorted by their keys as
UTF-16 code units, no whitespace, strings escaped as ECMAScript's ``JSON.stringify`` escapes
them (only ``"``, ``\\`` and control characters; everything else is UTF-8 as it is), and
numbers in ECMAScript's shortest round-trip form (``1e+21``, ``0.000001``, ``1.5e-7``, never
``-0``). Numbers are IEEE 754 doubles there, so an integer beyond 2**53 is written as the
double it becomes. A lone surrogate (not text, but a Python string may hold one) is escaped
as ``\\udxxx``, as ECMAScript does since 2019. NaN and infinities have no JSON form:
``ValueError``; a value JSON has no type for: ``TypeError``.

Most values (no float, integers a double holds, ASCII keys, no lone surrogate) are written
by the standard library's C encoder with sorted keys, which gives the same text much faster
(the audit ledger hashes every entry); the rest take the general path.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_EXACT = 2**53  # integers below this are doubles exactly: written as they are
_SURROGATE = re.compile("[\ud800-\udfff]")
_encode_string = json.encoder.encode_basestring  # (what json.dumps(ensure_ascii=False) uses)
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def canonical(value: Any) -> bytes:
    """The RFC 8785 canonical form of ``value`` (UTF-8)."""
    if _plain(value):  # nothing the standard library writes otherwise: its C encoder, much faster
        try:  # (strict UTF-8 refuses a lone surrogate: cheaper than looking for one first)
            return _encode_plain(value).encode("utf-8")
        except UnicodeEncodeError:
            pass
    return "".join(_parts(value)).encode("utf-8")


#: with sorted keys, ``json`` writes what RFC 8785 does for a ``_plain`` value without lone surrogates
_PLAIN = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _c_encoder() -> Callable[[Any], str]:
    """``_PLAIN.encode`` without making an encoder at every call (CPython's C one, made once),
    if this Python's has the shape it had in 3.11; else ``_PLAIN.encode``."""
    try:
        encoder = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, None, json.encoder.encode_basestring, None, ":", ",", True, False, False)
        sample = {"b": [1, None, True], "a": "\u00e9\n"}
        if "".join(encoder(sample, 0)) != _PLAIN.encode(sample):
            return _PLAIN.encode
    except (AttributeError, TypeError):
        return _PLAIN.encode
    return lambda value: "".join(encoder(value, 0))


_encode_plain = _c_encoder()


def _plain(value: Any) -> bool:
    """No float (ECMAScript writes them its own way), only integers a double holds exactly,
    and ASCII keys (whose code points sort as their UTF-16 units do)."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return bool(-_EXACT < value < _EXACT)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not _plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not _plain(item):
                return False
        return True
    return False


def canonical_sha256(value: Any) -> str:
    """Lowercase hex SHA-256 of ``canonical(value)``."""
    return hashlib.sha256(canonical(value)).hexdigest()


def _parts(value: Any) -> Iterator[str]:
    if value is None:
        yield "null"
    elif value is True:
        yield "true"
    elif value is False:
        yield "false"
    elif isinstance(value, str):
        yield _string(value)
    elif isinstance(value, int):
        yield str(value) if -_EXACT < value < _EXACT else _number(_double(value))
    elif isinstance(value, float):
        yield _number(value)
    elif isinstance(value, Mapping):
        yield from _object(value)
    elif isinstance(value, (list, tuple)):
        yield from _array(value)
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _object(value: Mapping[Any, Any]) -> Iterator[str]:
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"an object key must be a string, not {type(key).__name__}")
    yield "{"
    ascii_keys = all(key.isascii() for key in value)  # (then code points sort as UTF-16 units do)
    for index, key in enumerate(sorted(value) if ascii_keys else sorted(value, key=_utf16)):
        if index:
            yield ","
        yield _string(key)
        yield ":"
        yield from _parts(value[key])
    yield "}"


def _array(value: list[Any] | tuple[Any, ...]) -> Iterator[str]:
    yield "["
    for index, item in enumerate(value):
        if index:
            yield ","
        yield from _parts(item)
    yield "]"


def _double(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError("an integer beyond the range of a double has no canonical JSON form") from None


def _utf16(key: str) -> bytes:
    """A key's sort key: its UTF-16 code units (big-endian bytes compare as the units do)."""
    return key.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    if not _SURROGATE.search(text):  # the standard library escapes exactly as ECMAScript does then
        return _encode_string(text)
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:  # a lone surrogate (pairs are one char here)
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _number(value: float) -> str:
    """ECMAScript's Number::toString: the shortest digits that round-trip (Python's ``repr``
    finds the same ones), placed as ECMAScript places them."""
    if not math.isfinite(value):
        raise ValueError(f"{value} has no JSON form")
    if value == 0:
        return "0"  # and -0
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    written = whole + fraction
    digits = written.lstrip("0")
    point = len(whole) + int(exponent or 0) - (len(written) - len(digits))  # the value is 0.digits x 10**point
    digits = digits.rstrip("0")
    return sign + _place(digits, point)


def _place(digits: str, n: int) -> str:
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    exponent = f"e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return (digits if k == 1 else f"{digits[0]}.{digits[1:]}") + exponent
