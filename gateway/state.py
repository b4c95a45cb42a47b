"""What every view reaches through the app: the runtime, the config, auth, metrics, streams.

``create_app`` stores one ``GatewayState`` in ``app.extensions``; views get it with
``state()``, so nothing is global and several apps can live in one process.
"""

from __future__ import annotations

import attrs
from quart import current_app

from gateway.auth import Authenticator
from gateway.config import Config
from gateway.metrics import GatewayMetrics
from gateway.sse import Streams
from runtime import Runtime
from runtime.sources.manager import Sources

EXTENSION = "runbooks"


@attrs.frozen
class GatewayState:
    runtime: Runtime
    config: Config
    auth: Authenticator
    metrics: GatewayMetrics
    streams: Streams
    sources: Sources | None = None  # RUNBOOKS_SOURCES_FILE


def state() -> GatewayState:
    """The state of the app serving the current request."""
    found: GatewayState = current_app.extensions[EXTENSION]
    return found
