"""Secrets: where ``${secret.NAME}`` values come from, and the one redactor that keeps them in.

``Secrets`` resolves a name for a tenant: the tenant's own names in the secrets file
(``RUNBOOKS_SECRETS_FILE``, JSON or YAML ``{shared: {NAME: value}, tenants: {TENANT: {NAME:
value}}}``) first, then the file's shared names, then the environment variable
``RUNBOOKS_SECRET_<NAME>``. The file is read again when its modification time or size
changes (one ``stat`` per lookup, no watcher); a file that cannot be read keeps the values
last read and logs a warning.

A value is resolved only where a config is rendered for the request that needs it (a task's
executor, an approval's notification). Everything that comes back from there passes
``Secrets.redact`` before the execution core sees it, so no state, record, answer or stream
holds a value: every known value (those of the file and of the environment, and every value
ever resolved in this process) is replaced by ``***`` in strings, in every form the engine
produces (as it is, escaped, JSON-escaped, percent-encoded, in another case, base64:
``runtime.security.encodings``), and an evidence item whose data changed gets the SHA-256
of its redacted data. The process's own logging goes through the same redactor
(``install_log_redaction``: every log record, of any logger, is redacted as it is made:
its message with its arguments, its traceback and its stack).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import yaml

from runtime.language.templates import TemplateError
from runtime.model import Evidence, LogEntry, StepError
from runtime.model.wire import sha256_hex
from runtime.security.encodings import Forms

logger = logging.getLogger("runbooks.secrets")

MASK = "***"
ENV_PREFIX = "RUNBOOKS_SECRET_"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")


class SecretsFileError(Exception):
    """The secrets file cannot be used; the message is one line naming the file."""


@attrs.frozen
class SecretsFile:
    shared: dict[str, str] = attrs.Factory(dict)
    tenants: dict[str, dict[str, str]] = attrs.Factory(dict)

    def values(self) -> Iterable[str]:
        yield from self.shared.values()
        for names in self.tenants.values():
            yield from names.values()


def load_secrets_file(path: str) -> SecretsFile:
    """Read and check a secrets file; ``SecretsFileError`` says what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise SecretsFileError(f"{path}: cannot be read as JSON or YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return SecretsFile()
    if not isinstance(data, Mapping) or set(data) - {"shared", "tenants"}:
        raise SecretsFileError(f"{path}: must be a mapping with 'shared' and/or 'tenants' only")
    shared = _names(data.get("shared"), f"{path}: shared")
    tenants_raw = data.get("tenants") or {}
    if not isinstance(tenants_raw, Mapping):
        raise SecretsFileError(f"{path}: tenants must map tenant ids to {{NAME: value}}")
    tenants = {str(tenant): _names(names, f"{path}: tenants.{tenant}") for tenant, names in tenants_raw.items()}
    return SecretsFile(shared, tenants)


def _names(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SecretsFileError(f"{where}: must map names to values")
    found: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise SecretsFileError(f"{where}: {name!r} is not a secret name (letters, digits, '_' and '-')")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
            raise SecretsFileError(f"{where}.{name}: the value must be a non-empty string")
        found[name] = str(value)
    return found


class Secrets:
    """The secrets of one runtime: lookups for rendering, and the redactor of everything else."""

    def __init__(self, path: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self._environ = environ if environ is not None else os.environ
        self._file = SecretsFile()
        self._stamp: tuple[int, int] | None = None
        self._warned: tuple[int, int] | None = None
        self._known: set[str] = set()  # every value to hide: grows, never shrinks
        self._forms: Forms | None = None
        self._lock = threading.Lock()  # log records are made on worker threads too
        self.refresh()

    # ------------------------------------------------------------------ values
    def refresh(self) -> None:
        """Read the file again if it changed; learn the environment's values."""
        if self.path is not None:
            self._reload_if_changed(self.path)
        self._learn(v for k, v in list(self._environ.items()) if k.startswith(ENV_PREFIX) and v)

    def _reload_if_changed(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            self._warn_once((-1, -1), f"secrets file {path}: {exc.strerror}; keeping the values last read")
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            loaded = load_secrets_file(path)
        except SecretsFileError as exc:
            self._warn_once(stamp, f"{exc}; keeping the values last read")
            return
        self._file, self._stamp = loaded, stamp
        self._learn(loaded.values())

    def _warn_once(self, stamp: tuple[int, int], message: str) -> None:
        if self._warned != stamp:
            self._warned = stamp
            logger.warning("%s", message)

    def value(self, tenant_id: str, name: str) -> str:
        """The value of ``name`` for ``tenant_id``; ``TemplateError`` (code template) if unknown.
        (The file is read again if it changed; the value found is learned by the redactor, and
        the rest of the environment is not scanned: a webhook's secrets are looked up on every
        request.)"""
        if self.path is not None:
            self._reload_if_changed(self.path)
        found = self._file.tenants.get(tenant_id, {}).get(name)
        if found is None:
            found = self._file.shared.get(name)
        if found is None:
            found = self._environ.get(ENV_PREFIX + name) or None
        if found is None:
            where = f"the secrets file or {ENV_PREFIX}{name}" if self.path else f"{ENV_PREFIX}{name}"
            raise TemplateError(f"secret.{name}", f"unknown secret '{name}' (not in {where})")
        self._learn((found,))
        return found

    def lookup(self, tenant_id: str) -> Callable[[str], str]:
        """The ``secrets`` argument of ``templates.render`` for one tenant."""
        return lambda name: self.value(tenant_id, name)

    def _learn(self, values: Iterable[str]) -> None:
        new = {v for v in values if v and v not in self._known}
        if not new:
            return
        with self._lock:
            self._known |= new
            self._forms = Forms(self._known)

    @property
    def active(self) -> bool:
        """Whether there is any value to hide."""
        return self._forms is not None

    def holds(self, text: str) -> bool:
        """Whether ``text`` holds a known value, in any form the redactor finds."""
        return self.redact_text(text) is not text

    # ------------------------------------------------------------------ redaction
    def redact_text(self, text: str) -> str:
        forms = self._forms
        if forms is None or not text:
            return text
        masked = forms.mask(text, MASK)
        return text if masked == text else masked

    def redact(self, value: Any) -> Any:
        """``value`` with every known secret value in its strings (keys too) replaced by ``***``.
        The same object comes back when nothing had to change."""
        if self._forms is None:
            return value
        return self._redact(value)

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            items = [(self._redact(k), self._redact(v)) for k, v in value.items()]
            if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
                return value
            return dict(items)
        if isinstance(value, (list, tuple)):
            redacted = [self._redact(item) for item in value]
            if all(a is b for a, b in zip(redacted, value, strict=True)):
                return value
            return redacted if isinstance(value, list) else tuple(redacted)
        return value

    def redact_error(self, error: StepError | None) -> StepError | None:
        if error is None or self._forms is None:
            return error
        message = self.redact_text(error.message)
        return error if message is error.message else attrs.evolve(error, message=message)

    def redact_log(self, entry: LogEntry) -> LogEntry:
        message, data = self.redact_text(entry.message), self.redact(entry.data)
        if message is entry.message and data is entry.data:
            return entry
        return attrs.evolve(entry, message=message, data=data)

    def redact_evidence(self, item: Evidence) -> Evidence:
        """Redacted data, and the hash of what is kept (taken after redaction)."""
        data = self.redact(item.data)
        return item if data is item.data else attrs.evolve(item, data=data, sha256=sha256_hex(data))

    def redact_report(self, message: Any) -> Any:
        """A step's report (any attrs message with ``output``/``error``/``logs``/``evidence``/
        ``progress`` fields) as it may reach the execution core."""
        if self._forms is None:
            return message
        changes: dict[str, Any] = {}
        for name, redact in (("output", self.redact), ("progress", self.redact), ("error", self.redact_error),
                             ("logs", self._logs), ("evidence", self._evidence)):
            if hasattr(message, name):
                old = getattr(message, name)
                new = redact(old)
                if new is not old:
                    changes[name] = new
        return attrs.evolve(message, **changes) if changes else message

    def _logs(self, entries: Iterable[LogEntry]) -> tuple[LogEntry, ...]:
        return tuple(self.redact_log(e) for e in entries)

    def _evidence(self, items: Iterable[Evidence]) -> tuple[Evidence, ...]:
        return tuple(self.redact_evidence(i) for i in items)


# ---------------------------------------------------------------------- the process's logging

_ACTIVE: list[Secrets] = []
_previous_factory: Callable[..., logging.LogRecord] | None = None
_formatter = logging.Formatter()


def install_log_redaction(secrets: Secrets) -> None:
    """Redact every log record of the process with ``secrets`` until ``remove_log_redaction``."""
    global _previous_factory
    if not _ACTIVE:
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_factory)
    _ACTIVE.append(secrets)


def remove_log_redaction(secrets: Secrets) -> None:
    global _previous_factory
    if secrets in _ACTIVE:
        _ACTIVE.remove(secrets)
    if not _ACTIVE and _previous_factory is not None:
        logging.setLogRecordFactory(_previous_factory)
        _previous_factory = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous_factory is not None
    record = _previous_factory(*args, **kwargs)
    active = [s for s in list(_ACTIVE) if s.active]
    if not active:
        return record
    try:
        text = record.getMessage()
    except Exception:  # a bad format string is logging's own problem, left as it is
        return record
    redacted = _redacted(active, text)
    if redacted != text:
        record.msg, record.args = redacted, None
    if record.exc_info:
        record.exc_text = _redacted(active, _formatter.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = _redacted(active, record.stack_info)
    return record


def _redacted(active: list[Secrets], text: str) -> str:
    for secrets in active:
        text = secrets.redact_text(text)
    return text
