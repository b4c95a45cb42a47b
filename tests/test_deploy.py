"""The deployment files: Dockerfile, deploy/kubernetes/runbooks.yaml, deploy/systemd/.

No image can be built here (no Docker engine), so the Dockerfile's own lines are run: its
COPY set is laid out in a temporary directory, its pip install runs into a fresh virtual
environment, its entry point starts with its ENV, and its HEALTHCHECK command must pass.
The manifests and the unit are parsed and checked against what the service serves (the
route table) and reads (every variable ``Config.from_env`` looks up).
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import tomllib
import venv
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import trio
import yaml

from gateway.config import Config, ConfigError, load_tokens
from gateway.routes import ROUTES
from tests.gateway_fixtures import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
MANIFEST = REPO / "deploy" / "kubernetes" / "runbooks.yaml"
UNIT = REPO / "deploy" / "systemd" / "runbooks.service"
ENV_FILE = REPO / "deploy" / "systemd" / "runbooks.env"
TOKENS = "tokens:\n  - {token: t0ken-for-tests, user: ops, tenant: default}\n"


# ---- what the service reads and serves ---------------------------------------------------------


class _Recording(dict[str, str]):
    def __init__(self, base: Mapping[str, str]) -> None:
        super().__init__(base)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


def settings_read() -> set[str]:
    """Every environment variable the service's configuration looks up."""
    env = _Recording({})
    Config.from_env(env)
    return env.read


SERVED_GETS = {route.rule for route in ROUTES if route.method == "GET"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_settings_read_include_the_documented_ones() -> None:
    assert {"HOST", "PORT", "DATABASE_URL", "RUNBOOKS_TOKENS_FILE", "RUNBOOKS_INSTANCE_ID",
            "OTEL_EXPORTER_OTLP_ENDPOINT", "STORAGE_BACKEND"} <= settings_read()


# ---- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        name, _, rest = pending.strip().partition(" ")
        instructions.append((name.upper(), rest.strip()))
        pending = ""
    return instructions


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in dockerfile():
        if name == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    return env


def exec_form(name: str) -> list[str]:
    (args,) = [a for n, a in dockerfile() if n == name]
    if name == "HEALTHCHECK":
        args = args[args.index("CMD") + 3:].strip()
    command = json.loads(args)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command), f"{name}: exec form"
    return command


def test_the_dockerfile_is_small_non_root_and_serves() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert exec_form("ENTRYPOINT") == ["runbooks", "serve"]
    assert PYPROJECT["project"]["scripts"]["runbooks"] == "gateway.cli:main"
    assert "/health/live" in " ".join(exec_form("HEALTHCHECK")) and "/health/live" in SERVED_GETS
    env = docker_env()
    assert env["HOST"] == "0.0.0.0" and ("EXPOSE", env["PORT"]) in instructions
    assert {k for k in env if not k.startswith(("PYTHON", "PIP_"))} <= settings_read()


def test_host_0000_in_the_image_needs_a_tokens_file(tmp_path: pathlib.Path) -> None:
    # Development mode trusts X-User-Id, so it never listens beyond loopback; the image's
    # HOST=0.0.0.0 therefore asks for RUNBOOKS_TOKENS_FILE.
    env = {**docker_env(), "SQLITE_PATH": str(tmp_path / "rb.db")}
    with pytest.raises(ConfigError, match=r"^HOST: without RUNBOOKS_TOKENS_FILE"):
        Config.from_env(env).check_can_serve()
    (tmp_path / "tokens.yaml").write_text(TOKENS)
    Config.from_env({**env, "RUNBOOKS_TOKENS_FILE": str(tmp_path / "tokens.yaml")}).check_can_serve()


def copied_sources() -> list[str]:
    sources: list[str] = []
    for name, args in dockerfile():
        if name == "COPY":
            *parts, _ = shlex.split(args)
            sources += [p for p in parts if not p.startswith("--")]
    return sources


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for source in copied_sources():
        assert (REPO / source).exists(), source
        assert source not in ignored, f"{source} is copied but .dockerignore leaves it out"


def _install_commands() -> list[list[str]]:
    commands = []
    for name, args in dockerfile():
        if name == "RUN":
            for part in args.split("&&"):
                words = shlex.split(part)
                if words[:2] == ["pip", "install"]:
                    commands.append(words)
                else:
                    assert words[0] in ("groupadd", "useradd", "mkdir", "chown", "rm"), part
    return commands


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """The Dockerfile's COPY and pip install lines, run into a fresh virtual environment."""
    root = tmp_path_factory.mktemp("image")
    workdir = root / "opt"
    workdir.mkdir()
    for source in copied_sources():
        target = workdir / source
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, target)
    environment = root / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    for command in _install_commands():
        # pip's cache is kept (the image drops it): the second run of this test installs from it
        args = [str(environment / "bin" / "python"), "-m", *[w for w in command if w != "--no-cache-dir"]]
        result = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=540, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
    yield environment


@pytest.mark.slow
async def test_the_image_command_serves_and_its_healthcheck_passes(image_venv: pathlib.Path,
                                                                   tmp_path: pathlib.Path) -> None:
    bin_dir = image_venv / "bin"
    (tmp_path / "tokens.yaml").write_text(TOKENS)
    port = free_port()
    # HOST: the image's 0.0.0.0 is checked above; here the server listens on loopback only.
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **docker_env(), "HOST": "127.0.0.1", "PORT": str(port),
           "SQLITE_PATH": str(tmp_path / "runbooks.db"), "RUNBOOKS_TOKENS_FILE": str(tmp_path / "tokens.yaml")}
    entry = exec_form("ENTRYPOINT")
    process = await trio.lowlevel.open_process([str(bin_dir / entry[0]), *entry[1:]], env=env, cwd=tmp_path,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        healthcheck = exec_form("HEALTHCHECK")
        with trio.fail_after(60):
            while True:
                result = await trio.run_process([str(bin_dir / healthcheck[0]), *healthcheck[1:]], env=env,
                                                check=False, capture_stdout=True, capture_stderr=True)
                if result.returncode == 0:
                    break
                assert process.poll() is None, f"the entry point exited with {process.returncode}"
                await trio.sleep(0.2)  # a process starting: polled with the image's own check
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---- Kubernetes ---------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    kinds = [d["kind"] for d in documents]
    assert len(kinds) == len(set(kinds)), "one object of each kind"
    return {d["kind"]: d for d in documents}


def test_the_manifests_parse_and_hold_the_objects_a_deployment_needs() -> None:
    assert set(manifests()) == {"Secret", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}


def _container() -> dict[str, Any]:
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_probes_and_ports_are_what_the_service_serves() -> None:
    objects, container = manifests(), _container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["PORT"]) and env["HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": port["name"]}
    probes = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")]
    assert set(probes) <= SERVED_GETS
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (objects["Service"]["spec"]["selector"],
                     objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                     objects["Deployment"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()


def test_the_environment_is_settings_the_service_reads(tmp_path: pathlib.Path) -> None:
    objects, container = manifests(), _container()
    secret, config_map = objects["Secret"], objects["ConfigMap"]
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == [config_map["metadata"]["name"]]
    env = {e["name"]: e for e in container["env"]}
    assert (set(env) | set(config_map["data"])) <= settings_read()
    assert env["RUNBOOKS_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    database = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert database["name"] == secret["metadata"]["name"] and database["key"] in secret["stringData"]
    # the tokens file: a key of the Secret, mounted where RUNBOOKS_TOKENS_FILE points
    tokens_path = pathlib.PurePosixPath(env["RUNBOOKS_TOKENS_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if tokens_path.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == str(tokens_path.relative_to(mount["mountPath"]))]
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(secret["stringData"][item["key"]])
    assert load_tokens(str(tokens_file))
    # and that configuration is one the gateway accepts and serves with
    resolved = {name: e.get("value") or "runbooks-0" for name, e in env.items()}
    resolved.update(config_map["data"], DATABASE_URL=secret["stringData"]["DATABASE_URL"],
                    RUNBOOKS_TOKENS_FILE=str(tokens_file))
    config = Config.from_env(resolved)
    config.check_can_serve()
    assert (config.storage_backend, config.instance_id) == ("postgres", "runbooks-0")


def test_the_pod_runs_as_the_images_user_and_has_time_to_shut_down() -> None:
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["terminationGracePeriodSeconds"] >= 15
    assert manifests()["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1


# ---- systemd ------------------------------------------------------------------------------------


def unit() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def test_the_unit_starts_the_installed_command_with_settings_the_service_reads() -> None:
    service = dict(unit()["Service"])
    command = shlex.split(service["ExecStart"])
    assert pathlib.PurePosixPath(command[0]).name in PYPROJECT["project"]["scripts"] and command[1:] == ["serve"]
    assert service["User"] not in ("root", "0") and service["KillSignal"] == "SIGTERM"
    names = {item.split("=", 1)[0] for key, value in unit()["Service"] if key == "Environment"
             for item in shlex.split(value)}
    assert names and names <= settings_read()
    assert service["EnvironmentFile"] == "/etc/runbooks/runbooks.env"
    file_names = {line.lstrip("#").split("=", 1)[0] for line in ENV_FILE.read_text().splitlines()
                  if "=" in line and not line.startswith("# ")}
    assert file_names and file_names <= settings_read()


@pytest.mark.slow
def test_systemd_accepts_the_unit_with_the_installed_command(image_venv: pathlib.Path, tmp_path: pathlib.Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text().replace("/opt/runbooks/venv", str(image_venv))
    text = text.replace("/etc/runbooks/runbooks.env", str(ENV_FILE))
    (tmp_path / "runbooks.service").write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / "runbooks.service")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and "Unknown" not in result.stderr, result.stderr
    assert (image_venv / "bin" / "runbooks").exists()

