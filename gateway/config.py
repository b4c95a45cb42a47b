"""The gateway's configuration, parsed once from the environment.

``Config.from_env(os.environ)`` reads every variable, checks it, and returns a frozen
``Config``; a bad value raises ``ConfigError`` whose message is one line naming the
variable, e.g. ``PORT: must be an integer between 1 and 65535, got 'abc'``. An empty
variable counts as unset. The tokens file (``RUNBOOKS_TOKENS_FILE``) is loaded and checked
here too, so a broken file stops start-up instead of failing the first request.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import socket
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import attrs
import yaml

from gateway.bodies import MAX_BODY_BYTES
from gateway.roles import DEFAULT_TOKEN_ROLES
from runtime import Settings
from runtime.io import tracing
from runtime.kinds.approval_rules import ANY_ROLE
from runtime.model.limits import MAX_CONCURRENCY, MAX_DURATION_MS, MAX_RETRIES
from runtime.security.audit_signing import CheckpointSigner
from runtime.security.outbound import HostAllowlist
from runtime.security.secrets import SecretsFileError, load_secrets_file
from runtime.sources.config import SourcesConfig, SourcesFileError, load_sources

T = TypeVar("T")

BACKENDS = ("sqlite", "memory", "postgres")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A configuration value is wrong; the message is one line naming the variable."""


@attrs.frozen
class TokenEntry:
    """One bearer token of the tokens file and the identity it stands for (``roles`` as given,
    or ``operator`` and ``author`` when the entry has none)."""

    token: str = attrs.field(repr=False)
    user: str
    tenant: str
    roles: tuple[str, ...] = ()


@attrs.frozen
class Config:
    port: int = 3000
    host: str = "127.0.0.1"
    storage_backend: str = "sqlite"
    sqlite_path: str = "./runbooks.db"
    database_url: str | None = attrs.field(default=None, repr=False)
    db_host: str | None = None
    db_port: int = 5432
    db_name: str = "runbooks"
    db_user: str = "postgres"
    db_password: str | None = attrs.field(default=None, repr=False)
    db_ssl: bool = False
    db_pool_max: int = 20
    max_concurrent_steps: int = 5
    default_max_retries: int = 3
    detailed_logging: bool = False
    enable_cors: bool = False
    cors_origins: tuple[str, ...] = ()
    runbooks_dir: str | None = None
    call_service_base_url: str | None = None
    event_retention_ms: int = 24 * 3600 * 1000
    tokens_file: str | None = None
    tokens: tuple[TokenEntry, ...] = attrs.field(default=(), repr=False)
    lease_ttl_ms: int = 15000
    forward_wait_ms: int = 5000
    max_retained_events_per_tenant: int = 10_000
    shutdown_timeout_ms: int = 5000
    instance_id: str = ""
    otel_exporter_otlp_endpoint: str | None = None
    secrets_file: str | None = None
    public_url: str | None = None
    call_service_allowed_hosts: HostAllowlist | None = None
    grpc_protoset_dir: str | None = None
    max_output_bytes: int = 1024 * 1024
    max_event_bytes: int = 256 * 1024
    max_retained_event_bytes_per_tenant: int = 64 * 1024 * 1024
    max_hops: int = 8
    max_triggers_per_runbook: int = 20
    min_schedule_interval_ms: int = 1000
    max_triggers_per_tenant: int = 100
    max_descendants: int = 1000
    max_active_descendants_per_tenant: int = 10_000
    sources_file: str | None = None
    sources: SourcesConfig = attrs.Factory(SourcesConfig)
    require_separation_of_duties: bool = False
    audit_checkpoint_every: int = 1000
    audit_checkpoint_ms: int = 60_000
    audit_signing_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Read and check every variable; raise ``ConfigError`` on the first bad one."""
        read = _Reader(env)
        config = cls(
            port=read.integer("PORT", 3000, 1, 65535),
            host=read.text("HOST", "127.0.0.1"),
            storage_backend=read.choice("STORAGE_BACKEND", "sqlite", BACKENDS),
            sqlite_path=read.text("SQLITE_PATH", "./runbooks.db"),
            database_url=read.optional("DATABASE_URL"),
            db_host=read.optional("DB_HOST"),
            db_port=read.integer("DB_PORT", 5432, 1, 65535),
            db_name=read.text("DB_NAME", "runbooks"),
            db_user=read.text("DB_USER", "postgres"),
            db_password=read.optional("DB_PASSWORD"),
            db_ssl=read.boolean("DB_SSL", False),
            db_pool_max=read.integer("DB_POOL_MAX", 20, 1, 10_000),
            max_concurrent_steps=read.integer("MAX_CONCURRENT_STEPS", 5, 1, MAX_CONCURRENCY),
            default_max_retries=read.integer("DEFAULT_MAX_RETRIES", 3, 0, MAX_RETRIES),
            detailed_logging=read.boolean("DETAILED_LOGGING", False),
            enable_cors=read.boolean("ENABLE_CORS", False),
            cors_origins=read.parsed("CORS_ORIGINS", (), _origins),
            runbooks_dir=read.parsed("RUNBOOKS_DIR", None, _directory),
            call_service_base_url=read.parsed("CALL_SERVICE_BASE_URL", None, _http_url),
            event_retention_ms=read.integer("EVENT_RETENTION_MS", 24 * 3600 * 1000, 0, MAX_DURATION_MS),
            tokens_file=read.optional("RUNBOOKS_TOKENS_FILE"),
            tokens=read.parsed("RUNBOOKS_TOKENS_FILE", (), load_tokens),
            lease_ttl_ms=read.integer("LEASE_TTL_MS", 15000, 100, 10**9),
            forward_wait_ms=read.integer("FORWARD_WAIT_MS", 5000, 0, 10**7),
            max_retained_events_per_tenant=read.integer("MAX_RETAINED_EVENTS_PER_TENANT", 10_000, 0, 10**9),
            shutdown_timeout_ms=read.integer("SHUTDOWN_TIMEOUT_MS", 5000, 0, 3_600_000),
            instance_id=read.parsed("RUNBOOKS_INSTANCE_ID", None, _instance_id),
            otel_exporter_otlp_endpoint=read.parsed("OTEL_EXPORTER_OTLP_ENDPOINT", None, _otlp_endpoint),
            secrets_file=read.parsed("RUNBOOKS_SECRETS_FILE", None, _secrets_file),
            public_url=read.parsed("PUBLIC_URL", None, _public_url),
            call_service_allowed_hosts=read.parsed("CALL_SERVICE_ALLOWED_HOSTS", None, _allowlist),
            grpc_protoset_dir=read.parsed("GRPC_PROTOSET_DIR", None, _directory),
            max_output_bytes=read.integer("MAX_OUTPUT_BYTES", 1024 * 1024, 1024, 1 << 30),
            max_event_bytes=read.integer("MAX_EVENT_BYTES", 256 * 1024, 1024, MAX_BODY_BYTES),
            max_retained_event_bytes_per_tenant=read.integer("MAX_RETAINED_EVENT_BYTES_PER_TENANT",
                                                             64 * 1024 * 1024, 0, 1 << 40),
            max_hops=read.integer("MAX_HOPS", 8, 1, 1000),
            max_triggers_per_runbook=read.integer("MAX_TRIGGERS_PER_RUNBOOK", 20, 0, 10_000),
            min_schedule_interval_ms=read.integer("MIN_SCHEDULE_INTERVAL_MS", 1000, 0, MAX_DURATION_MS),
            max_triggers_per_tenant=read.integer("MAX_TRIGGERS_PER_TENANT", 100, 0, 10**6),
            max_descendants=read.integer("MAX_DESCENDANTS", 1000, 0, 10**9),
            max_active_descendants_per_tenant=read.integer("MAX_ACTIVE_DESCENDANTS_PER_TENANT", 10_000, 0, 10**9),
            sources_file=read.optional("RUNBOOKS_SOURCES_FILE"),
            sources=read.parsed("RUNBOOKS_SOURCES_FILE", SourcesConfig(), _sources_file),
            require_separation_of_duties=read.boolean("REQUIRE_SEPARATION_OF_DUTIES", False),
            audit_checkpoint_every=read.integer("AUDIT_CHECKPOINT_EVERY", 1000, 1, 10**9),
            audit_checkpoint_ms=read.integer("AUDIT_CHECKPOINT_MS", 60_000, 0, MAX_DURATION_MS),
            audit_signing_key=read.parsed("RUNBOOKS_AUDIT_SIGNING_KEY", None, _signing_key),
        )
        if not config.instance_id:  # the default names the host and the port it serves on
            config = attrs.evolve(config, instance_id=f"{socket.gethostname()}:{config.port}")
        config._check_store()
        return config

    @property
    def development_mode(self) -> bool:
        """No tokens file: identities come from X-User-Id / X-Tenant-Id, loopback only."""
        return self.tokens_file is None

    def store_url(self) -> str:
        """The store URL for ``open_runtime``: ``memory``, ``sqlite:///path`` or ``postgresql://...``."""
        if self.storage_backend == "memory":
            return "memory"
        if self.storage_backend == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        url = self.database_url or self._url_from_parts()
        if self.db_ssl and "sslmode=" not in url:
            url += ("&" if "?" in url else "?") + "sslmode=require"
        return url

    def _url_from_parts(self) -> str:
        credentials = quote(self.db_user, safe="")
        if self.db_password:
            credentials += ":" + quote(self.db_password, safe="")
        host = f"[{self.db_host}]" if self.db_host and ":" in self.db_host else self.db_host
        return f"postgresql://{credentials}@{host}:{self.db_port}/{quote(self.db_name, safe='')}"

    def settings(self) -> Settings:
        """The engine's part of the configuration."""
        return Settings(
            max_concurrent_steps=self.max_concurrent_steps,
            default_max_retries=self.default_max_retries,
            event_retention_ms=self.event_retention_ms,
            call_service_base_url=self.call_service_base_url,
            lease_ttl_ms=self.lease_ttl_ms,
            forward_wait_ms=self.forward_wait_ms,
            instance_id=self.instance_id or None,
            secrets_file=self.secrets_file,
            public_url=self.public_url,
            max_retained_events_per_tenant=self.max_retained_events_per_tenant,
            shutdown_timeout_ms=self.shutdown_timeout_ms,
            call_service_allowed_hosts=self.call_service_allowed_hosts,
            grpc_protoset_dir=self.grpc_protoset_dir,
            max_output_bytes=self.max_output_bytes,
            max_event_bytes=self.max_event_bytes,
            max_retained_event_bytes_per_tenant=self.max_retained_event_bytes_per_tenant,
            max_hops=self.max_hops,
            max_triggers_per_runbook=self.max_triggers_per_runbook,
            min_schedule_interval_ms=self.min_schedule_interval_ms,
            max_triggers_per_tenant=self.max_triggers_per_tenant,
            max_descendants=self.max_descendants,
            max_active_descendants_per_tenant=self.max_active_descendants_per_tenant,
            lifecycle_outbox=bool(self.sources.sinks),
            require_separation_of_duties=self.require_separation_of_duties,
            audit_checkpoint_every=self.audit_checkpoint_every,
            audit_checkpoint_ms=self.audit_checkpoint_ms,
            audit_signing_key=self.audit_signing_key,
        )

    def check_can_serve(self) -> None:
        """Development mode (no tokens file) serves on a loopback address only."""
        if self.development_mode and not is_loopback(self.host):
            raise ConfigError(
                f"HOST: without RUNBOOKS_TOKENS_FILE (development mode) the gateway binds to a "
                f"loopback address only, got {self.host!r}; set RUNBOOKS_TOKENS_FILE to serve on it"
            )

    def _check_store(self) -> None:
        if self.storage_backend == "postgres" and not (self.database_url or self.db_host):
            raise ConfigError("DATABASE_URL: required with STORAGE_BACKEND=postgres (or set DB_HOST)")
        if self.database_url and urlsplit(self.database_url).scheme not in ("postgres", "postgresql"):
            raise ConfigError(f"DATABASE_URL: must be a postgresql:// URL, got scheme "
                              f"{urlsplit(self.database_url).scheme!r}")
        if self.storage_backend == "sqlite":
            parent = pathlib.Path(self.sqlite_path).expanduser().parent
            if not parent.is_dir():
                raise ConfigError(f"SQLITE_PATH: directory {str(parent)!r} does not exist")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Reader:
    """Reads one variable at a time; every error names its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def optional(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def parsed(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        value = self.optional(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        def parse(value: str) -> int:
            try:
                number = int(value)
            except ValueError:
                number = low - 1
            if not low <= number <= high:
                raise ConfigError(f"must be an integer between {low} and {high}, got {value!r}")
            return number

        return self.parsed(name, default, parse)

    def boolean(self, name: str, default: bool) -> bool:
        def parse(value: str) -> bool:
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise ConfigError(f"must be true or false, got {value!r}")

        return self.parsed(name, default, parse)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(value: str) -> str:
            if value.lower() not in choices:
                raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}")
            return value.lower()

        return self.parsed(name, default, parse)


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and urlsplit(origin).scheme not in ("http", "https"):
            raise ConfigError(f"each origin must be '*' or an http(s):// origin, got {origin!r}")
    return origins


def _allowlist(value: str) -> HostAllowlist:
    try:
        return HostAllowlist.parse(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _directory(value: str) -> str:
    if not pathlib.Path(value).is_dir():
        raise ConfigError(f"not a directory: {value!r}")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"must be an absolute http(s) URL, got {value!r}")
    return value


def _instance_id(value: str) -> str:
    if len(value) > 200 or not all("!" <= ch <= "~" for ch in value):
        raise ConfigError(f"must be at most 200 printable ASCII characters without spaces, got {value!r}")
    return value


def _secrets_file(value: str) -> str:
    """The file is read once here, so a broken one stops start-up (it is read again when it changes)."""
    try:
        load_secrets_file(value)
    except SecretsFileError as exc:
        raise ConfigError(str(exc)) from None
    return value


def _signing_key(value: str) -> str:
    """The key is read once here, so a file that holds no Ed25519 private key stops start-up."""
    try:
        CheckpointSigner.from_file(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return value


def _sources_file(value: str) -> SourcesConfig:
    """Read and checked once here: a problem stops start-up, each on a line of its own."""
    try:
        return load_sources(value)
    except SourcesFileError as exc:
        raise ConfigError(f"{value} has {len(exc.problems)} problem(s):\n" + "\n".join(
            f"RUNBOOKS_SOURCES_FILE: {value}: {p.path}: {p.message}" for p in exc.problems)) from None


def _public_url(value: str) -> str:
    return _http_url(value).rstrip("/")


def _otlp_endpoint(value: str) -> str:
    _http_url(value)
    if not tracing.available():
        raise ConfigError("set, but the OpenTelemetry packages are not installed "
                          "(pip install 'runbooks[otel]')")
    return value


def load_tokens(path: str) -> tuple[TokenEntry, ...]:
    """The tokens of a JSON or YAML file ``{tokens: [{token, user, tenant, roles}]}``."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) if not path.endswith(".json") else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as JSON or YAML: {_one_line(exc)}") from None
    problems: list[str] = []
    entries = _token_entries(data, problems)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return entries


def _token_entries(data: Any, problems: list[str]) -> tuple[TokenEntry, ...]:
    raw = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        problems.append("tokens: required, a non-empty list of {token, user, tenant, roles}")
        return ()
    entries: list[TokenEntry] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        path = f"tokens[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{path}: must be a mapping")
            continue
        fields = [_required_text(item, key, f"{path}.{key}", problems) for key in ("token", "user", "tenant")]
        roles = item.get("roles", list(DEFAULT_TOKEN_ROLES))  # no roles: operator and author
        if not isinstance(roles, list) or not all(_role_name(role) for role in roles):
            problems.append(f"{path}.roles: must be a list of role names (printable, at most 200 characters)")
            roles = []
        if ANY_ROLE in roles:  # it would satisfy every role:NAME approver entry
            problems.append(f"{path}.roles: '{ANY_ROLE}' (every role) exists in development mode only; "
                            "name the roles this token holds")
        if fields[0] in seen:
            problems.append(f"{path}.token: the same token appears twice")
        if all(fields):
            seen.add(fields[0])
            entries.append(TokenEntry(fields[0], fields[1], fields[2], tuple(roles)))
    return tuple(entries)


def _role_name(role: Any) -> bool:
    return isinstance(role, str) and 0 < len(role) <= 200 and role.isprintable() and role.strip() == role


def _required_text(item: Mapping[str, Any], key: str, path: str, problems: list[str]) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{path}: required, a non-empty string")
        return ""
    if key != "token" and (len(value.strip()) > 200 or not value.strip().isprintable()):
        problems.append(f"{path}: at most 200 printable characters")  # what the engine stores as text
        return ""
    return value.strip()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
