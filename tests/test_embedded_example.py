"""The README's embedded example runs as written."""

from __future__ import annotations

import runpy
from pathlib import Path

import trio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embedded.py"


async def test_embedded_example_completes(capsys: object) -> None:
    module = runpy.run_path(str(EXAMPLE))
    with trio.fail_after(30):
        await module["main"]("memory")
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "final: completed output: payments" in out
    assert "awaiting_approval" in out
