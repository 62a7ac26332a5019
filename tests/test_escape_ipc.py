"""IPC isolation: host abstract unix sockets, SysV IPC, POSIX message queues and D-Bus are
out of reach.

Abstract sockets belong to the network namespace, SysV IPC and mqueues to the IPC namespace,
path sockets to the mount namespace. Each test plants the object on the host, shows that the
same probe finds it where it should (the host, or ``network="host"`` for abstract sockets),
and that the sandbox cannot.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import socket

import pytest

from isol8 import Isol8

from conftest import run_py

IPC_CREAT, IPC_EXCL, IPC_RMID = 0o1000, 0o2000, 0

_libc = ctypes.CDLL(None, use_errno=True)


def _random_key() -> int:
    return 0x15A80000 | secrets.randbelow(0xFFFF)


# --- abstract unix sockets ------------------------------------------------------------------

@pytest.fixture
def abstract_listener():
    name = f"isol8-test-{secrets.token_hex(8)}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + name)
    srv.listen(8)
    yield name
    srv.close()


PROBE_ABSTRACT = """
import errno, json, socket
out = {{}}
for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
    s = socket.socket(socket.AF_UNIX, kind)
    try:
        s.connect('\\0{name}')
        out[kind] = 'connected'
    except OSError as e:
        out[kind] = errno.errorcode[e.errno]
# the sandbox's own abstract namespace works (its server, its client)
own = socket.socket(socket.AF_UNIX)
own.bind('\\0own-{name}')
own.listen()
socket.socket(socket.AF_UNIX).connect('\\0own-{name}')
out['own'] = 'ok'
out['listed'] = '@{name}' in open('/proc/net/unix').read()
print(json.dumps(out))
"""


def test_host_abstract_socket_is_unreachable(engine, abstract_listener):
    name = abstract_listener
    with open("/proc/net/unix") as f:
        assert "@" + name in f.read()  # the host lists it
    got = json.loads(run_py(engine, PROBE_ABSTRACT.format(name=name)).stdout)
    assert got == {str(int(socket.SOCK_STREAM)): "ECONNREFUSED",
                   str(int(socket.SOCK_SEQPACKET)): "ECONNREFUSED",
                   "own": "ok", "listed": False}


def test_abstract_probe_reaches_the_host_with_host_network(abstract_listener):
    """Positive control: the same probe connects when the network namespace is shared, so
    the test above fails if the sandbox ever lost its own netns. (A known consequence of
    network="host": abstract sockets such as D-Bus's or X11's are reachable then.)"""
    with Isol8(network="host") as eng:
        got = json.loads(run_py(eng, PROBE_ABSTRACT.format(name=abstract_listener)).stdout)
    assert got[str(int(socket.SOCK_STREAM))] == "connected" and got["listed"] is True


# --- SysV IPC -------------------------------------------------------------------------------

@pytest.fixture
def host_sysv():
    """A world-accessible shm segment, message queue and semaphore set on the host."""
    key = _random_key()
    ids = {
        "shm": _libc.shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0o666),
        "msg": _libc.msgget(key, IPC_CREAT | IPC_EXCL | 0o666),
        "sem": _libc.semget(key, 1, IPC_CREAT | IPC_EXCL | 0o666),
    }
    try:
        if any(v < 0 for v in ids.values()):
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                pytest.skip("the kernel has no SysV IPC")
            raise OSError(err, f"creating host SysV objects failed: {ids}")
        yield key, ids
    finally:
        if ids["shm"] >= 0:
            _libc.shmctl(ids["shm"], IPC_RMID, None)
        if ids["msg"] >= 0:
            _libc.msgctl(ids["msg"], IPC_RMID, None)
        if ids["sem"] >= 0:
            _libc.semctl(ids["sem"], 0, IPC_RMID)


def _sysvipc_keys(text: str) -> set[int]:
    return {int(line.split()[0]) for line in text.splitlines()[1:] if line.strip()}


def test_host_sysv_ipc_is_invisible(engine, host_sysv):
    key, ids = host_sysv
    for kind in ("shm", "msg", "sem"):  # the host sees them with the same method
        with open(f"/proc/sysvipc/{kind}") as f:
            assert key in _sysvipc_keys(f.read())
    own_key = _random_key()
    r = run_py(engine, f"""
import ctypes, errno, json, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def call(fn, *args):
    rc = fn(*args)
    return rc if rc >= 0 else errno.errorcode[ctypes.get_errno()]
out = {{
    'shmget': call(libc.shmget, {key}, 0, 0),
    'msgget': call(libc.msgget, {key}, 0, 0),
    'semget': call(libc.semget, {key}, 0, 0),
    # by id too: attaching the host's segment id must fail
    'shmat': libc.shmat({ids['shm']}, None, 0) not in (None, 2**64 - 1),
    'ipcs': subprocess.run(['ipcs'], capture_output=True, text=True).stdout,
}}
for kind in ('shm', 'msg', 'sem'):
    out['proc ' + kind] = open('/proc/sysvipc/' + kind).read()
# positive control: the sandbox's own objects work and show up where the probe looks
out['own shm'] = call(libc.shmget, {own_key}, 4096, 0o1000 | 0o600)
out['own msg'] = call(libc.msgget, {own_key}, 0o1000 | 0o600)
out['own listed'] = '{own_key}' in open('/proc/sysvipc/shm').read()
print(json.dumps(out))
""")
    try:
        got = json.loads(r.stdout)
        assert (got["shmget"], got["msgget"], got["semget"]) == ("ENOENT",) * 3
        assert got["shmat"] is False
        assert hex(key) not in got["ipcs"] and "------ Shared Memory Segments" in got["ipcs"]
        for kind in ("shm", "msg", "sem"):
            assert key not in _sysvipc_keys(got["proc " + kind])
        assert isinstance(got["own shm"], int) and isinstance(got["own msg"], int)
        assert got["own listed"] is True
    finally:
        # the sandbox's objects died with it (removed here should they have leaked)
        leaked_shm, leaked_msg = _libc.shmget(own_key, 0, 0), _libc.msgget(own_key, 0)
        if leaked_shm >= 0:
            _libc.shmctl(leaked_shm, IPC_RMID, None)
        if leaked_msg >= 0:
            _libc.msgctl(leaked_msg, IPC_RMID, None)
    assert (leaked_shm, leaked_msg) == (-1, -1)


# --- POSIX message queues ----------------------------------------------------------------------

def test_host_posix_mqueue_is_invisible(engine):
    mq_open = _libc.mq_open
    mq_open.restype = ctypes.c_int
    name = f"/isol8-test-{secrets.token_hex(6)}".encode()
    own = f"/isol8-own-{secrets.token_hex(6)}".encode()
    mqd = mq_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666, None)
    if mqd < 0:
        if ctypes.get_errno() == errno.ENOSYS:
            pytest.skip("the kernel has no POSIX message queues")
        raise OSError(ctypes.get_errno(), "mq_open on the host")
    try:
        probe_again = mq_open(name, os.O_RDWR)  # positive control: opening by name works
        assert probe_again >= 0
        os.close(probe_again)
        r = run_py(engine, f"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mq_open.restype = ctypes.c_int
def call(*args):
    rc = libc.mq_open(*args)
    return 'opened' if rc >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps({{'host': call({name!r}, os.O_RDWR),
                  'own': call({own!r}, os.O_CREAT | os.O_RDWR, 0o600, None),
                  'own again': call({own!r}, os.O_RDWR)}}))
""")
        assert json.loads(r.stdout) == {"host": "ENOENT", "own": "opened", "own again": "opened"}
        assert mq_open(own, os.O_RDONLY) < 0  # the sandbox's queue stayed inside
    finally:
        os.close(mqd)
        _libc.mq_unlink(name)
        _libc.mq_unlink(own)


# --- D-Bus and other path sockets ---------------------------------------------------------

@pytest.mark.parametrize("network", ["none", "host"])
def test_no_dbus_and_no_host_path_sockets(network, tmp_path, monkeypatch):
    """A host unix socket at a path is out of reach even with the host network: paths
    belong to the mount namespace. The host's D-Bus address is not inherited either."""
    bus_dir = tmp_path / "bus"
    bus_dir.mkdir()
    bus_dir.chmod(0o755)
    tmp_path.chmod(0o755)
    path = str(bus_dir / "bus")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    os.chmod(path, 0o666)
    socket.socket(socket.AF_UNIX).connect(path)  # positive control: the host connects
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={path}")
    try:
        with Isol8(network=network) as eng:
            r = run_py(eng, f"""
import errno, json, os, socket
out = {{'env': os.environ.get('DBUS_SESSION_BUS_ADDRESS'), 'dbus paths': [
    p for p in ('/run/dbus/system_bus_socket', '/var/run/dbus/system_bus_socket',
                '/run/user', '/tmp/.X11-unix', {path!r}) if os.path.lexists(p)]}}
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({path!r})
    out['connect'] = 'connected'
except OSError as e:
    out['connect'] = errno.errorcode[e.errno]
print(json.dumps(out))
""")
    finally:
        srv.close()
    got = json.loads(r.stdout)
    assert got == {"env": None, "dbus paths": [], "connect": "ENOENT"}
