"""Tenant quotas, checked by the store in the transaction of a start (``QuotaCaps``).

Two caps per tenant: how many of its executions may be unfinished at once (queued ones
count), and how fast it may start them, a token bucket (``quota_buckets``: the tokens left
and when they were counted, filling at ``rate`` a second up to ``burst``). A start over
either is taken out again in the transaction that inserted it, so nothing of it is written,
and the store says why (``QUOTA_ACTIVE``, ``QUOTA_RATE``, with when a token comes). On
PostgreSQL the tenant's advisory lock is held while a start is counted, so processes sharing
the database count the same executions and take tokens from the same bucket.
"""

from __future__ import annotations

from runtime.store.schema import UNFINISHED_SQL

TABLE = """CREATE TABLE IF NOT EXISTS quota_buckets (
    tenant_id TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    counted_at DOUBLE PRECISION NOT NULL)"""

ACTIVE = f"SELECT COUNT(*) FROM executions WHERE tenant_id = ? AND status IN {UNFINISHED_SQL}"
BUCKET = "SELECT tokens, counted_at FROM quota_buckets WHERE tenant_id = ?"
SET_BUCKET = """
INSERT INTO quota_buckets (tenant_id, tokens, counted_at) VALUES (?, ?, ?)
ON CONFLICT (tenant_id) DO UPDATE SET tokens = excluded.tokens, counted_at = excluded.counted_at"""


def take_token(tokens: float, counted_at: float, now_s: float, rate: float,
               burst: float) -> tuple[float, float | None]:
    """The bucket after taking one token at ``now_s`` (tokens left, None), or, when it holds
    less than one, (tokens now, seconds until it holds one)."""
    tokens = min(burst, tokens + max(0.0, now_s - counted_at) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, None
    return tokens, (1.0 - tokens) / rate
