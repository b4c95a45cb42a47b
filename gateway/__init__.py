"""The HTTP edge of the runbook engine: a QuartTrio app over a ``runtime.Runtime``.

``create_app(runtime, config)`` builds the app; ``serve(config)`` opens the runtime and
serves the app with hypercorn until SIGINT/SIGTERM; ``Config.from_env`` reads the environment.
"""

from gateway.app import create_app
from gateway.config import Config, ConfigError
from gateway.metrics import GatewayMetrics, create_metrics
from gateway.serve import load_runbooks_dir, serve, serve_main

__all__ = [
    "Config",
    "ConfigError",
    "GatewayMetrics",
    "create_app",
    "create_metrics",
    "load_runbooks_dir",
    "serve",
    "serve_main",
]
