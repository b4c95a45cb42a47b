"""The ``runbooks`` command: validate and run (SPEC section 9)."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys

from gateway.cli import main, run_file, validate_files


def write(tmp_path: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_lists_every_problem_of_every_file(tmp_path: pathlib.Path) -> None:
    good = write(tmp_path, "good.yaml", "id: ok\nsteps:\n  - {id: a, type: human-approval, config: {approvers: [x]}}\n")
    bad = write(tmp_path, "bad.yaml", "id: bad\nsteps:\n  - {id: a, type: nope}\n  - {id: a, type: loop, config: {}}\n")
    out = io.StringIO()
    assert validate_files([str(good), str(bad), str(tmp_path / "missing.yaml")], out) == 1
    text = out.getvalue()
    assert f"{good}: valid" in text
    assert f"{bad}: steps[0].type: unknown step type 'nope'" in text
    assert f"{bad}: steps[1].id: duplicate step id 'a'" in text
    assert "missing.yaml: cannot read" in text
    assert validate_files([str(good)], io.StringIO()) == 0


async def test_run_exits_zero_only_when_the_execution_completed(tmp_path: pathlib.Path) -> None:
    ok = write(tmp_path, "ok.yaml", "id: ok\noutput: '${input.n}'\nsteps:\n"
               "  - {id: c, type: conditional, config: {condition: {field: input.n, operator: gt, value: 1}}}\n")
    out = io.StringIO()
    assert await run_file(ok, {"n": 5}, "memory", None, False, out) == 0
    assert "c                        succeeded" in out.getvalue()
    assert out.getvalue().rstrip().endswith("5")
    failing = write(tmp_path, "fail.yaml", "id: f\nsteps:\n  - {id: s, type: call-service, config: {url: /x}}\n")
    out = io.StringIO()
    assert await run_file(failing, {}, "memory", None, False, out) == 1
    assert "failed" in out.getvalue()
    invalid = write(tmp_path, "invalid.yaml", "id: i\nsteps: []\n")
    out = io.StringIO()
    assert await run_file(invalid, {}, "memory", None, False, out) == 1
    assert "steps: required" in out.getvalue()


def test_bad_input_argument_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    assert main(["run", str(tmp_path / "x.yaml"), "--input", "{not json"]) == 2


def test_runbooks_command_is_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "validate", "examples/deploy-approval.yaml"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout
