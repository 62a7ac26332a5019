"""The nftables part of network="filtered" (issue 10): the helper replays
``isol8.network.nft.batch`` in the sandbox's own netns before the capability drop, so UDP
elsewhere than DNS is rejected at once, and with ``capture="all"`` TCP to any other port
lands on the supervisor's capture port, which reads the dialled address with
SO_ORIGINAL_DST. No ``nft`` binary is needed or used: the test process plays the
supervisor on the sockets it received, as in test_network_capture.py.

No packet can leave: the sandbox's netns has lo only, and 203.0.113.7 (TEST-NET-3) and
2001:db8::7 (documentation) are, with the capture's local routes, its own addresses.
"""

from __future__ import annotations

import errno
import hashlib
import select
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from isol8 import Isol8, SandboxSetupError, protocol
from isol8.network import nft
from isol8.protocol import Listen, ProtocolError
from isol8.sandbox import Sandbox, error_from_event

from conftest import ATTEMPT_PY, run_py

TEST_NET, TEST_NET6 = "203.0.113.7", "2001:db8::7"
SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>; IP6T_SO_ORIGINAL_DST is 80 too
LISTENS = (Listen("tcp", 80), Listen("tcp", 443), Listen("tcp", 0, loopback=True),
           Listen("udp", 53), Listen("tcp", 53))
# The capture port on the dual-stack wildcard: redirect sends IPv4 to 127.0.0.1, IPv6 to ::1.
LISTENS_ALL = LISTENS + (Listen("tcp", nft.CAPTURE_PORT),)


def capture_record(listens: tuple[Listen, ...]) -> bytes:
    return protocol.record(protocol.Tag.CAPTURE, b"".join(lst.encode() for lst in listens))


def records(capture: str) -> bytes:
    """The capture and NFT records the lead's engine will send for ``capture``."""
    listens = LISTENS_ALL if capture == "all" else LISTENS
    return capture_record(listens) + protocol.record(protocol.Tag.NFT, nft.batch(capture))


def capturing(eng: Isol8, record: bytes) -> Isol8:
    """Every sandbox of ``eng`` gets ``record`` after the engine's own config (no public
    option asks for it yet), as test_network_capture.py does."""
    claim = eng._claim

    def with_records(*args, **kwargs):
        host, cgroup, config = claim(*args, **kwargs)
        return host, cgroup, config + record

    eng._claim = with_records  # type: ignore[method-assign]
    return eng


def boot(eng: Isol8, record: bytes) -> tuple[float, dict[str, dict[str, object]]]:
    """Start one sandbox with ``record`` added to its config, up to its "ready" event:
    the seconds that took and the events by name. Everything is torn down after."""
    host, cgroup, config = eng._claim(10_000)
    try:
        start = time.perf_counter()
        sandbox = Sandbox(config + record, cgroup.fds if cgroup else [])
        try:
            events: dict[str, dict[str, object]] = {}
            while "ready" not in events:
                assert select.select([sandbox], [], [], 30)[0], "no event within 30 s"
                event = sandbox.receive()
                assert event is not None, "the helper exited before ready"
                if event["event"] == "error":
                    raise error_from_event(event)
                events[str(event["event"])] = event
            return time.perf_counter() - start, events
        finally:
            sandbox.destroy()
    finally:
        eng._release(host, cgroup)


@pytest.fixture(scope="module")
def nftables() -> None:
    """Skips where the kernel has no nftables (the listeners event says "nft": false)."""
    eng = Isol8(pool_size=0)
    eng.start()
    try:
        _, events = boot(eng, records("all"))
    finally:
        eng.stop()
    if events["listeners"]["nft"] is False:
        pytest.skip("this kernel has no nftables (NETLINK_NETFILTER or nf_tables missing)")


@pytest.fixture(scope="module")
def engines(nftables: None) -> Iterator[dict[str, Isol8]]:
    with capturing(Isol8(mode="persistent"), records("web")) as web, \
            capturing(Isol8(mode="persistent"), records("all")) as full:
        for eng in (web, full):
            result = eng.execute("pass", runtime="python")
            assert result.exit_code == 0, result.stderr
        yield {"web": web, "all": full}


def listener(eng: Isol8, proto: str, port: int) -> socket.socket:
    assert eng._session is not None
    return next(sock for kind, sock in eng._session.sandbox.listeners
                if kind.proto == proto and kind.port == port)


def ipv6(eng: Isol8) -> bool:
    assert eng._session is not None
    return eng._session.sandbox.listeners[0][0].host == "[::]"


def test_the_batch_is_what_nft_sends_for_the_documented_ruleset():
    """The messages equal, byte for byte, what ``nft -f`` 1.0.6 sent (recorded with
    ``strace -e write=3`` in an ``unshare -rn`` namespace) for the ruleset in the module's
    docstring, once sequence numbers and flags are zeroed: the sha256 below is of that
    recording, normalized the same way."""
    recorded = {
        "web": "d745584c3edd7a381376bd6fb50de169065ff61c7afee756d12d1510b01c946e",
        "all": "b8f97e1528f8492c4473da03ea8c3b1b2a59b84fb64831ea8ee69ec31213e65c",
    }
    for capture, digest in recorded.items():
        blob, normalized, acked, offset = nft.batch(capture), bytearray(), [], 0
        while offset < len(blob):
            size, kind, flags, seq, pid = struct.unpack_from("=IHHII", blob, offset)
            normalized += struct.pack("=IHHII", size, kind, 0, 0, pid)
            normalized += blob[offset + 16:offset + size]
            acked.append(bool(flags & 4))  # NLM_F_ACK
            offset += size
        assert hashlib.sha256(normalized).hexdigest() == digest, capture
        assert acked == [False] * (len(acked) - 2) + [True, False]
    assert nft.batch("all") is nft.batch("all")  # built once
    with pytest.raises(ValueError):
        nft.batch("tcp")  # type: ignore[arg-type]


def test_the_listeners_event_says_whether_the_rules_are_in_place(nftables):
    eng = Isol8(pool_size=0)
    eng.start()
    try:
        _, events = boot(eng, records("web"))
        assert events["listeners"]["nft"] is True
        _, events = boot(eng, records("all"))
        assert events["listeners"]["nft"] is True
        _, events = boot(eng, capture_record(LISTENS))
        assert "nft" not in events["listeners"]
    finally:
        eng.stop()
    event = protocol.parse_event(
        b'{"event":"listeners","kinds":"tcp:[::]:80","ipv6":true,"nft":false}')
    assert event["nft"] is False
    with pytest.raises(ProtocolError):
        protocol.parse_event(b'{"event":"listeners","kinds":"tcp:[::]:80","ipv6":true,"nft":1}')


def test_without_nftables_the_sandbox_still_runs_and_udp_reaches_nobody():
    """Where the kernel has no nftables (the VM stage's Debian kernel without its modules:
    no NETLINK_NETFILTER), the helper says so and goes on; here, the rules hold."""
    with capturing(Isol8(pool_size=0), records("web")) as eng:
        _, events = boot(eng, b"")  # the engine adds the records
        result = run_py(eng, ATTEMPT_PY + f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(attempt(lambda: s.sendto(b"x", ({TEST_NET!r}, 9999))))
""")
    assert result.exit_code == 0, result.stderr
    wanted = "EPERM" if events["listeners"]["nft"] else "ok"
    assert result.stdout.strip() == wanted


@pytest.mark.parametrize("capture", ["web", "all"])
def test_udp_elsewhere_than_dns_is_rejected_at_once(engines, capture):
    eng = engines[capture]
    result = run_py(eng, ATTEMPT_PY + f"""
import socket
def send(family, address, connect=False):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if connect:
        s.connect(address)
        s.send(b"x")
    else:
        s.sendto(b"x", address)
def own_server(family, host):
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    socket.socket(family, socket.SOCK_DGRAM).sendto(b"own", server.getsockname()[:2])
    server.settimeout(10)
    assert server.recv(10) == b"own"
A4, A6 = socket.AF_INET, socket.AF_INET6
print("v4", attempt(lambda: send(A4, ({TEST_NET!r}, 9999))),
      attempt(lambda: send(A4, ({TEST_NET!r}, 123), connect=True)),
      attempt(lambda: send(A4, ("198.18.0.10", 443))))
print("lo", attempt(lambda: own_server(A4, "127.0.0.1")),
      attempt(lambda: send(A4, ("127.0.0.1", 9))))
if {ipv6(eng)}:
    print("v6", attempt(lambda: send(A6, ({TEST_NET6!r}, 9999))),
          attempt(lambda: send(A6, ("::ffff:{TEST_NET}", 9999))),
          attempt(lambda: own_server(A6, "::1")))
""")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().split("\n")
    assert lines[:2] == ["v4 EPERM EPERM EPERM", "lo ok ok"]
    if ipv6(eng):
        assert lines[2] == "v6 EPERM EPERM ok"


@pytest.mark.parametrize("capture", ["web", "all"])
def test_dns_still_reaches_the_listener_and_its_answer_comes_back(engines, capture):
    eng = engines[capture]
    udp = listener(eng, "udp", 53)
    got: dict[str, object] = {}

    def answer() -> None:
        if select.select([udp], [], [], 30)[0]:
            got["query"], peer = udp.recvfrom(100)
            udp.sendto(b"answer", peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    result = run_py(eng, f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"query", ({TEST_NET!r}, 53))
print(s.recv(100).decode())
""")
    thread.join(10)
    assert (result.exit_code, result.stdout.strip()) == (0, "answer"), result.stderr
    assert got == {"query": b"query"}


def original_destination(conn: socket.socket) -> tuple[str, int]:
    """What the sandbox dialled before the redirect: conntrack's original tuple, looked up
    in the socket's own netns (nf_conntrack_proto.c getorigdst), read from ours."""
    peer = conn.getpeername()[0]
    if conn.family == socket.AF_INET6 and not peer.startswith("::ffff:"):
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)  # sockaddr_in6
        port, = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # sockaddr_in, v4-mapped too
    port, address = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntop(socket.AF_INET, address), port


def serve_once(lst: socket.socket, got: dict[str, object]) -> threading.Thread:
    def serve() -> None:
        if not select.select([lst], [], [], 30)[0]:
            return
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(10)
            got["original"] = original_destination(conn)
            got["data"] = conn.recv(100)
            conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("host", [TEST_NET, TEST_NET6, "198.18.0.10"])
def test_capture_all_brings_every_other_tcp_port_to_the_capture_port(engines, host):
    eng = engines["all"]
    if ":" in host and not ipv6(eng):
        pytest.skip("this kernel has no IPv6: the helper made IPv4 listeners only")
    got: dict[str, object] = {}
    thread = serve_once(listener(eng, "tcp", nft.CAPTURE_PORT), got)
    result = run_py(eng, f"""
import socket
s = socket.create_connection(({host!r}, 5432), timeout=10)
s.sendall(b"ping")
print(s.recv(100).decode())
""")
    thread.join(10)
    assert (result.exit_code, result.stdout.strip()) == (0, "pong"), result.stderr
    assert got == {"original": (host, 5432), "data": b"ping"}


def test_capture_all_leaves_the_served_ports_and_loopback_alone(engines):
    """80 (and 443, 53) still reach their own listeners, with the dialled address as
    getsockname(); loopback is the sandbox's own: its servers there are not captured."""
    eng = engines["all"]
    got: dict[str, object] = {}
    lst = listener(eng, "tcp", 80)

    def serve() -> None:
        if select.select([lst], [], [], 30)[0]:
            conn, _ = lst.accept()
            with conn:
                got["dialled"] = conn.getsockname()[:2]
                conn.sendall(b"eighty")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    result = run_py(eng, ATTEMPT_PY + f"""
import socket, threading
s = socket.create_connection(({TEST_NET!r}, 80), timeout=10)
print(s.recv(100).decode())
def own(family, host):
    server = socket.socket(family)
    server.bind((host, 5432))
    server.listen()
    client = socket.create_connection((host, 5432), timeout=10)
    conn, _ = server.accept()
    conn.sendall(b"own")
    print(host, client.recv(10).decode())
own(socket.AF_INET, "127.0.0.1")
if {ipv6(eng)}:
    own(socket.AF_INET6, "::1")
""")
    thread.join(10)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().split("\n")
    assert lines[:2] == ["eighty", "127.0.0.1 own"]
    if ipv6(eng):
        assert lines[2] == "::1 own"
    mapped = f"::ffff:{TEST_NET}" if ipv6(eng) else TEST_NET
    assert got == {"dialled": (mapped, 80)}


def test_without_capture_all_other_tcp_ports_are_still_refused(engines):
    result = run_py(engines["web"], ATTEMPT_PY + f"""
import socket
print(attempt(lambda: socket.create_connection(({TEST_NET!r}, 5432), timeout=10)))
""")
    assert (result.exit_code, result.stdout.strip()) == (0, "ECONNREFUSED"), result.stderr


@pytest.mark.parametrize("capture", ["web", "all"])
@pytest.mark.parametrize("seccomp, refusal", [
    ("default", "EAFNOSUPPORT"), ("unconfined", "EPERM")])
def test_the_sandbox_cannot_flush_or_change_the_ruleset(engines, capture, seccomp, refusal):
    """Two locks: the seccomp filter refuses any netlink socket but NETLINK_ROUTE; without
    it, nfnetlink wants CAP_NET_ADMIN over the netns (nfnetlink_rcv: netlink_net_capable),
    which the sandbox never has. The rules work the same afterwards."""
    flush = nft._message(0x10, 0, 1, 0, b"", 10)  # BATCH_BEGIN, then DELTABLE inet isol8
    flush += nft._message(10 << 8 | 2, 4, 2, 1, nft._string(1, nft.TABLE))
    flush += nft._message(0x11, 0, 3, 0, b"", 10)
    code = ATTEMPT_PY + f"""
import socket, struct
def batch(blob):
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    nl.send(blob)
    answer = nl.recv(4096)
    code = struct.unpack_from("i", answer, 16)[0]
    if code:
        raise OSError(-code, "nfnetlink")
print(attempt(lambda: batch(bytes.fromhex({flush.hex()!r}))),
      attempt(lambda: batch(bytes.fromhex({nft.batch("web").hex()!r}))))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(attempt(lambda: s.sendto(b"x", ({TEST_NET!r}, 9999))))
"""
    if seccomp == "default":
        result = run_py(engines[capture], code)
    else:
        with capturing(Isol8(seccomp="unconfined", pool_size=0), records(capture)) as eng:
            result = run_py(eng, code)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [f"{refusal} {refusal}", "EPERM"], result.stdout


def refused_batch(chain_type: str) -> bytes:
    """A batch the kernel refuses: a chain of an unknown type (ENOENT on NEWCHAIN), or with
    "filter", a rule in a chain that does not exist (ENOENT on NEWRULE)."""
    table = nft._table()
    chain = nft._chain("output", chain_type, 0)
    rule = nft._rule("missing", nft._verdict(1))
    messages = [nft._message(0x10, 0, 0, 0, b"", 10)]
    for seq, (kind, flags, attrs) in enumerate((table, chain, rule), 1):
        messages.append(nft._message(kind, flags | (4 if seq == 3 else 0), seq, 1, attrs))
    messages.append(nft._message(0x11, 0, 4, 0, b"", 10))
    return b"".join(messages)


@pytest.mark.parametrize("chain_type, syscall", [
    ("filter", "NFT_MSG_NEWRULE"), ("nonesuch", "NFT_MSG_NEWCHAIN")])
def test_a_batch_the_kernel_refuses_is_a_setup_error_naming_the_message(nftables, chain_type,
                                                                        syscall):
    record = capture_record(LISTENS) + protocol.record(protocol.Tag.NFT,
                                                       refused_batch(chain_type))
    with capturing(Isol8(pool_size=0), record) as eng:
        with pytest.raises(SandboxSetupError) as info:
            eng.execute("pass", runtime="python")
    assert (info.value.step, info.value.syscall, info.value.errno) == (
        "network", syscall, errno.ENOENT)


def malformed_batches() -> list[bytes]:
    good = nft.batch("web")
    offsets, offset = [], 0  # of each message
    while offset < len(good):
        offsets.append(offset)
        offset += struct.unpack_from("=I", good, offset)[0]
    begin, end = good[:offsets[1]], good[offsets[-1]:]
    no_ack, early_ack = bytearray(good), bytearray(good)
    no_ack[offsets[-2] + 6] &= ~4  # NLM_F_ACK, in the flags' low byte
    early_ack[offsets[1] + 6] |= 4
    return [
        b"",
        good[:-4],  # cut inside BATCH_END
        good[:offsets[-1]],  # no BATCH_END
        good[offsets[1]:],  # no BATCH_BEGIN
        begin + end,  # nothing in between
        bytes(no_ack),  # no ack to wait for
        bytes(early_ack),  # two acks
        good + end,  # something after BATCH_END
        good[:offsets[2]] + begin + good[offsets[2]:],  # BATCH_BEGIN twice
        good + b"\0" * (protocol.MAX_NFT - len(good) + 4),  # over the size limit
    ]


@pytest.mark.parametrize("payload", malformed_batches(), ids=[
    "empty", "cut", "no-end", "no-begin", "no-message", "no-ack", "two-acks", "after-end",
    "begin-twice", "too-large"])
def test_malformed_nft_records_are_refused_by_the_helper(payload):
    record = capture_record(LISTENS) + protocol.record(protocol.Tag.NFT, payload)
    with capturing(Isol8(pool_size=0), record) as eng:
        with pytest.raises(SandboxSetupError) as info:
            eng.execute("pass", runtime="python")
    assert (info.value.step, info.value.errno) == ("config", errno.EINVAL)


@pytest.mark.parametrize("record", [
    protocol.record(protocol.Tag.NFT, nft.batch("web")),  # no capture record
    records("web") + protocol.record(protocol.Tag.NFT, nft.batch("web")),  # two batches
], ids=["without-capture", "twice"])
def test_an_nft_record_needs_capture_and_comes_once(record):
    with capturing(Isol8(pool_size=0), record) as eng:
        with pytest.raises(SandboxSetupError) as info:
            eng.execute("pass", runtime="python")
    assert (info.value.step, info.value.errno) == ("config", errno.EINVAL)


def test_the_config_encodes_the_batch_only_with_capture():
    base = dict(hostname="h", new_netns=True, seccomp_filters=(), mounts=())
    body = protocol.encode_config_body(protocol.HelperConfig(
        **base, capture=LISTENS, nft=nft.batch("all")))  # type: ignore[arg-type]
    assert body.endswith(protocol.record(protocol.Tag.NFT, nft.batch("all")))
    plain = protocol.encode_config_body(protocol.HelperConfig(
        **base, capture=LISTENS))  # type: ignore[arg-type]
    assert body.startswith(plain) and len(body) == len(plain) + 8 + len(nft.batch("all"))
    for bad in (dict(nft=nft.batch("web")),
                dict(capture=LISTENS, nft=b"\0" * (protocol.MAX_NFT + 1))):
        with pytest.raises(ProtocolError):
            protocol.encode_config_body(protocol.HelperConfig(**base, **bad))  # type: ignore


def test_the_batch_adds_little_to_the_setup(nftables):
    """Gross regressions only (the machine is shared); the report's numbers come from 200
    sandboxes each way: see the commit message."""
    eng = Isol8(pool_size=0)
    eng.start()
    try:
        without, with_batch = [], []
        for _ in range(25):
            without.append(boot(eng, capture_record(LISTENS))[0])
            with_batch.append(boot(eng, records("web"))[0])
    finally:
        eng.stop()
    added = statistics.median(with_batch) - statistics.median(without)
    assert added < 0.005, f"the batch added {added * 1e3:.2f} ms"
