"""Outbound address policy for URL inputs (SSRF): resolve once, check every address, connect.

A URL input makes this service open a connection on a client's behalf, from inside the
cluster. Without a policy a client could reach the cloud metadata endpoint
(169.254.169.254), the predictor, the kubelet or any other in-cluster service. The policy
(NOTES.md section 6, after OWASP's SSRF prevention cheat sheet and the IANA special-purpose
address registries, RFC 6890):

* the host is resolved once (by :class:`Resolver`: a few dedicated threads and a deadline,
  so inside the fetch deadline and never in a pool other work needs); numeric
  forms are read with ``inet_aton`` semantics (``2130706433``, ``0x7f.0.0.1``, ``0177.1``,
  ``127.1`` all mean 127.0.0.1), IPv4-mapped IPv6 (``::ffff:a.b.c.d``) is the IPv4 host;
* EVERY resolved address is checked against :data:`BLOCKED_NETWORKS`, the IPv4 address
  embedded in IPv4-compatible, IPv4-translated, 6to4, NAT64 and Teredo addresses is checked
  too, and anything
  else ``ipaddress`` does not call global is refused; one blocked address rejects the host
  (a resolver answering a public and a private address must not be a coin toss);
* the connection goes to the checked address, with no second lookup (DNS rebinding);
  httpcore passes the original host name separately for TLS SNI and certificate checks, and
  the Host header is the URL's, so virtual hosts and HTTPS work unchanged;
* networks in the operator's allow-list (``URL_ALLOWED_NETWORKS``) are accepted even inside
  a blocked range, e.g. an in-cluster object store;
* what a client is told names no internal address: a *name* that resolves to a blocked
  address and a name that does not resolve get the same answer (no oracle for which
  internal names exist or where they point); the details go to the server log. A numeric
  host is the client's own text, so its answer says what kind of address it is.

:class:`GuardedBackend` is an httpcore network backend doing the above in ``connect_tcp``;
every connection, redirect hops included, goes through it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_net = ipaddress.ip_network

# (network, why it is refused): the first match names the reason. Order matters only for
# the wording (255.255.255.255 before 240.0.0.0/4, :: and ::1 before ::/96).
BLOCKED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    # IPv4
    (_net("0.0.0.0/8"), "an unspecified ('this network') address"),  # RFC 791; 0.0.0.0 = any
    (_net("10.0.0.0/8"), "a private address"),  # RFC 1918
    (_net("100.64.0.0/10"), "a carrier-grade NAT (shared) address"),  # RFC 6598
    (_net("127.0.0.0/8"), "a loopback address"),  # RFC 1122
    (_net("169.254.0.0/16"), "a link-local address"),  # RFC 3927; cloud metadata lives here
    (_net("172.16.0.0/12"), "a private address"),  # RFC 1918
    (_net("192.0.0.0/24"), "a reserved address"),  # RFC 6890 IETF protocol assignments
    (_net("192.0.2.0/24"), "a documentation address"),  # RFC 5737 TEST-NET-1
    (_net("192.88.99.0/24"), "a reserved address"),  # RFC 7526 deprecated 6to4 relay anycast
    (_net("192.168.0.0/16"), "a private address"),  # RFC 1918
    (_net("198.18.0.0/15"), "a reserved (benchmarking) address"),  # RFC 2544
    (_net("198.51.100.0/24"), "a documentation address"),  # RFC 5737 TEST-NET-2
    (_net("203.0.113.0/24"), "a documentation address"),  # RFC 5737 TEST-NET-3
    (_net("224.0.0.0/4"), "a multicast address"),  # RFC 5771
    (_net("255.255.255.255/32"), "the broadcast address"),  # RFC 919
    (_net("240.0.0.0/4"), "a reserved address"),  # RFC 1112 class E
    # IPv6
    (_net("::/128"), "an unspecified address"),  # RFC 4291
    (_net("::1/128"), "a loopback address"),  # RFC 4291
    (_net("::/96"), "a deprecated IPv4-compatible address"),  # RFC 4291 2.5.5.1
    (_net("64:ff9b:1::/48"), "a local-use NAT64 address"),  # RFC 8215
    (_net("100::/64"), "a discard-only address"),  # RFC 6666
    (_net("2001:db8::/32"), "a documentation address"),  # RFC 3849
    (_net("2001::/23"), "a reserved (IETF protocol) address"),  # RFC 2928; Teredo 2001::/32
    (_net("3fff::/20"), "a documentation address"),  # RFC 9637
    (_net("fc00::/7"), "a private (unique local) address"),  # RFC 4193
    (_net("fe80::/10"), "a link-local address"),  # RFC 4291
    (_net("fec0::/10"), "a site-local address"),  # RFC 3879, deprecated
    (_net("ff00::/8"), "a multicast address"),  # RFC 4291
)

# IPv6 prefixes that carry an IPv4 address in their bits: (network, name of the form). The
# embedded address must pass the policy too, or [2002:7f00:1::] would be a way to 127.0.0.1.
_NAT64 = _net("64:ff9b::/96")  # RFC 6052 well-known prefix: the v4 address is the low 32 bits
_IPV4_COMPATIBLE = _net("::/96")  # RFC 4291, deprecated: ::a.b.c.d
_IPV4_TRANSLATED = _net("::ffff:0:0:0/96")  # RFC 2765/6145 SIIT: ::ffff:0:a.b.c.d


class BlockedAddress(Exception):
    """A URL host is not allowed by the policy.

    Attributes:
        reason: a sentence for the client (no internal address in it).
        detail: what the server log gets (the addresses and why), or None.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _not_public(host: str) -> str:
    """The one answer for a name that does not resolve or resolves to a blocked address.

    Both causes are named, in that order (a name that does not resolve is the common case:
    a typo, or a service with no internet access), without telling which one holds: that
    would tell clients which internal names exist.
    """
    return (f"URL host {host[:200]!r} does not resolve to a public address: the name does "
            "not resolve (from the service), or only to private or blocked addresses "
            "(URL_ALLOWED_NETWORKS opens exceptions)")


class Resolver:
    """Host name lookups on a few dedicated daemon threads, each under a deadline.

    ``getaddrinfo`` cannot be cancelled: a lookup whose DNS server never answers keeps its
    thread until the C resolver gives up (``resolv.conf`` timeout x attempts). Here such a
    lookup holds one of at most ``workers`` threads of its own, never a thread of the event
    loop's default pool or the decoding pool; once all ``workers`` are taken, further
    lookups are refused at once instead of queueing behind them. Daemon threads: a lookup
    that never returns cannot hold up the process's exit.

    Args:
        workers: lookups in progress at once, abandoned ones included.
        timeout_s: longest wait for one lookup.
    """

    def __init__(self, *, workers: int = 4, timeout_s: float = 5.0) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Threads looking up now (abandoned lookups included)."""
        return self._busy

    async def getaddrinfo(self, host: str, port: int) -> list[tuple[object, ...]]:
        """``socket.getaddrinfo(host, port)`` for TCP, within ``timeout_s``.

        Raises:
            BlockedAddress: no answer in time, every thread busy, or the lookup failed.
        """
        with self._lock:
            if self._busy >= self.workers:
                raise BlockedAddress(_not_public(host),
                                     f"DNS: all {self.workers} lookup threads busy")
            self._busy += 1
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[tuple[object, ...]]] = loop.create_future()

        def settle(result: object, error: BaseException | None) -> None:
            if done.done():  # abandoned after the deadline
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        def work() -> None:
            result: object = None
            error: BaseException | None = None
            try:
                result = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                            proto=socket.IPPROTO_TCP)
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting coroutine)
                error = exc
            finally:
                with self._lock:
                    self._busy -= 1
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        threading.Thread(target=work, name="dns", daemon=True).start()
        try:
            return await asyncio.wait_for(done, timeout=self.timeout_s)
        except asyncio.TimeoutError:
            raise BlockedAddress(_not_public(host),
                                 f"DNS: no answer within {self.timeout_s:g} s") from None
        except (OSError, ValueError) as exc:  # gaierror; UnicodeError, NUL in the name
            raise BlockedAddress(_not_public(host), f"DNS: {exc}") from None


_DEFAULT_RESOLVER = Resolver()


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Parse a comma-separated CIDR list (``URL_ALLOWED_NETWORKS``).

    A bare address means a single host (/32 or /128); host bits set below the prefix are an
    error (``10.0.0.1/8`` is probably a typo for ``10.0.0.0/8`` or ``10.0.0.1/32``).

    Raises:
        ValueError: An entry is not a valid network, naming that entry.
    """
    networks = []
    for item in text.split(","):
        entry = item.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid network {entry!r} in URL_ALLOWED_NETWORKS: {exc}") from None
    return tuple(networks)


def ip_literal(host: str) -> IPAddress | None:
    """`host` as a standard IP literal (``10.0.0.5``, ``[::1]``), else None."""
    try:
        return ipaddress.ip_address(unquote(host.strip("[]")))
    except ValueError:
        return None


def numeric_host(host: str) -> IPAddress | None:
    """The address a URL host denotes without DNS, or None for a name.

    IPv6 literals (with or without brackets, an optional ``%25zone``) and every IPv4 form
    ``inet_aton`` accepts: dotted quads, decimal (``2130706433``), octal (``0177.0.0.1``),
    hex (``0x7f.0.0.1``) and short forms (``127.1``). These are what a C resolver would
    connect to, so they are what the policy must judge.
    """
    literal = ip_literal(host)
    if literal is not None:
        return literal
    text = host.strip("[]")
    if ":" in text or not text:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):  # not numeric; ValueError: an embedded NUL
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address routes to, and the form's name, if it has one."""
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip.teredo is not None:
        return ip.teredo[1], "Teredo"
    if ip in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF), "IPv4-translated"
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip)), "IPv4-compatible"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses URL fetches may connect to.

    Attributes:
        allowed: Networks accepted even inside a blocked range (``URL_ALLOWED_NETWORKS``).
        resolver: Where names are looked up (a shared default one when None).
    """

    allowed: tuple[IPNetwork, ...] = ()
    resolver: Resolver | None = field(default=None, compare=False)

    def why_blocked(self, ip: IPAddress) -> str | None:
        """None when `ip` may be connected to, else what kind of address it is."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is the IPv4 host itself on a dual-stack socket: judge that.
            why = self.why_blocked(ip.ipv4_mapped)
            return None if why is None else f"{why} in IPv4-mapped form ({ip.ipv4_mapped})"
        if any(ip in net for net in self.allowed):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(ip)
            if embedded is not None:
                v4, form = embedded
                why = self.why_blocked(v4)
                if why is not None:
                    return f"{why} in {form} form ({v4})"
        for net, why in BLOCKED_NETWORKS:
            if ip in net:
                return why
        if not ip.is_global:  # whatever IANA lists as not globally reachable, the table aside
            return "a non-global address"
        return None

    def check(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Raise :class:`BlockedAddress` unless every one of `addresses` is allowed."""
        numeric = numeric_host(host) is not None
        for ip in addresses:
            why = self.why_blocked(ip)
            if why is None:
                continue
            name = "URL host" if ip_literal(host) == ip else f"URL host {host!r}"
            detail = f"{name} resolves to {ip}, {why}: blocked (see URL_ALLOWED_NETWORKS)"
            if numeric:  # the client's own text: saying what it means reveals nothing
                raise BlockedAddress(detail, detail)
            raise BlockedAddress(_not_public(host), detail)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve `host` once and check every address; return them in resolver order.

        IPv4-mapped IPv6 answers are returned as the IPv4 address they mean.

        Raises:
            BlockedAddress: The host does not resolve (in time), or any address is blocked.
        """
        ip = numeric_host(host)
        if ip is not None:
            found = [ip]
        else:
            resolver = self.resolver if self.resolver is not None else _DEFAULT_RESOLVER
            infos = await resolver.getaddrinfo(host, port)
            found = []
            for family, *_, sockaddr in infos:
                if family in (socket.AF_INET, socket.AF_INET6):
                    addr = ipaddress.ip_address(str(sockaddr[0]))  # type: ignore[index]
                    if addr not in found:
                        found.append(addr)
            if not found:
                raise BlockedAddress(_not_public(host), "DNS: no IPv4 or IPv6 address")
        self.check(host, found)
        return [a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped
                else a for a in found]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to addresses the policy allows.

    ``connect_tcp`` resolves the host once, checks every address and connects to the checked
    addresses in resolver order (the next one if a connection is refused), never to a name.

    Args:
        policy: The address policy.
        backend: Backend that opens the sockets (httpcore's ``AnyIOBackend`` by default).
    """

    def __init__(self, policy: AddressPolicy,
                 backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self._backend = backend if backend is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve(host, port)
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._backend.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None, "resolve() returns at least one address"
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not reachable through URL inputs")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)
