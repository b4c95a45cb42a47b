"""``runbooks serve``: open the runtime, load RUNBOOKS_DIR, serve the app until SIGINT/SIGTERM.

Order of a run:

1. open the signal receiver first, so a SIGTERM that arrives at any later moment is a
   message, not a kill;
2. open the runtime (``open_runtime``: the store, the persistence actor, recovery);
3. register every ``*.yaml``/``*.yml``/``*.json`` of ``RUNBOOKS_DIR`` as a shared runbook
   (unchanged documents are not registered again, so restarts add no versions);
4. serve the app with hypercorn's Trio worker in the same task tree; the shutdown trigger
   waits on the receiver opened in step 1;
5. on the first signal: end the SSE streams, stop accepting, let in-flight requests
   finish (hypercorn's graceful timeout), then leave ``open_runtime``, which stops the
   execution actors and flushes the persistence actor. A second signal cancels the
   server at once (the runtime still closes cleanly).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from gateway.app import create_app
from gateway.config import Config, ConfigError
from gateway.metrics import create_metrics
from gateway.workers import (
    WorkerLink,
    check_can_share,
    reuse_port_socket,
    serve_workers,
    worker_count,
)
from runtime import (
    NotFound,
    Problem,
    Runbook,
    Runtime,
    StoreInUse,
    StoreUnavailable,
    ValidationError,
    check_store_url,
    open_runtime,
)
from runtime.documents.lines import located, with_lines
from runtime.io import tracing
from runtime.model.wire import load_document
from runtime.sources.manager import open_sources
from runtime.testing import is_test_file

logger = logging.getLogger("runbooks.gateway")

RUNBOOK_SUFFIXES = (".yaml", ".yml", ".json")
GRACEFUL_TIMEOUT_S = 5.0
Trigger = Callable[[], Awaitable[Any]]


async def serve(config: Config, *, prepare: Callable[[Runtime], None] | None = None,
                shutdown_trigger: Trigger | None = None, reuse_port: bool = False,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGINT/SIGTERM (or until ``shutdown_trigger`` returns, if given).

    ``prepare(runtime)`` runs before RUNBOOKS_DIR is loaded (register custom step types
    there). ``task_status.started`` receives the bound URLs. ``reuse_port``: bind with
    SO_REUSEPORT, beside the other workers of ``runbooks serve --workers N``. Raises
    ``ConfigError`` for a bad configuration, a store URL the runtime does not know, or a bad
    RUNBOOKS_DIR file.
    """
    config.check_can_serve()
    hyper = _hypercorn_config(config, reuse_port)
    if shutdown_trigger is not None:
        await _serve(config, hyper, prepare, _Shutdown(shutdown_trigger, None), task_status)
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await _serve(config, hyper, prepare, _Shutdown(None, signals), task_status)


class _Shutdown:
    """Waits for the trigger or the first signal; a second signal cancels ``hard``."""

    def __init__(self, trigger: Trigger | None, signals: Any) -> None:
        self._trigger = trigger
        self._signals = signals

    async def first(self) -> str:
        if self._trigger is not None:
            await self._trigger()
            return "shutdown requested"
        async for signum in self._signals:
            return signal.Signals(signum).name
        return "signal receiver closed"

    async def escalate(self, hard: trio.CancelScope) -> None:
        if self._signals is None:
            return
        async for signum in self._signals:
            logger.warning("%s again: stopping the server now", signal.Signals(signum).name)
            hard.cancel()
            return


async def _serve(config: Config, hyper: HyperConfig, prepare: Callable[[Runtime], None] | None,
                 shutdown: _Shutdown, task_status: trio.TaskStatus[list[str]]) -> None:
    store = _store_url(config)
    metrics, batch_observer = create_metrics()
    stop_tracing = tracing.configure_otlp(config.instance_id) if config.otel_exporter_otlp_endpoint else None
    try:
        await _serve_runtime(config, hyper, prepare, shutdown, task_status, store, metrics, batch_observer)
    finally:
        if stop_tracing is not None:  # export the spans still queued (bounded by the exporter's timeout)
            await trio.to_thread.run_sync(stop_tracing)
    logger.info("stopped")


async def _serve_runtime(config: Config, hyper: HyperConfig, prepare: Callable[[Runtime], None] | None,
                         shutdown: _Shutdown, task_status: trio.TaskStatus[list[str]], store: str, metrics: Any,
                         batch_observer: Any) -> None:
    sockets = _bound(hyper)  # first: a port that is taken stops start-up before the store is touched
    try:
        async with open_runtime(store, pool_max=config.db_pool_max, settings=config.settings(),
                                batch_observer=batch_observer) as runtime:
            if prepare is not None:
                prepare(runtime)
            await load_runbooks_dir(runtime, config.runbooks_dir)
            async with open_sources(runtime, config.sources_file, config=config.sources,
                                    consumer_name=config.instance_id) as sources, trio.open_nursery() as server:
                app = create_app(runtime, config, metrics=metrics, sources=sources)

                async def trigger() -> None:
                    reason = await shutdown.first()
                    logger.info("%s: shutting down (finishing in-flight requests)", reason)
                    app.extensions["runbooks"].streams.close_all()
                    server.start_soon(shutdown.escalate, server.cancel_scope, name="second signal")

                await worker_serve(wrap_app(app, hyper.wsgi_max_body_size, "asgi"), hyper,  # type: ignore[arg-type]
                                   sockets=sockets, shutdown_trigger=trigger, task_status=task_status)
                server.cancel_scope.cancel()
            logger.info("server stopped; closing the runtime")
    except BaseExceptionGroup as group:
        _raise_config_errors(group)
        raise
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()


def _bound(hyper: HyperConfig) -> Sockets:
    """The listening sockets of ``hyper.bind`` (OSError when the address is taken)."""
    sockets = hyper.create_sockets()
    for sock in sockets.insecure_sockets:
        sock.listen(hyper.backlog)
    return sockets


def _raise_config_errors(group: BaseExceptionGroup[Any]) -> None:
    """A start-up ConfigError that crossed the runtime's nurseries leaves as itself."""
    config_errors, rest = group.split(ConfigError)
    if config_errors is not None and rest is None:
        leaves = _leaves(config_errors)
        raise ConfigError(" | ".join(str(leaf) for leaf in leaves)) from group


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return found


def _store_url(config: Config) -> str:
    """The store's URL, checked before anything starts (DB_POOL_MAX goes to ``open_runtime`` beside it)."""
    try:
        check_store_url(config.store_url())
        return config.store_url()
    except ValueError as exc:
        raise ConfigError(f"STORAGE_BACKEND: the {config.storage_backend} store is not available: {exc}") from None


def _hypercorn_config(config: Config, reuse_port: bool) -> HyperConfig:
    hyper = HyperConfig()
    host = f"[{config.host}]" if ":" in config.host and not config.host.startswith("[") else config.host
    hyper.bind = [f"{host}:{config.port}"]
    if reuse_port:  # bound here, handed over as a descriptor: hypercorn sets SO_REUSEPORT only for its own workers
        hyper.bind = [f"fd://{reuse_port_socket(config.host, config.port).detach()}"]
    hyper.accesslog = None  # the gateway logs each request itself (runbooks.gateway)
    hyper.errorlog = logging.getLogger("hypercorn.error")  # through our handler only ("-" adds a second)
    hyper.graceful_timeout = GRACEFUL_TIMEOUT_S
    return hyper


# ------------------------------------------------------------------ RUNBOOKS_DIR

async def load_runbooks_dir(runtime: Runtime, directory: str | None) -> list[Runbook]:
    """Register every runbook file of ``directory`` as shared (tenant None).

    Every file is checked before any is registered; problems raise one ``ConfigError``
    naming each bad file and its problems. A document equal to the latest registered
    version is not registered again (the store decides, so processes started together with
    one directory register each runbook once); the list holds the new versions.
    """
    if directory is None:
        return []
    documents = await _read_documents(runtime, pathlib.Path(directory))
    registered = []
    for path, document in documents:
        if await _unchanged(runtime, document):
            continue
        asked_at = runtime.now()
        runbook = await runtime.register_runbook(document, tenant_id=None)
        if runbook.created_at is not None and runbook.created_at < asked_at:
            continue  # another process registered the same document just before
        logger.info("registered shared runbook %s version %d from %s", runbook.id, runbook.version, path.name)
        registered.append(runbook)
    return registered


async def _read_documents(runtime: Runtime, directory: pathlib.Path) -> list[tuple[pathlib.Path, dict[str, Any]]]:
    paths = await trio.to_thread.run_sync(_runbook_files, directory)
    documents: list[tuple[pathlib.Path, dict[str, Any]]] = []
    errors: list[str] = []
    owners: dict[str, pathlib.Path] = {}
    for path in paths:
        try:
            text = await trio.Path(path).read_bytes()
            document = load_document(text)
        except OSError as exc:
            errors.append(f"{path}: {_one_line(str(exc))}")
            continue
        except ValidationError as exc:
            errors.append(_problems_text(path, exc.problems))
            continue
        problems = runtime.validate_runbook(document)
        if problems:
            errors.append(_problems_text(path, with_lines(problems, text)))
        elif document["id"] in owners:
            errors.append(f"{path}: runbook id '{document['id']}' is also defined in {owners[document['id']]}")
        else:
            owners[document["id"]] = path
            documents.append((path, document))
    if errors:
        raise ConfigError("RUNBOOKS_DIR: " + " | ".join(errors))
    return documents


def _runbook_files(directory: pathlib.Path) -> list[pathlib.Path]:
    # NAME.test.yaml beside a runbook holds its tests (runbooks test), not a runbook
    return sorted(p for p in directory.iterdir()
                  if p.suffix.lower() in RUNBOOK_SUFFIXES and p.is_file() and not is_test_file(p))


def _problems_text(path: pathlib.Path, problems: list[Problem]) -> str:
    """``FILE:LINE: PATH (step 'ID'): MESSAGE`` for each problem, on one line."""
    return "; ".join(_one_line(located(str(path), p)) for p in problems)


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def _unchanged(runtime: Runtime, document: dict[str, Any]) -> bool:
    try:
        latest = await runtime.get_runbook(document["id"], tenant_id=None)
    except NotFound:
        return False
    return latest.document == document


# ------------------------------------------------------------------ command line

def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``runbooks serve``; each wins over its environment variable."""
    parser.add_argument("--host", help="address to bind (HOST, default 127.0.0.1)")
    parser.add_argument("--port", help="port to bind (PORT, default 3000)")
    parser.add_argument("--store", help="memory, sqlite:///file.db or postgresql://... "
                                        "(STORAGE_BACKEND with SQLITE_PATH or DATABASE_URL)")
    parser.add_argument("--runbooks-dir", help="register the runbooks of DIR at start (RUNBOOKS_DIR)")
    parser.add_argument("--workers", help="serve with N processes on one port (PostgreSQL store only; default 1)")
    parser.add_argument("--worker-link", help=argparse.SUPPRESS)  # PID:FD, set by the supervisor of --workers


def serve_main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """``runbooks serve [--host HOST] [--port PORT] [--store URL] [--runbooks-dir DIR] [--workers N]``;
    the exit status.

    Exit 0 after a graceful shutdown, 2 on a bad configuration, 1 when the store cannot be
    opened (one line on stderr either way).
    """
    parser = argparse.ArgumentParser(prog="runbooks serve", description="Serve the runbooks REST API and console.")
    add_serve_arguments(parser)
    return serve_from_args(parser.parse_args(argv), env)


def serve_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    try:
        variables = {**(os.environ if env is None else env), **_overrides(args)}
        config = Config.from_env(variables)
        count = worker_count(args.workers)
        check_can_share(config, count)
        link = WorkerLink.parse(args.worker_link) if args.worker_link is not None else None
        if link is not None:
            link.follow_parent()
        _setup_logging(config)
        if count > 1:
            return serve_workers(config, count, variables)
        _run(config, link)
    except ConfigError as exc:
        print(f"runbooks serve: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:  # at start: the database is unreachable, the file not writable...
        print(f"runbooks serve: cannot start: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _run(config: Config, link: WorkerLink | None) -> None:
    """``serve`` in a Trio run; an OSError (the port is taken...) becomes one ConfigError line."""
    where = f"{config.host}:{config.port}"
    try:
        trio.run(serve, config) if link is None else trio.run(_serve_as_worker, config, link)
    except StoreInUse as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot serve on {where}: {exc.strerror or exc}") from None
    except BaseExceptionGroup as group:
        in_use, _ = group.split(StoreInUse)
        if in_use is not None:
            raise ConfigError(str(_leaves(in_use)[0])) from None
        errors, rest = group.split(OSError)
        if errors is None or rest is not None:
            raise
        first = _leaves(errors)[0]
        raise ConfigError(f"cannot serve on {where}: {getattr(first, 'strerror', None) or first}") from None


async def _serve_as_worker(config: Config, link: WorkerLink) -> None:
    """One of the workers of ``--workers N``: SO_REUSEPORT, and a word to the supervisor once serving.

    Raises what ``serve`` raises (not wrapped in this function's nursery's group)."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve, config, reuse_port=True))
            link.ready()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides = {name: value for name, value in (
        ("RUNBOOKS_DIR", args.runbooks_dir), ("HOST", args.host), ("PORT", args.port)) if value is not None}
    if args.store is not None:
        overrides |= store_variables(args.store)
    return overrides


def store_variables(url: str) -> dict[str, str]:
    """The environment variables that select the store of a ``--store`` URL."""
    text = url.strip()
    if text == "memory":
        return {"STORAGE_BACKEND": "memory"}
    if text.startswith(("postgresql://", "postgres://")):
        return {"STORAGE_BACKEND": "postgres", "DATABASE_URL": text}
    if text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return {"STORAGE_BACKEND": "sqlite", "SQLITE_PATH": text[len("sqlite:///"):]}
    raise ConfigError(f"--store: {url!r} is not a store URL; use memory, sqlite:///file.db or postgresql://...")


def _setup_logging(config: Config) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    mode = "development mode (X-User-Id/X-Tenant-Id)" if config.development_mode else "bearer tokens"
    logger.info("runbooks gateway %s: %s store, %s, %s:%d", config.instance_id, config.storage_backend, mode,
                config.host, config.port)
    if config.otel_exporter_otlp_endpoint:
        logger.info("traces: OTLP/HTTP to %s", config.otel_exporter_otlp_endpoint)
