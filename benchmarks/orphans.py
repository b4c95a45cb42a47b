"""How long one takeover round's query takes with many executions in the database:
``python -m benchmarks.orphans [ROWS]`` (PostgreSQL at ``RUNBOOKS_BENCH_DSN`` or the test DSN).

It fills a scratch schema with ``ROWS`` executions (nine in ten finished, the rest owned by
live processes, and a hundred orphans: some released, some of a dead process), then times
the query every process runs every third of ``LEASE_TTL_MS`` (``ORPHANS``) against the one
it replaced (a join of every unfinished execution with the instance rows, sorted), and
prints both plans' times. The schema is dropped at the end.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

import psycopg
from psycopg import sql

from runtime.store import pg_cluster as cluster
from runtime.store.postgres import PostgresStore

DSN = os.environ.get("RUNBOOKS_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/test")
UNFINISHED = "('pending', 'running', 'awaiting_approval', 'pausing', 'paused')"
BEFORE = f"""
SELECT e.id, e.epoch, e.tenant_id, e.runbook_id, e.runbook_version
FROM executions e LEFT JOIN instances i ON i.id = e.owner
WHERE e.status IN {UNFINISHED} AND (e.owner IS NULL OR i.id IS NULL OR i.expires_at < now())
  AND e.owner IS DISTINCT FROM %(id)s
ORDER BY e.seq LIMIT %(limit)s"""


def fill(conn: psycopg.Connection[object], rows: int) -> None:
    live = [f"p{n}@live" for n in range(3)]
    conn.execute("INSERT INTO incarnations (owner, instance_id, expires_at) "
                 "SELECT o, split_part(o, '@', 1), now() + interval '1 hour' FROM unnest(%s::text[]) AS o", (live,))
    conn.execute("INSERT INTO incarnations (owner, instance_id, expires_at) VALUES ('dead@x', 'dead', now())")
    conn.execute("CREATE TABLE instances (id text PRIMARY KEY, incarnation text, expires_at timestamptz)")
    conn.execute("INSERT INTO instances VALUES ('p0', 'live', now() + interval '1 hour'), "
                 "('p1', 'live', now() + interval '1 hour'), ('p2', 'live', now() + interval '1 hour'), "
                 "('dead', 'x', now())")
    conn.execute("""
        INSERT INTO executions (id, tenant_id, runbook_id, runbook_version, status, input_hash, deduplicated,
                                created_at, header, owner, epoch)
        SELECT md5(n::text), 't', 'r', 1,
               CASE WHEN n %% 10 = 0 THEN 'awaiting_approval' ELSE 'completed' END, '', false, now(), '{}',
               CASE WHEN n <= 50 THEN NULL WHEN n <= 100 THEN 'dead@x' ELSE 'p' || (n %% 3) || '@live' END, 1
        FROM generate_series(1, %s) AS n""", (rows,))
    conn.execute("UPDATE executions SET status = 'running' WHERE owner IS NULL OR owner = 'dead@x'")
    conn.execute("ANALYZE executions")


def timed(conn: psycopg.Connection[object], query: str, params: dict[str, object], runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(query, params).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main(rows: int) -> None:
    schema = f"bench_orphans_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(DSN, pool_max=1, schema=schema)
    store.open()  # the migrations
    store.close()
    try:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            fill(conn, rows)
            before = timed(conn, BEFORE, {"id": "p0", "limit": 1000})
            after = timed(conn, cluster.ORPHANS, {"me": "p0@live", "skip": [], "limit": 100})
            found = len(conn.execute(cluster.ORPHANS, {"me": "p0@live", "skip": [], "limit": 1000}).fetchall())
            print(f"{rows} executions ({rows // 10} unfinished, {found} orphans): one takeover round's query "
                  f"{before:.2f} ms before (a join of every unfinished execution), {after:.2f} ms now "
                  f"(released ones and those of dead incarnations, each on an index)")
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
