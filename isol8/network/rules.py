"""The policy of ``network="filtered"``, free of I/O: which hosts a sandbox may reach, and
which addresses nobody may reach.

Two questions, kept apart because they are asked at different moments:

- :meth:`NetworkFilter.decide` answers *may this hostname be requested?* from upstream's
  ``whitelist`` / ``blacklist`` regexes (search semantics, deny wins, an empty whitelist
  allows every host), before any name is resolved;
- :func:`address_refusal` answers *may the supervisor connect to this address?* after
  resolution (or for a pin, or for an IP literal, see :func:`parse_literal`): the SSRF guard.

Nothing here opens a socket or asks a resolver, so every rule is tested in microseconds and
can be fuzzed; the proxy composes them.
"""

from __future__ import annotations

import ipaddress
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Union

from ..errors import InvalidRequest

# The stdlib's own regex parser (private, but the only way to see a pattern's structure
# without a second regex engine); ``sre_parse`` before 3.11, which isol8 does not support.
from re import _parser as _sre_parse  # type: ignore[attr-defined]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: Upstream's two keys plus isol8's own (issue 10). Unknown keys are refused: a misspelt
#: ``blacklsit`` silently allowing everything is the worst failure a policy can have.
KNOWN_KEYS = ("whitelist", "blacklist", "allow_private", "hosts", "max_connections", "capture")
DEFAULT_MAX_CONNECTIONS = 64
#: Enough for any sane policy; bounds the work a request with a huge policy can cause.
MAX_CONNECTIONS_CAP = 65536
MAX_PATTERNS = 1024
MAX_PATTERN_LENGTH = 512
MAX_PINS = 4096
#: RFC 1035 §2.3.4: 255 octets on the wire, i.e. 253 characters in dotted form.
MAX_HOSTNAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

# Letters, digits, hyphen (RFC 1123) and underscore (seen in real names, e.g. service
# hostnames; harmless to a regex). Hyphens are allowed at label edges as browsers do.
_LABEL = re.compile(r"[a-z0-9_-]{1,63}\Z")
# WHATWG URL "ends in a number": a final label that looks numeric must be an IPv4 literal;
# otherwise the host is invalid (no TLD is numeric, and resolvers would parse it as IPv4).
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")


@dataclass(frozen=True)
class Decision:
    """Whether a host may be requested, and the rule that decided, for the proxy's 403 body
    and the network log (a refusal the user cannot trace to a rule is a bug report)."""

    allowed: bool
    rule: str


@dataclass(frozen=True)
class Pin:
    """A ``hosts`` entry: like curl's ``--resolve``, the name goes to ``address`` (checked by
    the SSRF guard like a resolved one) and, when ``port`` is set, to that port instead of the
    one requested, so tests reach their own unprivileged servers."""

    address: IPAddress
    port: int | None = None


def normalize_host(host: str) -> str:
    """Return the form of ``host`` that rules are matched against and that is resolved.

    DNS names are case-insensitive and ``example.com.`` is ``example.com``: without folding
    both, ``EVIL.com`` or ``evil.com.`` would slip past a deny rule written as
    ``evil\\.com$`` (upstream's grep-based proxy had exactly that hole). IPv6 literals lose
    their brackets. Non-ASCII names are refused rather than IDNA-encoded: clients put the
    A-label (``xn--...``) in the Host header and the SNI, so that is what rules must name, and
    encoding here (IDNA 2003 vs 2008 disagree, e.g. on ``ß``) could match a rule against a
    different name than the one resolved. Raises :class:`InvalidRequest` naming the problem.
    """
    if not isinstance(host, str):
        raise InvalidRequest(f"host must be a string, not {type(host).__name__}")
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidRequest(f"host {host!r}: not an IPv6 address in brackets") from None
        return inner.lower()
    if len(host) > MAX_HOSTNAME_LENGTH + 1:
        raise InvalidRequest(f"host is {len(host)} characters long, over {MAX_HOSTNAME_LENGTH}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidRequest(f"host {host!r}: not a hostname or an IP address") from None
        return host.lower()
    if not host.isascii():
        raise InvalidRequest(f"host {host!r}: non-ASCII; use its IDNA form (xn--...)")
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidRequest("host is empty")
    if len(name) > MAX_HOSTNAME_LENGTH:
        raise InvalidRequest(f"host is {len(name)} characters long, over {MAX_HOSTNAME_LENGTH}")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidRequest(
                f"host {host!r}: label {label!r} must be 1 to {MAX_LABEL_LENGTH} letters, "
                "digits, '-' or '_'"
            )
    if _NUMERIC_LABEL.match(labels[-1]) and _parse_ipv4_lax(name) is None:
        raise InvalidRequest(f"host {host!r}: ends in a number but is not an IPv4 address")
    return name


def _parse_ipv4_part(part: str) -> int | None:
    """One part of an ``inet_aton`` address: decimal, ``0x`` hex or ``0``-prefixed octal."""
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        if digits == "":
            return 0  # WHATWG: "0x" alone is zero
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    allowed = "0123456789abcdefABCDEF"[: base + (6 if base == 16 else 0)]
    if not digits or any(c not in allowed for c in digits):
        return None
    return int(digits, base)


def _parse_ipv4_lax(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 forms that ``inet_aton`` and WHATWG URL parsers accept: 1 to 4 parts, each
    decimal, hex or octal, the last filling the remaining bytes (``2130706433``, ``0x7f.1``,
    ``0177.0.0.1`` are all 127.0.0.1). Python's ``ipaddress`` refuses them, but curl, glibc
    and browsers connect to them, so a guard that does not see them is bypassed."""
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or len(text) > 64:
        return None
    values = [_parse_ipv4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [v for v in values if v is not None]
    if any(v > 255 for v in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
        return None
    value = nums[-1]
    for i, v in enumerate(nums[:-1]):
        value += v << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_literal(host: str) -> IPAddress | None:
    """Return the address if ``host`` (as it appears in a URL, Host header or CONNECT line,
    without port) is an IP literal, else None.

    Recognizes bracketed and bare IPv6 (a zone id is dropped: the guard judges the address),
    dotted-quad IPv4 and the lax numeric IPv4 forms clients accept, so that every literal
    meets the SSRF guard exactly as a resolved name would."""
    if not isinstance(host, str) or not host.isascii():
        return None
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            return None
        return ipaddress.IPv6Address(address.packed) if address.scope_id else address
    if host.startswith("["):
        return None
    return _parse_ipv4_lax(text)


# --- SSRF guard -----------------------------------------------------------------------------

_N = ipaddress.ip_network

#: Cloud metadata services, checked before the ranges that contain them so the reason is the
#: useful one. AWS/GCP/Azure/OCI/DigitalOcean/OpenStack share 169.254.169.254; the rest are
#: the provider-specific ones.
_METADATA: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_N("169.254.169.254/32"), "cloud metadata service (AWS, GCP, Azure, OCI, OpenStack)"),
    (_N("169.254.170.2/32"), "cloud metadata service (AWS ECS task credentials)"),
    (_N("169.254.169.253/32"), "cloud metadata service (AWS DNS)"),
    (_N("169.254.169.123/32"), "cloud metadata service (AWS time)"),
    (_N("100.100.100.200/32"), "cloud metadata service (Alibaba Cloud)"),
    (_N("192.0.0.192/32"), "cloud metadata service (Oracle Cloud classic)"),
    (_N("fd00:ec2::254/128"), "cloud metadata service (AWS, IPv6)"),
    (_N("fd00:ec2::253/128"), "cloud metadata service (AWS DNS, IPv6)"),
    (_N("fd00:ec2::123/128"), "cloud metadata service (AWS time, IPv6)"),
)

# IANA special-purpose registries (RFC 6890 and updates). Order matters: specific first.
_IPV4_REFUSED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (_N(net), why)  # type: ignore[misc]
    for net, why in (
        ("0.0.0.0/32", "unspecified address"),
        ("0.0.0.0/8", "'this network' 0.0.0.0/8 (RFC 791)"),
        ("10.0.0.0/8", "private 10.0.0.0/8 (RFC 1918)"),
        ("100.64.0.0/10", "shared address space / CGNAT 100.64.0.0/10 (RFC 6598)"),
        ("127.0.0.0/8", "loopback 127.0.0.0/8"),
        ("169.254.0.0/16", "link-local 169.254.0.0/16"),
        ("172.16.0.0/12", "private 172.16.0.0/12 (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments 192.0.0.0/24"),
        ("192.0.2.0/24", "documentation 192.0.2.0/24 (TEST-NET-1)"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast 192.88.99.0/24"),
        ("192.168.0.0/16", "private 192.168.0.0/16 (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking 198.18.0.0/15 (RFC 2544)"),
        ("198.51.100.0/24", "documentation 198.51.100.0/24 (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation 203.0.113.0/24 (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast 224.0.0.0/4"),
        ("255.255.255.255/32", "limited broadcast"),
        ("240.0.0.0/4", "reserved 240.0.0.0/4"),
    )
)

_IPV6_REFUSED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (_N(net), why)  # type: ignore[misc]
    for net, why in (
        ("::/128", "unspecified address"),
        ("::1/128", "loopback ::1"),
        ("100::/64", "discard-only 100::/64 (RFC 6666)"),
        ("64:ff9b:1::/48", "local-use NAT64 64:ff9b:1::/48 (RFC 8215)"),
        ("2001::/32", "Teredo 2001::/32"),
        ("2001:2::/48", "benchmarking 2001:2::/48 (RFC 5180)"),
        ("2001:db8::/32", "documentation 2001:db8::/32"),
        ("2001::/23", "IETF protocol assignments 2001::/23"),
        ("3fff::/20", "documentation 3fff::/20 (RFC 9637)"),
        ("5f00::/16", "SRv6 SIDs 5f00::/16 (RFC 9602)"),
        ("fc00::/7", "unique local fc00::/7 (ULA)"),
        ("fe80::/10", "link-local fe80::/10"),
        ("fec0::/10", "deprecated site-local fec0::/10"),
        ("ff00::/8", "multicast ff00::/8"),
    )
)

_GLOBAL_UNICAST = _N("2000::/3")
_IPV4_COMPATIBLE = _N("::/96")
_IPV4_TRANSLATED = _N("::ffff:0:0:0/96")  # SIIT, RFC 2765
_NAT64 = _N("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = _N("64:ff9b:1::/48")  # RFC 8215


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Every IPv4 address an IPv6 address carries in a form some stack or relay honours: a
    connection to the wrapper can reach the wrapped address (mapped sockets, NAT64 gateways,
    6to4 and Teredo relays), so the wrapped one is judged too."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    elif address in _IPV4_TRANSLATED:
        found.append(("IPv4-translated", low32))
    elif address in _IPV4_COMPATIBLE:
        found.append(("IPv4-compatible", low32))
    elif address in _NAT64:
        found.append(("NAT64", low32))
    elif address in _NAT64_LOCAL:
        # RFC 6052 §2.2: under a /48 prefix the IPv4 address sits in bits 48-63 and 72-87;
        # gateways may also use a /96 of it, with the address in the low 32 bits (and the
        # bits between zero). The whole /48 is refused anyway; this only sharpens the reason.
        value = int(address)
        if (value >> 32) & (2**48 - 1) == 0:
            found.append(("local-use NAT64", low32))
        else:
            split = ((value >> 64) & 0xFFFF) << 16 | (value >> 40) & 0xFFFF
            found.append(("local-use NAT64", ipaddress.IPv4Address(split)))
    elif address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    elif address.teredo is not None:
        server, client = address.teredo
        found.append(("Teredo client", client))
        found.append(("Teredo server", server))
    return found


def _ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    for net, why in _METADATA:
        if address in net:
            return why
    for net4, why in _IPV4_REFUSED:
        if address in net4:
            return why
    # Belt and braces: whatever the running Python's registry knows that this table does not.
    return None if address.is_global else "not globally routable"


def address_refusal(ip: str | IPAddress) -> str | None:
    """Why the supervisor must not connect to ``ip`` on a sandbox's behalf, or None.

    Refuses every address that is not globally routable: loopback, private, link-local,
    CGNAT, benchmarking, multicast, unspecified, reserved, documentation, broadcast and cloud
    metadata, also when wrapped in IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4
    or Teredo form. The tables are explicit because ``ipaddress.is_global`` alone is wrong
    here: Python 3.11 calls ``64:ff9b::a9fe:a9fe`` (169.254.169.254 behind NAT64) global.
    IPv6 is allowed only inside global unicast 2000::/3. A string is parsed with
    :func:`parse_literal` (lax IPv4 forms included); a non-address raises InvalidRequest.
    """
    if isinstance(ip, str):
        parsed = parse_literal(ip)
        if parsed is None:
            raise InvalidRequest(f"{ip!r} is not an IP address")
        ip = parsed
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_refusal(ip)
    if not isinstance(ip, ipaddress.IPv6Address):
        raise InvalidRequest(f"not an IP address: {type(ip).__name__}")
    if ip.scope_id:
        ip = ipaddress.IPv6Address(ip.packed)
    for net, why in _METADATA:
        if ip in net:
            return why
    if int(ip) <= 1:  # :: and ::1 are themselves, not IPv4-compatible 0.0.0.0 / 0.0.0.1
        return "unspecified address" if int(ip) == 0 else "loopback ::1"
    for form, inner in _embedded_ipv4(ip):
        inner_why = _ipv4_refusal(inner)
        if inner_why is not None:
            return f"{form} form of {inner}: {inner_why}"
    for net6, why in _IPV6_REFUSED:
        if ip in net6:
            return why
    if ip in _NAT64 or ip.ipv4_mapped is not None or ip.sixtofour is not None:
        # These reach the wrapped IPv4 (NAT64 gateway, dual-stack socket, 6to4 relay), judged
        # above; Python 3.11's is_global would refuse public 6to4 wholesale.
        return None
    if ip not in _GLOBAL_UNICAST:
        return "reserved (outside global unicast 2000::/3)"
    return None if ip.is_global else "not globally routable"


# --- the filter -----------------------------------------------------------------------------


_REPEATS = {_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT} | (
    {_sre_parse.POSSESSIVE_REPEAT} if hasattr(_sre_parse, "POSSESSIVE_REPEAT") else set()
)


def _has_literal(items: object) -> bool:
    """A literal character every match of ``items`` consumes (groups looked through)."""
    return any(
        op == _sre_parse.LITERAL or (op == _sre_parse.SUBPATTERN and _has_literal(av[-1]))
        for op, av in items  # type: ignore[attr-defined]
    )


def _nested_repeat(items: object, inside: bool = False) -> bool:
    """True if a repeated group's body holds another repeat and no literal character that
    each round must consume: the ``(a+)+`` / ``([a-z]+-?)*`` shape whose backtracking is
    exponential in the hostname's length, which the sandbox controls. A cheap structural
    heuristic (Python's ``re`` has no timeout), not a proof; ``(\\w+\\.)*`` stays allowed."""
    for op, av in items:  # type: ignore[attr-defined]
        if op in _REPEATS:
            _lo, hi, body = av
            repeats = hi > 1
            if inside and repeats:
                return True
            anchored = _has_literal(body)
            if _nested_repeat(body, (inside or repeats) and not anchored):
                return True
        elif op == _sre_parse.SUBPATTERN:
            if _nested_repeat(av[-1], inside):
                return True
        elif op == _sre_parse.BRANCH:
            if any(_nested_repeat(b, inside) for b in av[1]):
                return True
        elif op in (_sre_parse.ASSERT, _sre_parse.ASSERT_NOT):
            if _nested_repeat(av[1], inside):
                return True
    return False


def _patterns(key: str, value: object) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """Compile one rule list. Case-insensitive (hostnames are, and ``normalize_host``
    lowercases them, so an ``Evil`` rule must still match) and ASCII-only (``\\w`` must not
    mean Unicode word characters when hostnames are ASCII)."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidRequest(
            f"network_filter[{key!r}] must be a list of regex strings, not {type(value).__name__}"
        )
    if len(value) > MAX_PATTERNS:
        raise InvalidRequest(
            f"network_filter[{key!r}] has {len(value)} patterns, over {MAX_PATTERNS}"
        )
    compiled = []
    for i, pattern in enumerate(value):
        where = f"network_filter[{key!r}][{i}]"
        if not isinstance(pattern, str):
            raise InvalidRequest(f"{where} must be a string, not {type(pattern).__name__}")
        if not pattern:
            raise InvalidRequest(f"{where} is empty (it would match every host)")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise InvalidRequest(
                f"{where} is {len(pattern)} characters long, over {MAX_PATTERN_LENGTH}"
            )
        if not pattern.isascii():
            raise InvalidRequest(
                f"{where} {pattern!r} is not ASCII: "
                "hostnames are matched in their IDNA form (xn--...)"
            )
        try:
            regex = re.compile(pattern, re.IGNORECASE | re.ASCII)
        except re.error as exc:
            raise InvalidRequest(f"{where} {pattern!r} is not a valid regex: {exc}") from None
        if _nested_repeat(_sre_parse.parse(pattern, re.IGNORECASE | re.ASCII)):
            raise InvalidRequest(
                f"{where} {pattern!r} nests a repeat inside a repeat (like (a+)+), which can take "
                "exponential time on a crafted hostname; rewrite it without the nesting"
            )
        compiled.append((pattern, regex))
    return tuple(compiled)


def parse_pin_address(value: str, where: str = "address") -> Pin:
    """Parse ``"address"`` or ``"address:port"``; IPv6 with a port needs brackets
    (``[::1]:8080``), as in URLs, since ``::1:8080`` is itself an IPv6 address. Only strict
    literals: a pin is configuration, so ``0x7f.1`` is a typo to report, not a form to guess."""
    if not isinstance(value, str):
        raise InvalidRequest(
            f'{where} must be a string "address" or "address:port", not {type(value).__name__}'
        )
    port_text: str | None = None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidRequest(f"{where} {value!r}: expected [IPv6] or [IPv6]:port")
        port_text = rest[1:] if rest else None
        if ":" not in host:
            raise InvalidRequest(f"{where} {value!r}: only IPv6 addresses go in brackets")
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host = value
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRequest(f"{where} {value!r}: {host!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise InvalidRequest(f"{where} {value!r}: a zone id is not allowed")
    if port_text is None:
        return Pin(address)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise InvalidRequest(f"{where} {value!r}: port must be a number from 1 to 65535")
    return Pin(address, int(port_text))


def _pins(value: object) -> Mapping[str, Pin]:
    if value is None:
        return types.MappingProxyType({})
    if not isinstance(value, Mapping):
        raise InvalidRequest(
            "network_filter['hosts'] must be a mapping of name to address, "
            f"not {type(value).__name__}"
        )
    if len(value) > MAX_PINS:
        raise InvalidRequest(f"network_filter['hosts'] has {len(value)} entries, over {MAX_PINS}")
    pins: dict[str, Pin] = {}
    for name, address in value.items():
        where = f"network_filter['hosts'][{name!r}]"
        try:
            key = normalize_host(name)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
        if parse_literal(key) is not None:
            raise InvalidRequest(f"{where}: pin a hostname, not an IP address")
        if key in pins:
            raise InvalidRequest(f"{where}: {key!r} is pinned twice")
        pins[key] = parse_pin_address(address, where)
    return types.MappingProxyType(pins)


@dataclass(frozen=True)
class NetworkFilter:
    """A validated ``network_filter``. Build it with :meth:`from_options`."""

    whitelist: tuple[str, ...] = ()
    blacklist: tuple[str, ...] = ()
    allow_private: bool = False
    hosts: Mapping[str, Pin] = field(default_factory=lambda: types.MappingProxyType({}))
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    capture: Literal["web", "all"] = "web"
    _allow: tuple[tuple[str, re.Pattern[str]], ...] = field(default=(), repr=False, compare=False)
    _deny: tuple[tuple[str, re.Pattern[str]], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_options(cls, options: Mapping[str, object] | None) -> NetworkFilter:
        """Validate upstream's ``{"whitelist": [...], "blacklist": [...]}`` plus isol8's keys
        (``allow_private``, ``hosts``, ``max_connections``, ``capture``); None means no
        filter (every public host, as upstream). Every error names the key."""
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise InvalidRequest(f"network_filter must be a mapping, not {type(options).__name__}")
        unknown = sorted(str(k) for k in options if k not in KNOWN_KEYS)
        if unknown:
            raise InvalidRequest(
                f"network_filter: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(KNOWN_KEYS)}"
            )
        allow = _patterns("whitelist", options.get("whitelist"))
        deny = _patterns("blacklist", options.get("blacklist"))
        allow_private = options.get("allow_private", False)
        if not isinstance(allow_private, bool):
            raise InvalidRequest(
                f"network_filter['allow_private'] must be true or false, not {allow_private!r}"
            )
        max_connections = options.get("max_connections", DEFAULT_MAX_CONNECTIONS)
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or not 1 <= max_connections <= MAX_CONNECTIONS_CAP
        ):
            raise InvalidRequest(
                "network_filter['max_connections'] must be an integer "
                f"from 1 to {MAX_CONNECTIONS_CAP}, "
                f"not {max_connections!r}"
            )
        capture = options.get("capture", "web")
        if capture not in ("web", "all"):
            raise InvalidRequest(
                f'network_filter[\'capture\'] must be "web" or "all", not {capture!r}'
            )
        return cls(
            whitelist=tuple(p for p, _ in allow),
            blacklist=tuple(p for p, _ in deny),
            allow_private=allow_private,
            hosts=_pins(options.get("hosts")),
            max_connections=max_connections,
            capture=capture,
            _allow=allow,
            _deny=deny,
        )

    def decide(self, host: str) -> Decision:
        """May ``host`` be requested? Never raises: an invalid host is a refusal that says why.

        ``re.search`` on the normalized host, deny first (deny wins), then an empty whitelist
        allows, else some whitelist rule must match. For an IP literal the rules see both the
        text as written (``[::1]`` without brackets, lowercased) and the canonical address, so
        ``0x7f.1`` cannot dodge a deny rule written for ``127.0.0.1``; the address itself is
        the SSRF guard's to judge."""
        try:
            name = normalize_host(host)
        except InvalidRequest as exc:
            return Decision(False, f"invalid host: {exc}")
        candidates = [name]
        literal = parse_literal(name)
        if literal is not None and str(literal) != name:
            candidates.append(str(literal))
        for i, (pattern, regex) in enumerate(self._deny):
            if any(regex.search(c) for c in candidates):
                return Decision(False, f"blacklist[{i}] {pattern!r}")
        if not self._allow:
            return Decision(True, "empty whitelist (every host allowed)")
        for i, (pattern, regex) in enumerate(self._allow):
            if any(regex.search(c) for c in candidates):
                return Decision(True, f"whitelist[{i}] {pattern!r}")
        return Decision(False, "no whitelist rule matches")

    def pin(self, host: str) -> Pin | None:
        """The ``hosts`` pin for ``host`` (normalized as the rules see it), if any."""
        try:
            return self.hosts.get(normalize_host(host))
        except InvalidRequest:
            return None

    def refusal(self, address: IPAddress) -> str | None:
        """The SSRF guard as this filter applies it: nothing refused with ``allow_private``."""
        return None if self.allow_private else address_refusal(address)
