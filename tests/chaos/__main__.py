"""``python -m tests.chaos [--seeds N] [--first S] [--budget-s T] [--short] [--faults a,b]``: chaos rounds, one
fresh PostgreSQL schema each (``RUNBOOKS_TEST_DSN``, default the local test server), until N
seeds ran or T seconds passed. Prints each round's seed, plan, faults and the checker's report,
then a summary; exits 1 if any round found a violation. ``make chaos SEEDS=N BUDGET_S=T``.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from functools import partial

import trio

from tests.chaos.plan import FAULT_KINDS, Size
from tests.chaos.round import run_round
from tests.conftest import DSN, drop_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (default 20)")
    parser.add_argument("--first", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--budget-s", type=float, default=0, help="stop starting rounds after this (0: no limit)")
    parser.add_argument("--short", action="store_true", help="the small rounds of make test")
    parser.add_argument("--logs", default=f"{tempfile.gettempdir()}/runbooks-chaos",
                        help="where the logs and the history of a round with violations are kept")
    parser.add_argument("--keep-schema", action="store_true",
                        help="keep the database schema of a round with violations (to inspect it)")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        help=f"the fault kinds to draw from, comma-separated (default all: {','.join(FAULT_KINDS)})")
    args = parser.parse_args(argv)
    kinds = tuple(kind for kind in FAULT_KINDS if kind in args.faults.split(","))
    if not kinds:
        parser.error(f"--faults: none of {args.faults!r} is a fault kind ({', '.join(FAULT_KINDS)})")
    size = Size.short() if args.short else Size.long()
    began = time.monotonic()
    failed: dict[int, int] = {}
    broken: dict[int, str] = {}  # seeds whose round could not run to its end
    ran = 0
    for seed in range(args.first, args.first + args.seeds):
        if args.budget_s and time.monotonic() - began > args.budget_s:
            break
        schema = f"chaos_{seed}_{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix=f"chaos-{seed}-") as directory:
            try:
                outcome = trio.run(partial(run_round, seed, size, DSN, schema, pathlib.Path(directory), kinds=kinds))
            except Exception as exc:  # the harness itself failed (the shared server restarted, say)
                traceback.print_exc()
                broken[seed] = f"{type(exc).__name__}: {exc}"[:200]
                outcome = None
            if outcome is None or not (outcome.violations and args.keep_schema):
                with contextlib.suppress(Exception):
                    drop_schema(DSN, schema)
            if outcome is None:
                continue
            ran += 1
            if outcome.violations:
                failed[seed] = len(outcome.violations)
                kept = pathlib.Path(args.logs) / f"seed-{seed}"
                shutil.copytree(directory, kept, dirs_exist_ok=True)
                (kept / "history.txt").write_text("".join(f"{r.describe()}\n" for r in outcome.history.requests))
                print(f"seed {seed}: the processes' logs and the requests are kept in {kept}"
                      + (f", the database in schema {schema}" if args.keep_schema else ""))
        print(flush=True)
    print(f"{ran} seeds in {time.monotonic() - began:.0f}s: "
          + (f"violations in seeds {failed}" if failed else "no violations"))
    if broken:
        print(f"{len(broken)} rounds could not run to their end: {broken}")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
