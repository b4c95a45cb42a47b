"""Roles: which caller may use which route.

Each route of the route table (``gateway.routes``) names the one role it needs:

    viewer    reads (runbooks, executions, logs, evidence, audit, streams; validating a document)
    operator  starts, controls (pause, resume, cancel), retries, completes or skips a step by
              hand, forks, replays, publishes events
    author    registers runbooks
    admin     everything

A holder of ``operator`` or ``author`` (or ``admin``) also reads. A token of the tokens file
without ``roles`` holds ``operator`` and ``author``; in development mode every caller holds
every role. Other role names in the tokens file grant no route; they exist for approval
steps, whose ``approvers`` may name ``role:NAME``. Approving needs no role at all: being
admitted by the step's ``approvers`` is what counts.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

VIEWER: Final = "viewer"
OPERATOR: Final = "operator"
AUTHOR: Final = "author"
ADMIN: Final = "admin"
ROLES: Final = (VIEWER, OPERATOR, AUTHOR, ADMIN)
DEFAULT_TOKEN_ROLES: Final = (OPERATOR, AUTHOR)

#: the roles that grant a route needing the key
_GRANTED_BY: Final = {
    VIEWER: frozenset({VIEWER, OPERATOR, AUTHOR, ADMIN}),
    OPERATOR: frozenset({OPERATOR, ADMIN}),
    AUTHOR: frozenset({AUTHOR, ADMIN}),
    ADMIN: frozenset({ADMIN}),
}


def grants(held: Collection[str], needed: str | None, *, every_role: bool = False) -> bool:
    """Whether a caller holding ``held`` may use a route that needs ``needed`` (None: any caller)."""
    if needed is None or every_role:
        return True
    return not _GRANTED_BY[needed].isdisjoint(held)
