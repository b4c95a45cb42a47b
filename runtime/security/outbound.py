"""Which hosts outbound calls may reach (``CALL_SERVICE_ALLOWED_HOSTS``), checked where it counts.

A runbook author decides, through templates, where call-service (and the gRPC executor and
approval notifications) connects. Without a limit, a runbook can reach the cloud metadata
service (169.254.169.254), the database port on localhost, or anything inside the network,
directly or through a name or a redirect that leads there. ``HostAllowlist`` is that limit:

- patterns are host names (``api.example.com``), name suffixes (``*.corp.example``: any name
  under ``corp.example``), ``*`` (any name), and addresses or networks (``127.0.0.1``,
  ``10.0.0.0/8``, ``::1``, ``fd00::/8``); no ports;
- a connection is allowed when every address the host resolves to is allowed. An address
  pattern allows the addresses in it. A name pattern allows the addresses its names resolve
  to, except the special ones: loopback, link-local (the metadata service), unspecified
  (``0.0.0.0/8``, ``::``), multicast and reserved addresses are reached only through an
  address pattern that names them. So ``*`` alone keeps a runbook off localhost and the
  metadata service, and ``*.corp.example`` cannot be used to reach 127.0.0.1 through a DNS
  record that points there;
- an IP literal in a URL is judged by the address patterns alone;
- when every pattern is a name pattern, a name none of them admits is refused before it is
  resolved: nothing about it reaches DNS (a runbook could otherwise send data out in the
  labels of a name, ``<data>.attacker.example``). With an address pattern among them, a name
  must be resolved to be judged.

The check is made where the connection is made, after DNS resolution: ``CheckedBackend`` is
an httpcore network backend that resolves the host itself, checks every address, and
connects to a checked address (TLS still verifies, and SNI and Host still carry, the name
from the URL). Every connection goes through it, so every redirect an httpx client follows
is checked too, and a name cannot resolve to one address for the check and another for the
connection. ``checked_client`` builds the httpx client the runtime uses;
``checked_addresses`` is the same check for other protocols (the gRPC executor connects to
one of the addresses it returns). A refused call raises ``ForbiddenTarget``; call-service
turns it into the step error ``forbidden_target`` (not retried).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import attrs
import httpcore
import httpx
import trio

__all__ = ["CheckedBackend", "CheckedTransport", "ForbiddenTarget", "HostAllowlist", "Resolver", "check_url",
           "checked_addresses", "checked_client", "checks_connections", "system_resolver"]

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")


class ForbiddenTarget(Exception):
    """An outbound call to a host the allowlist does not admit."""


def _resolver(given: Resolver | None) -> Resolver:
    return given or system_resolver


@attrs.frozen
class HostAllowlist:
    """The parsed patterns, and how names are resolved for the check (the system's resolver;
    tests and embedding programs with their own DNS may give another)."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".corp.example" for "*.corp.example"
    any_name: bool = False
    networks: tuple[Network, ...] = ()
    text: str = ""
    resolve: Resolver = attrs.field(default=None, eq=False, repr=False, converter=_resolver)

    @classmethod
    def parse(cls, text: str) -> HostAllowlist:
        """Parse the comma-separated patterns once; ``ValueError`` names a bad one."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        any_name = False
        patterns = [part.strip() for part in text.split(",") if part.strip()]
        if not patterns:
            raise ValueError("no host patterns (leave the variable unset to allow any host)")
        for pattern in patterns:
            network = _network(pattern)
            if network is not None:
                networks.append(network)
            elif pattern == "*":
                any_name = True
            elif pattern.startswith("*."):
                suffixes.append("." + _name(pattern[2:], pattern))
            else:
                names.add(_name(pattern, pattern))
        return cls(frozenset(names), tuple(suffixes), any_name, tuple(networks), ", ".join(patterns))

    @property
    def names_only(self) -> bool:
        """Every pattern is a name pattern: a name none admits needs no resolution to be refused."""
        return not self.networks

    def admits_name(self, host: str) -> bool:
        """Whether a name pattern covers ``host`` (an IP literal never is a name)."""
        if _literal(host) is not None:
            return False
        name = _normal(host)
        return self.any_name or name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise ``ForbiddenTarget`` unless every resolved address of ``host`` is allowed."""
        by_name = self.admits_name(host)
        resolved = [ipaddress.ip_address(_strip_scope(a)) for a in addresses]
        if not resolved:
            raise ForbiddenTarget(f"host '{host}' did not resolve to any address")
        for address in resolved:
            if not self._admits(address, by_name):
                why = (" (a loopback, link-local, unspecified, multicast or reserved address: only an address "
                       "pattern can allow it)") if by_name else ""
                where = "is" if _literal(host) is not None else f"resolves to {address}, which is"
                raise ForbiddenTarget(f"host '{host}' {where} not allowed by CALL_SERVICE_ALLOWED_HOSTS "
                                      f"({self.text}){why}")

    def _admits(self, address: Address, by_name: bool) -> bool:
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        if any(c in network for c in candidates for network in self.networks if c.version == network.version):
            return True
        return by_name and not any(_special(c) for c in candidates)


def _special(address: Address) -> bool:
    return (address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast
            or address.is_reserved or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK))


def _network(pattern: str) -> Network | None:
    text = pattern[1:-1] if pattern.startswith("[") and pattern.endswith("]") else pattern
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        if "/" in text and _literal(text.split("/", 1)[0]) is not None:
            raise ValueError(f"'{pattern}' is not a valid network") from None
        return None


def _name(text: str, pattern: str) -> str:
    name = _normal(text)
    labels = name.split(".")
    if ":" in name or "/" in name or not name or any(not label or len(label) > 63 for label in labels) \
            or not all(c.isalnum() or c in "-_" for label in labels for c in label) or "*" in name:
        raise ValueError(f"'{pattern}' is not a host name, *.suffix, * or an address/network (no ports or paths)")
    return name


def _normal(host: str) -> str:
    name = host.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return name
    return name


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(_strip_scope(host.strip("[]")))
    except ValueError:
        return None


def _strip_scope(address: str) -> str:
    return address.split("%", 1)[0]


# ---- resolving ------------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host``, as the operating system resolves them (in its order)."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve '{host}': {exc}") from exc
    found: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


async def checked_addresses(allowlist: HostAllowlist, host: str, port: int) -> list[str]:
    """Resolve ``host`` and check every address; the addresses to connect to (in order)."""
    literal = _literal(host)
    if literal is None and allowlist.names_only and not allowlist.admits_name(host):
        raise ForbiddenTarget(f"host '{host}' is not allowed by CALL_SERVICE_ALLOWED_HOSTS ({allowlist.text}); "
                              "it was not resolved")
    addresses = [str(literal)] if literal is not None else await allowlist.resolve(host, port)
    allowlist.check(host, addresses)
    return addresses


async def check_url(allowlist: HostAllowlist, url: str) -> None:
    """Resolve and check the host of an http(s) URL before a request, for a client whose
    connections this module does not make (``checks_connections`` is false). Such a client
    resolves the name again when it connects, and may follow redirects unchecked."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenTarget(f"url '{url}' cannot be checked: {exc}") from None
    if not parts.hostname:
        raise ForbiddenTarget(f"url '{url}' has no host")
    await checked_addresses(allowlist, parts.hostname, port or (443 if parts.scheme == "https" else 80))


# ---- httpx / httpcore -----------------------------------------------------------------------


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks, then connects to a checked address; never connects to a name."""

    def __init__(self, allowlist: HostAllowlist, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allowlist = allowlist
        self.inner = inner or httpcore.TrioBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore's)
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            addresses = await checked_addresses(self.allowlist, host, port)
        if scope.cancelled_caught:
            raise httpcore.ConnectTimeout(f"resolving '{host}' took longer than {timeout} s")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise ForbiddenTarget("unix sockets are not reachable with CALL_SERVICE_ALLOWED_HOSTS set")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose every connection goes through ``CheckedBackend``.

    httpx builds its connection pool without a way to pass a network backend, so the pool is
    rebuilt with one, with the same settings (``tests/test_outbound.py`` pins this down).
    """

    def __init__(self, allowlist: HostAllowlist, **options: Any) -> None:
        super().__init__(**options)
        pool = self._pool
        assert isinstance(pool, httpcore.AsyncConnectionPool), "no proxy: the engine checks the target itself"
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=pool._ssl_context, max_connections=pool._max_connections,
            max_keepalive_connections=pool._max_keepalive_connections, keepalive_expiry=pool._keepalive_expiry,
            http1=pool._http1, http2=pool._http2, retries=pool._retries, local_address=pool._local_address,
            socket_options=pool._socket_options, network_backend=CheckedBackend(allowlist),
        )


def checked_client(allowlist: HostAllowlist, **options: Any) -> httpx.AsyncClient:
    """An httpx client that reaches only what ``allowlist`` admits, redirects included. It
    ignores the HTTP(S)_PROXY variables: through a proxy, the target could not be checked."""
    return httpx.AsyncClient(transport=CheckedTransport(allowlist), trust_env=False, **options)


def checks_connections(client: httpx.AsyncClient) -> bool:
    """Whether every connection of ``client`` is checked (it was built by ``checked_client``)."""
    return isinstance(getattr(client, "_transport", None), CheckedTransport) and not getattr(client, "_mounts", {})
