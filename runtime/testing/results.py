"""A test file's cases run one after the other, each with its verdict: ``run_suite``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from runtime.testing.drive import Outcome, run_case
from runtime.testing.spec import Case, Suite
from runtime.testing.verdict import Mismatch, verdict


@attrs.frozen
class CaseResult:
    suite: Suite
    case: Case
    outcome: Outcome
    mismatches: tuple[Mismatch, ...]
    wall_s: float  # real time the case took

    @property
    def passed(self) -> bool:
        return not self.mismatches


def run_suite(suite: Suite, executors: Mapping[str, Any] | None = None) -> Iterator[CaseResult]:
    """Each case's result, as it finishes (each on a fresh runtime and virtual clock)."""
    for case in suite.cases:
        started = time.perf_counter()
        outcome = run_case(suite, case, executors=executors)
        yield CaseResult(suite, case, outcome, tuple(verdict(case, outcome)), time.perf_counter() - started)
