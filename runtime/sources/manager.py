"""``Sources``: the event sources and sinks of one process, as the sources file says.

``open_sources(runtime, path)`` reads the file (``SourcesFileError`` with every problem:
start-up stops), starts a consumer per bus source and a publisher per sink, and watches the
file: a changed file that checks out replaces what changed (a source whose settings are
the same keeps running); one with problems is logged, one line per problem, and the
running config stays. ``hook`` answers a webhook request, ``listing`` describes a tenant's
sources with their counters and status, ``not_ready`` says why the sources cannot take
messages now (the store's commits fail).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from runtime.api.runtime import Runtime
from runtime.language.templates import TemplateError, render
from runtime.sources.buses import bus_for
from runtime.sources.config import (
    WEBHOOK,
    Sink,
    Source,
    SourcesConfig,
    SourcesFileError,
    load_sources,
)
from runtime.sources.consumer import consume
from runtime.sources.intake import Intake
from runtime.sources.sinks import run_sinks
from runtime.sources.webhooks import HookAnswer, receive_hook

logger = logging.getLogger("runbooks.sources")
WATCH_EVERY_S = 1.0


class Sources:
    def __init__(self, runtime: Runtime, path: str | None, config: SourcesConfig, nursery: trio.Nursery,
                 consumer_name: str) -> None:
        self.runtime = runtime
        self.path = path
        self.config = config
        self.intake = Intake(runtime, nursery)
        self.status: dict[str, str] = {}
        self._nursery = nursery
        self._consumer = consumer_name
        self._running: dict[str, tuple[Source | tuple[Sink, ...], trio.CancelScope]] = {}
        self._stamp = _stamp(path)

    # ------------------------------------------------------------------ requests
    def source(self, source_id: str, kind: str | None = None) -> Source | None:
        found = self.config.source(source_id)
        return found if found is not None and (kind is None or found.kind == kind) else None

    async def hook(self, source_id: str, body: bytes, headers: Mapping[str, str]) -> HookAnswer | None:
        """The answer to a webhook request; None: no webhook source has this id."""
        source = self.source(source_id, WEBHOOK)
        if source is None:
            return None
        return await receive_hook(self.intake, source, body, {k.lower(): v for k, v in headers.items()})

    def listing(self, tenant_id: str) -> list[dict[str, Any]]:
        return [self.describe(source) for source in self.config.sources if source.tenant == tenant_id]

    def describe(self, source: Source) -> dict[str, Any]:
        found: dict[str, Any] = {"id": source.id, "tenant": source.tenant, "kind": source.kind,
                                 "counters": self.intake.count(source.id).as_json()}
        if source.kind == WEBHOOK:
            found["path"] = f"/api/v1/hooks/{source.id}"
            found["signature"] = source.scheme.preset if source.scheme and source.scheme.preset else "generic"
        else:
            found["status"] = self.status.get(source.id, "starting")
            found.update({k: v for k, v in (("stream", source.stream), ("subject", source.subject),
                                            ("durable", source.durable), ("group", source.group)) if v})
        return found

    def not_ready(self) -> str | None:
        paused = sorted(sid for sid, status in self.status.items() if status.startswith("paused"))
        return f"sources paused while the store fails: {', '.join(paused)}" if paused else None

    # ------------------------------------------------------------------ running
    def apply(self, config: SourcesConfig) -> None:
        """Run what ``config`` names: start what is new or changed, stop what left."""
        wanted: dict[str, Source | tuple[Sink, ...]] = {s.id: s for s in config.sources if s.kind != WEBHOOK}
        if config.sinks:
            wanted[" sinks"] = config.sinks  # (one task: each outbox event goes to every sink, then is done)
        for key, (spec, scope) in list(self._running.items()):
            if wanted.get(key) != spec:
                scope.cancel()
                del self._running[key]
                for sink in spec if isinstance(spec, tuple) else (spec,):
                    self.status.pop(sink.id, None)
        for key, spec in wanted.items():
            if key not in self._running:
                scope = trio.CancelScope()
                self._running[key] = (spec, scope)
                self._nursery.start_soon(self._run, spec, scope, name=key)
        self.config = config

    async def _run(self, spec: Source | tuple[Sink, ...], scope: trio.CancelScope) -> None:
        with scope:
            if isinstance(spec, tuple):
                urls = {sink.id: self._url(sink) for sink in spec}
                if all(urls.values()):
                    await run_sinks(spec, {k: v for k, v in urls.items() if v}, self.runtime, self.status)
                return
            url = self._url(spec)
            if url is not None:
                await consume(spec, bus_for(spec, self._consumer, url), self.intake, self.status, self._store_problem)

    def _url(self, spec: Source | Sink) -> str | None:
        """The spec's URL with its ``${secret.NAME}`` references resolved."""
        tenant = spec.tenant if isinstance(spec, Source) else (spec.tenant or "default")
        try:
            url = render(spec.url, {}, self.runtime.secrets.lookup(tenant))
        except TemplateError as exc:
            self.status[spec.id] = f"not started: {exc.message}"
            logger.error("%s %s not started: %s", type(spec).__name__.lower(), spec.id, exc.message)
            return None
        return str(url)

    def _store_problem(self) -> str | None:
        stats = self.runtime.persistence.stats
        return None if stats.healthy else f"the store's commits fail ({stats.last_error or 'unknown error'})"

    async def watch(self) -> None:
        """Reload the file when it changes (checked every ``WATCH_EVERY_S``)."""
        while self.path is not None:
            await trio.sleep(WATCH_EVERY_S)
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            self.reload()

    def reload(self) -> bool:
        """Read the file again; on problems keep the running config (each problem logged)."""
        assert self.path is not None
        try:
            config = load_sources(self.path)
        except SourcesFileError as exc:
            for problem in exc.problems:
                logger.error("sources file %s: %s: %s (the running sources stay)", self.path, problem.path,
                             problem.message)
            return False
        self.apply(config)
        logger.info("sources file %s reloaded: %d sources, %d sinks", self.path, len(config.sources),
                    len(config.sinks))
        return True


def _stamp(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def default_consumer_name() -> str:
    return socket.gethostname()


@asynccontextmanager
async def open_sources(runtime: Runtime, path: str | None, *, config: SourcesConfig | None = None,
                       consumer_name: str | None = None) -> AsyncIterator[Sources]:
    """The sources of ``path`` (or ``config``) running until the block ends."""
    if config is None:
        config = load_sources(path) if path is not None else SourcesConfig()
    async with trio.open_nursery() as nursery:
        sources = Sources(runtime, path, config, nursery, consumer_name or default_consumer_name())
        sources.apply(config)
        if path is not None:
            nursery.start_soon(sources.watch, name="sources file watch")
        try:
            yield sources
        finally:
            nursery.cancel_scope.cancel()
