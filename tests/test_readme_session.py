"""The README's curl session, run as written: the ``sh`` block under "A curl session" is read
from README.md and run by bash (with curl and jq) against what ``make run`` starts
(``examples/serve_with_demo.py``: the gateway with examples/ and the demo services), twice in
a row, as a reader trying it again would. Only the port differs from the README's 3000."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.gateway_fixtures import free_port, wait_until_ready

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
COMPLETED = ('{"status":"completed","steps":{"build":"succeeded","environment-health":"succeeded",'
             '"approve":"succeeded","deploy":"succeeded"}}')


def readme_session() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### A curl session", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def make_run(tmp_path: pathlib.Path) -> Iterator[int]:
    """What `make run` starts, on a free port and the memory store."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "STORAGE_BACKEND": "memory"}
    env.pop("CALL_SERVICE_BASE_URL", None)
    env.pop("RUNBOOKS_TOKENS_FILE", None)
    with (tmp_path / "make-run.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "examples/serve_with_demo.py", "--runbooks-dir", "examples"],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process, why=(tmp_path / "make-run.log").read_text)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="the session needs curl and jq")
def test_the_readme_session_works_as_written_twice_in_a_row(make_run: int) -> None:
    session = readme_session().replace("localhost:3000", f"localhost:{make_run}")
    assert session.count(f"localhost:{make_run}") >= 6  # every request goes to the server under test
    for _ in range(2):
        run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", session], capture_output=True, text=True,
                             timeout=90, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert '"deploy-approval"' in lines[0]
        assert COMPLETED in lines
        audit = [line.split("\t") for line in lines if line.count("\t") == 2]
        assert audit[0][1] == "alice"
        assert ["rm.jane", "approval.decided"] in [entry[1:] for entry in audit]
        # the approval was accepted (a 409 problem's `.status` would print 409): the deploy step was next
        assert '"running"' in lines or '"completed"' in lines, run.stdout
