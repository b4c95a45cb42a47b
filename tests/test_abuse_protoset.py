"""A protoset path comes from a runbook: it reads only a regular file of at most 8 MiB (under
GRPC_PROTOSET_DIR when set), never blocks a thread (a named pipe), never streams a device
(/dev/zero), and every refusal says the same thing (no probing which paths exist)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from runtime import Runtime, Settings, open_runtime
from tests.fake_grpc import SERVICE, fake_grpc, write_protoset

BOUND_S = 60  # the child takes a few seconds; before the fix it hung on the pipe for ever
PARALLEL_PIPES = 45  # more than Trio's 40 worker threads: the probe blocked every one

CHILD = textwrap.dedent("""
    import json, resource, sys, trio
    resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # 2 GiB: /dev/zero cannot eat the host
    from runtime import Settings, open_runtime

    ARGS = json.loads(sys.argv[1])

    def doc(rid, path):
        return {"id": rid, "steps": [{"id": "call", "type": "call-service", "config": {
            "protocol": "grpc", "target": "127.0.0.1:9", "service": ARGS["service"], "method": "Lookup",
            "protoset": path, "timeoutMs": 5000}}]}

    async def main():
        where = {"grpc_protoset_dir": ARGS["dir"]} if ARGS["dir"] else {}
        settings = Settings(default_max_retries=0, **where)
        async with open_runtime("memory", settings=settings) as rt:
            for name, path in ARGS["paths"].items():
                await rt.register_runbook(doc(name, path))
            executions = {name: await rt.start(name) for name in ARGS["paths"]}
            pipes = [await rt.start("pipe", force=True) for _ in range(ARGS["parallel"])]
            errors = {}
            for name, ex in executions.items():
                error = (await rt.wait(ex.id)).steps["call"].error
                errors[name] = [error.code, error.message]
            pipe_codes = sorted({(await rt.wait(ex.id)).steps["call"].error.code for ex in pipes})
            listed = len((await rt.list_executions(limit=1000)).items)  # reads still answer
            print(json.dumps({"errors": errors, "pipes": pipe_codes, "listed": listed}))

    trio.run(main)
""")


def run_child(directory: pathlib.Path | None, paths: dict[str, str]) -> dict[str, Any]:
    args = {"dir": str(directory) if directory else None, "paths": paths, "service": SERVICE,
            "parallel": PARALLEL_PIPES}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                          timeout=BOUND_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def hostile_files(tmp_path: pathlib.Path) -> dict[str, str]:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "junk").write_bytes(b"\xff\xff\xff not a descriptor set")
    (tmp_path / "empty").write_bytes(b"")
    with open(tmp_path / "huge", "wb") as handle:  # sparse: 9 MiB of zeros, no disk
        handle.truncate(9 * 1024 * 1024)
    (tmp_path / "dir").mkdir()
    return {"pipe": str(tmp_path / "pipe"), "zero": "/dev/zero", "missing": str(tmp_path / "absent"),
            "junk": str(tmp_path / "junk"), "empty": str(tmp_path / "empty"), "huge": str(tmp_path / "huge"),
            "directory": str(tmp_path / "dir"), "proc": "/proc/self/environ"}


def test_a_pipe_a_device_and_every_other_bad_path_fail_bad_protoset_alike(tmp_path: pathlib.Path) -> None:
    """The probe: a named pipe blocked 40 worker threads (every API read hung, the step's
    timeout never fired); /dev/zero read until MemoryError; messages told 'No such file'
    from 'not a FileDescriptorSet'. Bounded by the child's timeout and address-space limit."""
    paths = hostile_files(tmp_path)
    result = run_child(None, paths)
    errors = result["errors"]
    assert {code for code, _ in errors.values()} == {"bad_protoset"}
    messages = {message.replace(repr(paths[name]), "PATH") for name, (_, message) in errors.items()}
    assert len(messages) == 1, messages  # one message, whatever the path is
    assert "regular file of at most 8 MiB" in messages.pop()
    assert result["pipes"] == ["bad_protoset"]
    assert result["listed"] == len(paths) + PARALLEL_PIPES


def test_with_grpc_protoset_dir_a_path_outside_it_is_refused_alike(tmp_path: pathlib.Path) -> None:
    allowed = tmp_path / "protosets"
    allowed.mkdir()
    write_protoset(tmp_path / "outside.protoset")
    (allowed / "escape.protoset").symlink_to(tmp_path / "outside.protoset")
    paths = {"absolute": str(tmp_path / "outside.protoset"), "dotdot": "../outside.protoset",
             "link": "escape.protoset", "missing": "absent.protoset", "pipe": "/dev/zero"}
    errors = run_child(allowed, paths)["errors"]
    assert {code for code, _ in errors.values()} == {"bad_protoset"}
    messages = {message.replace(repr(paths[name]), "PATH") for name, (_, message) in errors.items()}
    assert len(messages) == 1 and f"under GRPC_PROTOSET_DIR ({allowed})" in messages.pop()


@pytest.fixture
async def rt_in_dir(tmp_path: pathlib.Path) -> Any:
    (tmp_path / "protosets").mkdir()
    settings = Settings(grpc_protoset_dir=str(tmp_path / "protosets"), default_max_retries=0)
    async with open_runtime("memory", settings=settings) as runtime:
        yield runtime


async def test_a_protoset_under_grpc_protoset_dir_is_found_by_its_relative_path(
        rt_in_dir: Runtime, tmp_path: pathlib.Path) -> None:
    write_protoset(tmp_path / "protosets" / "inventory.protoset")
    async with fake_grpc(reflection=None) as bare:
        await rt_in_dir.register_runbook({"id": "ok", "steps": [{"id": "call", "type": "call-service", "config": {
            "protocol": "grpc", "target": bare.target, "service": SERVICE, "method": "Lookup",
            "protoset": "inventory.protoset", "message": {"host_name": "db1"}}}]})
        final = await rt_in_dir.wait((await rt_in_dir.start("ok")).id)
    assert final.status == "completed", final.error
