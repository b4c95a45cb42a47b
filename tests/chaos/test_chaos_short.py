"""The short chaos round of ``make test``: one seed, a small workload, three processes, faults.

``make chaos SEEDS=N`` runs the long rounds (``python -m tests.chaos``).
"""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.chaos.checker import report
from tests.chaos.plan import Size
from tests.chaos.round import run_round
from tests.conftest import DSN

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SEED = int(os.environ.get("RUNBOOKS_CHAOS_SEED", "1"))


async def test_a_short_chaos_round_finds_no_violation(schema: str, tmp_path: pathlib.Path) -> None:
    outcome = await run_round(SEED, Size.short(), DSN, schema, tmp_path)
    assert not outcome.violations, report(outcome.violations)
