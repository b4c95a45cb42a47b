"""The forms a secret value takes in text the engine writes, found by one matcher.

A value can reach a message, an output or a log line as it is, and also in every encoding
the engine itself (or a library it uses: httpx, h11, json, Python's ``repr``) may have
turned it into on the way:

- escaped: in a Python ``repr`` of a str or of bytes (``\\n``, ``\\'``, ``\\xNN``,
  ``\\uNNNN``, ``\\UNNNNNNNN``: h11's ``Illegal header value b'Bearer tok...\\n'``), or in
  JSON (``\\"``, ``\\/``, ``\\uNNNN``, surrogate pairs);
- percent-encoded with any set of characters left as they are, ``+`` for a space, hex
  digits in either case (``quote``, ``quote_plus``, httpx's URL and query encoding);
- in another case: the URL parser and DNS lower-case host names, a service may upper-case;
- without the white space at its ends (a YAML block scalar ends in a newline, which many
  consumers strip);
- base64, standard and URL-safe, at any alignment (the HTTP Basic credentials httpx makes
  from a URL's ``user:password@``): the whole run of base64 characters holding the value
  is found, so a ``user:password`` pair is hidden whole.

Each character of a value matches any of its forms on its own, so a mixture (a query where
only some characters were encoded) is found too. Nothing here can find a value that a
service transformed otherwise (hashed, encrypted, reversed, split across fields), nor the
base64 of a value shorter than ``MIN_BASE64_BYTES`` bytes.

``Forms(values).mask(text, mask)`` is ``text`` with every form of every value replaced. It
is on the path of every output, error and log line, so it is built for speed: a text with
no ``%``, ``\\`` or ``+`` can only hold a value as it is (in some case), and goes through
one case-insensitive alternation of the values (Python's ``re`` finds literals fast); any
other text goes through the pattern of every form on RE2, whose time is linear in the text
however many values there are (Python's ``re`` takes about a millisecond per short string
on that pattern). Base64 cores are literals, found by ``re``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any, Final

import re2

__all__ = ["MIN_BASE64_BYTES", "Forms"]

MIN_BASE64_BYTES: Final = 4  # shorter values leave fewer than 4 base64 characters of their own
_SHORT_ESCAPES: Final = {"\n": ("\\n",), "\r": ("\\r",), "\t": ("\\t",), "\b": ("\\b",), "\f": ("\\f",),
                         '"': ('\\"',), "'": ("\\'",), "\\": ("\\\\",), "/": ("\\/",)}
_BASE64_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")
_ENCODED: Final = re.compile(r"[%\\+]")  # what every form but the value itself (in some case) needs
_RE2_MAX_MEM: Final = 64 << 20


class Forms:
    """A matcher of every form of ``values`` (see the module docstring)."""

    def __init__(self, values: Iterable[str]) -> None:
        ordered = sorted({f for v in values for f in (v, v.strip()) if f}, key=len, reverse=True)  # longest first
        # IGNORECASE folds one character to one; lower() and upper() may change the length (ß, SS)
        cased = sorted({f for v in ordered for f in (v, v.lower(), v.upper()) if f == v or len(f) != len(v)},
                       key=len, reverse=True)
        self._literal = re.compile("|".join(map(re.escape, cased)), re.IGNORECASE) if ordered else None
        self._source = "|".join(_value_pattern(v) for v in ordered)
        self._every_form: Any = _re2(self._source) if ordered else None
        cores = sorted({core for v in ordered for core in _base64_cores(v)}, key=len, reverse=True)
        self._base64 = re.compile("|".join(map(re.escape, cores))) if cores else None

    def mask(self, text: str, mask: str) -> str:
        if self._literal is None or not text:
            return text
        if _ENCODED.search(text) is None:
            text = self._literal.sub(mask, text)
        else:
            text = self._mask_every_form(text, mask)
        if self._base64 is not None and self._base64.search(text):
            text = _mask_runs(text, self._base64, mask)
        return text

    def _mask_every_form(self, text: str, mask: str) -> str:
        if self._every_form is not None:
            try:
                return str(self._every_form.sub(mask, text))
            except UnicodeError:  # RE2 reads UTF-8: a lone surrogate cannot be encoded
                pass
        # RE2 refused the pattern (too large) or the text: the same pattern on Python's re
        self._every_form = None
        return re.sub(self._source, mask.replace("\\", r"\\"), text, flags=re.IGNORECASE)


def _re2(source: str) -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    try:
        return re2.compile(source, options)
    except re2.error:
        return None


def _value_pattern(value: str) -> str:
    return "".join(_char_pattern(char) for char in value)


def _char_pattern(char: str) -> str:
    forms = sorted(_char_forms(char), key=len, reverse=True)
    return "(?:" + "|".join(re.escape(form) for form in forms) + ")"


def _char_forms(char: str) -> set[str]:
    code = ord(char)
    raw = char.encode("utf-8", "surrogatepass")
    forms = {char, char.lower(), char.upper(), *_SHORT_ESCAPES.get(char, ())}
    forms.add("".join(f"%{byte:02X}" for byte in raw))  # percent-encoding (either hex case: IGNORECASE)
    forms.add("".join(f"\\x{byte:02x}" for byte in raw))  # a repr of bytes
    if char == " ":
        forms.add("+")  # quote_plus, form encoding
    if code < 0x100:
        forms.add(f"\\x{code:02x}")  # a repr of str
    if code < 0x10000:
        forms.add(f"\\u{code:04x}")  # JSON, a repr of str
    else:
        forms.add(f"\\U{code:08x}")
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms.add(f"\\u{high:04x}\\u{low:04x}")  # JSON's surrogate pair
    return forms


def _base64_cores(value: str) -> set[str]:
    """The base64 characters that depend on ``value``'s bytes alone, for each of the three
    alignments the value can have in the encoded data, standard and URL-safe."""
    data = value.encode("utf-8", "surrogatepass")
    if len(data) < MIN_BASE64_BYTES:
        return set()
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        first = -(-8 * offset // 6)  # the first character whose 6 bits all come from the value
        last = (8 * (offset + len(data))) // 6  # one past the last such character
        core = encoded[first:last]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def _mask_runs(text: str, cores: re.Pattern[str], mask: str) -> str:
    """``text`` with every run of base64 characters that holds a core replaced by ``mask``."""
    parts: list[str] = []
    done = 0
    for match in cores.finditer(text):
        if match.start() < done:
            continue  # inside a run already masked
        start, end = match.start(), match.end()
        while start > done and text[start - 1] in _BASE64_CHARS:
            start -= 1
        while end < len(text) and text[end] in _BASE64_CHARS:
            end += 1
        parts += [text[done:start], mask]
        done = end
    return "".join(parts) + text[done:]
