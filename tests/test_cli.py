"""The ``runbooks`` command: validate, run to the end, the serve options."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys

import pytest

from gateway.cli import main
from gateway.cli_run import RunOptions, run_file, validate_files


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
    assert f"{bad}:3: steps[0].type (step 'a'): unknown step type 'nope'" in text
    assert f"{bad}:4: steps[1].id (step 'a'): duplicate step id 'a'" in text
    assert "missing.yaml: cannot read" in text
    assert validate_files([str(good)], io.StringIO()) == 0


TYPOS = """\
id: typos
steps:
  - id: fetch
    type: call-servce
    config: {url: /x}
  - id: check
    type: call-service
    dependOn: [fetch]
    config:
      url: "/hosts/${inptu.host}"
      headers: {X-Host: "${inptu.host}"}
      methd: GET
  - id: later
    type: call-service
    dependsOn: [fech]
    config: {url: /y}
"""


def test_validate_suggests_names_and_says_where_each_problem_is(tmp_path: pathlib.Path) -> None:
    typos = write(tmp_path, "typos.yaml", TYPOS)
    out = io.StringIO()
    assert validate_files([str(typos)], out) == 1
    lines = out.getvalue().splitlines()
    assert lines == [
        f"{typos}:4: steps[0].type (step 'fetch'): unknown step type 'call-servce'; did you mean 'call-service'? "
        "(known: call-service, conditional, human-approval, loop, run-runbook, wait-for-event)",
        f"{typos}:8: steps[1].dependOn (step 'check'): unknown field 'dependOn'; did you mean 'dependsOn'?",
        f"{typos}:12: steps[1].config.methd (step 'check'): unknown field 'methd'; did you mean 'method'?",
        f"{typos}:10: steps[1].config (step 'check'): template '${{inptu.host}}' refers to unknown step 'inptu'; "
        "did you mean 'input'?",  # once, though the template is written twice
        f"{typos}:15: steps[2].dependsOn (step 'later'): unknown step 'fech'; did you mean 'fetch'?",
    ]


def test_validate_names_the_file_and_line_of_a_yaml_error(tmp_path: pathlib.Path) -> None:
    broken = write(tmp_path, "broken.yaml", "id: x\nsteps:\n  - id: a\n    type: [unclosed\n")
    out = io.StringIO()
    assert validate_files([str(broken)], out) == 1
    text = out.getvalue()
    assert "<unicode string>" not in text and text.count("\n") == 1
    assert text.startswith(f"{broken}:5: $: not valid YAML or JSON: expected ',' or ']', but got '<stream end>' "
                           "at line 5, column 1 (while parsing a flow sequence at line 4, column 11)")


async def test_run_exits_zero_only_when_the_execution_completed(tmp_path: pathlib.Path) -> None:
    ok = write(tmp_path, "ok.yaml", "id: ok\noutput: '${input.n}'\nsteps:\n"
               "  - {id: c, type: conditional, config: {condition: {field: input.n, operator: gt, value: 1}}}\n")
    out = io.StringIO()
    assert await run_file(ok, RunOptions(input={"n": 5}), out) == 0
    assert "c                        succeeded" in out.getvalue()
    assert out.getvalue().rstrip().endswith("5")
    failing = write(tmp_path, "fail.yaml", "id: f\nsteps:\n  - {id: s, type: call-service, config: {url: /x}}\n")
    out = io.StringIO()
    assert await run_file(failing, RunOptions(), out) == 1
    assert "failed" in out.getvalue()
    invalid = write(tmp_path, "invalid.yaml", "id: i\nsteps: []\n")
    out = io.StringIO()
    assert await run_file(invalid, RunOptions(), out) == 1
    assert "steps: required" in out.getvalue()


def test_runbooks_command_is_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "validate", "examples/deploy-approval.yaml"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_serve_takes_host_port_store_and_runbooks_dir(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["serve", "--help"])
    assert shown.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--store", "--runbooks-dir"):
        assert option in text
    assert main(["serve", "--port", "abc", "--store", "memory"]) == 2
    assert capsys.readouterr().err == "runbooks serve: PORT: must be an integer between 1 and 65535, got 'abc'\n"
    assert main(["serve", "--store", "mongodb://x"]) == 2
    assert capsys.readouterr().err.startswith("runbooks serve: --store: 'mongodb://x' is not a store URL")


def test_serve_store_flag_wins_over_the_environment() -> None:
    from gateway.serve import store_variables

    assert store_variables("memory") == {"STORAGE_BACKEND": "memory"}
    assert store_variables("sqlite:///tmp/x.db") == {"STORAGE_BACKEND": "sqlite", "SQLITE_PATH": "tmp/x.db"}
    assert store_variables("sqlite:////abs/x.db") == {"STORAGE_BACKEND": "sqlite", "SQLITE_PATH": "/abs/x.db"}
    assert store_variables("postgresql://u@h/db") == {"STORAGE_BACKEND": "postgres", "DATABASE_URL": "postgresql://u@h/db"}
