"""Three slots, each a ``runbooks serve`` process reaching PostgreSQL through its own TCP proxy.

A slot keeps its proxy for the whole round; its process may be killed and started again (under
the same or another instance id), stalled, or doubled by a second live process with the same
instance id. ``Cluster`` knows which processes it stopped on purpose, so one that ends by itself
is reported (``unexpected_exits``).
"""

from __future__ import annotations

import pathlib
import urllib.parse

import attrs
import psycopg
import trio
from psycopg import sql

from tests.chaos.final import FINISHED
from tests.chaos.history import History, Outage
from tests.cluster_nodes import Node, Nodes, ready
from tests.tcp_proxy import TcpProxy

LOG_TAIL = 2000


def through(dsn: str, port: int) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    parts = urllib.parse.urlsplit(dsn)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@attrs.define
class Slot:
    index: int
    proxy: TcpProxy
    node: Node | None = None
    generation: int = 0
    stalled: bool = False

    @property
    def instance(self) -> str:
        return self.node.instance if self.node else f"p{self.index}"


@attrs.define
class Cluster:
    group: Nodes
    dsn: str
    slots: list[Slot]
    history: History
    origin: float = 0.0
    stopped: set[int] = attrs.Factory(set)  # pids we killed or stopped

    def now(self) -> float:
        return trio.current_time() - self.origin

    async def launch(self, slot: Slot, instance: str) -> Node:
        node = await self.group.start(instance, dsn=through(self.dsn, slot.proxy.port), wait=False)
        slot.node = node
        await ready(node)
        return node

    def outage(self, kind: str, slot: Slot, start: float) -> None:
        self.history.outages.append(Outage(kind, slot.instance, start, self.now()))

    def expect_end(self, node: Node) -> None:
        self.stopped.add(node.process.pid)

    def terminate_listener(self, slot: Slot) -> int:
        """End the LISTEN connection of ``slot``'s process (found by its proxy's ports); how many ended."""
        ports = slot.proxy.server_ports()
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE client_port = ANY(%s) AND query ILIKE 'LISTEN%%'", (ports,)).fetchall()
        return len(rows)

    def owner_of_newest_child(self) -> str | None:
        """The instance id owning the newest unfinished child execution (a run-runbook's)."""
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.group.schema)))
            row = admin.execute("SELECT owner FROM executions WHERE runbook_id = 'child' AND status <> ALL(%s) "
                                "ORDER BY seq DESC LIMIT 1", (list(FINISHED),)).fetchone()
            if not row or not row[0]:
                return None
            if admin.execute("SELECT to_regclass('incarnations')").fetchone() not in (None, (None,)):
                instance = admin.execute("SELECT instance_id FROM incarnations WHERE owner = %s", (row[0],)).fetchone()
                return str(instance[0]) if instance else None
        return str(row[0])

    def unexpected_exits(self) -> list[str]:
        found = []
        for node in self.group.running:
            code = node.process.returncode
            if code is not None and node.process.pid not in self.stopped:
                tail = node.output()[-LOG_TAIL:]
                found.append(f"{node.instance} (pid {node.process.pid}) exited with {code}; its log ends:\n{tail}")
        return found

    def log_paths(self) -> list[pathlib.Path]:
        return [node.log for node in self.group.running]
