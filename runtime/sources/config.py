"""The sources file (``RUNBOOKS_SOURCES_FILE``): event sources and lifecycle sinks, checked.

``load_sources(path)`` reads the YAML (or JSON) file and answers ``SourcesConfig``, or
raises ``SourcesFileError`` listing every problem with its path (``sources[1].stream:
required``). The shape::

    sources:
      - {id, tenant, kind: webhook, signature: {preset} | {header, algorithm, template,
         encoding, prefix, timestampHeader, idHeader, toleranceSeconds},
         secrets: ["${secret.NAME}", ...], maxBytes, event, deliveryId, keepMs}
      - {id, tenant, kind: nats-jetstream, url, stream, subject, durable, ackWaitMs,
         maxInFlight, event, keepMs}
      - {id, tenant, kind: redis-stream, url, stream, group, field, claimIdleMs,
         maxInFlight, event, keepMs}
    sinks:
      - {id, kind: nats, url, subject, tenant?}
      - {id, kind: redis-stream, url, stream, maxLength?, tenant?}

``event`` is ``{type, key, payload}``, templates over ``body.*``, ``headers.*`` (lower
case) and ``message.*`` (a bus message's id, subject, stream); ``payload`` defaults to the
whole body. Nothing here connects to anything.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import yaml

from runtime.language.templates import template_problems
from runtime.model.errors import Problem
from runtime.sources.signatures import ALGORITHMS, ENCODINGS, PRESETS, Scheme, placeholders, preset

WEBHOOK, NATS, REDIS = "webhook", "nats-jetstream", "redis-stream"
SOURCE_KINDS: Final = (WEBHOOK, NATS, REDIS)
SINK_KINDS: Final = ("nats", "redis-stream")
DAY_MS: Final = 86_400_000
MAX_HOOK_BYTES: Final = 1024 * 1024
MAX_FILE_BYTES: Final = 1024 * 1024
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SECRET_REF: Final = re.compile(r"\$\{\s*secret\.([A-Za-z0-9_.-]+)\s*\}")
#: the client library each bus needs (the ``sources`` extra: pip install 'runbooks[sources]')
CLIENTS: Final = {NATS: "nats", "nats": "nats", REDIS: "coredis"}
#: a preset's delivery id when the scheme's headers carry none
PRESET_DELIVERY_IDS: Final = {"stripe": "${body.id}", "slack": "${body.event_id}"}


class SourcesFileError(Exception):
    def __init__(self, path: str, problems: list[Problem]) -> None:
        super().__init__(f"sources file {path}: " + "; ".join(f"{p.path}: {p.message}" for p in problems))
        self.problems = problems


@attrs.frozen
class EventMap:
    type: Any
    key: Any
    payload: Any = "${body}"
    delivery_id: str | None = None  # a template; None: the scheme's or the bus's own id


@attrs.frozen
class Source:
    id: str
    tenant: str
    kind: str
    event: EventMap
    keep_ms: int = DAY_MS
    max_in_flight: int = 32
    # webhook
    scheme: Scheme | None = None
    secrets: tuple[str, ...] = ()  # secret names
    max_bytes: int = MAX_HOOK_BYTES
    # buses
    url: str = ""
    stream: str = ""
    subject: str = ""
    durable: str = ""
    group: str = ""
    field: str = "body"
    ack_wait_ms: int = 30_000


@attrs.frozen
class Sink:
    id: str
    kind: str
    url: str
    subject: str = ""
    stream: str = ""
    max_length: int | None = None
    tenant: str | None = None


@attrs.frozen
class SourcesConfig:
    sources: tuple[Source, ...] = ()
    sinks: tuple[Sink, ...] = ()

    def source(self, source_id: str) -> Source | None:
        return next((s for s in self.sources if s.id == source_id), None)


def load_sources(path: str) -> SourcesConfig:
    """The checked contents of the file; ``SourcesFileError`` with every problem."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SourcesFileError(path, [Problem("$", exc.strerror or str(exc))]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SourcesFileError(path, [Problem("$", "larger than 1 MiB")])
    try:
        data = yaml.safe_load(raw.decode("utf-8")) if raw.strip() else {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SourcesFileError(path, [Problem("$", f"not YAML: {exc}")]) from None
    return parse_sources(data, path)


def parse_sources(data: Any, path: str = "<sources>") -> SourcesConfig:
    reader = _Reader()
    config = reader.config(data)
    if reader.problems:
        raise SourcesFileError(path, reader.problems)
    return config


class _Reader:
    """Reads the file's data, collecting every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def config(self, data: Any) -> SourcesConfig:
        if not isinstance(data, Mapping):
            self.problem("$", "must be a mapping with sources and sinks")
            return SourcesConfig()
        for key in data:
            if key not in ("sources", "sinks"):
                self.problem(str(key), "unknown field (sources, sinks)")
        sources = self._list(data, "sources", self.source)
        sinks = self._list(data, "sinks", self.sink)
        self._unique([s.id for s in sources], "sources")
        self._unique([s.id for s in sinks], "sinks")
        return SourcesConfig(tuple(sources), tuple(sinks))

    def _list(self, data: Mapping[str, Any], name: str, read: Callable[[Any, str], Any]) -> list[Any]:
        items = data.get(name) or []
        if not isinstance(items, list):
            self.problem(name, "must be a list")
            return []
        return [found for index, item in enumerate(items) if (found := read(item, f"{name}[{index}]")) is not None]

    def _unique(self, ids: list[str], where: str) -> None:
        for index, id_ in enumerate(ids):
            if id_ in ids[:index]:
                self.problem(f"{where}[{index}].id", f"{id_!r} is used twice")

    # -- fields
    def text(self, item: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
        value = item.get(key, default)
        if value is None:
            self.problem(f"{path}.{key}", "required")
            return ""
        if not isinstance(value, str) or not value:
            self.problem(f"{path}.{key}", "must be a non-empty string")
            return ""
        return value

    def ident(self, item: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
        value = self.text(item, key, path, default)
        if value and not _ID.fullmatch(value):
            self.problem(f"{path}.{key}", "letters, digits, '_', '-' and '.', at most 128")
        return value

    def number(self, item: Mapping[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
        value = item.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(f"{path}.{key}", f"must be an integer between {low} and {high}")
            return default
        return value

    def choice(self, item: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...],
               default: str | None = None) -> str:
        value = self.text(item, key, path, default)
        if value and value not in choices:
            self.problem(f"{path}.{key}", f"must be one of {', '.join(choices)}")
        return value

    def client(self, kind: str, path: str) -> None:
        module = CLIENTS.get(kind)
        if module is not None and importlib.util.find_spec(module) is None:
            self.problem(f"{path}.kind", f"{kind} needs the {module} package: pip install 'runbooks[sources]'")

    def fields(self, item: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
        for key in item:
            if key not in known:
                self.problem(f"{path}.{key}", f"unknown field ({', '.join(known)})")

    # -- a source
    def source(self, item: Any, path: str) -> Source | None:
        if not isinstance(item, Mapping):
            self.problem(path, "must be a mapping")
            return None
        kind = self.choice(item, "kind", path, SOURCE_KINDS)
        self.client(kind, path)
        common: dict[str, Any] = {"id": self.ident(item, "id", path), "tenant": self.ident(item, "tenant", path, "default"),
                  "kind": kind, "event": self.event(item, path), "keep_ms": self.number(item, "keepMs", path, DAY_MS,
                                                                                         60_000, 30 * DAY_MS),
                  "max_in_flight": self.number(item, "maxInFlight", path, 32, 1, 1024)}
        known = ("id", "tenant", "kind", "event", "keepMs", "maxInFlight")
        if kind == WEBHOOK:
            return Source(**common, **self.webhook(item, path, known))
        if kind == NATS:
            self.fields(item, path, (*known, "url", "stream", "subject", "durable", "ackWaitMs"))
            return Source(**common, url=self.text(item, "url", path), stream=self.ident(item, "stream", path),
                          subject=self.text(item, "subject", path), durable=self.ident(item, "durable", path),
                          ack_wait_ms=self.number(item, "ackWaitMs", path, 30_000, 1000, 3_600_000))
        if kind == REDIS:
            self.fields(item, path, (*known, "url", "stream", "group", "field", "claimIdleMs"))
            return Source(**common, url=self.text(item, "url", path), stream=self.text(item, "stream", path),
                          group=self.text(item, "group", path), field=self.text(item, "field", path, "body"),
                          ack_wait_ms=self.number(item, "claimIdleMs", path, 30_000, 1000, 3_600_000))
        return None

    def webhook(self, item: Mapping[str, Any], path: str, known: tuple[str, ...]) -> dict[str, Any]:
        self.fields(item, path, (*known, "signature", "secrets", "maxBytes", "deliveryId"))
        scheme = self.scheme(item.get("signature"), f"{path}.signature")
        return {"scheme": scheme, "secrets": self.secrets(item.get("secrets"), f"{path}.secrets"),
                "max_bytes": self.number(item, "maxBytes", path, MAX_HOOK_BYTES, 1, MAX_HOOK_BYTES)}

    def scheme(self, value: Any, path: str) -> Scheme | None:
        if not isinstance(value, Mapping):
            self.problem(path, "required: {preset} or {header, algorithm, template, encoding, prefix}")
            return None
        if "preset" in value:
            self.fields(value, path, ("preset", "toleranceSeconds"))
            name = self.choice(value, "preset", path, PRESETS)
            tolerance = self.number(value, "toleranceSeconds", path, 300, 1, 86_400)
            return attrs.evolve(preset(name), tolerance_s=tolerance) if name in PRESETS else None
        self.fields(value, path, ("header", "algorithm", "template", "encoding", "prefix", "timestampHeader",
                                  "idHeader", "toleranceSeconds"))
        template = self.text(value, "template", path, "{body}")
        if template and "body" not in placeholders(template):
            self.problem(f"{path}.template", "must contain {body}")
        optional = {key: str(value[key]).lower() for key in ("timestampHeader", "idHeader") if value.get(key)}
        return Scheme(self.text(value, "header", path).lower(), self.choice(value, "algorithm", path,
                                                                            tuple(ALGORITHMS), "sha256"),
                      template, self.choice(value, "encoding", path, ENCODINGS, "hex"),
                      str(value.get("prefix", "")), optional.get("timestampHeader"), optional.get("idHeader"),
                      self.number(value, "toleranceSeconds", path, 300, 1, 86_400))

    def secrets(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            self.problem(path, "required: a list of ${secret.NAME} references")
            return ()
        names = []
        for index, ref in enumerate(value):
            match = _SECRET_REF.fullmatch(ref) if isinstance(ref, str) else None
            if match is None:
                self.problem(f"{path}[{index}]", "must be a ${secret.NAME} reference (never the value itself)")
            else:
                names.append(match.group(1))
        return tuple(names)

    def event(self, item: Mapping[str, Any], path: str) -> EventMap:
        value = item.get("event")
        where = f"{path}.event"
        if not isinstance(value, Mapping):
            self.problem(where, "required: {type, key, payload}")
            return EventMap("", "")
        self.fields(value, where, ("type", "key", "payload"))
        for key in ("type", "key"):
            if value.get(key) in (None, ""):
                self.problem(f"{where}.{key}", "required (a template over body.* and headers.*)")
        for problem in template_problems(dict(value), where) + template_problems(item.get("deliveryId"),
                                                                                  f"{path}.deliveryId"):
            self.problems.append(problem)
        delivery = item.get("deliveryId")
        if delivery is not None and not isinstance(delivery, str):
            self.problem(f"{path}.deliveryId", "must be a template string")
            delivery = None
        return EventMap(value.get("type", ""), value.get("key", ""), value.get("payload", "${body}"), delivery)

    # -- a sink
    def sink(self, item: Any, path: str) -> Sink | None:
        if not isinstance(item, Mapping):
            self.problem(path, "must be a mapping")
            return None
        self.fields(item, path, ("id", "kind", "url", "subject", "stream", "maxLength", "tenant"))
        kind = self.choice(item, "kind", path, SINK_KINDS)
        self.client(kind, path)
        sink = Sink(self.ident(item, "id", path), kind, self.text(item, "url", path))
        tenant = self.ident(item, "tenant", path) if "tenant" in item else None
        if kind == "nats":
            return attrs.evolve(sink, subject=self.text(item, "subject", path), tenant=tenant)
        if kind == "redis-stream":
            length = self.number(item, "maxLength", path, 0, 0, 10**9) if "maxLength" in item else None
            return attrs.evolve(sink, stream=self.text(item, "stream", path), max_length=length or None, tenant=tenant)
        return None


def describe(config: SourcesConfig) -> str:
    """A one-line summary for the log."""
    return json.dumps({"sources": [s.id for s in config.sources], "sinks": [s.id for s in config.sinks]})
