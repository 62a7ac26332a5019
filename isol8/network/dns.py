"""The fake-IP resolver of ``network="filtered"``: DNS wire format and address pool, no I/O.

The sandbox's ``/etc/resolv.conf`` names a server the supervisor serves on the sandbox's
loopback (UDP and TCP 53). It never resolves anything: every A/AAAA query gets a fake address
from a private pool, remembered so that a connection later captured on port 80/443 to that
address maps back to the name the program asked for; the proxy then applies the hostname
policy and resolves for real on the host side. The sandbox has ``local`` default routes on
``lo`` for IPv4 and IPv6, so any fake address lands on the supervisor's listeners.

Fake ranges (``reference/transparent-capture.md`` §5, §8):

- IPv4 ``198.18.0.0/15`` (RFC 2544 benchmarking): never a public destination, and the SSRF
  guard refuses it, so a fake address can never be mistaken for a real upstream;
- IPv6 ``fd49:534f:4c38::/64``, a ULA (RFC 4193) whose global ID spells "ISOL8". The random
  global ID of RFC 4193 avoids clashes when sites merge; the sandbox netns has no interface
  but ``lo`` and merges with nothing. A ULA destination has a lower RFC 6724 precedence than
  IPv4, so getaddrinfo() still sorts the A answer (the path verified end to end) first.
  The reference answered AAAA with NODATA; faking it too serves clients that resolve IPv6
  only, and the dual-stack listeners and ``local ::/0`` route capture IPv6 (§5 verified
  ``curl http://[2001:db8::5]/``). ``FakeIPPool(v6=None)`` restores NODATA.

Answers (decided per RFC, each because of what stub resolvers do):

- A/AAAA for an allowed hostname: the name's fake address, TTL 5 s, AA and RA set (Go's
  resolver calls a reply with neither a lame referral);
- ``localhost`` and ``*.localhost`` (RFC 6761 §6.3): 127.0.0.1 / ::1, never faked;
- every other type (MX, TXT, SRV, PTR, HTTPS/SVCB 64/65, ANY...): NOERROR with no answer
  (NODATA). NXDOMAIN means "no record of any type" (RFC 8020): a resolver that caches it
  would then fail the A lookup that glibc and browsers send next to an HTTPS query;
- a name refused by the policy callback, or that is not a hostname (bytes outside
  letters, digits, ``-`` and ``_``; the root): NXDOMAIN for every type, so clients fail at
  once with "name not known" (REFUSED makes glibc retry the next server and then report a
  temporary failure). No SOA is sent, so nothing caches the negative answer;
- zone transfers (AXFR, IXFR): REFUSED; class other than IN: REFUSED; opcode other than
  QUERY: NOTIMP; EDNS version above 0: BADVERS (RFC 6891 §6.1.3);
- a malformed query: FORMERR when its ID is readable, nothing otherwise; a message with the
  QR bit (a response) is never answered, so no two servers can loop.

Over UDP an answer fits 512 bytes, or the client's EDNS payload size capped at 1232; a
response that would not fit is sent with TC set and no answers (RFC 2181 §9). With one
answer the worst case (a 255-byte name) is 310 bytes, so TC is a bound kept by construction.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TYPE_A = 1
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_IXFR = 251
TYPE_AXFR = 252
CLASS_IN = 1

NOERROR = 0
FORMERR = 1
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # an extended rcode: 0 in the header, 1 in the OPT record's upper bits

TTL = 5  # seconds: short, so a cached answer outlives an evicted mapping only briefly
UDP_LIMIT = 512  # RFC 1035 §4.2.1, without EDNS
EDNS_LIMIT = 1232  # the DNS Flag Day 2020 payload size: no IP fragmentation
TCP_LIMIT = 65535  # the 2-byte length prefix of RFC 1035 §4.2.2

_HEADER = struct.Struct("!HHHHHH")
_QR, _AA, _TC, _RD, _RA, _CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
_MAX_NAME = 255  # wire length of a name, length bytes and final zero included (§2.3.4)
_HOSTNAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_LOCALHOST_V4 = ipaddress.IPv4Address("127.0.0.1")
_LOCALHOST_V6 = ipaddress.IPv6Address("::1")


class DNSFormatError(ValueError):
    """A malformed DNS message; ``query_id`` is its ID when the first two bytes exist."""

    def __init__(self, reason: str, query_id: int | None) -> None:
        super().__init__(reason)
        self.query_id = query_id


@dataclass(frozen=True)
class Edns:
    """The OPT record of a query (RFC 6891 §6.1.3): what the response must echo."""

    payload_size: int
    version: int
    dnssec_ok: bool


@dataclass(frozen=True)
class Query:
    """A parsed query. ``labels`` are the question's raw bytes, echoed as sent: resolvers
    that randomise letter case (DNS 0x20) check the echo. ``hostname`` is the normalised
    name, or None when the question is not a hostname."""

    id: int
    flags: int
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int
    edns: Edns | None

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def hostname(self) -> str | None:
        if not self.labels or any(not set(label) <= _HOSTNAME_BYTES for label in self.labels):
            return None
        return b".".join(self.labels).decode("ascii").lower()


def normalize_name(name: str) -> str:
    """The pool's key for a name: ASCII lower case, without the trailing dot of an FQDN."""
    return name.lower().removesuffix(".")


def is_localhost(name: str) -> bool:
    """RFC 6761 §6.3: ``localhost`` and every name under it are the loopback, never faked."""
    name = normalize_name(name)
    return name == "localhost" or name.endswith(".localhost")


def _read_name(data: bytes, offset: int, query_id: int) -> tuple[tuple[bytes, ...], int]:
    """Read a possibly compressed name at ``offset``; return its labels and the offset after it.

    Each compression pointer must point strictly before the previous jump target (or the
    name's start), so the targets decrease and no loop can exist; the wire length, pointers
    excluded, is capped at 255 as uncompressed (RFC 1035 §2.3.4, §4.1.4).
    """
    labels: list[bytes] = []
    end: int | None = None
    floor = offset
    wire = 1  # the final zero
    while True:
        if offset >= len(data):
            raise DNSFormatError("name runs past the message", query_id)
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DNSFormatError("truncated compression pointer", query_id)
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if target >= floor:
                raise DNSFormatError("compression pointer does not point backwards", query_id)
            if end is None:
                end = offset + 2
            floor = offset = target
            continue
        if length & 0xC0:
            raise DNSFormatError("unknown label type", query_id)  # RFC 6891 §5: 01/10 retired
        if length == 0:
            return tuple(labels), offset + 1 if end is None else end
        wire += 1 + length
        if wire > _MAX_NAME:
            raise DNSFormatError("name longer than 255 bytes", query_id)
        if offset + 1 + length > len(data):
            raise DNSFormatError("label runs past the message", query_id)
        labels.append(bytes(data[offset + 1:offset + 1 + length]))
        offset += 1 + length


def parse_query(data: bytes) -> Query:
    """Parse one DNS query: header, exactly one question, an optional OPT record.

    Raises DNSFormatError, and only that, for any malformed input. Answer and authority
    records have no place in a query; additional records other than OPT are skipped.
    """
    query_id = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
    if len(data) < _HEADER.size:
        raise DNSFormatError("shorter than a DNS header", query_id)
    query_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & _QR:
        raise DNSFormatError("a response, not a query", query_id)
    if qdcount != 1 or ancount or nscount:
        raise DNSFormatError("a query has one question and no answer or authority", query_id)
    labels, offset = _read_name(data, _HEADER.size, query_id)
    if offset + 4 > len(data):
        raise DNSFormatError("truncated question", query_id)
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    offset += 4
    edns = None
    for _ in range(arcount):
        rr_labels, offset = _read_name(data, offset, query_id)
        if offset + 10 > len(data):
            raise DNSFormatError("truncated record", query_id)
        rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10 + rdlength
        if offset > len(data):
            raise DNSFormatError("record data runs past the message", query_id)
        if rtype == TYPE_OPT:
            if edns is not None or rr_labels:
                raise DNSFormatError("a second OPT record, or one not owned by the root",
                                     query_id)  # RFC 6891 §6.1.1
            edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000))
    if offset != len(data):
        raise DNSFormatError("bytes after the last record", query_id)
    return Query(query_id, flags, labels, qtype, qclass, edns)


def _encode_name(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def _opt_record(edns: Edns, rcode: int) -> bytes:
    ttl = ((rcode >> 4) << 24) | (0x8000 if edns.dnssec_ok else 0)  # version 0, no options
    return b"\0" + struct.pack("!HHIH", TYPE_OPT, EDNS_LIMIT, ttl, 0)


def response_limit(query: Query, tcp: bool) -> int:
    """The largest response the client accepts: RFC 1035 §4.2.1 and RFC 6891 §6.2.5."""
    if tcp:
        return TCP_LIMIT
    if query.edns is None:
        return UDP_LIMIT
    return max(UDP_LIMIT, min(query.edns.payload_size, EDNS_LIMIT))


def build_response(query: Query, rcode: int, addresses: tuple[IPAddress, ...] = (), *,
                   ttl: int = TTL, limit: int = UDP_LIMIT) -> bytes:
    """A response to ``query``: its ID, opcode, RD and CD bits, question and OPT echoed.

    Answers own the question's name through a pointer to offset 12. Sent with TC and no
    answers when it would exceed ``limit`` (RFC 2181 §9).
    """
    flags = _QR | _AA | _RA | (query.flags & (0x7800 | _RD | _CD)) | (rcode & 0xF)
    question = _encode_name(query.labels) + struct.pack("!HH", query.qtype, query.qclass)
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, TYPE_A if a.version == 4 else TYPE_AAAA, CLASS_IN, ttl,
                    len(a.packed)) + a.packed for a in addresses)
    opt = b"" if query.edns is None else _opt_record(query.edns, rcode)
    arcount = 0 if query.edns is None else 1
    message = (_HEADER.pack(query.id, flags, 1, len(addresses), 0, arcount)
               + question + answers + opt)
    if len(message) <= limit:
        return message
    return _HEADER.pack(query.id, flags | _TC, 1, 0, 0, arcount) + question + opt


def format_error(query_id: int) -> bytes:
    """FORMERR for a query whose ID is all that could be read: header only."""
    return _HEADER.pack(query_id, _QR | _RA | FORMERR, 0, 0, 0, 0)


def frame(message: bytes) -> bytes:
    """One DNS-over-TCP frame: a 2-byte big-endian length, then the message (§4.2.2)."""
    if len(message) > TCP_LIMIT:
        raise ValueError(f"a DNS message is at most {TCP_LIMIT} bytes, not {len(message)}")
    return len(message).to_bytes(2, "big") + message


class StreamDecoder:
    """Split a DNS-over-TCP byte stream into messages, whatever the reads' boundaries.

    Holds at most one incomplete frame (2 + 65535 bytes) between calls.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages, offset = [], 0
        while len(self._buffer) - offset >= 2:
            end = offset + 2 + int.from_bytes(self._buffer[offset:offset + 2], "big")
            if end > len(self._buffer):
                break
            messages.append(bytes(self._buffer[offset + 2:end]))
            offset = end
        del self._buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held: non-zero at EOF means the peer cut a message."""
        return len(self._buffer)


class FakeIPPool:
    """Fake addresses per hostname, and the reverse map, bounded by LRU eviction.

    A name gets slot ``n``: the n-th address of the IPv4 range and of the IPv6 range, so
    both map back to it. Slots are handed out in order from a cursor, so the same sequence
    of names always gets the same addresses; a name keeps its slot while it is mapped.
    At ``capacity`` names the least recently used one is forgotten, and its slot is not
    reused until the cursor wraps, so a stale address maps to no name (the proxy falls back
    on Host/SNI) rather than to another name. ``capacity`` bounds the supervisor's memory
    whatever the sandbox asks. Not thread-safe: the supervisor's event loop owns it.
    """

    def __init__(self, v4: str = "198.18.0.0/15", v6: str | None = "fd49:534f:4c38::/64",
                 capacity: int = 4096) -> None:
        self.v4 = ipaddress.IPv4Network(v4)
        self.v6 = None if v6 is None else ipaddress.IPv6Network(v6)
        # slots 1 .. n-2: neither the range's first nor its last (broadcast-like) address
        self._slots = self.v4.num_addresses - 2
        if self.v6 is not None and self.v6.num_addresses - 2 < self._slots:
            raise ValueError(f"the IPv6 range {v6} is smaller than the IPv4 range {v4}")
        if not 1 <= capacity < self._slots:
            raise ValueError(f"capacity must be between 1 and {self._slots - 1}, not {capacity}")
        for net in (self.v4, self.v6):
            if net is not None and (net.is_global or net.is_loopback):
                raise ValueError(f"a fake range must be private and not loopback: {net}")
        self.capacity = capacity
        self._by_name: OrderedDict[str, int] = OrderedDict()
        self._by_slot: dict[int, str] = {}
        self._cursor = 1

    def __len__(self) -> int:
        return len(self._by_name)

    def addresses(self, name: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address | None]:
        """The name's fake IPv4 and IPv6 (None without a v6 range) addresses, allocating them
        on first use; the loopback for localhost names, which take no slot."""
        if is_localhost(name):
            return _LOCALHOST_V4, _LOCALHOST_V6
        name = normalize_name(name)
        slot = self._by_name.get(name)
        if slot is None:
            slot = self._allocate(name)
        else:
            self._by_name.move_to_end(name)
        v6 = None if self.v6 is None else self.v6.network_address + slot
        return self.v4.network_address + slot, v6

    def name_for(self, address: str | IPAddress) -> str | None:
        """The name a fake address was handed out for, or None; IPv4-mapped IPv6 addresses
        (what a dual-stack listener's getsockname() returns) are unwrapped."""
        addr = ipaddress.ip_address(address)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        net = self.v4 if addr.version == 4 else self.v6
        if net is None or addr not in net:
            return None
        name = self._by_slot.get(int(addr) - int(net.network_address))
        if name is not None:
            self._by_name.move_to_end(name)  # a connection in use keeps its name alive
        return name

    def _allocate(self, name: str) -> int:
        if len(self._by_name) >= self.capacity:
            _, old = self._by_name.popitem(last=False)
            del self._by_slot[old]
        while True:  # capacity < slots: a free slot is always found
            slot = self._cursor
            self._cursor = slot + 1 if slot < self._slots else 1
            if slot not in self._by_slot:
                break
        self._by_name[name] = slot
        self._by_slot[slot] = name
        return slot


class FakeDNS:
    """The resolver's logic: bytes of a query in, bytes of the response (or None) out.

    ``allowed(hostname)`` is the policy: a refused name gets NXDOMAIN. Exceptions it raises
    propagate: a broken policy must be loud, not answered.
    """

    def __init__(self, pool: FakeIPPool, allowed: Callable[[str], bool], ttl: int = TTL) -> None:
        self.pool = pool
        self.allowed = allowed
        self.ttl = ttl

    def answer(self, message: bytes, *, tcp: bool = False) -> bytes | None:
        """The response to one message, or None when it must be dropped (no readable ID,
        or a response rather than a query)."""
        try:
            query = parse_query(message)
        except DNSFormatError as err:
            if err.query_id is None or (len(message) >= 3 and message[2] & 0x80):
                return None
            return format_error(err.query_id)
        rcode, addresses = self._decide(query)
        return build_response(query, rcode, addresses, ttl=self.ttl,
                              limit=response_limit(query, tcp))

    def _decide(self, query: Query) -> tuple[int, tuple[IPAddress, ...]]:
        if query.opcode != 0:
            return NOTIMP, ()
        if query.edns is not None and query.edns.version > 0:
            return BADVERS, ()
        if query.qtype == TYPE_OPT:
            return FORMERR, ()  # OPT is a pseudo-record, never a question (RFC 6891 §6.1.1)
        if query.qclass != CLASS_IN or query.qtype in (TYPE_AXFR, TYPE_IXFR):
            return REFUSED, ()
        name = query.hostname
        v6: ipaddress.IPv6Address | None
        if name is not None and is_localhost(name):
            v4, v6 = _LOCALHOST_V4, _LOCALHOST_V6
        elif name is None or not self.allowed(name):
            return NXDOMAIN, ()
        elif query.qtype in (TYPE_A, TYPE_AAAA):
            v4, v6 = self.pool.addresses(name)
        else:
            return NOERROR, ()
        address = v4 if query.qtype == TYPE_A else v6 if query.qtype == TYPE_AAAA else None
        return NOERROR, () if address is None else (address,)
