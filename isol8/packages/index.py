"""The package index seen from the supervisor: which hosts an install may reach, and the
sha256 the index publishes for a file, fetched on the host side.

A file a sandbox downloaded is the sandbox's word; only the index's own page (PEP 503, whose
links carry ``#sha256=``) says what the file must hash to. That page is fetched here, by the
supervisor, through the filtered network's resolver, SSRF guard and connector
(isol8.network.outbound), with the same policy the install phase gets: so tests that swap
those for a table and a loopback-only connector send nothing off the machine, and an index
on a private address is reachable only when the operator configured it.
"""

from __future__ import annotations

import html.parser
import ipaddress
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..network import outbound, service
from ..network.rules import NetworkFilter
from .names import normalized_name

PYPI = "https://pypi.org/simple"
NPM_REGISTRY = "https://registry.npmjs.org"
# Upstream's CLI allow patterns for --install (isol8-api.md §2.4).
_PYPI_HOSTS = (r"^pypi\.org$", r"^files\.pythonhosted\.org$")
_NPM_HOSTS = (r"^registry\.npmjs\.org$",)
# An index configured on an IP literal is reached under this name, pinned to its address
# and port: the install phase then reaches that one port, not every port of the address.
PINNED_HOST = "package-index.isol8"
_PAGE_LIMIT = 32 << 20  # PyPI's largest simple pages are a few MiB
_TIMEOUT = 10.0
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class PackageIndex:
    """Where one manager installs from. ``url`` is what the supervisor fetches and
    ``sandbox_url`` what the installer inside is given (they differ for a pinned literal);
    ``policy`` is the proxy's policy during the install phase."""

    manager: str
    url: str
    sandbox_url: str
    policy: NetworkFilter
    trusted_host: str | None = None  # plain-HTTP index: pip needs --trusted-host for it


def package_index(manager: str, configured: str | None = None) -> PackageIndex:
    """The index for ``manager`` ("pip" or "npm"): the public registry (its hosts only, the
    SSRF guard on), or the operator's ``package_index_url``. That one was configured on
    purpose, so it may be private or loopback (``allow_private``), but only its host is
    allowed, and an IP literal is pinned with its port."""
    if configured is None:
        url = PYPI if manager == "pip" else NPM_REGISTRY
        hosts = _PYPI_HOSTS if manager == "pip" else _NPM_HOSTS
        return PackageIndex(manager, url, url,
                            NetworkFilter.from_options({"whitelist": list(hosts)}))
    parts = urllib.parse.urlsplit(configured)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password or parts.query or parts.fragment:
        raise InvalidRequest(f"package_index_url {configured!r}: expected http(s)://host"
                             "[:port]/path, without credentials, query or fragment")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    url = configured.rstrip("/")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        policy = NetworkFilter.from_options(
            {"whitelist": [f"^{re.escape(host.lower())}$"], "allow_private": True})
        return PackageIndex(manager, url, url, policy,
                            host.lower() if parts.scheme == "http" else None)
    if parts.scheme == "https":
        raise InvalidRequest(f"package_index_url {configured!r}: an https index needs a "
                             "hostname its certificate names, not an IP address")
    pin = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    policy = NetworkFilter.from_options({"whitelist": [f"^{re.escape(PINNED_HOST)}$"],
                                         "hosts": {PINNED_HOST: pin}, "allow_private": True})
    sandbox_url = urllib.parse.urlunsplit(("http", PINNED_HOST, parts.path.rstrip("/"),
                                           "", ""))
    return PackageIndex(manager, url, sandbox_url, policy, PINNED_HOST)


def registry_patterns(manager: str, configured: str | None = None) -> list[str]:
    """Whitelist regexes for the index's hosts: what upstream's CLI allows a ``--install``
    run's code when it switches the run to filtered."""
    if configured is None:
        return list(_PYPI_HOSTS if manager == "pip" else _NPM_HOSTS)
    host = urllib.parse.urlsplit(configured).hostname or ""
    return [f"^{re.escape(host.lower())}$"]


class _Links(html.parser.HTMLParser):
    """PEP 503: every ``<a href="...#sha256=HEX">filename</a>`` of a project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hashes: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        href = dict(attrs).get("href") or ""
        path, _, fragment = href.partition("#")
        name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
        algo, _, digest = fragment.partition("=")
        if algo == "sha256" and _HEX64.match(digest.lower()) and name:
            self.hashes[name] = digest.lower()


def published_hashes(index: PackageIndex, project: str) -> dict[str, str]:
    """``{filename: sha256}`` from the index's page for ``project`` (its PEP 503 simple
    page); files the page lists without a sha256 are left out. Raises OSError when the page
    cannot be had (refused by the policy, unreachable, not 200)."""
    page = _get(index, f"{index.url}/{normalized_name(project)}/")
    parser = _Links()
    parser.feed(page.decode("utf-8", "replace"))
    return parser.hashes


def _get(index: PackageIndex, url: str) -> bytes:
    """One HTTP/1.0 GET (no chunked encoding, the body ends at EOF), connected the way the
    proxy connects: outbound.open_upstream under the install phase's policy."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    dial = PINNED_HOST if index.trusted_host == PINNED_HOST else host
    if not index.policy.decide(dial).allowed:
        raise OSError(f"{dial}: not allowed by the install phase's policy")
    opened = service.call(outbound.open_upstream(dial, port, index.policy))
    if not isinstance(opened, outbound.Connected):
        raise OSError(f"{url}: {opened.reason}")
    sock: socket.socket = opened.sock
    try:
        sock.setblocking(True)
        sock.settimeout(_TIMEOUT)
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                     "Accept: text/html\r\nUser-Agent: isol8\r\n\r\n".encode("ascii"))
        data = bytearray()
        ends = time.monotonic() + 3 * _TIMEOUT  # a page sent a byte at a time ends too
        while len(data) <= _PAGE_LIMIT:
            if time.monotonic() > ends:
                raise OSError(f"{url}: took over {3 * _TIMEOUT:.0f} s")
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or status[1] != b"200":
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise OSError(f"{url}: {line or 'no answer'}")
    return body
