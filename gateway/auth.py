"""Who is calling: the identity (user, tenant, roles) of an ``/api/v1`` request. What each
role may do is ``gateway.roles``; the route table says which role each route needs.

With a tokens file every request carries ``Authorization: Bearer <token>``; the token is
compared with every known token in constant time (``hmac.compare_digest`` over all of
them, no early exit), so timing does not tell how much of a guess was right. Without a
tokens file (development mode) the user comes from ``X-User-Id`` (default ``anonymous``)
and the tenant from ``X-Tenant-Id`` (default ``default``).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence

import attrs
from quart import g
from werkzeug.datastructures import Headers

from gateway.config import TokenEntry
from gateway.problems import ApiProblem
from gateway.roles import grants
from runtime import Problem
from runtime.kinds.approval_rules import ANY_ROLE

DEFAULT_USER = "anonymous"
DEFAULT_TENANT = "default"
MAX_ID_LENGTH = 200
ID_HEADER = re.compile(r"[\x20-\x7e]*")  # printable ASCII, as the OpenAPI document says
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="runbooks"'}


@attrs.frozen
class Identity:
    """The caller. ``every_role``: development mode, where every caller holds every role."""

    user: str
    tenant: str
    roles: tuple[str, ...] = ()
    every_role: bool = False

    def may(self, role: str | None) -> bool:
        """Whether this caller may use a route that needs ``role``."""
        return grants(self.roles, role, every_role=self.every_role)

    def approver_roles(self) -> tuple[str, ...]:
        """The roles to hand the engine for ``role:NAME`` approver entries."""
        return (ANY_ROLE,) if self.every_role else self.roles


class Authenticator:
    """Turns request headers into an ``Identity`` or raises a 401 ``ApiProblem``."""

    def __init__(self, tokens: Sequence[TokenEntry]) -> None:
        self._tokens = [(entry.token.encode(), entry) for entry in tokens]

    @property
    def development_mode(self) -> bool:
        return not self._tokens

    def identify(self, headers: Headers) -> Identity:
        if self.development_mode:
            return _development_identity(headers)
        entry = self._match(_bearer_token(headers.get("Authorization")))
        if entry is None:
            raise ApiProblem(401, "the bearer token is not valid", headers=_CHALLENGE)
        return Identity(entry.user, entry.tenant, entry.roles)

    def _match(self, candidate: bytes) -> TokenEntry | None:
        found: TokenEntry | None = None
        for token, entry in self._tokens:  # no early exit: every token is compared
            if hmac.compare_digest(candidate, token):
                found = entry
        return found


def _bearer_token(header: str | None) -> bytes:
    if not header:
        raise ApiProblem(401, "this request needs an 'Authorization: Bearer <token>' header", headers=_CHALLENGE)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(401, "the Authorization header must be 'Bearer <token>'", headers=_CHALLENGE)
    return token.strip().encode("utf-8", "surrogateescape")


def _development_identity(headers: Headers) -> Identity:
    problems: list[Problem] = []
    user = _header_id(headers, "X-User-Id", DEFAULT_USER, problems)
    tenant = _header_id(headers, "X-Tenant-Id", DEFAULT_TENANT, problems)
    if problems:
        raise ApiProblem(400, "bad identity headers", problems)
    return Identity(user, tenant, every_role=True)


def _header_id(headers: Headers, name: str, default: str, problems: list[Problem]) -> str:
    value = headers.get(name) or ""
    if len(value) > MAX_ID_LENGTH or not ID_HEADER.fullmatch(value):
        problems.append(Problem(name, f"must be at most {MAX_ID_LENGTH} printable ASCII characters"))
    return value.strip() or default


def current_identity() -> Identity:
    """The identity of the request being served (set by the gateway before every view)."""
    identity: Identity = g.identity
    return identity
