"""Tenant quotas: how many executions a tenant may have unfinished, and how fast it may start them.

Written as ``{tenant: {maxActive, startsPerSecond, burst}}`` (every field optional; ``"*"``
is the quota of every tenant not named), in the file ``RUNBOOKS_QUOTAS_FILE`` (JSON or
YAML) or given to ``open_runtime(quotas=...)``. ``parse_quotas`` checks it, with every
problem at its path. The store applies a quota in the transaction of each start
(``QuotaCaps``, ``runtime/store/quotas.py``); a start over it is refused with
``QuotaExceeded``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import attrs
import yaml

from runtime.model.errors import Problem, ValidationError
from runtime.model.limits import is_int

ENV = "RUNBOOKS_QUOTAS_FILE"
EVERY_TENANT = "*"
MAX_FILE_BYTES = 1024 * 1024
_FIELDS = ("maxActive", "startsPerSecond", "burst")


@attrs.frozen
class Quota:
    """``max_active``: unfinished executions (queued ones count); ``starts_per_second``: the
    rate a bucket of ``burst`` starts fills at (default burst: one second's worth, at least 1)."""

    max_active: int | None = None
    starts_per_second: float | None = None
    burst: float | None = None

    @property
    def bucket(self) -> float:
        if self.burst is not None:
            return self.burst
        return max(1.0, float(self.starts_per_second or 1.0))


def quota_for(quotas: Mapping[str, Quota], tenant_id: str) -> Quota | None:
    return quotas.get(tenant_id) or quotas.get(EVERY_TENANT)


def parse_quotas(data: Any, where: str = "quotas") -> dict[str, Quota]:
    """The quotas of ``data`` (``{tenant: {...}}``; a ``Quota`` is taken as it is), or
    ``ValidationError`` listing every problem."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValidationError([Problem(where, "must be a mapping of tenant to {maxActive, startsPerSecond}")],
                              title="quotas refused")
    quotas: dict[str, Quota] = {}
    problems: list[Problem] = []
    for tenant, raw in data.items():
        path = f"{where}.{tenant}"
        if not isinstance(tenant, str) or not tenant:
            problems.append(Problem(where, f"a tenant must be a non-empty string (found {tenant!r})"))
        elif isinstance(raw, Quota):
            quotas[tenant] = raw
        elif not isinstance(raw, Mapping):
            problems.append(Problem(path, "must be an object {maxActive, startsPerSecond, burst}"))
        else:
            found = _quota(raw, path)
            if isinstance(found, Quota):
                quotas[tenant] = found
            else:
                problems += found
    if problems:
        raise ValidationError(problems, title="quotas refused")
    return quotas


def _quota(raw: Mapping[str, Any], path: str) -> Quota | list[Problem]:
    problems = [Problem(f"{path}.{key}", f"unknown field '{key}' (expected {', '.join(_FIELDS)})")
                for key in raw if key not in _FIELDS]
    active = raw.get("maxActive")
    if active is not None and (not is_int(active) or not 0 <= active <= 10**9):
        problems.append(Problem(f"{path}.maxActive", "must be an integer from 0 to 1000000000"))
    for key in ("startsPerSecond", "burst"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or not 0 < value <= 1e6):
            problems.append(Problem(f"{path}.{key}", "must be a number above 0 and at most 1000000"))
    burst = raw.get("burst")
    if isinstance(burst, int | float) and not isinstance(burst, bool) and burst < 1:
        problems.append(Problem(f"{path}.burst", "must be at least 1 (one start)"))
    if problems:
        return problems
    rate = raw.get("startsPerSecond")
    return Quota(active, float(rate) if rate is not None else None, float(burst) if burst is not None else None)


def load_quotas(path: str) -> dict[str, Quota]:
    """The checked quotas of a JSON or YAML file (``ValidationError`` naming the file)."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValidationError([Problem(path, exc.strerror or str(exc))], title="quotas file unreadable") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ValidationError([Problem(path, "larger than 1 MiB")], title="quotas file refused")
    try:
        data = yaml.safe_load(raw.decode("utf-8")) if raw.strip() else {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValidationError([Problem(path, f"neither JSON nor YAML: {exc}")], title="quotas file refused") from None
    return parse_quotas(data, path)


def quotas_from_env(env: Mapping[str, str] | None = None) -> dict[str, Quota]:
    """The quotas of ``RUNBOOKS_QUOTAS_FILE`` if it is set (else none)."""
    path = (os.environ if env is None else env).get(ENV, "").strip()
    return load_quotas(path) if path else {}
