"""``Cluster``: this process among several sharing one store (PostgreSQL), through its
``ClusterLedger`` (``runtime/store/ledger.py``).

It owns what only matters with several processes:

- **The incarnation.** ``RUNBOOKS_INSTANCE_ID`` names the process; each start of it is an
  incarnation of its own (``owner``: the id plus a random part), the owner of what it runs.
  At start it registers (the incarnations before of the same id are replaced at once: a
  process still alive under that id is fenced out and logged loudly), takes back every
  unfinished execution of that id under a new epoch, and keeps its ``Lease``
  (``lease.py``): the renewal, and letting go of every execution when the hold slips. If a
  later start took the id, every execution here is stopped: its writes would be refused.
- **Takeover.** Unfinished executions whose owner is gone (released at a graceful shutdown,
  or whose incarnation is dead) are claimed one by one (compare-and-set on the epoch), at
  most ``TAKEOVER_SHARE`` per round so that the survivors share them, and only those this
  process has every step type for; the others are left to a process that has them (their
  runbooks are skipped by the next rounds' queries) and counted in ``waiting_for_owner``.
- **Forwarding.** A command (a core message, ``runtime.core.messages.Command``) for an
  execution another process owns becomes a row of the commands table: its class name and
  its fields as JSON (``forward``; ``send`` when nobody waits). The caller waits for the
  owner's outcome up to ``FORWARD_WAIT_MS``, else it gets ``CommandQueued``. Commands for
  executions owned here are read back as the same messages and handed to their actors
  (``deliver``), in order, each once. Whether a request goes here or there is decided by
  ``runtime.api.routing``.
- **Notifications.** The ledger's notifications (one LISTEN connection) bring the
  announcements: commands, outcomes, committed states of executions run elsewhere (fed to
  this process's watchers), released executions, registered runbooks. While the connection
  is down (broken, or silent: see ``pg_listener.py``) this process is not ready, caches no
  latest runbook version, and polls instead every ``POLL_S``: new commands for its
  executions, the outcomes its callers wait for, the versions of what it watches.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import trio

from runtime.cluster.lease import Lease
from runtime.core.messages import Command, command_of, command_row
from runtime.core.plan import UnknownStepType
from runtime.model import Execution
from runtime.model.errors import CommandQueued, NotFound
from runtime.model.records import QueuedCommand
from runtime.shell import commands
from runtime.shell.catalog import Catalog
from runtime.shell.clock import Clock
from runtime.shell.directory import Directory
from runtime.shell.watch import WatchHub
from runtime.store.ledger import ClusterLedger

logger = logging.getLogger("runbooks.cluster")
Read = Callable[..., Awaitable[Any]]
COMMAND_RETENTION_S = 24 * 3600
TAKEOVER_SHARE = 100  # executions claimed per round at most: the survivors share a dead process's
POLL_S = 0.5  # while the notifications are down
SILENCE_BEATS = 3  # the LISTEN connection is given up when no own ping came back for this many beats
MIN_SILENCE_S = 5.0  # (and at least this long: a short TTL under load is no sign of a silent connection)
FORGET_SKIPPED_ROUNDS = 30  # runbooks found impossible to run here are tried again after this many rounds


def default_instance_id() -> str:
    """An embedding program's id when it names none: unique to this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Cluster:
    def __init__(self, store: ClusterLedger, read: Read, directory: Directory, catalog: Catalog, hub: WatchHub,
                 *, instance_id: str, ttl_ms: int, forward_wait_ms: int) -> None:
        self.store = store
        self._read = read
        self._directory = directory
        self._catalog = catalog
        self._hub = hub
        self.instance_id = instance_id
        self.incarnation = uuid.uuid4().hex[:12]
        self.owner = f"{instance_id}@{self.incarnation}"  # this incarnation: the owner of what runs here
        self.ttl_s = ttl_ms / 1000
        self.forward_wait_s = forward_wait_ms / 1000
        self.waiting_for_owner = 0  # executions nobody here can run (a step type is missing)
        self.connected = False
        self._outcomes: dict[str, trio.Event] = {}  # command id -> set when its outcome is recorded
        self._delivered: set[str] = set()  # commands handed to actors here, outcome not seen yet
        self._nursery: trio.Nursery | None = None
        self._skip: set[str] = set()  # tenant/runbook/version this process cannot run
        self._rounds = 0
        self._seen_seq = 0  # the last command row seen while polling
        self.lease = Lease(store.renewer(), self.owner, self.ttl_s, store.ping_of, on_lost=self._let_go,
                           on_back=self._take_back, on_replaced=self._replaced)
        self._listener = store.notifications(self._on_notice, self._on_connected,
                                             silence_s=max(SILENCE_BEATS * self.lease.interval_s, MIN_SILENCE_S))

    # ------------------------------------------------------------------ life
    async def start(self, nursery: trio.Nursery) -> list[str]:
        """Take the instance id and this process's executions; the ids to run here."""
        self._nursery = nursery
        await nursery.start(self._listener.run)
        sent = trio.current_time()
        alive = await self._read(self.store.register_instance, self.instance_id, self.owner, self.ttl_s)
        self.lease.registered(sent)
        own: list[str] = await self._read(self.store.claim_own, self.instance_id, self.owner)
        if alive:  # what a restart after kill -9 looks like (or, rarely, a second process with this id)
            logger.warning("instance %r restarted before its previous run's heartbeat ran out (that run "
                           "stopped without handing over, e.g. killed): resuming its %d unfinished "
                           "execution(s) here now; writes of the previous run, if it still runs, are refused",
                           self.instance_id, len(own))
        nursery.start_soon(self._polling)
        return own

    async def set_clock(self, clock: Clock) -> None:
        """Set this process's clock to the database's (so deadlines mean the same instant on
        every process): its ``now()`` when asked, plus half the round trip."""
        sent = trio.current_time()
        database_now: datetime = await self._read(self.store.database_now)
        back = trio.current_time()
        clock.anchor(database_now + timedelta(seconds=(back - sent) / 2), back)

    def acting(self) -> bool:
        """Whether this process may act as the owner of its executions now (its lease holds)."""
        return self.lease.holds()

    def not_ready(self) -> str | None:
        """Why this process should get no traffic now, if it should not."""
        if self.lease.replaced:
            return f"another process took RUNBOOKS_INSTANCE_ID {self.instance_id!r}"
        if not self.lease.holds():
            return "this process could not renew its heartbeat in time (the database is out of reach)"
        if not self.connected:
            return "the notifications connection to the database is down"
        return None

    async def heartbeat(self) -> None:
        """Renew this incarnation (``Lease``); beside it, take over what nobody runs, and now
        and then sweep old command rows. The loops are apart so that a long takeover never
        holds the renewal back."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._taking_over)
            nursery.start_soon(self._sweeping)
            await self.lease.run()
            nursery.cancel_scope.cancel()

    async def _taking_over(self) -> None:
        while True:
            await trio.sleep(self.ttl_s / 3)
            try:
                await self.take_over()
            except Exception as exc:  # the database is away: the next round tries again
                logger.warning("takeover failed: %s", exc)

    async def _sweeping(self) -> None:
        while True:
            await trio.sleep(self.ttl_s * 333)
            try:
                await self._read(self.store.sweep_commands, COMMAND_RETENTION_S)
            except Exception as exc:
                logger.warning("sweep of old commands failed: %s", exc)

    async def stop(self) -> None:
        """Graceful shutdown: every execution of this incarnation goes to the others at once."""
        if self.lease.replaced:
            return  # nothing is this incarnation's any more
        released = await self._read(self.store.stop_instance, self.owner)
        try:
            others = await self._read(self.store.others_alive, self.instance_id) if released else 0
        except Exception:  # (the count is for the log line only)
            others = -1
        if not released:
            logger.info("stopped: no unfinished executions to hand over")
        elif others < 0:
            logger.info("released %d unfinished execution(s) for the next process that runs", len(released))
        elif others:
            logger.info("handed %d unfinished execution(s) over to the %d other running process(es)",
                        len(released), others)
        else:
            logger.info("released %d unfinished execution(s); no other process is running: the next "
                        "process to start on this database resumes them", len(released))

    def _replaced(self) -> None:
        logger.error("another process took RUNBOOKS_INSTANCE_ID %r: this process stops running its "
                     "executions (its writes are refused)", self.instance_id)

    def _let_go(self) -> None:
        """The hold slipped: stop every execution here at once (their attempts in flight are
        cancelled; nothing is written), before another process may take them over."""
        for execution_id in self._directory.ids():
            self._directory.stop(execution_id)
        self._delivered.clear()

    async def _take_back(self) -> None:
        """The hold is back: run again what is still this incarnation's (under a new epoch)."""
        for execution_id in await self._read(self.store.claim_own, self.instance_id, self.owner):
            # a new actor for each, reading its new epoch (one started meanwhile holds the old
            # epoch: its writes would be refused, and nobody would run the execution)
            self._directory.stop(execution_id)
            self._directory.start(execution_id, taken_over=True)

    # ------------------------------------------------------------------ takeover
    async def take_over(self) -> None:
        """Claim unfinished executions nobody alive owns that this process can run: at most
        ``TAKEOVER_SHARE`` a round, so that a dead process's executions are shared."""
        if not self.acting():
            return
        self._rounds += 1
        if self._rounds % FORGET_SKIPPED_ROUNDS == 0:
            self._skip.clear()  # (a step type may have been registered since)
        chosen: list[tuple[str, int]] = []
        for execution_id, epoch, tenant_id, runbook_id, version in await self._read(
                self.store.orphans, self.owner, sorted(self._skip), TAKEOVER_SHARE):
            if self._directory.knows(execution_id):
                continue
            if not await self._capable(tenant_id, runbook_id, version):
                self._skip.add(f"{tenant_id}/{runbook_id}/{version}")
                continue
            chosen.append((execution_id, epoch))
        if chosen and self.acting():  # one statement for all; each actor reads its execution itself
            for execution_id in await self._read(self.store.claim_all, self.owner, chosen):
                logger.info("taking over execution %s", execution_id)
                self._directory.start(execution_id, taken_over=True)
                self._hub.notify("execution.taken_over", execution_id)
        self.waiting_for_owner = (await self._read(self.store.skipped_orphans, self.owner, sorted(self._skip))
                                  if self._skip else 0)

    def types_changed(self) -> None:
        """A step type was registered: what could not run here may now; look again at once."""
        self._skip.clear()
        self.soon(self.take_over)

    async def _capable(self, tenant_id: str, runbook_id: str, version: int) -> bool:
        try:
            runbook = await self._catalog.get(runbook_id, version, tenant_id=tenant_id)
            self._catalog.plan(runbook)
        except (UnknownStepType, NotFound):
            return False
        return True

    async def claim_finished(self, execution_id: str) -> bool:
        """Own a finished execution to run it again (a step retry)."""
        if not self.acting():
            return False
        return await self._read(self.store.claim_finished, execution_id, self.owner) is not None

    # ------------------------------------------------------------------ commands
    async def forward(self, execution_id: str, command: Command) -> Any:
        """Hand a command to the execution's owner and return its answer (or raise it)."""
        command_id = uuid.uuid4().hex
        done = self._outcomes[command_id] = trio.Event()
        try:
            await self._read(self.store.insert_command, command_id, execution_id, *command_row(command),
                             self.instance_id)
            found = await self._outcome(command_id, done)
        finally:
            del self._outcomes[command_id]
        if found is None or not found[0]:
            raise CommandQueued(command_id, execution_id)
        return commands.decoded(found[1])

    async def _outcome(self, command_id: str, done: trio.Event) -> tuple[bool, Any] | None:
        """The command's outcome once announced (or read every ``POLL_S`` while the
        announcements are down), else as it is after ``forward_wait_s``."""
        with trio.move_on_after(self.forward_wait_s):
            while True:
                with trio.move_on_after(POLL_S):
                    await done.wait()
                if done.is_set():
                    break
                if not self.connected:
                    found: tuple[bool, Any] | None = await self._read(self.store.command_outcome, command_id)
                    if found is not None and found[0]:
                        return found
        latest: tuple[bool, Any] | None = await self._read(self.store.command_outcome, command_id)
        return latest

    async def send(self, execution_id: str, command: Command) -> None:
        """Queue a command for the execution's owner without waiting for its outcome."""
        try:
            await self._read(self.store.insert_command, uuid.uuid4().hex, execution_id, *command_row(command),
                             self.instance_id)
        except Exception as exc:
            logger.error("could not queue %s for execution %s: %s", type(command).__name__, execution_id, exc)

    async def pending(self, execution_id: str) -> list[commands.Queued]:
        """The execution's queued commands, as messages (an actor applies them first)."""
        found = await self._read(self.store.pending_commands, execution_id)
        return [self._received(command_id, kind, body) for command_id, kind, body in found]

    def hand(self, queued: Iterable[QueuedCommand]) -> None:
        """Commands just committed by this process (a publish's events): those for
        executions run here go to their actors at once, without reading them back."""
        for command_id, execution_id, kind, body in queued:  # (another process's: its owner hears the NOTIFY)
            if self._fresh(command_id) and self._directory.knows(execution_id) and self.acting():
                self._directory.post(execution_id, self._received(command_id, kind, body))

    async def deliver(self, execution_id: str) -> None:
        """Hand the execution's new commands to its actor here, each once."""
        for command_id, kind, body in await self._read(self.store.pending_commands, execution_id):
            if self._fresh(command_id) and self._directory.knows(execution_id) and self.acting():
                self._directory.post(execution_id, self._received(command_id, kind, body))

    async def redeliver(self, execution_id: str) -> None:
        """A command of an execution this process owns has waited past its bound: whatever was
        lost on its way here (an announcement, a hand-over to an actor that was leaving), it
        is delivered again (an actor applies a command once, whatever it is handed)."""
        pending = await self._read(self.store.pending_commands, execution_id)
        if not pending or not self.acting():
            return
        known = self._directory.knows(execution_id)
        logger.warning("execution %s: %d command(s) waited past their bound for this process, which owns it "
                       "(%s); delivering again", execution_id, len(pending),
                       "it runs here" if known else "it was not running here")
        for command_id, _, _ in pending:
            self._delivered.discard(command_id)
        if known:
            await self.deliver(execution_id)
        else:  # (an actor taken over reads its queued commands first)
            self._directory.start(execution_id, taken_over=True)

    def _fresh(self, command_id: str) -> bool:
        """Neither handed to an actor nor applied here already (read again by a delivery that
        overlapped the one that applied it: its row was read before that commit)."""
        return command_id not in self._delivered and command_id not in self._directory.applied

    def _received(self, command_id: str, tag: str, body: Any) -> commands.Queued:
        """The command of a row, answered by recording its outcome (once handed to an actor)."""
        self._delivered.add(command_id)
        return commands.Queued(command_id, command_of(tag, body, commands.CommandReply(command_id)))

    # ------------------------------------------------------------------ notifications
    def _on_notice(self, payload: str) -> None:
        """From the listener thread, through the Trio token: must never raise."""
        try:
            self._notice(payload)
        except Exception:
            logger.exception("cluster: notification %r", payload)

    def _notice(self, payload: str) -> None:
        kind, _, argument = payload.partition(":")
        if kind == "done":
            self._delivered.discard(argument)
            event = self._outcomes.get(argument)
            if event is not None:
                event.set()
        elif kind == "cmd":
            execution_id, _, command_id = argument.partition(":")
            command_id, _, nonce = command_id.partition(":")
            if nonce == self.store.nonce:
                return  # committed by a publish of this process, which hands it over itself
            if self._directory.knows(execution_id) and self._fresh(command_id):
                self._spawn(self.deliver, execution_id)
        elif kind == "state":
            execution_id, _, version = argument.rpartition(":")
            known = self._hub.recent(execution_id)
            if (self._hub.watched(execution_id) and not self._directory.knows(execution_id)
                    and (known is None or known.version < int(version or 0))):
                self._spawn(self._follow, execution_id)
        elif kind == "released":
            self._spawn(self.take_over)
        elif kind == "runbook":
            self._catalog.forget_latest(argument)

    def _on_connected(self, connected: bool) -> None:
        try:
            self._connected(connected)
        except Exception:
            logger.exception("cluster: connection state")

    def _connected(self, connected: bool) -> None:
        self.connected = connected
        if connected:  # what was announced while nobody listened: catch up
            self._catalog.forget_latest(None)
            for execution_id in self._directory.ids():
                self._spawn(self.deliver, execution_id)
            for execution_id in self._hub.watched_ids():
                if not self._directory.knows(execution_id):
                    self._spawn(self._follow, execution_id)
        else:
            self._catalog.forget_latest(None)

    def caches_latest(self) -> bool:
        """Whether the latest version of each runbook may be cached (announced changes reach us)."""
        return self.connected

    async def _polling(self) -> None:
        """While the notifications are down: what they would have brought."""
        while True:
            await trio.sleep(POLL_S)
            if self.connected:
                continue
            try:
                await self._poll()
            except Exception as exc:  # the database is away too: the next round tries again
                logger.debug("cluster: polling failed: %s", exc)

    async def _poll(self) -> None:
        for seq, execution_id, command_id in await self._read(self.store.commands_after, self._seen_seq):
            self._seen_seq = max(self._seen_seq, seq)
            if self._directory.knows(execution_id) and command_id not in self._delivered:
                await self.deliver(execution_id)
        watched = [i for i in self._hub.watched_ids() if not self._directory.knows(i)]
        if watched:
            for execution_id, version in (await self._read(self.store.versions, watched)).items():
                known = self._hub.recent(execution_id)
                if known is None or known.version < version:
                    await self._follow(execution_id)

    async def _follow(self, execution_id: str) -> None:
        execution: Execution | None = await self._read(self.store.get_execution, execution_id)
        if execution is not None and not self._directory.knows(execution_id):
            self._hub.follow(execution)

    def soon(self, job: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``job`` in the background (errors are logged: the heartbeat tries again)."""
        self._spawn(job, *args)

    def _spawn(self, job: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(self._quietly, job, *args)
        except RuntimeError:  # closing down: nothing more to follow up
            self._nursery = None

    async def _quietly(self, job: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await job(*args)
        except Exception as exc:  # a notification's follow-up; the next one (or heartbeat) tries again
            logger.warning("cluster: %s failed: %s", getattr(job, "__name__", job), exc)
