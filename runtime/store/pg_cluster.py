"""The SQL of ``PostgresLedger`` and of ``PostgresWriter``: what several processes sharing
one PostgreSQL database need of it.

*Instances*: each process (``RUNBOOKS_INSTANCE_ID``) has a row it renews every heartbeat; it
is alive while ``expires_at`` is ahead. *Ownership*: an unfinished execution's row names its
``owner`` instance and an ``epoch`` that grows at every claim; every state write of the owner
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
``state:<execution>:<version>``, ``released``, ``runbook:<id>``.
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

# -- instances

# A new incarnation takes the row; ``alive`` tells whether the one before still had time
# left (it may be a live process with the same id: its writes are fenced from now on).
REGISTER = """
WITH before AS (SELECT incarnation, expires_at > now() AS alive FROM instances WHERE id = %(id)s)
INSERT INTO instances (id, incarnation, expires_at) VALUES (%(id)s, %(me)s, now() + %(ttl)s * interval '1 second')
ON CONFLICT (id) DO UPDATE SET incarnation = excluded.incarnation, started_at = now(),
    expires_at = excluded.expires_at
RETURNING (SELECT alive FROM before)"""

RENEW = """
UPDATE instances SET expires_at = now() + %(ttl)s * interval '1 second'
WHERE id = %(id)s AND incarnation = %(me)s RETURNING 1"""

STOP = "UPDATE instances SET expires_at = now() WHERE id = %(id)s AND incarnation = %(me)s"
OTHERS_ALIVE = "SELECT count(*) FROM instances WHERE id <> %(id)s AND expires_at > now()"

# -- ownership

# At start: every unfinished execution of this instance id is ours again, under a new epoch.
CLAIM_OWN = f"""
UPDATE executions SET epoch = epoch + 1
WHERE owner = %(id)s AND status IN {UNFINISHED}
RETURNING id"""

# Unfinished executions nobody alive owns: released, or their owner's heartbeat ran out.
ORPHANS = f"""
SELECT e.id, e.epoch, e.tenant_id, e.runbook_id, e.runbook_version
FROM executions e LEFT JOIN instances i ON i.id = e.owner
WHERE e.status IN {UNFINISHED} AND (e.owner IS NULL OR i.id IS NULL OR i.expires_at < now())
  AND e.owner IS DISTINCT FROM %(id)s
ORDER BY e.seq LIMIT %(limit)s"""

# Compare and set: the claim wins only if nobody claimed the execution since it was seen.
CLAIM = """
UPDATE executions SET owner = %(id)s, epoch = epoch + 1
WHERE id = %(execution)s AND epoch = %(epoch)s
RETURNING epoch"""

# A finished execution (a step retry) is claimed by whoever runs it again.
CLAIM_FINISHED = f"""
UPDATE executions SET owner = %(id)s, epoch = epoch + 1
WHERE id = %(execution)s AND status NOT IN {UNFINISHED}
RETURNING epoch"""

RELEASE = f"UPDATE executions SET owner = NULL WHERE owner = %(id)s AND status IN {UNFINISHED} RETURNING id"

# Every state write of an owner: the rows that still carry its epoch (the others are fenced).
FENCE = """
UPDATE executions AS e SET version = GREATEST(e.version, v.version)
FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[]) AS v(id, version, epoch, owner)
WHERE e.id = v.id AND e.epoch = v.epoch AND e.owner = v.owner
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

# Finished executions with commands nobody applied (a control that raced the end, a child's
# end after its parent was cancelled): those this process resolves, its own and those of
# processes that are gone.
LEFTOVERS = f"""
SELECT DISTINCT e.id, e.epoch, e.owner, e.status
FROM commands c JOIN executions e ON e.id = c.execution_id LEFT JOIN instances i ON i.id = e.owner
WHERE c.applied_at IS NULL AND e.status NOT IN {UNFINISHED}
  AND (e.owner = %(id)s OR e.owner IS NULL OR i.id IS NULL OR i.expires_at < now())
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
