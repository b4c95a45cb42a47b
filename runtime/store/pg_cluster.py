"""The SQL of ``PostgresLedger`` and of ``PostgresWriter``: what several processes sharing
one PostgreSQL database need of it.

*Incarnations*: each start of a process (``RUNBOOKS_INSTANCE_ID`` plus a random part) has a
row it renews every heartbeat; it is alive while ``expires_at`` is ahead and no later start of
the same instance id replaced it. *Ownership*: an unfinished execution's row names its
``owner`` incarnation and an ``epoch`` that grows at every claim; every state write of the owner
is guarded by ``WHERE epoch = <its epoch>`` (``FENCE``), so a process that lost an execution
(stalled, partitioned, or replaced by a new process with its id) can never overwrite the new
owner's state. *Commands*: a control operation, decision, retry or event for an execution that
another process owns is a row of ``commands`` (the core message: its class name in ``kind``,
its fields in ``body``), announced with NOTIFY; the owner applies it and records the outcome
on the row in the same transaction as the state it produced. *Waits*: the event
subscriptions of waiting steps, so an event published on any process reaches them.

The same notification channel (one per schema) carries every announcement, as
``kind:argument`` payloads: ``cmd:<execution>:<command>`` (``...:<process nonce>`` when the
process that committed it hands it over itself), ``done:<command>``,
``state:<execution>:<version>``, ``released``, ``runbook:<id>``, and ``ping:<process nonce>:<n>``
(each process's check that its LISTEN connection still hears: see ``pg_listener.py``).
"""

from __future__ import annotations

from runtime.store.schema import UNFINISHED_SQL as UNFINISHED

MIGRATION = (
    """CREATE TABLE instances (
        id text PRIMARY KEY,
        incarnation text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
    )""",
    "ALTER TABLE executions ADD COLUMN owner text",
    "ALTER TABLE executions ADD COLUMN epoch bigint NOT NULL DEFAULT 0",
    f"CREATE INDEX executions_owned ON executions (owner) WHERE status IN {UNFINISHED}",
    "DROP TABLE leases",
    """CREATE TABLE commands (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        execution_id text NOT NULL,
        kind text NOT NULL,
        body json NOT NULL,
        origin text,
        created_at timestamptz NOT NULL DEFAULT now(),
        applied_at timestamptz,
        outcome json
    )""",
    "CREATE INDEX commands_pending ON commands (execution_id, seq) WHERE applied_at IS NULL",
    "CREATE INDEX commands_applied ON commands (applied_at) WHERE applied_at IS NOT NULL",
    """CREATE TABLE waits (
        execution_id text NOT NULL,
        step_id text NOT NULL,
        tenant_id text NOT NULL,
        type text NOT NULL,
        correlation_key text NOT NULL,
        filter json,
        PRIMARY KEY (execution_id, step_id)
    )""",
    "CREATE INDEX waits_by_key ON waits (tenant_id, type, correlation_key)",
)

# A command's ``kind`` is the class name of its core message and ``body`` that message's
# fields (``runtime.core.messages.command_row``); the commands queued under the names used
# before keep their bodies, which have the same fields.
COMMAND_TAGS = (
    """UPDATE commands SET kind = CASE kind
        WHEN 'pause' THEN 'Pause' WHEN 'resume' THEN 'Resume' WHEN 'cancel' THEN 'Cancel'
        WHEN 'approve' THEN 'DecideApproval' WHEN 'retry' THEN 'RetryStep' WHEN 'event' THEN 'DeliverEvent'
        WHEN 'child_finished' THEN 'ChildFinished' ELSE kind END""",
)

# An *incarnation* is one start of a process: ``<instance id>@<random>``, the value of
# ``executions.owner`` for what it runs. It is alive while ``expires_at`` is ahead and no later
# start of the same instance id has ``replaced`` it. Executions of a dead or replaced
# incarnation are orphans, whoever holds the instance id now. The ``instances`` table (one row
# per instance id) is replaced by it; owners written before keep working: each becomes an
# incarnation already expired, which the next start of its instance id takes back.
INCARNATIONS = (
    """CREATE TABLE IF NOT EXISTS incarnations (
        owner text PRIMARY KEY,
        instance_id text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        replaced boolean NOT NULL DEFAULT false
    )""",
    "CREATE INDEX IF NOT EXISTS incarnations_by_instance ON incarnations (instance_id)",
    "CREATE INDEX IF NOT EXISTS incarnations_by_expiry ON incarnations (expires_at)",
    f"""INSERT INTO incarnations (owner, instance_id, expires_at)
        SELECT DISTINCT owner, owner, now() FROM executions WHERE owner IS NOT NULL AND status IN {UNFINISHED}
        ON CONFLICT (owner) DO NOTHING""",
    "DROP TABLE IF EXISTS instances",
    # released executions (owner NULL), found without reading the others
    f"CREATE INDEX IF NOT EXISTS executions_released ON executions (seq) WHERE owner IS NULL AND status IN {UNFINISHED}",
    # the commands not applied yet, in order (polled while the notifications are down)
    "CREATE INDEX IF NOT EXISTS commands_unapplied ON commands (seq) WHERE applied_at IS NULL",
)

# -- incarnations

# A new incarnation takes the instance id: the ones before are replaced (their writes are
# refused from now on); ``alive`` tells whether one of them still had time left (it may be a
# live process with the same id, a mistake worth a loud log).
REGISTER = """
WITH before AS (SELECT owner, expires_at > now() AND NOT replaced AS alive FROM incarnations
                WHERE instance_id = %(id)s AND owner <> %(me)s FOR UPDATE),
ended AS (UPDATE incarnations SET replaced = true, expires_at = least(expires_at, now())
          WHERE owner IN (SELECT owner FROM before))
INSERT INTO incarnations (owner, instance_id, expires_at) VALUES (%(me)s, %(id)s, now() + %(ttl)s * interval '1 second')
ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at
RETURNING (SELECT coalesce(bool_or(alive), false) FROM before)"""

# Renewal of a live incarnation only: one whose heartbeat ran out, or that was replaced, is
# told so (``alive``, ``replaced`` as they were before), and renews nothing.
RENEW = """
WITH mine AS (SELECT expires_at > now() AS alive, replaced FROM incarnations WHERE owner = %(me)s),
renewed AS (UPDATE incarnations SET expires_at = now() + %(ttl)s * interval '1 second'
            WHERE owner = %(me)s AND expires_at > now() AND NOT replaced RETURNING 1)
SELECT alive, replaced FROM mine"""

# After a lapse (a late renewal): alive again, unless replaced meanwhile.
REJOIN = """
UPDATE incarnations SET expires_at = now() + %(ttl)s * interval '1 second'
WHERE owner = %(me)s AND NOT replaced RETURNING 1"""

STOP = "UPDATE incarnations SET expires_at = least(expires_at, now()) WHERE owner = %(me)s"

# Dead incarnations that own nothing any more are forgotten after a day.
SWEEP_INCARNATIONS = f"""
DELETE FROM incarnations i WHERE i.expires_at < now() - interval '1 day'
AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.owner = i.owner AND e.status IN {UNFINISHED})"""

DATABASE_NOW = "SELECT now()"

# How many other instances have a live incarnation (for the log line of a graceful stop).
OTHERS_ALIVE = """
SELECT count(DISTINCT instance_id) FROM incarnations
WHERE instance_id <> %(id)s AND expires_at > now() AND NOT replaced"""

# -- ownership

# At start: every unfinished execution of an earlier incarnation of this instance id is
# ours, under a new epoch (and those this incarnation owns, after a lapse).
CLAIM_OWN = f"""
UPDATE executions SET owner = %(me)s, epoch = epoch + 1
WHERE owner IN (SELECT owner FROM incarnations WHERE instance_id = %(id)s OR owner = %(me)s)
  AND status IN {UNFINISHED}
RETURNING id"""

# Unfinished executions nobody alive owns: released, or their incarnation is dead (its
# heartbeat ran out, or a later start of its instance id replaced it). Both halves read an
# index: the released ones, and those of the few dead incarnations (an array, so that the
# index of owners is looked up once per dead incarnation whatever the planner guesses). Runbooks this process
# cannot run (``skip``: ``tenant/runbook/version``) are left out, so they never crowd out the
# ones it can; at most ``limit``, the oldest first.
_ORPHAN_ROWS = f"""
    SELECT e.seq, e.id, e.epoch, e.tenant_id, e.runbook_id, e.runbook_version FROM executions e
    WHERE e.status IN {UNFINISHED} AND e.owner IS NULL
    UNION ALL
    SELECT e.seq, e.id, e.epoch, e.tenant_id, e.runbook_id, e.runbook_version FROM executions e
    WHERE e.status IN {UNFINISHED} AND e.owner = ANY(ARRAY(
        SELECT owner FROM incarnations WHERE (expires_at < now() OR replaced) AND owner <> %(me)s))"""

ORPHANS = f"""
SELECT id, epoch, tenant_id, runbook_id, runbook_version FROM ({_ORPHAN_ROWS}) AS o
WHERE NOT (tenant_id || '/' || runbook_id || '/' || runbook_version = ANY(%(skip)s))
ORDER BY seq LIMIT %(limit)s"""

# How many orphans wait for a process that can run them (the runbooks this one cannot).
SKIPPED_ORPHANS = f"""
SELECT count(*) FROM ({_ORPHAN_ROWS}) AS o
WHERE tenant_id || '/' || runbook_id || '/' || runbook_version = ANY(%(skip)s)"""

# Compare and set: the claim wins only if nobody claimed the execution since it was seen.
CLAIM = """
UPDATE executions SET owner = %(me)s, epoch = epoch + 1
WHERE id = %(execution)s AND epoch = %(epoch)s
RETURNING epoch"""

# The same for every execution a takeover round chose, in one statement.
CLAIM_ALL = """
UPDATE executions AS e SET owner = %(me)s, epoch = e.epoch + 1
FROM unnest(%(ids)s::text[], %(epochs)s::bigint[]) AS v(id, epoch)
WHERE e.id = v.id AND e.epoch = v.epoch
RETURNING e.id"""

# A finished execution (a step retry) is claimed by whoever runs it again.
CLAIM_FINISHED = f"""
UPDATE executions SET owner = %(me)s, epoch = epoch + 1
WHERE id = %(execution)s AND status NOT IN {UNFINISHED}
RETURNING epoch"""

# A graceful stop gives up what this incarnation owns, and nothing of another one.
RELEASE = f"UPDATE executions SET owner = NULL WHERE owner = %(me)s AND status IN {UNFINISHED} RETURNING id"

# Every state write of an owner: the rows that still carry its epoch (the others are fenced),
# unless a later start of its instance id replaced its incarnation.
FENCE = """
UPDATE executions AS e SET version = GREATEST(e.version, v.version)
FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[]) AS v(id, version, epoch, owner)
WHERE e.id = v.id AND e.epoch = v.epoch AND e.owner = v.owner
  AND NOT EXISTS (SELECT 1 FROM incarnations i WHERE i.owner = v.owner AND i.replaced)
RETURNING e.id"""

# -- commands

INSERT_COMMAND = """
INSERT INTO commands (id, execution_id, kind, body, origin) VALUES (%s, %s, %s, %s::json, %s)"""

PENDING_COMMANDS = """
SELECT id, kind, body FROM commands WHERE execution_id = %s AND applied_at IS NULL ORDER BY seq"""

OUTCOME = "SELECT applied_at IS NOT NULL, outcome FROM commands WHERE id = %s"

COMMAND = "SELECT execution_id, applied_at IS NOT NULL, outcome FROM commands WHERE id = %s"

RECORD_OUTCOME = """
UPDATE commands SET applied_at = now(), outcome = %s::json WHERE id = %s AND applied_at IS NULL"""

# While the LISTEN connection is down: the commands queued since the last one seen, and the
# versions of the executions watched here (what the announcements would have said).
COMMANDS_AFTER = "SELECT seq, execution_id, id FROM commands WHERE seq > %s AND applied_at IS NULL ORDER BY seq"

VERSIONS = "SELECT id, version FROM executions WHERE id = ANY(%s)"

# Finished executions with commands nobody applied (a control that raced the end, a child's
# end after its parent was cancelled): those this process resolves, its own incarnation's
# (``id``) and those of incarnations that are gone.
LEFTOVERS = f"""
SELECT DISTINCT e.id, e.epoch, e.owner, e.status
FROM commands c JOIN executions e ON e.id = c.execution_id LEFT JOIN incarnations i ON i.owner = e.owner
WHERE c.applied_at IS NULL AND e.status NOT IN {UNFINISHED}
  AND (e.owner = %(id)s OR e.owner IS NULL OR i.owner IS NULL OR i.expires_at < now() OR i.replaced)
LIMIT %(limit)s"""

# Children this incarnation runs whose parent has ended: the parent's cancel of them was handed
# over after its commit and never applied (the process stopped in between).
ABANDONED_CHILDREN = f"""
SELECT c.id, p.id, p.status FROM executions c JOIN executions p ON p.id = c.header->>'parentExecutionId'
WHERE c.root_id IS NOT NULL AND c.status IN {UNFINISHED} AND p.status NOT IN {UNFINISHED} AND c.owner = %(id)s
LIMIT %(limit)s"""

# Commands waiting longer than a bound for an owner that is this incarnation: a delivery was
# lost on its way (an announcement, a hand-over to an actor that was leaving).
OVERDUE_COMMANDS = f"""
SELECT DISTINCT c.execution_id FROM commands c JOIN executions e ON e.id = c.execution_id
WHERE c.applied_at IS NULL AND c.created_at < now() - %(age)s * interval '1 second'
  AND e.owner = %(id)s AND e.status IN {UNFINISHED}
LIMIT %(limit)s"""

SWEEP_COMMANDS = "DELETE FROM commands WHERE applied_at < now() - %s * interval '1 second'"

NOTIFY = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"

# -- waits and events (one advisory lock per (tenant, type, key) closes the publish/wait race)

LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))"

WAITERS = """
SELECT execution_id, step_id, filter FROM waits
WHERE tenant_id = %s AND type = %s AND correlation_key = %s ORDER BY execution_id, step_id"""

INSERT_WAIT = """
INSERT INTO waits (execution_id, step_id, tenant_id, type, correlation_key, filter)
VALUES (%s, %s, %s, %s, %s, %s::json)
ON CONFLICT (execution_id, step_id) DO UPDATE SET tenant_id = excluded.tenant_id, type = excluded.type,
    correlation_key = excluded.correlation_key, filter = excluded.filter"""

DELETE_WAIT = "DELETE FROM waits WHERE execution_id = %s AND step_id = %s"

RETAINED_FOR = """
SELECT id, tenant_id, type, correlation_key, payload, received_at, expires_at FROM events
WHERE tenant_id = %s AND type = %s AND correlation_key = %s AND (expires_at IS NULL OR expires_at > now())
ORDER BY seq"""

# how many a tenant holds, and in how many seconds the first of them expires (room again)
RETAINED_COUNT = """
SELECT count(*), extract(epoch FROM min(expires_at) - now())::float8,
       coalesce(sum(octet_length(payload::text)), 0) FROM events
WHERE tenant_id = %s AND (expires_at IS NULL OR expires_at > now())"""
