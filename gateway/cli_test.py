"""``runbooks test PATH...``: the cases kept beside runbooks, on a virtual clock, no network.

One line per case (``PASS`` or ``FAIL``, with the real and the virtual time it took); under a
failing case, each expectation it missed (expected against actual) and what happened, step
by step; a file that cannot be run is one ``ERROR`` line per problem. ``--junit FILE``
writes the same as JUnit XML for CI. Exit status: 0 every case passed, 1 a case failed, 2 a
file could not be run (a path naming nothing, a file that cannot be read, an invalid
runbook or test file), as pytest's.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

from gateway.case_report import duration_text, failure_lines
from gateway.junit import junit_xml
from runtime.testing import CaseResult, FileProblem, find_test_files, load_suite, run_suite


def test_paths(paths: Sequence[str], out: TextIO, junit: str | None = None) -> int:
    """Run every case the paths name; the exit status."""
    started = time.perf_counter()
    tests, given, problems = find_test_files(paths)
    for problem in problems:
        print(f"ERROR {problem}", file=out, flush=True)
    results: list[CaseResult] = []
    with quiet_engine():
        for test in tests:
            suite, found = load_suite(test, given)
            problems += found
            for problem in found:
                print(f"ERROR {problem}", file=out, flush=True)
            for result in run_suite(suite) if suite is not None else ():
                results.append(result)
                print_result(result, out)
    print(_summary(results, problems, time.perf_counter() - started), file=out)
    if junit is not None:
        pathlib.Path(junit).write_bytes(junit_xml(results, problems))
    return 2 if problems else (1 if any(not r.passed for r in results) else 0)


@contextlib.contextmanager
def quiet_engine() -> Iterator[None]:
    """The engine's own warnings (a step failing on purpose) would drown the report."""
    logger = logging.getLogger("runbooks")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def print_result(result: CaseResult, out: TextIO) -> None:
    times = f"{result.wall_s * 1000:.0f} ms, {duration_text(result.outcome.virtual_ms)} virtual"
    print(f"{'PASS' if result.passed else 'FAIL'}  {result.suite.path} > {result.case.name}  ({times})",
          file=out, flush=True)
    if not result.passed:
        for line in failure_lines(result):
            print(f"      {line}", file=out)


def _summary(results: list[CaseResult], problems: list[FileProblem], seconds: float) -> str:
    failed = sum(1 for r in results if not r.passed)
    parts = [f"{len(results) - failed} passed"]
    if failed:
        parts.append(f"{failed} failed")
    if problems:
        files = len({p.file for p in problems})
        parts.append(f"{files} file{'s' if files > 1 else ''} with problems")
    return f"{', '.join(parts)} in {seconds:.2f} s"
