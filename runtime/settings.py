"""Engine settings (the runtime part of the configuration), frozen, with defaults.

``call_service_allowed_hosts`` (``CALL_SERVICE_ALLOWED_HOSTS``, parsed once with
``HostAllowlist.parse``): None allows any host; see ``runtime.steps.outbound``.
"""

from __future__ import annotations

import attrs

from runtime.model import RetryPolicy
from runtime.steps.outbound import HostAllowlist


@attrs.frozen
class Settings:
    max_concurrent_steps: int = 5
    default_max_retries: int = 3
    event_retention_ms: int = 24 * 3600 * 1000
    call_service_base_url: str | None = None
    finished_cache_size: int = 10_000
    persistence_max_batch: int = 1024
    lease_ttl_ms: int = 15_000
    call_service_allowed_hosts: HostAllowlist | None = None

    @property
    def default_retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.default_max_retries)
