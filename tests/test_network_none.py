"""network="none" (the default): the sandbox has its own loopback and nothing else.

Every probe aims only at this machine: the host's own 127.0.0.1/::1 and the addresses of
its own interfaces, read from /proc. Each runs twice — in the default sandbox, where it must
fail, and with ``network="host"``, where the same probe must reach the test's servers; so the
tests fail if the network namespace were ever missing.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import threading

import pytest

from isol8 import Isol8

from conftest import ATTEMPT_PY, run_py, run_sh


def host_addresses() -> list[str]:
    """This machine's own non-loopback, non-link-local addresses (IPv4 and IPv6)."""
    found: list[str] = []
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
        for prev, line in zip(lines, lines[1:]):
            if line.strip() == "/32 host LOCAL":
                addr = prev.split()[-1]
                if not ipaddress.ip_address(addr).is_loopback:
                    found.append(addr)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw, _, _, scope, _, name = line.split()
                if name != "lo" and scope == "00":
                    found.append(str(ipaddress.ip_address(int(raw, 16))))
    except OSError:
        pass
    return sorted(set(found))


def _interfaces(proc_net_dev: str) -> list[str]:
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:])


class HostServer:
    """TCP (dual stack when the host has IPv6) and UDP on one port, on all of the host's
    addresses. Every TCP client gets the token; every connection and datagram is counted."""

    def __init__(self) -> None:
        self.token = f"isol8-net-{secrets.token_hex(8)}"
        self.connections = 0
        self.datagrams: list[bytes] = []
        try:
            self.tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.tcp.bind(("::", 0))
            self.ipv6 = True
        except OSError:
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.bind(("0.0.0.0", 0))
            self.ipv6 = False
        self.port = self.tcp.getsockname()[1]
        self.tcp.listen(16)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.udp.settimeout(0.05)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for t in self._threads:
            t.start()

    def _accept(self) -> None:
        self.tcp.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.sendall(self.token.encode() + b"\n")

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.udp.recv(1024))
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def server():
    srv = HostServer()
    yield srv
    srv.close()


PROBE = """
import errno, json, socket, time
out = {{}}
for addr in {targets!r}:
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((addr, {port}))
        out[addr] = s.makefile().readline().strip()
    except OSError as e:
        out[addr] = errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b'{token}-udp', ('127.0.0.1', {port}))
    out['udp'] = 'sent'
except OSError as e:
    out['udp'] = errno.errorcode[e.errno]
out['interfaces'] = sorted(n for _, n in socket.if_nameindex())
print(json.dumps(out))
"""


def _probe(eng: Isol8, srv: HostServer, targets: list[str]) -> dict:
    r = run_py(eng, PROBE.format(targets=targets, port=srv.port, token=srv.token))
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _wait_for_datagram(srv: HostServer) -> None:
    for _ in range(20):
        if srv.datagrams:
            return
        threading.Event().wait(0.02)


def test_only_loopback_exists(engine):
    r = run_sh(engine, "cat /proc/net/dev; cat /sys/class/net 2>/dev/null; exit 0")
    assert _interfaces(r.stdout) == ["lo"]
    with open("/proc/net/dev") as f:
        host = _interfaces(f.read())
    assert len(host) > 1  # the host has more: the probe would see them with a shared netns
    with Isol8(network="host") as eng:
        assert _interfaces(run_sh(eng, "cat /proc/net/dev").stdout) == host


def test_host_loopback_is_not_the_sandboxs(engine, server):
    targets = ["127.0.0.1"] + (["::1"] if server.ipv6 else [])
    got = _probe(engine, server, targets)
    assert {a: got[a] for a in targets} == {a: "ECONNREFUSED" for a in targets}
    assert got["interfaces"] == ["lo"]
    _wait_for_datagram(server)
    assert server.connections == 0 and server.datagrams == []


def test_host_interface_addresses_are_unreachable(engine, server):
    addrs = host_addresses()
    if not addrs:
        pytest.skip("this host has no non-loopback address to aim at")
    got = _probe(engine, server, addrs)
    assert {a: got[a] for a in addrs} == {a: "ENETUNREACH" for a in addrs}
    assert server.connections == 0


def test_the_same_probe_reaches_the_host_with_host_network(server):
    """Positive control for the two tests above."""
    targets = ["127.0.0.1"] + [a for a in host_addresses() if ":" not in a or server.ipv6]
    with Isol8(network="host") as eng:
        got = _probe(eng, server, targets)
    assert {a: got[a] for a in targets} == {a: server.token for a in targets}
    _wait_for_datagram(server)
    assert server.datagrams == [f"{server.token}-udp".encode()]
    assert server.connections == len(targets)


BASH_TCP = "(exec 3<>/dev/tcp/{addr}/{port} && head -n1 <&3) || echo failed"


def test_bash_dev_tcp_fails(engine, server):
    addrs = ["127.0.0.1"] + [a for a in host_addresses() if ":" not in a][:1]
    script = "\n".join(BASH_TCP.format(addr=a, port=server.port) for a in addrs)
    r = run_sh(engine, script)
    assert r.stdout.splitlines() == ["failed"] * len(addrs)
    assert "Connection refused" in r.stderr
    if len(addrs) > 1:
        assert "Network is unreachable" in r.stderr
    assert server.connections == 0
    with Isol8(network="host") as eng:  # positive control
        r = run_sh(eng, script)
    assert r.stdout.splitlines() == [server.token] * len(addrs)


def _hosts_only_name() -> str | None:
    """A name the host resolves from its own /etc/hosts but the sandbox's does not list."""
    sandbox_names = {"localhost", "sandbox", "ip6-localhost", "ip6-loopback"}
    try:
        with open("/etc/hosts") as f:
            for line in f:
                fields = line.split("#")[0].split()
                for name in fields[1:]:
                    if name not in sandbox_names:
                        return name
    except OSError:
        pass
    return None


def test_dns_resolves_localhost_only(engine):
    host_name = _hosts_only_name()
    if host_name is not None:  # positive control: the host resolves it without any network
        socket.getaddrinfo(host_name, None)
    names = ["localhost", "sandbox", f"isol8-{secrets.token_hex(6)}.invalid"]
    names += [host_name] if host_name else []
    r = run_py(engine, f"""
import json, socket
out = {{}}
for name in {names!r}:
    try:
        out[name] = sorted({{ai[4][0] for ai in socket.getaddrinfo(name, None, socket.AF_INET)}})
    except socket.gaierror as e:
        out[name] = 'failed'
print(json.dumps(out))
""")
    got = json.loads(r.stdout)
    assert got.pop("localhost") == ["127.0.0.1"] and got.pop("sandbox") == ["127.0.0.1"]
    assert got == {n: "failed" for n in names[2:]}


def test_a_server_on_the_sandboxs_own_loopback_works(engine, server):
    """Even on the port the host's server holds: the sandbox's 127.0.0.1 is its own."""
    r = run_py(engine, f"""
import json, socket, threading
out = {{}}
for fam, addr in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):
    try:
        srv = socket.socket(fam, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, {server.port}))
        srv.listen()
    except OSError as e:
        out[addr] = 'bind: ' + str(e)
        continue
    def serve():
        conn, _ = srv.accept()
        conn.sendall(conn.recv(100).upper())
        conn.close()
    t = threading.Thread(target=serve)
    t.start()
    c = socket.create_connection((addr, {server.port}), timeout=5)
    c.sendall(b'ping')
    out[addr] = c.recv(100).decode()
    t.join()
print(json.dumps(out))
""")
    got = json.loads(r.stdout)
    assert got["127.0.0.1"] == "PING"
    if server.ipv6:
        assert got["::1"] == "PING"
    assert server.connections == 0


ICMP_PROBE = ATTEMPT_PY + """
import json, socket
kinds = {'ping4': (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
         'ping6': (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6),
         'raw4': (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
         'raw6': (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)}
out = {name: attempt(lambda k=k: socket.socket(*k).close()) for name, k in kinds.items()}
print(json.dumps(out))
"""


def test_icmp_sockets_cannot_be_made(engine):
    # no echo request can leave: ping sockets need the gid in the namespace's
    # ping_group_range (a new namespace admits none), raw ones CAP_NET_RAW
    got = json.loads(run_py(engine, ICMP_PROBE).stdout)
    assert all(result in ("EACCES", "EPERM") for result in got.values()), got
