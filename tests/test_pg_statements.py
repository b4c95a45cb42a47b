"""A PostgreSQL batch reads each answer it needs from its own statement, however many
writes went before it in the batch's pipeline."""

from __future__ import annotations

import time

import psycopg

from runtime.store.pg_writer import Statements

UPSERT = """INSERT INTO heads VALUES ('a', 0) ON CONFLICT (k) DO UPDATE SET k = excluded.k
RETURNING v"""


def test_a_read_after_many_writes_in_the_pipeline_gets_its_own_rows(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TEMP TABLE heads (k text PRIMARY KEY, v int)")
        conn.execute("CREATE TEMP TABLE rows (x int)")
        conn.commit()
        with conn.pipeline(), conn.cursor() as cursor:
            cursor.execute("BEGIN")
            statements = Statements(cursor)  # what a batch's writer runs its statements on
            # the writes' answers fill the server's output and reach the client late, while
            # the next statement goes out: psycopg gave them to a cursor's next execute (the
            # read below saw "INSERT 0 1", the batch failed, and every change of it was then
            # committed alone)
            statements.executemany("INSERT INTO rows VALUES (%s)", [(n,) for n in range(1000)])
            time.sleep(0.2)
            assert statements.execute(UPSERT).fetchone() == (0,)
            cursor.execute("COMMIT")
