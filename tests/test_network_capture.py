"""The helper side of network="filtered" (issue 10): a capture record in the config makes
every address local to the sandbox's own lo (``local`` default routes) and gives the
supervisor listeners made inside that namespace. The proxy that serves them is not here:
the test plays the supervisor's part on the sockets it received.

No packet can leave: the sandbox's netns has lo only, and 203.0.113.7 (TEST-NET-3) and
2001:db8::7 (documentation) are, with those routes, addresses of that namespace itself.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from isol8 import Isol8, SandboxSetupError, protocol
from isol8.protocol import Listen, Listener, ProtocolError

from conftest import ATTEMPT_PY, run_py

SIOCGSKNS = 0x894C  # the netns of a socket, as a new fd (linux/sockios.h)
LISTENS = (Listen("tcp", 80), Listen("tcp", 443), Listen("tcp", 0, loopback=True),
           Listen("udp", 53), Listen("tcp", 53))
CAPTURE = protocol.record(protocol.Tag.CAPTURE, b"".join(lst.encode() for lst in LISTENS))
TEST_NET = "203.0.113.7"


def capturing(eng: Isol8, record: bytes = CAPTURE) -> Isol8:
    """Every sandbox of ``eng`` gets the capture record, after the engine's own config (no
    public option asks for it yet)."""
    claim = eng._claim

    def with_capture(*args, **kwargs):
        host, cgroup, config = claim(*args, **kwargs)
        return host, cgroup, config + record

    eng._claim = with_capture  # type: ignore[method-assign]
    return eng


@pytest.fixture(scope="module")
def captured() -> Iterator[Isol8]:
    with capturing(Isol8(mode="persistent")) as eng:
        result = eng.execute("pass", runtime="python")
        assert result.exit_code == 0, result.stderr
        yield eng


def listeners(eng: Isol8) -> list[tuple[Listener, socket.socket]]:
    assert eng._session is not None
    return eng._session.sandbox.listeners


def listener(eng: Isol8, proto: str, port: int) -> socket.socket:
    return next(sock for kind, sock in listeners(eng)
                if kind.proto == proto and kind.port == port)


def ipv6(eng: Isol8) -> bool:
    return listeners(eng)[0][0].host == "[::]"


def netns_of(fd: int) -> str:
    nsfd = fcntl.ioctl(fd, SIOCGSKNS)
    try:
        return os.readlink(f"/proc/self/fd/{nsfd}")
    finally:
        os.close(nsfd)


def test_the_supervisor_holds_listeners_in_the_sandbox_netns(captured):
    held = listeners(captured)
    wild = "[::]" if ipv6(captured) else "0.0.0.0"
    proxy_port = held[2][0].port
    assert [kind for kind, _ in held] == [
        Listener("tcp", wild, 80), Listener("tcp", wild, 443),
        Listener("tcp", "127.0.0.1", proxy_port), Listener("udp", wild, 53),
        Listener("tcp", wild, 53)]
    assert 1024 <= proxy_port <= 65535
    ours = os.readlink("/proc/self/ns/net")
    for kind, sock in held:
        assert netns_of(sock.fileno()) != ours
        assert sock.getsockname()[1] == kind.port
        assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.get_blocking(sock.fileno()) is False
        if kind.proto == "tcp":
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        if sock.family == socket.AF_INET6:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert len({netns_of(sock.fileno()) for _, sock in held}) == 1


def serve_once(lst: socket.socket, got: dict[str, object]) -> threading.Thread:
    """Accept one connection on ``lst``, record what it dialled and sent, answer "pong"."""

    def serve() -> None:
        if not select.select([lst], [], [], 30)[0]:
            return
        conn, peer = lst.accept()
        with conn:
            conn.settimeout(10)
            got["dialled"] = conn.getsockname()[:2]
            got["data"] = conn.recv(100)
            conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("port", [80, 443])
def test_any_address_reaches_the_listener_and_getsockname_is_the_dialled_one(captured, port):
    got: dict[str, object] = {}
    thread = serve_once(listener(captured, "tcp", port), got)
    result = run_py(captured, f"""
import socket
s = socket.create_connection(({TEST_NET!r}, {port}), timeout=10)
s.sendall(b"ping")
print(s.recv(100).decode())
""")
    thread.join(10)
    assert (result.exit_code, result.stdout.strip()) == (0, "pong"), result.stderr
    mapped = f"::ffff:{TEST_NET}" if ipv6(captured) else TEST_NET
    assert got == {"dialled": (mapped, port), "data": b"ping"}


def test_ipv6_addresses_are_captured_too(captured):
    if not ipv6(captured):
        pytest.skip("this kernel has no IPv6: the helper made IPv4 listeners only")
    got: dict[str, object] = {}
    thread = serve_once(listener(captured, "tcp", 80), got)
    result = run_py(captured, """
import socket
s = socket.create_connection(("2001:db8::7", 80), timeout=10)
s.sendall(b"ping6")
print(s.recv(100).decode())
""")
    thread.join(10)
    assert (result.exit_code, result.stdout.strip()) == (0, "pong"), result.stderr
    assert got == {"dialled": ("2001:db8::7", 80), "data": b"ping6"}


def test_other_ports_are_refused_at_once(captured):
    result = run_py(captured, ATTEMPT_PY + f"""
import socket, time
for host in ({TEST_NET!r}, "2001:db8::7"):
    start = time.monotonic()
    outcome = attempt(lambda: socket.create_connection((host, 81), timeout=10))
    print(host, outcome, time.monotonic() - start < 2)
""")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == f"{TEST_NET} ECONNREFUSED True"
    if ipv6(captured):
        assert lines[1] == "2001:db8::7 ECONNREFUSED True"


def test_a_dns_datagram_reaches_the_udp_listener(captured):
    udp = listener(captured, "udp", 53)
    result = run_py(captured, f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(s.sendto(b"query", ({TEST_NET!r}, 53)))
""")
    assert (result.exit_code, result.stdout.strip()) == (0, "5"), result.stderr
    assert select.select([udp], [], [], 10)[0]
    data, peer = udp.recvfrom(100)
    assert data == b"query"


def test_the_sandbox_cannot_take_the_held_ports(captured):
    proxy_port = listeners(captured)[2][0].port
    result = run_py(captured, ATTEMPT_PY + f"""
import socket
def bind(family, kind, host, port, reuse):
    s = socket.socket(family, kind)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen()
    finally:
        s.close()
A4, A6, T, U = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
tries = [(A4, T, "0.0.0.0", 80), (A4, T, {TEST_NET!r}, 80), (A4, T, "0.0.0.0", 443),
         (A4, T, "127.0.0.1", 443), (A4, U, "0.0.0.0", 53), (A4, U, {TEST_NET!r}, 53),
         (A4, T, "0.0.0.0", 53), (A4, T, "127.0.0.1", {proxy_port}),
         (A4, T, "0.0.0.0", {proxy_port})]
if socket.has_ipv6:
    tries += [(A6, T, "::", 80), (A6, T, "::", 443), (A6, U, "::", 53)]
for reuse in (False, True):
    for t in tries:
        print(t[2], t[3], reuse, attempt(lambda: bind(*t, reuse)))
""")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().split("\n")
    assert len(lines) >= 18
    for line in lines:
        host, port, _, outcome = line.split()
        wanted = {"EADDRINUSE"} if int(port) == proxy_port else {"EACCES", "EADDRINUSE"}
        assert outcome in wanted, line


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("mode", ["persistent", "ephemeral"])
def test_no_fd_of_the_sandbox_is_left_in_the_supervisor(mode):
    before = fd_count()
    eng = capturing(Isol8(mode=mode, pool_size=0))
    eng.start()
    try:
        result = eng.execute("print('x')", runtime="python")
        assert result.exit_code == 0, result.stderr
        if mode == "persistent":
            assert len(listeners(eng)) == len(LISTENS)
            assert fd_count() >= before + len(LISTENS)
            session = eng._session
    finally:
        eng.stop()
    if mode == "persistent":
        assert session is not None and session.sandbox.listeners == []
    assert fd_count() == before


def test_capture_needs_a_new_network_namespace():
    with pytest.raises(ProtocolError):
        protocol.encode_config_body(protocol.HelperConfig(
            hostname="h", new_netns=False, seccomp_filters=(), mounts=(), capture=LISTENS))
    # The helper refuses the same record on its own.
    with capturing(Isol8(network="host", pool_size=0)) as eng:
        with pytest.raises(SandboxSetupError) as info:
            eng.execute("pass", runtime="python")
    assert (info.value.step, info.value.errno) == ("config", errno.EINVAL)


@pytest.mark.parametrize("payload", [b"", b"T", b"XA\0\0", b"TX\0\0", b"TA\x50\0" * 9])
def test_malformed_capture_records_are_refused_by_the_helper(payload):
    with capturing(Isol8(pool_size=0), protocol.record(protocol.Tag.CAPTURE, payload)) as eng:
        with pytest.raises(SandboxSetupError) as info:
            eng.execute("pass", runtime="python")
    assert (info.value.step, info.value.errno) == ("config", errno.EINVAL)


@pytest.mark.parametrize("kinds, nfds", [
    ("tcp:[::]:80", 2), ("tcp:[::]:80,udp:[::]:53", 1), ("tcp:[::]:0", 1),
    ("sctp:[::]:80", 1), ("tcp:10.0.0.1:80", 1), ("tcp:[::]:70000", 1), ("", 0),
    (",".join(["tcp:[::]:80"] * 9), 9),
])
def test_malformed_listener_events_are_refused(kinds, nfds):
    with pytest.raises(ProtocolError):
        protocol.parse_listeners({"event": "listeners", "kinds": kinds, "ipv6": True}, nfds)


def test_listener_events_parse():
    event = protocol.parse_event(
        b'{"event":"listeners","kinds":"tcp:[::]:80,udp:0.0.0.0:53,tcp:127.0.0.1:40000",'
        b'"ipv6":false}')
    assert protocol.parse_listeners(event, 3) == [
        Listener("tcp", "[::]", 80), Listener("udp", "0.0.0.0", 53),
        Listener("tcp", "127.0.0.1", 40000)]
    with pytest.raises(ProtocolError):
        protocol.parse_event(b'{"event":"listeners","kinds":"tcp:[::]:80","ipv6":1}')


def test_the_sandbox_cannot_undo_the_capture(captured):
    """Taking lo down or deleting the local routes needs CAP_NET_ADMIN over the netns,
    which the sandbox never has; capture works the same afterwards."""
    got: dict[str, object] = {}
    thread = serve_once(listener(captured, "tcp", 443), got)
    result = run_py(captured, ATTEMPT_PY + f"""
import fcntl, socket, struct
def lo_down():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", 0))  # SIOCSIFFLAGS: not up
def delete_route():
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    # RTM_DELROUTE, NLM_F_REQUEST|NLM_F_ACK: local 0.0.0.0/0 in table local
    rtm = struct.pack("BBBBBBBBI", socket.AF_INET, 0, 0, 0, 255, 4, 254, 2, 0)
    nl.send(struct.pack("IHHII", 16 + len(rtm), 25, 5, 1, 0) + rtm)
    ack = nl.recv(4096)
    code = struct.unpack_from("i", ack, 16)[0]
    if code:
        raise OSError(-code, "RTM_DELROUTE")
print(attempt(lo_down), attempt(delete_route))
s = socket.create_connection(({TEST_NET!r}, 443), timeout=10)
s.sendall(b"still")
print(s.recv(100).decode())
""")
    thread.join(10)
    assert result.exit_code == 0, result.stderr
    refused, after = result.stdout.strip().split("\n")
    assert all(err in ("EPERM", "EACCES") for err in refused.split()), refused
    assert after == "pong"
