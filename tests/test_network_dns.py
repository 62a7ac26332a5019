"""The fake-IP resolver's wire format and pool: pure functions, no sockets, no traffic.

Queries are built here with struct and responses read back here, independently of the
module, so a bug shared by its encoder and its parser cannot hide.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from isol8.network import dns
from isol8.network.dns import DNSFormatError, FakeDNS, FakeIPPool, StreamDecoder

A, NS, CNAME, PTR, MX, TXT, AAAA, SRV, OPT, SVCB, HTTPS, IXFR, AXFR, ANY = (
    1, 2, 5, 12, 15, 16, 28, 33, 41, 64, 65, 251, 252, 255)
RD = 0x0100


def qname(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return b"".join(bytes((len(p),)) + p for p in raw.split(b".") if p) + b"\0"


def opt(payload: int = 1232, version: int = 0, do: bool = False, rdata: bytes = b"") -> bytes:
    return b"\0" + struct.pack("!HHIH", OPT, payload, (version << 16) | (0x8000 * do),
                               len(rdata)) + rdata


def query(name: str | bytes = "example.test", qtype: int = A, *, qid: int = 0x1234,
          flags: int = RD, qclass: int = 1, additional: tuple[bytes, ...] = (),
          counts: tuple[int, int, int, int] | None = None, raw_name: bytes | None = None) -> bytes:
    qd, an, ns, ar = counts or (1, 0, 0, len(additional))
    return (struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)
            + (raw_name if raw_name is not None else qname(name))
            + struct.pack("!HH", qtype, qclass) + b"".join(additional))


def read_name(msg: bytes, off: int) -> tuple[bytes, int]:
    labels, end = [], None
    for _ in range(128):
        n = msg[off]
        if n >= 0xC0:
            end = end or off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            continue
        if n == 0:
            return b".".join(labels), end or off + 1
        labels.append(msg[off + 1:off + 1 + n])
        off += 1 + n
    raise AssertionError("loop in a response name")


def parse_response(msg: bytes) -> dict:
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    off, questions, answers, extra = 12, [], [], []
    for _ in range(qd):
        name, off = read_name(msg, off)
        questions.append((name,) + struct.unpack_from("!HH", msg, off))
        off += 4
    for section, count in ((answers, an), (extra, ar)):
        for _ in range(count):
            name, off = read_name(msg, off)
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
            off += 10
            section.append((name, rtype, rclass, ttl, msg[off:off + rdlen]))
            off += rdlen
    assert ns == 0 and off == len(msg)
    return {"id": qid, "qr": bool(flags & 0x8000), "opcode": (flags >> 11) & 0xF,
            "aa": bool(flags & 0x400), "tc": bool(flags & 0x200), "rd": bool(flags & 0x100),
            "ra": bool(flags & 0x80), "rcode": flags & 0xF, "questions": questions,
            "answers": answers, "additional": extra}


def resolver(deny: tuple[str, ...] = ("blocked.test",), **pool) -> FakeDNS:
    return FakeDNS(FakeIPPool(**pool), lambda name: not any(d in name for d in deny))


def ask(res: FakeDNS, msg: bytes, tcp: bool = False) -> dict:
    out = res.answer(msg, tcp=tcp)
    assert out is not None
    assert out[:2] == msg[:2]
    return parse_response(out)


def test_a_and_aaaa_get_one_slot_that_maps_back_from_either_family():
    res = resolver()
    r4 = ask(res, query("Api.Example.TEST", A))
    assert (r4["qr"], r4["aa"], r4["ra"], r4["rd"], r4["tc"], r4["rcode"]) == (
        True, True, True, True, False, 0)
    assert r4["questions"] == [(b"Api.Example.TEST", A, 1)]  # DNS 0x20: the case is echoed
    [(name, rtype, rclass, ttl, rdata)] = r4["answers"]
    assert (name, rtype, rclass, ttl) == (b"Api.Example.TEST", A, 1, dns.TTL)
    v4 = ipaddress.IPv4Address(rdata)
    assert v4 in ipaddress.IPv4Network("198.18.0.0/15")
    [(_, rtype, _, _, rdata6)] = ask(res, query("api.example.test.", AAAA))["answers"]
    v6 = ipaddress.IPv6Address(rdata6)
    assert rtype == AAAA and v6 in ipaddress.IPv6Network("fd49:534f:4c38::/64")
    assert int(v4) - int(ipaddress.IPv4Address("198.18.0.0")) == int(v6) & 0xFFFFFFFF
    for address in (v4, v6, str(v4), f"::ffff:{v4}"):
        assert res.pool.name_for(address) == "api.example.test"
    assert len(res.pool) == 1
    assert res.pool.name_for("198.18.0.200") is None
    assert res.pool.name_for("203.0.113.7") is None
    assert res.pool.name_for("2001:db8::1") is None


@pytest.mark.parametrize("qtype", [MX, TXT, SRV, PTR, SVCB, HTTPS, CNAME, NS, ANY, 99])
def test_other_types_are_nodata_so_the_a_lookup_next_to_them_still_works(qtype):
    res = resolver()
    r = ask(res, query("example.test", qtype))
    assert (r["rcode"], r["answers"], r["questions"]) == (0, [], [(b"example.test", qtype, 1)])
    assert ask(res, query("example.test", A))["answers"]
    assert len(res.pool) == 1  # a NODATA answer takes no slot


@pytest.mark.parametrize("msg, rcode", [
    (query("blocked.test", A), dns.NXDOMAIN),
    (query("x.blocked.test", AAAA), dns.NXDOMAIN),
    (query("blocked.test", HTTPS), dns.NXDOMAIN),
    (query(b"has space.test", A), dns.NXDOMAIN),
    (query(b"nul\0.test", A), dns.NXDOMAIN),
    (query(b"*.test", A), dns.NXDOMAIN),
    (query(raw_name=b"\x08good.com\x04evil\0"), dns.NXDOMAIN),  # a dot inside a label
    (query(b"caf\xc3\xa9.test", A), dns.NXDOMAIN),
    (query("", A), dns.NXDOMAIN),  # the root is not a hostname
    (query("example.test", AXFR), dns.REFUSED),
    (query("example.test", IXFR), dns.REFUSED),
    (query("example.test", A, qclass=3), dns.REFUSED),  # CHAOS: version.bind and friends
    (query("example.test", OPT), dns.FORMERR),
    (query("example.test", A, flags=2 << 11), dns.NOTIMP),  # STATUS
    (query("example.test", A, flags=5 << 11), dns.NOTIMP),  # UPDATE
])
def test_rcodes(msg, rcode):
    res = resolver()
    r = ask(res, msg)
    assert (r["rcode"], r["answers"], r["opcode"]) == (rcode, [], (msg[2] >> 3) & 0xF)
    assert len(res.pool) == 0


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST.", "db.localhost", "a.b.localhost"])
def test_localhost_is_the_loopback_never_a_fake_even_under_a_deny_all_policy(name):
    res = FakeDNS(FakeIPPool(), lambda _: False)
    [(_, _, _, _, v4)] = ask(res, query(name, A))["answers"]
    [(_, _, _, _, v6)] = ask(res, query(name, AAAA))["answers"]
    assert (ipaddress.ip_address(v4), ipaddress.ip_address(v6)) == (
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert ask(res, query(name, MX))["rcode"] == 0
    assert len(res.pool) == 0 and res.pool.name_for("127.0.0.1") is None
    assert ask(res, query("notlocalhost", A))["rcode"] == dns.NXDOMAIN


def test_the_policy_sees_the_normalised_name():
    seen = []
    res = FakeDNS(FakeIPPool(), lambda name: seen.append(name) or True)
    ask(res, query("WWW.Example.Test", A))
    assert seen == ["www.example.test"]


def test_without_a_v6_range_aaaa_is_nodata():
    res = resolver(v6=None)
    assert ask(res, query("example.test", AAAA))["answers"] == []
    assert ask(res, query("example.test", A))["answers"]
    assert res.pool.addresses("example.test")[1] is None


# -- malformed input --------------------------------------------------------------------

Q = query()
BAD = {
    "header cut": Q[:11],
    "no question": query(counts=(0, 0, 0, 0))[:12],
    "two questions": query(counts=(2, 0, 0, 0)) + Q[12:],
    "an answer in a query": query(counts=(1, 1, 0, 0)),
    "an authority in a query": query(counts=(1, 0, 1, 0)),
    "pointer to itself": query(raw_name=b"\xc0\x0c"),
    "pointer loop through a label": query(raw_name=b"\x01a\xc0\x0c"),
    "pointer forwards": query(raw_name=b"\xc0\x0e\x01a\x00"),
    "pointer out of bounds": query(raw_name=b"\xc3\xff"),
    "pointer cut": Q[:12] + b"\xc0",
    "label cut": Q[:12] + b"\x20abc",
    "name without end": Q[:12] + b"\x03abc",
    "question cut": Q[:-1],
    "extended label type 01": query(raw_name=b"\x41" + b"a" * 65 + b"\0"),
    "extended label type 10": query(raw_name=b"\x81" + b"a" * 2 + b"\0"),
    "label of 64 bytes": query(raw_name=b"\x40" + b"a" * 64 + b"\0"),
    "name of 256 bytes": query(raw_name=(b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"a" * 62 + b"\0"),
    "name over 255 through a pointer": query(
        additional=((b"\x3f" + b"a" * 63) * 3 + b"\xc0\x0c" + struct.pack("!HHIH", TXT, 1, 0, 0),),
        name="b" * 63 + "." + "c" * 10),
    "trailing bytes": Q + b"\0",
    "additional record cut": query(additional=(opt()[:-1],)),
    "additional count too high": query(additional=(opt(),), counts=(1, 0, 0, 2)),
    "record data past the end": query(additional=(opt(rdata=b"abcd")[:-1],)),
    "two OPT records": query(additional=(opt(), opt())),
    "OPT not owned by the root": query(additional=(b"\xc0\x0c" + opt()[1:],)),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed_queries_get_formerr_with_their_id(case):
    msg = BAD[case]
    with pytest.raises(DNSFormatError) as err:
        dns.parse_query(msg)
    assert err.value.query_id == 0x1234
    r = ask(resolver(), msg)
    assert (r["qr"], r["rcode"], r["questions"], r["answers"]) == (True, dns.FORMERR, [], [])


@pytest.mark.parametrize("target, labels", [(4, ()), (5, (b"\0",))])
def test_a_pointer_into_the_header_reads_header_bytes_as_a_name(target, labels):
    # Offset 4 is QDCOUNT (00 01): at 4 the root; at 5 a 1-byte label "\0", then the root.
    msg = query(raw_name=bytes((0xC0, target)))
    assert dns.parse_query(msg).labels == labels
    assert ask(resolver(), msg)["rcode"] == dns.NXDOMAIN  # neither is a hostname


def test_messages_without_an_id_or_that_are_responses_are_dropped():
    res = resolver()
    assert res.answer(b"") is None
    assert res.answer(b"\x12") is None
    assert ask(res, b"\x12\x34")["rcode"] == dns.FORMERR  # the ID is readable
    assert res.answer(query(flags=0x8000 | RD)) is None
    assert res.answer(query(flags=0x8000, counts=(2, 0, 0, 0))) is None
    with pytest.raises(DNSFormatError):
        dns.parse_query(query(flags=0x8000))


def test_compression_pointers_backwards_are_followed():
    # An additional record owned by the question's name through a pointer, then skipped.
    rr = b"\xc0\x0c" + struct.pack("!HHIH", TXT, 1, 0, 2) + b"\x01x"
    # A name that is a label then a pointer to an earlier name.
    msg = query(additional=(rr, b"\x03sub\xc0\x0c" + struct.pack("!HHIH", TXT, 1, 0, 0), opt()))
    q = dns.parse_query(msg)
    assert (q.labels, q.edns) == ((b"example", b"test"), dns.Edns(1232, 0, False))
    assert ask(resolver(), msg)["answers"]


def test_longest_name_fits_512_bytes_without_edns():
    labels = [b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61]  # 255 bytes on the wire
    msg = query(raw_name=b"".join(bytes((len(x),)) + x for x in labels) + b"\0")
    for qtype in (A, AAAA):
        out = resolver().answer(msg[:-4] + struct.pack("!HH", qtype, 1))
        r = parse_response(out)
        assert (r["rcode"], r["tc"], len(r["answers"])) == (0, False, 1)
        assert len(out) <= dns.UDP_LIMIT
    out = resolver().answer(query(raw_name=msg[12:-4], qtype=AAAA, additional=(opt(),)))
    assert len(out) == 310  # the worst case the module's docstring states


def test_truncation_sets_tc_and_drops_the_answers():
    q = dns.parse_query(query(additional=(opt(),)))
    addr = ipaddress.IPv4Address("198.18.0.9")
    full = dns.build_response(q, 0, (addr,), limit=512)
    r = parse_response(dns.build_response(q, 0, (addr,), limit=len(full) - 1))
    assert (r["tc"], r["answers"], len(r["additional"])) == (True, [], 1)
    assert parse_response(full)["tc"] is False


# -- EDNS -------------------------------------------------------------------------------

def test_edns_is_echoed_minimally():
    cookie = struct.pack("!HH", 10, 8) + b"\x01" * 8
    msg = query(additional=(opt(4096, do=True, rdata=cookie),))
    r = ask(resolver(), msg)
    [(name, rtype, payload, ttl, rdata)] = r["additional"]
    assert (name, rtype, payload, ttl, rdata) == (b"", OPT, dns.EDNS_LIMIT, 0x8000, b"")
    assert r["answers"]
    [(_, _, _, ttl, _)] = ask(resolver(), query(additional=(opt(),)))["additional"]
    assert ttl == 0  # DO clear when the query's was
    assert ask(resolver(), query())["additional"] == []


@pytest.mark.parametrize("edns, tcp, limit", [
    (None, False, 512), (opt(4096), False, 1232), (opt(1400), False, 1232),
    (opt(800), False, 800), (opt(100), False, 512), (None, True, 65535), (opt(4096), True, 65535),
])
def test_response_limit(edns, tcp, limit):
    q = dns.parse_query(query(additional=() if edns is None else (edns,)))
    assert dns.response_limit(q, tcp) == limit


def test_unknown_edns_version_gets_badvers():
    r = ask(resolver(), query(additional=(opt(version=1),)))
    [(_, rtype, _, ttl, _)] = r["additional"]
    assert (r["rcode"], ttl >> 24, (ttl >> 16) & 0xFF, r["answers"]) == (0, 1, 0, [])


# -- DNS over TCP -----------------------------------------------------------------------

def test_tcp_frames_split_across_reads():
    msgs = [query(qid=i, name=f"n{i}.test") for i in range(5)]
    stream = b"".join(dns.frame(m) for m in msgs)
    for cut in (1, 2, 3, 7, len(stream)):
        dec, got = StreamDecoder(), []
        for i in range(0, len(stream), cut):
            got += dec.feed(stream[i:i + cut])
        assert got == msgs and dec.pending == 0
    dec = StreamDecoder()
    assert dec.feed(stream[:-1]) == msgs[:4] and dec.pending == len(dns.frame(msgs[4])) - 1
    assert StreamDecoder().feed(b"\x00\x00") == [b""]  # then answer() drops it: no ID
    res = resolver()
    out = res.answer(StreamDecoder().feed(dns.frame(msgs[0]))[0], tcp=True)
    assert parse_response(out)["answers"]


def test_frame_limits():
    assert dns.frame(b"x" * 65535)[:2] == b"\xff\xff"
    with pytest.raises(ValueError):
        dns.frame(b"x" * 65536)


# -- the pool ---------------------------------------------------------------------------

def test_allocation_is_deterministic_and_names_are_normalised():
    names = [f"host{i}.example" for i in range(50)]
    a, b = FakeIPPool(), FakeIPPool()
    assert [a.addresses(n) for n in names] == [b.addresses(n) for n in names]
    assert a.addresses("HOST3.example.") == a.addresses("host3.example")
    assert str(a.addresses("host0.example")[0]) == "198.18.0.1"
    assert str(a.addresses("host0.example")[1]) == "fd49:534f:4c38::1"
    assert len(a) == 50


def test_lru_eviction_and_no_reuse_until_the_pool_wraps():
    pool = FakeIPPool(v4="10.0.0.0/29", v6="fd00::/125", capacity=3)  # slots 1..6
    a, b, c = (pool.addresses(n)[0] for n in "abc")
    pool.addresses("a")  # a DNS answer refreshes a
    pool.name_for(b)  # so does a connection: c is now the oldest
    d = pool.addresses("d")[0]
    assert len(pool) == 3 and pool.name_for(c) is None
    assert str(d) == "10.0.0.4"  # not c's freed 10.0.0.3
    assert [pool.name_for(x) for x in (a, b, d)] == ["a", "b", "d"]


def test_after_the_wrap_live_slots_are_skipped():
    pool = FakeIPPool(v4="10.0.0.0/29", v6="fd00::/125", capacity=2)  # slots 1..6
    got = [pool.addresses("keep")[0]]
    for name in "bcdefg":
        got.append(pool.addresses(name)[0])
        pool.addresses("keep")  # keep stays the most recent, the others are evicted in turn
    assert [str(x) for x in got] == [f"10.0.0.{i}" for i in (1, 2, 3, 4, 5, 6, 2)]
    assert pool.name_for("10.0.0.1") == "keep" and pool.name_for("fd00::1") == "keep"
    assert pool.name_for("10.0.0.2") == "g" and pool.name_for("10.0.0.6") is None


def test_a_flood_of_names_stays_bounded():
    pool = FakeIPPool(capacity=1000)
    rng = random.Random(7)
    addrs = {}
    for i in range(20000):
        name = f"{rng.getrandbits(64):x}.flood.test"
        addrs[name] = pool.addresses(name)[0]
    assert len(pool) == 1000
    recent = list(addrs)[-1000:]
    assert all(pool.name_for(addrs[n]) == n for n in recent)
    assert pool.name_for(addrs[next(iter(addrs))]) is None
    assert len(set(addrs.values())) == 20000  # no address handed out twice before the wrap


@pytest.mark.parametrize("kwargs", [
    {"capacity": 0}, {"v4": "10.0.0.0/29", "v6": None, "capacity": 6},
    {"v4": "10.0.0.0/24", "v6": "fd00::/125", "capacity": 5},
    {"v4": "8.8.8.0/24"}, {"v4": "127.0.0.0/8"}, {"v6": "2606:4700::/64"}, {"v4": "nonsense"},
])
def test_bad_pool_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        FakeIPPool(**kwargs)


# -- fuzz -------------------------------------------------------------------------------

def mutate(rng: random.Random, msg: bytes) -> bytes:
    b = bytearray(msg)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] = rng.randrange(256)
        elif op == 1:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 3 and len(b) > 13:  # a compression pointer anywhere after the header
            p = rng.randrange(12, len(b) - 1)
            b[p:p + 2] = bytes((0xC0 | rng.randrange(0x40), rng.randrange(256)))
        elif op == 4 and len(b) >= 12:  # counts are where parsers trust too much
            struct.pack_into("!H", b, rng.choice((4, 6, 8, 10)), rng.randrange(0x10000))
        elif op == 5:
            b = b[:pos]
    return bytes(b)


def test_fuzzed_queries_never_raise_and_answers_carry_the_id():
    rng = random.Random(20261203)
    seeds = [query(), query("a.b.c.example", AAAA, additional=(opt(4096, do=True),)),
             query("x.localhost", HTTPS), query("blocked.test", A),
             query(additional=(b"\xc0\x0c" + struct.pack("!HHIH", TXT, 1, 0, 1) + b"z", opt()))]
    res = resolver(capacity=64)
    answered = 0
    for i in range(30000):
        msg = mutate(rng, rng.choice(seeds)) if i % 10 else rng.randbytes(rng.randrange(40))
        try:
            udp_limit = dns.response_limit(dns.parse_query(msg), tcp=False)
        except DNSFormatError as err:
            assert err.query_id == (int.from_bytes(msg[:2], "big") if len(msg) >= 2 else None)
            udp_limit = dns.UDP_LIMIT
        for tcp in (False, True):
            out = res.answer(msg, tcp=tcp)
            if out is None:
                assert len(msg) < 2 or msg[2] & 0x80
                continue
            answered += 1
            assert out[:2] == msg[:2]
            r = parse_response(out)
            assert r["qr"] and len(out) <= (65535 if tcp else udp_limit)
            assert len(r["answers"]) <= 1
    assert answered > 40000 and len(res.pool) <= 64
