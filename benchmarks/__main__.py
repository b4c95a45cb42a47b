"""``python -m benchmarks [--quick] [NAME ...]``: run the benchmarks one after another.

Each runs in its own process (``python -m benchmarks.NAME``), so one's memory and threads
do not weigh on the next. ``--quick`` runs the quick set (each under 30 s); ``make bench``
runs exactly ``python -m benchmarks --quick``. Figures are printed as JSON lines and tables.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import ROOT

ALL = ("overhead", "steps", "starts", "parked", "events", "cancel", "api", "cluster", "ledger")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick set (each benchmark under 30 s)")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(ALL)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in ALL]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(ALL)}")
    failed = []
    for name in args.names or ALL:
        started = time.perf_counter()
        command = [sys.executable, "-m", f"benchmarks.{name}", *(["--quick"] if args.quick else [])]
        print(f"# {' '.join(command[1:])}", file=sys.stderr, flush=True)
        if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
            failed.append(name)
        print(f"# {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
