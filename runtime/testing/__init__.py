"""Runbook tests: cases kept beside a runbook, run by the real engine on a virtual clock with
canned replies instead of the network (``runbooks test``, ``runbooks plan``).

``find_test_files`` and ``load_suite`` read and check the files (``discover``, ``reading``,
``spec``); ``run_suite`` (``results``) runs each case (``drive``: a runtime of its own on the
memory store under ``MockClock``, with ``CannedReplies`` from ``canned`` as the stand-in for
the network) and judges it (``verdict``, with ``match``).
"""

from runtime.testing.discover import (
    find_test_files,
    is_test_file,
    load_plan,
    load_suite,
    step_infos,
)
from runtime.testing.drive import Moment, Outcome, run_case
from runtime.testing.results import CaseResult, run_suite
from runtime.testing.spec import Case, FileProblem, Suite
from runtime.testing.verdict import Mismatch, verdict

__all__ = [
    "Case",
    "CaseResult",
    "FileProblem",
    "Mismatch",
    "Moment",
    "Outcome",
    "Suite",
    "find_test_files",
    "is_test_file",
    "load_plan",
    "load_suite",
    "run_case",
    "run_suite",
    "step_infos",
    "verdict",
]
