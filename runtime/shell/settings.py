"""Engine settings (the part of the configuration the engine reads), frozen, with defaults.

``call_service_allowed_hosts`` (``CALL_SERVICE_ALLOWED_HOSTS``, parsed once with
``HostAllowlist.parse``): None allows any host; see ``runtime.security.outbound``.
``grpc_protoset_dir`` (``GRPC_PROTOSET_DIR``): where gRPC protosets may be read from (None:
any path); see ``runtime.io.grpc_descriptors``.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from runtime.documents.triggers import TriggerLimits
from runtime.model import RetryPolicy
from runtime.security.outbound import HostAllowlist
from runtime.shell.quotas import Quota, parse_quotas


@attrs.frozen
class Settings:
    max_concurrent_steps: int = 5
    default_max_retries: int = 3
    event_retention_ms: int = 24 * 3600 * 1000
    call_service_base_url: str | None = None
    finished_cache_size: int = 10_000
    persistence_max_batch: int = 1024
    persistence_fair_batch: int = 8  # while several tenants commit: the most changes of one tenant in a batch
    lease_ttl_ms: int = 15_000
    instance_id: str | None = None  # several processes on one database; default: host:pid:random
    forward_wait_ms: int = 5000
    secrets_file: str | None = None  # RUNBOOKS_SECRETS_FILE
    secrets_env: Mapping[str, str] | None = None  # RUNBOOKS_SECRET_<NAME> come from here (None: os.environ)
    public_url: str | None = None  # PUBLIC_URL: the console's address, for links in notifications
    max_retained_events_per_tenant: int = 10_000  # events no step took yet, kept for a later waiter
    shutdown_timeout_ms: int = 5_000  # leaving open_runtime: flush + leases, while the store is down
    call_service_allowed_hosts: HostAllowlist | None = None
    grpc_protoset_dir: str | None = None
    max_output_bytes: int = 1024 * 1024  # a step output (and a response body read) as JSON
    max_event_bytes: int = 256 * 1024  # an event's payload as JSON
    max_retained_event_bytes_per_tenant: int = 64 * 1024 * 1024  # payloads of retained events
    max_hops: int = 8  # X-Runbooks-Hop: a start or an event past it is refused (LoopDetected)
    max_triggers_per_runbook: int = 20  # at registration (and validation)
    min_schedule_interval_ms: int = 1000  # a schedule whose due times come closer is refused
    max_triggers_per_tenant: int = 100  # the triggers of the latest versions of a tenant's own runbooks
    max_descendants: int = 1000  # executions started under one root by run-runbook steps
    max_active_descendants_per_tenant: int = 10_000  # a tenant's unfinished child executions
    # per tenant ("*": every other), as ``Quota`` or as written ({maxActive, startsPerSecond}): quotas.py
    quotas: Mapping[str, Quota] = attrs.field(factory=dict, converter=parse_quotas)
    fair_turns: int = 64  # transitions running at once in a process, handed to the waiting tenant holding the fewest
    queue_poll_ms: int = 1000  # how often queued executions given a slot are looked for (restarts, lost news)

    @property
    def trigger_limits(self) -> TriggerLimits:
        return TriggerLimits(self.max_triggers_per_runbook, self.min_schedule_interval_ms)
    lifecycle_outbox: bool = False  # record lifecycle events with each commit, for sinks to publish
    require_separation_of_duties: bool = False  # REQUIRE_SEPARATION_OF_DUTIES: four eyes on every approval
    audit_checkpoint_every: int = 1000  # AUDIT_CHECKPOINT_EVERY: entries of a tenant between checkpoints
    audit_checkpoint_ms: int = 60_000  # AUDIT_CHECKPOINT_MS: or this long (of the entries' time) since the last
    audit_signing_key: str | None = None  # RUNBOOKS_AUDIT_SIGNING_KEY: Ed25519 private key (PEM) signing them

    @property
    def default_retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.default_max_retries)
