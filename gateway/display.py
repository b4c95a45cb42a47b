"""The live progress display of ``runbooks run`` and ``runbooks watch``.

Both feed it the execution's states as the API's JSON (camelCase, ``steps`` keyed by step
id in document order): ``run`` converts the runtime's own states, ``watch`` reads them from
the server's event stream. It prints one line per step whose status changed, with the time
since the display started and, for a finished step, how long it took; a failed step also
gets its error. ``summary`` is the closing line (the final status, and the error); ``table``
lays out rows under a header in aligned columns (``runbooks list``).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any, TextIO

FINISHED = ("completed", "failed", "cancelled", "timed_out")


class Progress:
    """Prints what changed between the states it is shown."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._seen: dict[str, str] = {}
        self._status: str | None = None
        self._start = time.monotonic()

    def show(self, execution: dict[str, Any]) -> None:
        for step_id, step in execution.get("steps", {}).items():
            if self._seen.get(step_id) == step["status"]:
                continue
            self._seen[step_id] = step["status"]
            self._line(f"{step_id:<24} {step['status']}{_took(step)}")
            if step["status"] in ("failed", "rejected") and step.get("error"):
                self._line(f"{'':<24}   {step['error']['code']}: {step['error']['message']}")
        status = execution.get("status")
        if status != self._status and status in ("paused", "pausing", "cancelled", "timed_out"):
            self._line(f"{'(execution)':<24} {status}")
        self._status = status

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:7.2f}s] {text}", file=self._out, flush=True)


def summary(execution: dict[str, Any]) -> str:
    """``completed``, ``failed: <message>`` (the execution's error), or ``queued`` with the
    concurrency key whose slot it waits for."""
    error = execution.get("error")
    if execution["status"] == "queued" and execution.get("concurrencyKey") is not None:
        return f"queued (waiting for a slot of concurrency key '{execution['concurrencyKey']}')"
    return execution["status"] + (f": {error['message']}" if error else "")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The header and the rows as lines, each column as wide as its widest cell."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def output_text(execution: dict[str, Any]) -> str | None:
    if execution.get("output") is None:
        return None
    return json.dumps(execution["output"], indent=2, ensure_ascii=False, default=str)


def _took(step: dict[str, Any]) -> str:
    started, completed = step.get("startedAt"), step.get("completedAt")
    if not (started and completed):
        return ""
    seconds = (_parse(completed) - _parse(started)).total_seconds()
    return f" ({seconds:.2f} s)"


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
