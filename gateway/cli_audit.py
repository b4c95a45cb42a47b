"""``runbooks audit``: ``export`` a tenant's audit ledger from the store into a bundle,
``verify`` a bundle offline, ``key``: the public key that checks the checkpoints'
signatures (``--generate FILE`` writes a new signing key), and ``erase SEQ --reason TEXT``:
erase the payload of one entry of the caller's tenant through a running server (a client
command, with the connection options of ``gateway.cli_client``; admin).

Exit status: ``export`` 0 written, 1 the store cannot be read or OUT is not empty, 2 usage;
``verify`` 0 intact (``ok <n> entries``), 1 tampered (the first bad seq and why), 2 the bundle
cannot be read; ``key`` 0 printed, 1 no key configured or readable; ``erase`` 0 erased, 1
refused (no such entry, erased already, not an admin), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from gateway.cli_client import add_connection_options, run_client_command
from gateway.client import ApiClient
from gateway.config import Config, ConfigError
from gateway.serve import store_variables
from runtime import StoreInUse, StoreUnavailable, ValidationError
from runtime.api.audit_export import export_to_directory, parse_range
from runtime.security.audit_signing import CheckpointSigner, generate_key_file
from runtime.security.audit_verify import verify_command


def add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="export and verify the audit ledger; the key of its checkpoints; "
                                                  "erase a payload",
                                description="Export a tenant's audit ledger, verify an exported bundle, "
                                            "print the checkpoints' public key, erase an entry's payload.")
    which = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    export = which.add_parser("export", help="write a tenant's ledger to a bundle directory (reads the store)",
                              description="Write manifest.json, entries.jsonl, payloads.jsonl, checkpoints.jsonl "
                                          "and evidence/ into OUT (the store as for serve).")
    export.add_argument("--tenant", dest="audit_tenant", required=True)
    export.add_argument("--from", dest="since", default=None, metavar="SEQ|TIME", help="first seq, or an ISO time")
    export.add_argument("--to", dest="until", default=None, metavar="SEQ|TIME", help="last seq, or an ISO time")
    export.add_argument("--store", default=None, help="memory, sqlite:///file.db or postgresql://... "
                                                      "(STORAGE_BACKEND with SQLITE_PATH or DATABASE_URL)")
    export.add_argument("out", metavar="OUT")
    verify = which.add_parser("verify", help="check a bundle offline: chain, signatures, evidence",
                              description="Exit 0 intact, 1 tampered (the first bad seq and why), 2 unreadable.")
    verify.add_argument("bundle", metavar="BUNDLE")
    verify.add_argument("--public-key", default=None, metavar="FILE", help="PEM of the key checkpoints must be "
                                                                         "signed by (else the bundle's own)")
    key = which.add_parser("key", help="print the public key of RUNBOOKS_AUDIT_SIGNING_KEY",
                           description="Print the PEM public key that checks the checkpoints' signatures.")
    key.add_argument("--generate", default=None, metavar="FILE", help="first write a new Ed25519 signing key to FILE")
    erase = which.add_parser("erase", help="erase the payload of an entry of your tenant (a person's data; admin)",
                             description="Erase the payload of the audit entry SEQ of your tenant through the "
                                         "server: the entry, its hash and the chain stay, and the erasure is "
                                         "audited.")
    erase.add_argument("seq", type=int, metavar="SEQ", help="the entry's seq in the tenant's ledger")
    erase.add_argument("--reason", required=True, help="why (kept in the ledger)")
    erase.add_argument("--json", action="store_true", help="print the API's JSON")
    add_connection_options(erase, default=argparse.SUPPRESS)
    erase.set_defaults(client_command=_erase)


def audit_command(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    if args.audit_command == "erase":
        args.command = "audit erase"  # (how the client names itself in what it prints)
        return run_client_command(args)
    environ = dict(os.environ if env is None else env)
    if args.audit_command == "verify":
        return verify_command(pathlib.Path(args.bundle), args.public_key, sys.stdout, sys.stdout)
    if args.audit_command == "key":
        return _key(args.generate, environ)
    return _export(args, environ)


def _key(generate: str | None, env: Mapping[str, str]) -> int:
    path = generate or env.get("RUNBOOKS_AUDIT_SIGNING_KEY") or None
    if path is None:
        print("runbooks audit key: RUNBOOKS_AUDIT_SIGNING_KEY is not set: checkpoints are unsigned", file=sys.stderr)
        return 1
    try:
        signer = generate_key_file(path) if generate else CheckpointSigner.from_file(path)
    except (OSError, ValueError) as exc:
        print(f"runbooks audit key: {exc}", file=sys.stderr)
        return 1
    print(signer.public_pem(), end="")
    print(f"key id: {signer.key_id}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace, env: dict[str, str]) -> int:
    try:
        config = Config.from_env({**env, **(store_variables(args.store) if args.store else {})})
        bounds = parse_range(args.since, args.until)
    except ConfigError as exc:
        print(f"runbooks audit export: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"runbooks audit export: {'; '.join(f'--{p.path}: {p.message}' for p in exc.problems)}",
              file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    try:
        count = export_to_directory(config.store_url(), args.audit_tenant, bounds, out, config.audit_signing_key)
    except (StoreUnavailable, StoreInUse, OSError, ValueError) as exc:
        print(f"runbooks audit export: {exc}", file=sys.stderr)
        return 1
    print(f"exported {count} entries of tenant {args.audit_tenant} to {out}")
    return 0


def _erase(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    entry = client.post(f"/api/v1/audit/{args.seq}/erase", {"reason": args.reason})
    if args.json:
        print(json.dumps(entry, ensure_ascii=False, indent=2), file=out)
    else:
        print(f"erased the payload of audit entry {entry['seq']} ({entry['action']} by {entry['actor']} at "
              f"{entry['at']}); the entry and its hash stay in the chain", file=out)
    return 0
