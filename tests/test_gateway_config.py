"""``gateway.config.Config.from_env``: defaults, every variable, one-line errors, tokens file."""

from __future__ import annotations

import pathlib
import socket

import pytest

from gateway.config import Config, ConfigError, TokenEntry
from runtime import Settings


def test_the_documented_defaults() -> None:
    config = Config.from_env({})
    assert (config.port, config.host, config.storage_backend, config.sqlite_path) == (
        3000, "127.0.0.1", "sqlite", "./runbooks.db")
    assert (config.db_pool_max, config.max_concurrent_steps, config.default_max_retries, config.lease_ttl_ms) == (
        20, 5, 3, 15000)
    assert config.event_retention_ms == 24 * 3600 * 1000
    assert (config.detailed_logging, config.enable_cors, config.cors_origins) == (False, False, ())
    assert config.development_mode and config.tokens == ()
    assert config.store_url() == "sqlite:///./runbooks.db"
    assert config.forward_wait_ms == 5000
    assert config.instance_id == f"{socket.gethostname()}:3000"  # the host and the port it serves on
    assert config.settings() == Settings(max_concurrent_steps=5, default_max_retries=3,
                                         event_retention_ms=24 * 3600 * 1000, call_service_base_url=None,
                                         instance_id=config.instance_id)


def test_every_variable_is_read(tmp_path: pathlib.Path) -> None:
    config = Config.from_env({
        "PORT": "8080", "HOST": "::1", "STORAGE_BACKEND": "Memory", "MAX_CONCURRENT_STEPS": "9",
        "DEFAULT_MAX_RETRIES": "0", "DETAILED_LOGGING": "yes", "ENABLE_CORS": "1",
        "CORS_ORIGINS": "https://a.example.com/, http://b.example.com:8080", "RUNBOOKS_DIR": str(tmp_path),
        "CALL_SERVICE_BASE_URL": "http://svc.internal:9000/api", "EVENT_RETENTION_MS": "60000",
        "LEASE_TTL_MS": "30000", "DB_POOL_MAX": "7", "FORWARD_WAIT_MS": "1500", "RUNBOOKS_INSTANCE_ID": "pod-0",
        "MAX_RETAINED_EVENTS_PER_TENANT": "50", "SHUTDOWN_TIMEOUT_MS": "2500", "GRPC_PROTOSET_DIR": str(tmp_path),
        "REQUIRE_SEPARATION_OF_DUTIES": "true",
    })
    assert (config.port, config.host, config.storage_backend) == (8080, "::1", "memory")
    assert config.store_url() == "memory"
    assert config.cors_origins == ("https://a.example.com", "http://b.example.com:8080")
    assert (config.detailed_logging, config.enable_cors, config.runbooks_dir) == (True, True, str(tmp_path))
    assert config.settings() == Settings(max_concurrent_steps=9, default_max_retries=0, event_retention_ms=60000,
                                         call_service_base_url="http://svc.internal:9000/api", lease_ttl_ms=30000,
                                         forward_wait_ms=1500, instance_id="pod-0",
                                         max_retained_events_per_tenant=50, shutdown_timeout_ms=2500,
                                         grpc_protoset_dir=str(tmp_path), require_separation_of_duties=True)
    assert (config.lease_ttl_ms, config.db_pool_max) == (30000, 7)
    config.check_can_serve()  # ::1 is loopback


def test_empty_variables_count_as_unset() -> None:
    assert Config.from_env({"PORT": "", "HOST": " "}) == Config.from_env({})


def test_postgres_urls() -> None:
    parts = Config.from_env({"STORAGE_BACKEND": "postgres", "DB_HOST": "db.internal", "DB_PORT": "6432",
                             "DB_NAME": "rb", "DB_USER": "svc", "DB_PASSWORD": "p@ss:w/rd", "DB_SSL": "true"})
    assert parts.store_url() == "postgresql://svc:p%40ss%3Aw%2Frd@db.internal:6432/rb?sslmode=require"
    assert "p@ss" not in repr(parts)
    url = Config.from_env({"STORAGE_BACKEND": "postgres", "DATABASE_URL": "postgresql://u@h/db?application_name=x",
                           "DB_SSL": "true"})
    assert url.store_url() == "postgresql://u@h/db?application_name=x&sslmode=require"
    plain = Config.from_env({"STORAGE_BACKEND": "postgres", "DATABASE_URL": "postgres://u@h/db"})
    assert plain.store_url() == "postgres://u@h/db"


@pytest.mark.parametrize(("env", "message"), [
    ({"PORT": "abc"}, "PORT: must be an integer between 1 and 65535, got 'abc'"),
    ({"PORT": "0"}, "PORT: must be an integer between 1 and 65535, got '0'"),
    ({"STORAGE_BACKEND": "mongo"}, "STORAGE_BACKEND: must be one of sqlite, memory, postgres, got 'mongo'"),
    ({"DB_SSL": "maybe"}, "DB_SSL: must be true or false, got 'maybe'"),
    ({"MAX_CONCURRENT_STEPS": "0"}, "MAX_CONCURRENT_STEPS: must be an integer between 1 and 1000, got '0'"),
    ({"DEFAULT_MAX_RETRIES": "-1"}, "DEFAULT_MAX_RETRIES: must be an integer between 0 and 100, got '-1'"),
    ({"EVENT_RETENTION_MS": "1.5"}, "EVENT_RETENTION_MS: must be an integer between 0 and 31536000000, got '1.5'"),
    ({"DB_POOL_MAX": "x"}, "DB_POOL_MAX: must be an integer between 1 and 10000, got 'x'"),
    ({"LEASE_TTL_MS": "5"}, "LEASE_TTL_MS: must be an integer between 100 and 1000000000, got '5'"),
    ({"MAX_RETAINED_EVENTS_PER_TENANT": "-1"},
     "MAX_RETAINED_EVENTS_PER_TENANT: must be an integer between 0 and 1000000000, got '-1'"),
    ({"SHUTDOWN_TIMEOUT_MS": "5s"}, "SHUTDOWN_TIMEOUT_MS: must be an integer between 0 and 3600000, got '5s'"),
    ({"ENABLE_CORS": "sure"}, "ENABLE_CORS: must be true or false, got 'sure'"),
    ({"CORS_ORIGINS": "ftp://x"}, "CORS_ORIGINS: each origin must be '*' or an http(s):// origin, got 'ftp://x'"),
    ({"CALL_SERVICE_BASE_URL": "svc:80"}, "CALL_SERVICE_BASE_URL: must be an absolute http(s) URL, got 'svc:80'"),
    ({"RUNBOOKS_INSTANCE_ID": "pod 1"},
     "RUNBOOKS_INSTANCE_ID: must be at most 200 printable ASCII characters without spaces, got 'pod 1'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
     "OTEL_EXPORTER_OTLP_ENDPOINT: must be an absolute http(s) URL, got 'collector:4318'"),
    ({"RUNBOOKS_DIR": "/no/such/dir"}, "RUNBOOKS_DIR: not a directory: '/no/such/dir'"),
    ({"GRPC_PROTOSET_DIR": "/no/such/dir"}, "GRPC_PROTOSET_DIR: not a directory: '/no/such/dir'"),
    ({"SQLITE_PATH": "/no/such/dir/x.db"}, "SQLITE_PATH: directory '/no/such/dir' does not exist"),
    ({"STORAGE_BACKEND": "postgres"}, "DATABASE_URL: required with STORAGE_BACKEND=postgres (or set DB_HOST)"),
    ({"STORAGE_BACKEND": "postgres", "DATABASE_URL": "mysql://x"},
     "DATABASE_URL: must be a postgresql:// URL, got scheme 'mysql'"),
])
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    assert str(caught.value) == message


def test_instance_id_defaults_to_host_name_and_port() -> None:
    assert Config.from_env({"PORT": "3005"}).instance_id == f"{socket.gethostname()}:3005"
    assert Config.from_env({"RUNBOOKS_INSTANCE_ID": "runbooks-7d9f-x2"}).instance_id == "runbooks-7d9f-x2"


def test_otlp_endpoint_is_read() -> None:
    assert Config.from_env({}).otel_exporter_otlp_endpoint is None
    config = Config.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"})
    assert config.otel_exporter_otlp_endpoint == "http://jaeger:4318"


def test_development_mode_serves_on_loopback_only() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        Config.from_env({"HOST": host}).check_can_serve()
    with pytest.raises(ConfigError, match=r"^HOST: .*got '0\.0\.0\.0'"):
        Config.from_env({"HOST": "0.0.0.0"}).check_can_serve()


def test_tokens_file_json_and_yaml(tmp_path: pathlib.Path) -> None:
    json_file = tmp_path / "tokens.json"
    json_file.write_text('{"tokens": [{"token": "t1", "user": "u1", "tenant": "a", "roles": ["admin"]}]}')
    yaml_file = tmp_path / "tokens.yml"
    yaml_file.write_text("tokens:\n  - token: t2\n    user: u2\n    tenant: b\n")
    assert Config.from_env({"RUNBOOKS_TOKENS_FILE": str(json_file)}).tokens == (TokenEntry("t1", "u1", "a", ("admin",)),)
    config = Config.from_env({"RUNBOOKS_TOKENS_FILE": str(yaml_file), "HOST": "0.0.0.0"})
    assert config.tokens == (TokenEntry("t2", "u2", "b", ("operator", "author")),)  # no roles: the default
    assert not config.development_mode
    config.check_can_serve()  # with tokens, any address
    assert "t2" not in repr(config)


@pytest.mark.parametrize(("content", "problem"), [
    ("", "tokens: required"),
    ("tokens: []", "tokens: required"),
    ("tokens: [{token: '', user: u, tenant: t}]", "tokens[0].token: required, a non-empty string"),
    ("tokens: [{token: a, tenant: t}]", "tokens[0].user: required"),
    ("tokens: [{token: a, user: u, tenant: '" + "t" * 201 + "'}]", "tokens[0].tenant: at most 200 printable characters"),
    ('tokens: [{token: a, user: "u\\0", tenant: t}]', "tokens[0].user: at most 200 printable characters"),
    ("tokens: [{token: a, user: u, tenant: t, roles: admin}]", "tokens[0].roles: must be a list of role names"),
    ("tokens: [{token: a, user: u, tenant: t}, {token: a, user: v, tenant: t}]",
     "tokens[1].token: the same token appears twice"),
    ("tokens: [{token: a", "cannot be read as JSON or YAML"),
    ('tokens: [{token: a, user: u, tenant: t, roles: ["*"]}]',
     "tokens[0].roles: '*' (every role) exists in development mode only"),
    ('tokens: [{token: a, user: u, tenant: t, roles: [viewer, "*"]}]', "tokens[0].roles: '*' (every role)"),
])
def test_a_bad_tokens_file_names_the_variable(tmp_path: pathlib.Path, content: str, problem: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"RUNBOOKS_TOKENS_FILE": str(path)})
    message = str(caught.value)
    assert message.startswith(f"RUNBOOKS_TOKENS_FILE: {path}: ")
    assert problem in message
    assert "\n" not in message


def test_a_missing_tokens_file() -> None:
    with pytest.raises(ConfigError, match=r"^RUNBOOKS_TOKENS_FILE: /nope/tokens.yaml: cannot be read"):
        Config.from_env({"RUNBOOKS_TOKENS_FILE": "/nope/tokens.yaml"})
