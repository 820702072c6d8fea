"""The URL address policy (SSRF) end to end: real sockets, the real policy, real fetches.

Two servers run on loopback: the image host on 127.0.0.2 (allowed, as ``URL_ALLOWED_NETWORKS``
would allow it) and a "trap" on 127.0.0.1 serving the same image. The trap is reachable, so
each refusal below is the policy's doing, not a refused connection; every test checks the
trap was never contacted. Only DNS is faked (there is no DNS server here; ``localhost`` is
the one real name that resolves), by replacing ``socket.getaddrinfo``, which the event loop's
resolver calls; the policy itself is never replaced.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpcore
import pytest
from pydantic import ValidationError

from testing.http_host import Handler as QuietHandler
from testing.http_host import serving
from transformer.errors import ImageErrors
from transformer.fetch import FetchError, fetch_image_bytes, make_client
from transformer.inputs import URL_FETCH_DISABLED, ImageLoader
from transformer.netguard import (
    AddressPolicy,
    BlockedAddress,
    GuardedBackend,
    IPNetwork,
    Resolver,
    numeric_host,
    parse_networks,
)
from transformer.scoring import PairPlan
from transformer.settings import TransformerSettings

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the fetcher does not decode
HOST = "127.0.0.2"
ALLOWED = parse_networks(f"{HOST}/32")
# A blocked URL is refused before any connection, in milliseconds; had a connection been
# tried, an unroutable address (169.254.169.254 here) would hold it for the whole fetch
# timeout of 5 s, and a loopback one would show in the trap server's log. The bound sits
# halfway so that a loaded CI machine (0.65 s seen on 2 busy cores) cannot trip it.
FAST_S = 2.5


@dataclass
class Server:
    """A loopback HTTP server and what it saw."""

    base: str
    port: int
    hosts: list[str] = field(default_factory=list)  # Host header of every request


def _handler(server: Server) -> type[QuietHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes = b"", location: str | None = None) -> None:
            self.reply(status, body, {"Location": location} if location is not None else {})

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            server.hosts.append(self.headers.get("Host", ""))
            url = urlsplit(self.path)
            if url.path == "/image.png":
                self._send(200, IMAGE)
            elif url.path == "/to":  # /to?u=<url>: redirect there
                self._send(302, location=parse_qs(url.query)["u"][0])
            elif url.path.startswith("/redirect/"):  # a chain of N redirects to the image
                hops = int(url.path.rsplit("/", 1)[1])
                self._send(302, location=f"/redirect/{hops - 1}" if hops > 1 else "/image.png")
            else:
                self._send(404)

    return Handler


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    """(image host on 127.0.0.2, trap on 127.0.0.1)."""
    image_host, trap = Server(base="", port=0), Server(base="", port=0)
    with serving(_handler(image_host), host=HOST) as image_base, \
            serving(_handler(trap), host="127.0.0.1") as trap_base:
        for info, base in ((image_host, image_base), (trap, trap_base)):
            info.base, info.port = base, int(base.rsplit(":", 1)[1])
        yield image_host, trap


@pytest.fixture
def host(servers: tuple[Server, Server]) -> Server:
    servers[0].hosts.clear()
    return servers[0]


@pytest.fixture
def trap(servers: tuple[Server, Server]) -> Iterator[Server]:
    servers[1].hosts.clear()
    yield servers[1]
    assert servers[1].hosts == [], "a blocked address was contacted"


def fetch(url: str, *, allowed: Sequence[IPNetwork] = ALLOWED, max_redirects: int = 5) -> bytes:
    async def main() -> bytes:
        async with make_client(allowed_networks=allowed) as client:
            return await fetch_image_bytes(client, url, timeout_s=5.0, max_bytes=1_000_000,
                                           max_redirects=max_redirects)

    return asyncio.run(main())


def refused(url: str, *, allowed: Sequence[IPNetwork] = ALLOWED, max_redirects: int = 5,
            fast: bool = True) -> str:
    """The reason `url` is refused; checks the refusal came at once."""
    start = time.perf_counter()
    with pytest.raises(FetchError) as excinfo:
        fetch(url, allowed=allowed, max_redirects=max_redirects)
    elapsed = time.perf_counter() - start
    if fast:
        assert elapsed < FAST_S, f"refusal took {elapsed:.2f} s"
    reason = excinfo.value.reason
    assert "Traceback" not in reason and "\n" not in reason
    return reason


def not_public(name: str) -> str:
    """What a client is told about a name that resolves to a blocked address, or not at all."""
    return (f"URL host {name!r} does not resolve to a public address: the name does not "
            "resolve (from the service), or only to private or blocked addresses "
            "(URL_ALLOWED_NETWORKS opens exceptions)")


def refused_detail(url: str, *, fast: bool = True) -> tuple[str, str]:
    """The reason `url` is refused (for the client) and the detail (for the log only)."""
    start = time.perf_counter()
    with pytest.raises(FetchError) as excinfo:
        fetch(url)
    if fast:
        assert time.perf_counter() - start < FAST_S
    return excinfo.value.reason, excinfo.value.detail or ""


Answers = dict[str, list[str]]
FakeDns = Callable[..., list[str]]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """Install fake DNS answers; returns the log of the faked names looked up.

    ``fake_dns(answers, later=None)``: ``answers`` maps a name to its addresses; a name in
    ``later`` gets those addresses from its second lookup on (DNS rebinding). A fake: there
    is no DNS server here. Other names go to the real resolver.
    """
    real = socket.getaddrinfo
    lookups: list[str] = []

    def install(answers: Answers, later: Answers | None = None) -> list[str]:
        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name not in answers:
                return real(host, port, *args, **kwargs)
            addresses = (later or {}).get(name, answers[name]) if name in lookups \
                else answers[name]
            lookups.append(name)
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     (a, int(port), 0, 0)) if ":" in a else
                    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, int(port)))
                    for a in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return lookups

    return install


# --- allowed --------------------------------------------------------------------------------

def test_allow_listed_host_is_fetched_while_its_neighbour_stays_blocked(
        host: Server, trap: Server) -> None:
    assert fetch(f"{host.base}/image.png") == IMAGE
    assert host.hosts == [f"{HOST}:{host.port}"]
    assert refused(f"{trap.base}/image.png") == (
        "URL host resolves to 127.0.0.1, a loopback address: blocked (see URL_ALLOWED_NETWORKS)")


def test_ipv4_mapped_form_of_an_allowed_address_is_allowed(host: Server) -> None:
    # ::ffff:127.0.0.2 is 127.0.0.2: judged (and connected to) as the IPv4 address.
    assert fetch(f"http://[::ffff:{HOST}]:{host.port}/image.png") == IMAGE


def test_public_addresses_pass_the_policy() -> None:
    policy = AddressPolicy()
    for text in ("93.184.215.14", "8.8.8.8", "1.1.1.1", "2606:4700::1111",
                 "2002:5db8:d70e::1",  # 6to4 of a public address
                 "64:ff9b::808:808"):  # NAT64 of 8.8.8.8
        assert policy.why_blocked(ipaddress.ip_address(text)) is None, text


# --- blocked literal addresses ----------------------------------------------------------------

BLOCKED_LITERALS = [
    ("10.0.0.5", "a private address"),
    ("172.16.3.4", "a private address"),
    ("192.168.1.1", "a private address"),
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("169.254.169.254", "a link-local address"),
    ("0.0.0.0", "an unspecified ('this network') address"),
    ("100.64.0.1", "a carrier-grade NAT (shared) address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("255.255.255.255", "the broadcast address"),
    ("240.0.0.1", "a reserved address"),
    ("192.0.0.8", "a reserved address"),
    ("192.0.2.1", "a documentation address"),
    ("192.88.99.1", "a reserved address"),
    ("198.18.0.1", "a reserved (benchmarking) address"),
    ("198.51.100.7", "a documentation address"),
    ("203.0.113.9", "a documentation address"),
    ("[::1]", "a loopback address"),
    ("[::]", "an unspecified address"),
    ("[fc00::1]", "a private (unique local) address"),
    ("[fd12:3456::1]", "a private (unique local) address"),
    ("[fe80::1]", "a link-local address"),
    ("[fe80::1%25lo]", "a link-local address"),
    ("[fec0::1]", "a site-local address"),
    ("[ff02::1]", "a multicast address"),
    ("[2001:db8::1]", "a documentation address"),
    ("[100::1]", "a discard-only address"),
    ("[64:ff9b:1::a00:5]", "a local-use NAT64 address"),
    ("[2001:2::1]", "a reserved (IETF protocol) address"),
    # IPv4 inside IPv6: the embedded address is judged.
    ("[::ffff:127.0.0.1]", "a loopback address in IPv4-mapped form (127.0.0.1)"),
    ("[::ffff:7f00:1]", "a loopback address in IPv4-mapped form (127.0.0.1)"),
    ("[::ffff:169.254.169.254]", "a link-local address in IPv4-mapped form (169.254.169.254)"),
    ("[::ffff:10.0.0.5]", "a private address in IPv4-mapped form (10.0.0.5)"),
    ("[::127.0.0.1]", "a loopback address in IPv4-compatible form (127.0.0.1)"),
    ("[::a9fe:a9fe]", "a link-local address in IPv4-compatible form (169.254.169.254)"),
    ("[::8.8.8.8]", "a deprecated IPv4-compatible address"),
    ("[2002:7f00:1::]", "a loopback address in 6to4 form (127.0.0.1)"),
    ("[2002:a9fe:a9fe::1]", "a link-local address in 6to4 form (169.254.169.254)"),
    ("[2002:c0a8:101::1]", "a private address in 6to4 form (192.168.1.1)"),
    ("[64:ff9b::7f00:1]", "a loopback address in NAT64 form (127.0.0.1)"),
    ("[64:ff9b::169.254.169.254]", "a link-local address in NAT64 form (169.254.169.254)"),
    ("[64:ff9b::10.0.0.5]", "a private address in NAT64 form (10.0.0.5)"),
    # RFC 6145 IPv4-translated (::ffff:0:a.b.c.d); Python calls them global (issue 10, 8)
    ("[::ffff:0:7f00:1]", "a loopback address in IPv4-translated form (127.0.0.1)"),
    ("[::ffff:0:169.254.169.254]", "a link-local address in IPv4-translated form "
                                   "(169.254.169.254)"),
    ("[::ffff:0:10.0.0.5]", "a private address in IPv4-translated form (10.0.0.5)"),
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # RFC 4380's Teredo example, client 192.0.2.45
     "a documentation address in Teredo form (192.0.2.45)"),
]


@pytest.mark.parametrize(("literal", "why"), BLOCKED_LITERALS)
def test_blocked_literal_address(literal: str, why: str, trap: Server) -> None:
    reason = refused(f"http://{literal}:{trap.port}/image.png")
    assert reason.endswith(f", {why}: blocked (see URL_ALLOWED_NETWORKS)"), reason
    assert reason.startswith("URL host resolves to "), reason


@pytest.mark.parametrize("numeric", [
    "2130706433",  # decimal
    "017700000001",  # octal, one number
    "0x7f000001",  # hex, one number
    "0x7f.0.0.1",  # hex first part
    "0x7F.0x0.0x0.0x1",  # hex everywhere
    "0177.1",  # octal short form
    "127.1",  # short form: a.b means a.0.0.b
    "127.0.1",  # a.b.c means a.b.0.c
])
def test_numeric_host_forms_mean_loopback_and_are_blocked(numeric: str, trap: Server) -> None:
    # The trap listens on 127.0.0.1 at this port: without the policy these would succeed.
    reason = refused(f"http://{numeric}:{trap.port}/image.png")
    assert reason == (f"URL host {numeric.lower()!r} resolves to 127.0.0.1, a loopback address: "
                      "blocked (see URL_ALLOWED_NETWORKS)")


@pytest.mark.parametrize(("numeric", "means"), [
    ("2852039166", "169.254.169.254"), ("0xa9fea9fe", "169.254.169.254"),
    ("0251.0376.43518", "169.254.169.254"), ("10.1", "10.0.0.1"), ("0xa.0x1", "10.0.0.1"),
])
def test_numeric_host_forms_of_other_blocked_addresses(numeric: str, means: str) -> None:
    reason = refused(f"http://{numeric}/latest/meta-data/")
    assert reason.startswith(f"URL host {numeric!r} resolves to {means}, "), reason


def test_dotted_octal_is_refused_naming_what_it_means(trap: Server) -> None:
    # httpx itself rejects leading-zero dotted quads; the reason says what they would mean.
    reason = refused(f"http://0177.0.0.1:{trap.port}/image.png")
    assert reason == ("URL host '0177.0.0.1' is an ambiguous numeric form of 127.0.0.1 "
                      "(leading zeros are octal to some parsers): not accepted")


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["localhost", "LOCALHOST"])
def test_localhost_is_blocked(name: str, trap: Server) -> None:
    reason, detail = refused_detail(f"http://{name}:{trap.port}/image.png")
    assert reason == not_public(name.lower())
    assert detail.startswith(f"URL host {name.lower()!r} resolves to "), detail
    assert "a loopback address: blocked (see URL_ALLOWED_NETWORKS)" in detail


def test_a_name_resolving_to_loopback_is_blocked(
        fake_dns: FakeDns, trap: Server) -> None:
    fake_dns({"images.internal.test": ["127.0.0.1"]})
    # The client learns nothing about where an internal name points (issue 10, finding 7);
    # the log gets it.
    reason, detail = refused_detail(f"http://images.internal.test:{trap.port}/image.png")
    assert reason == not_public("images.internal.test")
    assert detail == ("URL host 'images.internal.test' resolves to 127.0.0.1, a loopback "
                      "address: blocked (see URL_ALLOWED_NETWORKS)")


def test_every_resolved_address_is_checked(
        fake_dns: FakeDns, host: Server, trap: Server) -> None:
    # A public answer first and the metadata endpoint second: one blocked address rejects
    # the host, whichever the connection would have used.
    fake_dns({"mixed.test": ["93.184.215.14", "169.254.169.254"],
              "mixed6.test": [HOST, "::1"]})
    assert refused_detail("http://mixed.test/image.png") == (not_public("mixed.test"),
        "URL host 'mixed.test' resolves to 169.254.169.254, a link-local address: "
        "blocked (see URL_ALLOWED_NETWORKS)")
    assert "resolves to ::1, a loopback address" in refused_detail(
        f"http://mixed6.test:{host.port}/image.png")[1]
    assert host.hosts == []


def test_unresolvable_host() -> None:
    # .invalid never resolves (RFC 6761); no timing check: the resolver may ask the network.
    # The same answer as a name resolving to a blocked address: no oracle for which
    # internal names exist.
    reason, detail = refused_detail("http://no-such-host.invalid/a.png", fast=False)
    assert reason == not_public("no-such-host.invalid")
    assert detail.startswith("DNS: ")


def test_connects_to_the_checked_address_without_a_second_lookup(
        fake_dns: FakeDns, host: Server, trap: Server) -> None:
    # DNS rebinding: the first answer is the allowed host, every later one the trap. Fake
    # DNS (see the module docstring) is the only way to make a name change its answer here.
    lookups = fake_dns({"rebind.test": [HOST]}, later={"rebind.test": ["127.0.0.1"]})
    url = f"http://rebind.test:{host.port}/image.png"
    assert fetch(url) == IMAGE
    assert lookups == ["rebind.test"]  # one lookup: the connection used its checked answer
    assert host.hosts == [f"rebind.test:{host.port}"]  # Host header: the URL's name
    # A fresh fetch resolves again, gets the rebound answer and is refused.
    assert "resolves to 127.0.0.1, a loopback address" in refused_detail(url)[1]
    assert lookups == ["rebind.test", "rebind.test"]


# --- the URL itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("port", [0, 65536, 99999999])
def test_a_port_out_of_range_is_refused(port: int, host: Server) -> None:
    # httpx accepts any integer port; the socket layer would fail with an OverflowError.
    for h in (HOST, "93.184.215.14"):
        assert refused(f"http://{h}:{port}/x.png") == (
            f"URL port {port} is out of range (1-65535)")
    assert host.hosts == []


@pytest.mark.parametrize(("url", "reason"), [
    ("http://example.invalid/\ud800.png", "invalid URL: "),
    ("http://\ud800/x.png", "could not fetch the URL: Invalid IDNA hostname"),
    ("http://xn--/x.png", "invalid URL: "),
    ("http://a\x00b/x.png", "could not fetch the URL: Invalid non-printable ASCII"),
    ("http://[::1]]/x.png", "could not fetch the URL: Invalid IPv6 address"),
    ("http://:80/x.png", "only http and https URLs are accepted"),
])
def test_hostile_urls_are_a_fetch_error(url: str, reason: str) -> None:
    assert refused(url).startswith(reason)


def test_credentials_in_the_url_are_refused(host: Server) -> None:
    assert refused(f"http://user:secret@{HOST}:{host.port}/image.png") == (
        "URLs with credentials (user:password@host) are not accepted")
    assert host.hosts == []


# --- redirects --------------------------------------------------------------------------------

def _to(host: Server, target: str) -> str:
    return f"{host.base}/to?u={quote(target, safe='')}"


@pytest.mark.parametrize(("target", "why"), [
    ("http://127.0.0.1:{trap}/image.png", "resolves to 127.0.0.1, a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "resolves to 169.254.169.254, a link-local"),
    ("http://[::ffff:127.0.0.1]:{trap}/image.png", "a loopback address in IPv4-mapped form"),
    ("http://2130706433:{trap}/image.png", "'2130706433' resolves to 127.0.0.1, a loopback"),
    ("http://localhost:{trap}/image.png", "'localhost' does not resolve to a public address"),
    ("http://user:pw@127.0.0.2:{host}/image.png", "credentials (user:password@host)"),
    ("ftp://127.0.0.2/image.png", "only http and https URLs are accepted, not 'ftp'"),
    ("file:///etc/passwd", "only http and https URLs are accepted, not 'file'"),
])
def test_redirect_to_a_blocked_target_is_refused_at_the_hop(
        host: Server, trap: Server, target: str, why: str) -> None:
    url = _to(host, target.format(trap=trap.port, host=host.port))
    reason = refused(url)
    assert why in reason, reason
    assert len(host.hosts) == 1  # the allowed host answered the first hop, nothing after


def test_redirects_within_allowed_hosts_are_followed(host: Server) -> None:
    assert fetch(_to(host, f"http://[::ffff:{HOST}]:{host.port}/redirect/2")) == IMAGE
    assert len(host.hosts) == 4


def test_max_redirects(host: Server) -> None:
    assert fetch(f"{host.base}/redirect/5") == IMAGE
    assert refused(f"{host.base}/redirect/6") == "too many redirects (more than 5)"
    assert refused(f"{host.base}/redirect/1", max_redirects=0) == (
        "too many redirects (more than 0)")
    assert fetch(f"{host.base}/redirect/7", max_redirects=7) == IMAGE


# --- TLS: SNI and certificate checked for the name, the connection to the checked IP ---------

def _tls_pair(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for `name`, client context trusting its CA)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]),
                                            critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_cert = cert("test CA", ca_key, "test CA", ca_key, True)
    leaf = cert(name, leaf_key, "test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client_ctx = ssl.create_default_context(cadata=ca_cert.public_bytes(pem).decode())
    return server_ctx, client_ctx


def test_tls_uses_the_url_name_while_connecting_to_the_checked_address(
        tmp_path: Path, fake_dns: FakeDns) -> None:
    # The guarded backend under httpcore's pool, as make_client wires it (the client's own
    # certificate store cannot be pointed at a test CA, so the pool is built here).
    server_ctx, client_ctx = _tls_pair(tmp_path, "img.test")
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment]
    info = Server(base="", port=0)
    lookups = fake_dns({"img.test": [HOST], "other.test": [HOST]})

    async def get(url: str) -> httpcore.Response:
        async with httpcore.AsyncConnectionPool(
                ssl_context=client_ctx,
                network_backend=GuardedBackend(AddressPolicy(allowed=ALLOWED))) as pool:
            return await pool.request("GET", url)

    with serving(_handler(info), host=HOST, tls=server_ctx) as base:
        port = int(base.rsplit(":", 1)[1])
        response = asyncio.run(get(f"https://img.test:{port}/image.png"))
        assert response.status == 200 and response.content == IMAGE
        assert sni == ["img.test"] and info.hosts == [f"img.test:{port}"]
        assert lookups == ["img.test"]
        # Same address, another name: the certificate is checked against the URL's name.
        with pytest.raises(httpcore.ConnectError, match="certificate verify failed"):
            asyncio.run(get(f"https://other.test:{port}/image.png"))


# --- settings and the loader ------------------------------------------------------------------

def test_settings_defaults_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    s = TransformerSettings()
    assert (s.url_fetch_enabled, s.url_allowed_networks, s.url_max_redirects) == (True, "", 5)
    assert s.allowed_networks == ()
    monkeypatch.setenv("URL_ALLOWED_NETWORKS", " 127.0.0.2/32, 10.2.0.0/16 ,fd00::/8,10.9.9.9")
    monkeypatch.setenv("URL_MAX_REDIRECTS", "2")
    s = TransformerSettings()
    assert [str(n) for n in s.allowed_networks] == [
        "127.0.0.2/32", "10.2.0.0/16", "fd00::/8", "10.9.9.9/32"]
    assert s.url_max_redirects == 2


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "nonsense", "10.0.0.0/33", "127.0.0.2/32,x"])
def test_a_bad_allowed_network_fails_at_start_up(bad: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URL_ALLOWED_NETWORKS", bad)
    with pytest.raises(ValidationError, match="in URL_ALLOWED_NETWORKS"):
        TransformerSettings()


def _load(settings: TransformerSettings, url: str) -> ImageErrors:
    """Run the loader on one URL pair; return the ImageErrors it raises."""
    plan = PairPlan(inputs=[url], slots=[(0, 0)],
                    uses=[[(0, "reference_image"), (0, "generated_image")]])

    async def main() -> None:
        async with make_client(allowed_networks=settings.allowed_networks) as client:
            with ThreadPoolExecutor(2) as pool:
                loader = ImageLoader(settings, executor=pool, client=client)
                await loader.load(plan, [None])

    with pytest.raises(ImageErrors) as excinfo:
        asyncio.run(main())
    return excinfo.value


def test_url_fetch_disabled(monkeypatch: pytest.MonkeyPatch, host: Server) -> None:
    monkeypatch.setenv("URL_FETCH_ENABLED", "false")
    monkeypatch.setenv("URL_ALLOWED_NETWORKS", f"{HOST}/32")
    err = _load(TransformerSettings(), f"{host.base}/image.png")
    assert [e.reason for e in err.errors] == [URL_FETCH_DISABLED] * 2
    assert URL_FETCH_DISABLED == (
        "URL inputs are disabled on this service (URL_FETCH_ENABLED=false)")
    assert host.hosts == []


def test_loader_applies_the_settings(monkeypatch: pytest.MonkeyPatch, host: Server,
                                     trap: Server) -> None:
    monkeypatch.setenv("URL_ALLOWED_NETWORKS", f"{HOST}/32")
    monkeypatch.setenv("URL_MAX_REDIRECTS", "1")
    settings = TransformerSettings()
    reason = _load(settings, f"{host.base}/redirect/2").errors[0].reason
    assert reason.startswith("too many redirects (more than 1)"), reason
    start = time.perf_counter()
    reason = _load(settings, f"{trap.base}/image.png").errors[0].reason
    assert reason.startswith("URL host resolves to 127.0.0.1, a loopback address"), reason
    assert time.perf_counter() - start < FAST_S


def test_names_no_resolver_accepts_are_unresolvable() -> None:
    # What httpx lets through to the transport must still end as a policy answer.
    assert numeric_host("a\x00b") is None
    for name in ("a\x00b", "xn--", "a" * 300):
        with pytest.raises(BlockedAddress, match="does not resolve to a public address"):
            asyncio.run(AddressPolicy().resolve(name, 80))


# --- DNS that never answers (issue 10, finding 9) -------------------------------------------

def test_lookups_that_never_return_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names whose DNS server never answers: a deadline per lookup, a few threads of their
    own, and the rest refused at once; the event loop's default pool stays free.

    A fake: ``socket.getaddrinfo`` blocks for ``*.hang.test`` until the test ends (there is
    no DNS server here to leave unanswered).
    """
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".hang.test"):
            release.wait(30)
            raise socket.gaierror("released")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    resolver = Resolver(workers=2, timeout_s=0.3)

    async def main() -> tuple[list[bytes | BaseException], float]:
        loop = asyncio.get_running_loop()
        async with make_client(allowed_networks=ALLOWED, resolver=resolver) as client:
            start = time.perf_counter()
            results = await asyncio.gather(*(
                fetch_image_bytes(client, f"http://n{i}.hang.test/x.png", timeout_s=5.0,
                                  max_bytes=1000) for i in range(12)), return_exceptions=True)
            elapsed = time.perf_counter() - start
            # Before: every lookup took a thread of this pool and kept it after the fetch
            # gave up, so other work queued behind names that never answer.
            assert await asyncio.wait_for(loop.run_in_executor(None, int), 2.0) == 0
            return results, elapsed

    try:
        results, elapsed = asyncio.run(main())
        assert resolver.busy == 2  # the two abandoned lookups still hold their threads
    finally:
        release.set()
    assert all(isinstance(r, FetchError) for r in results), results
    assert {r.reason for r in results if isinstance(r, FetchError)} == {
        not_public(f"n{i}.hang.test") for i in range(12)}
    details = sorted(r.detail or "" for r in results if isinstance(r, FetchError))
    assert details.count("DNS: no answer within 0.3 s") == 2
    assert details.count("DNS: all 2 lookup threads busy") == 10
    assert elapsed < 2.0  # not 12 x 5 s
    deadline = time.monotonic() + 5
    while resolver.busy and time.monotonic() < deadline:  # released threads end
        time.sleep(0.05)
    assert resolver.busy == 0
