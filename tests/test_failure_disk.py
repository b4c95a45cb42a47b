"""An SQLite store on a small real file system that fills up or turns read-only under the engine.

The file systems are real: a size-limited tmpfs (a full disk: ``SQLITE_FULL``, and a mount
that is read-only at start) and a loop-mounted ext4 image (``chattr +i`` on the database and
its WAL: the one way to make an open file read-only, even for root; SQLite then reports
``SQLITE_IOERR_WRITE``). Mounting needs root; without it (or where the kernel refuses) each
test is skipped with the reason.

What a user would notice, checked each time: commits stop and are retried; the log and the
readiness answer (``Runtime.ready``, ``GET /health/ready`` 503) name the cause; nothing the
engine acknowledged is lost and nothing unacknowledged happened (the step after an approval
that could not be committed was not called); once the disk has room again, or the file is
writable again, everything completes, each service call once per idempotency key, and a
new runtime on the same file finds it all.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway import Config, create_app
from runtime import Runtime, Settings, StoreUnavailable, open_runtime
from runtime.store.sqlite import SqliteStore
from tests.fake_service import FakeService, fake_service
from tests.gateway_fixtures import MEMORY_ENV, free_port, served

pytestmark = pytest.mark.slow

ROOT = str(Path(__file__).resolve().parent.parent)
DEPLOY = {"id": "deploy", "steps": [
    {"id": "build", "type": "call-service", "config": {"url": "/build", "method": "POST"}},
    {"id": "approve", "type": "human-approval", "config": {"approvers": ["boss"]}},
    {"id": "deploy", "type": "call-service", "config": {"url": "/deploy", "method": "POST"}},
]}
EXECUTIONS = 5


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _needs_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"mounting {what} needs root")


def _unmount(where: Path) -> None:
    if _run("umount", str(where)).returncode != 0:
        _run("umount", "-l", str(where))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (no blocks reserved for root: full means full)."""
    _needs_root("a tmpfs")
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(where))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        _unmount(where)


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 image on a loop device (it honours ``chattr +i`` on open files)."""
    _needs_root("an ext4 image")
    for tool in ("mkfs.ext4", "chattr"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    image, where = tmp_path / "fs.img", tmp_path / "ext4"
    where.mkdir()
    with open(image, "wb") as file:
        file.truncate(16 << 20)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    mounted = _run("mount", "-o", "loop", str(image), str(where)) if made.returncode == 0 else made
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount an ext4 image here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        _run("chattr", "-R", "-i", str(where))
        _unmount(where)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no room left; the file."""
    ballast = directory / "ballast"
    chunk = b"\0" * 65536
    with open(ballast, "wb", buffering=0) as file:  # unbuffered: nothing left to write at close
        try:
            while True:
                file.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return ballast


async def eventually(predicate: Callable[[], bool], within_s: float = 20) -> None:
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 (state kept by threads and other tasks: polled)
            await trio.sleep(0.02)


async def parked(rt: Runtime) -> list[str]:
    """``EXECUTIONS`` executions past their first service call, awaiting approval (acknowledged)."""
    await rt.register_runbook(DEPLOY)
    ids = [(await rt.start("deploy", {"n": n})).id for n in range(EXECUTIONS)]
    for execution_id in ids:
        with trio.fail_after(20):
            async for execution in rt.watch(execution_id):
                if execution.status == "awaiting_approval":
                    break
    return ids


async def approve_all(rt: Runtime, ids: list[str], nursery: trio.Nursery, answers: dict[str, Any]) -> None:
    async def approve(execution_id: str) -> None:
        try:
            answers[execution_id] = await rt.submit_approval(execution_id, "approve", approver="boss",
                                                             decision="approve")
        except Exception as exc:
            answers[execution_id] = exc

    for execution_id in ids:
        nursery.start_soon(approve, execution_id)


async def ready_problem(client: httpx.AsyncClient) -> str:
    response = await client.get("/health/ready")
    assert response.status_code == 503, response.text
    detail: str = response.json()["detail"]
    return detail


async def outage_then_recovery(rt: Runtime, svc: FakeService, ids: list[str], client: httpx.AsyncClient,
                               cause: str, break_it: Callable[[], Any],
                               repair: Callable[[], Awaitable[None]]) -> str:
    """Break the disk, have every execution commit (approvals), check nothing goes through and
    the cause is named, repair, check everything completes. The readiness detail seen."""
    assert (await client.get("/health/ready")).status_code == 200
    break_it()
    answers: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await approve_all(rt, ids, nursery, answers)
        await eventually(lambda: rt.persistence.stats.failures >= 2)
        with pytest.raises(ConnectionError, match=cause):
            await rt.ready()
        detail = await ready_problem(client)
        await trio.sleep(0.3)
        assert answers == {}  # nothing was acknowledged while the disk refused it
        assert svc.count("/deploy") == 0  # and nothing after an unacknowledged approval ran
        await repair()
    assert all(not isinstance(answer, Exception) for answer in answers.values()), answers
    for execution_id in ids:
        with trio.fail_after(20):
            assert (await rt.wait(execution_id)).status == "completed"
    assert (await client.get("/health/ready")).status_code == 200
    return detail


def check_calls_once_per_key(svc: FakeService, ids: list[str]) -> None:
    for path, step in (("/build", "build"), ("/deploy", "deploy")):
        keys = sorted(r.headers["idempotency-key"] for r in svc.requests_to(path))
        assert keys == sorted(f"{execution_id}:{step}" for execution_id in ids)  # each once


async def check_all_kept(path: Path, ids: list[str]) -> None:
    async with open_runtime(SqliteStore(path)) as rt:
        for execution_id in ids:
            execution = await rt.fetch(execution_id)
            assert execution.status == "completed"
            assert [(a.approver, a.decision) for a in execution.steps["approve"].approvals] == [("boss", "approve")]
            actions = [entry.action for entry in await rt.audit(execution_id)]
            assert actions.count("approval.decided") == 1, actions


def failure_lines(caplog: pytest.LogCaptureFixture, cause: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "runbooks.persistence" and r.levelno == logging.WARNING and cause in r.getMessage()]


async def test_a_full_disk(small_tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = small_tmpfs / "runbooks.db"
    async with fake_service() as svc:
        async with open_runtime(SqliteStore(path), settings=Settings(call_service_base_url=svc.url)) as rt:
            ids = await parked(rt)
            app = create_app(rt, Config.from_env(MEMORY_ENV))
            async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
                ballast: list[Path] = []

                async def repair() -> None:
                    ballast[0].unlink()

                detail = await outage_then_recovery(rt, svc, ids, client, "SQLITE_FULL",
                                                    lambda: ballast.append(fill(small_tmpfs)), repair)
        check_calls_once_per_key(svc, ids)
    assert detail.startswith(f"not ready: commits are failing: StoreUnavailable: sqlite store {path}: "
                             "database or disk is full (SQLITE_FULL); the file system has "), detail
    assert failure_lines(caplog, "database or disk is full (SQLITE_FULL)")
    await check_all_kept(path, ids)


async def test_a_database_made_read_only_while_it_runs(small_ext4: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = small_ext4 / "runbooks.db"
    files = [str(path), f"{path}-wal"]
    async with fake_service() as svc:
        async with open_runtime(SqliteStore(path), settings=Settings(call_service_base_url=svc.url)) as rt:
            ids = await parked(rt)
            app = create_app(rt, Config.from_env(MEMORY_ENV))
            async with served(app) as url, httpx.AsyncClient(base_url=url) as client:

                def freeze() -> None:
                    assert _run("chattr", "+i", *files).returncode == 0

                async def thaw() -> None:
                    assert _run("chattr", "-i", *files).returncode == 0

                detail = await outage_then_recovery(rt, svc, ids, client, "SQLITE_IOERR_WRITE", freeze, thaw)
        check_calls_once_per_key(svc, ids)
    assert f"{path} is immutable (chattr -i clears it)" in detail, detail
    assert "disk I/O error (SQLITE_IOERR_WRITE)" in detail, detail
    assert failure_lines(caplog, "is immutable")
    await check_all_kept(path, ids)


async def test_a_read_only_file_system_at_start_is_one_line_and_nothing_is_lost(small_tmpfs: Path) -> None:
    path = small_tmpfs / "runbooks.db"
    async with open_runtime(SqliteStore(path)) as rt:
        await rt.register_runbook(DEPLOY)
        waiting = await rt.start("deploy", {"n": 1}, {"userId": "u"})  # /build is refused: it retries
    assert _run("mount", "-o", "remount,ro", str(small_tmpfs)).returncode == 0
    try:
        with pytest.raises(StoreUnavailable) as refused:
            async with open_runtime(SqliteStore(path)):
                pass
        assert str(refused.value) == (f"sqlite store {path}: unable to open database file (SQLITE_CANTOPEN); "
                                      "the file system is read-only")
        serve = await trio.run_process(
            [sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), "--store", f"sqlite:///{path}"],
            capture_stdout=True, capture_stderr=True, check=False, env={**os.environ, "PYTHONPATH": ROOT})
        assert serve.returncode == 1
        assert serve.stderr.decode().splitlines()[-1] == f"runbooks serve: cannot start: {refused.value}"
    finally:
        assert _run("mount", "-o", "remount,rw", str(small_tmpfs)).returncode == 0
    async with open_runtime(SqliteStore(path)) as rt:
        assert (await rt.fetch(waiting.id)).runbook_id == "deploy"
