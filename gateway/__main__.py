"""``python -m gateway [serve] [--host HOST] [--port PORT] [--store URL] [--runbooks-dir DIR]``."""

from __future__ import annotations

import sys

from gateway.serve import serve_main


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
