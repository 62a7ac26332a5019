"""The synthesized /etc: what real programs look up before they do anything, read-only, and
nothing in it that names the host or ties two sandboxes together."""

import json
import os
import re
import socket
import subprocess

from isol8 import Isol8, etc
from isol8.images import plan

from conftest import run_py

HOST_PYTHON = "/usr/bin/python3"


def host_machine_id() -> str:
    """The host's own id; containers often have none."""
    try:
        with open("/etc/machine-id") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return ""
LOOKUPS = """
import json, socket
print(json.dumps({
    "http": socket.getservbyname("http", "tcp"),
    "domain/udp": socket.getservbyname("domain", "udp"),
    "443": socket.getservbyport(443, "tcp"),
    "tcp": socket.getprotobyname("tcp"),
    "udp": socket.getprotobyname("udp"),
    "gai": socket.getaddrinfo("localhost", "http", socket.AF_INET, socket.SOCK_STREAM)[0][4],
}))
"""
EXPECTED = {"http": 80, "domain/udp": 53, "443": "https", "tcp": 6, "udp": 17,
            "gai": ["127.0.0.1", 80]}


def test_service_and_protocol_names_resolve(engine):
    r = engine.execute(LOOKUPS)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == EXPECTED


def test_builtin_tables_serve_a_host_without_netbase(tmp_path, monkeypatch):
    """A host /etc without services and protocols (Debian's netbase is not essential): the
    sandbox gets the built-in tables, and the same lookups work."""
    assert os.path.exists("/etc/services")  # this host has them: the fallback is the point
    real_plan = etc.etc_plan
    monkeypatch.setattr(plan, "etc_plan",
                        lambda **kw: real_plan(**{**kw, "tables": str(tmp_path)}))
    with Isol8() as engine:
        r = engine.execute(LOOKUPS + "print(open('/etc/services').read().count('\\n'))")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert json.loads(lines[0]) == EXPECTED
    assert int(lines[1]) == etc.SERVICES.count(b"\n")  # the built-in table, not the host's


def test_builtin_services_agree_with_the_host_table():
    """Every built-in entry that the host's netbase table also lists has the same port."""
    host = {}
    for line in open("/etc/services"):
        fields = line.split("#")[0].split()
        if len(fields) >= 2:
            host[(fields[0], fields[1].split("/")[1])] = fields[1]
    ours = [line.split() for line in etc.SERVICES.decode().splitlines()]
    shared = [(f[0], f[1]) for f in ours if (f[0], f[1].split("/")[1]) in host]
    assert len(shared) > 40
    for name, port in shared:
        assert host[(name, port.split("/")[1])] == port, name


def test_mime_types_match_the_host(engine):
    code = "import mimetypes; mimetypes.init(); print(len(mimetypes.types_map), " \
           "mimetypes.guess_type('a.webm')[0])"
    host = subprocess.run([HOST_PYTHON, "-I", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()
    r = engine.execute(code)
    assert (r.exit_code, r.stdout) == (0, host)
    assert os.path.exists("/etc/mime.types") and int(host.split()[0]) > 500


def test_os_release_is_the_distributions(engine):
    r = engine.execute("import platform, json; "
                       "print(json.dumps(platform.freedesktop_os_release()))")
    assert r.exit_code == 0, r.stderr
    import platform
    assert json.loads(r.stdout) == platform.freedesktop_os_release()


def test_machine_id_is_random_per_sandbox(engine):
    ids = [engine.execute(cmd="cat /etc/machine-id").stdout for _ in range(2)]
    assert all(re.fullmatch("[0-9a-f]{32}", machine_id) for machine_id in ids), ids
    assert ids[0] != ids[1] and host_machine_id() not in ids


def test_fontconfig_finds_the_hosts_fonts(engine):
    """matplotlib and friends go through fontconfig: without /etc/fonts it prints
    "Fontconfig error: Cannot load default config file" and finds nothing."""
    host = subprocess.run(["fc-match", "sans"], capture_output=True, text=True, check=True)
    r = engine.execute(cmd="fc-match sans")
    assert (r.exit_code, r.stdout, r.stderr) == (0, host.stdout.strip(), "")


def test_gai_conf_is_the_hosts(engine):
    with open("/etc/gai.conf") as fh:
        host = fh.read()
    r = engine.execute(cmd="cat /etc/gai.conf")
    assert r.exit_code == 0 and r.stdout == host.rstrip()


def test_etc_is_read_only_and_names_nothing_of_the_host(engine):
    hostname = socket.gethostname()
    assert hostname not in ("sandbox", "localhost")
    words = [hostname] + ([host_machine_id()] if host_machine_id() else [])
    if socket.getfqdn() not in ("localhost", hostname):  # this VM's fqdn is "localhost"
        words.append(socket.getfqdn())
    r = run_py(engine, """
import errno, json, os
out = {}
for name in ('services', 'protocols', 'machine-id', 'mime.types', 'gai.conf', 'new-file'):
    try:
        open('/etc/' + name, 'a').close()
        out[name] = 'written'
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
try:  # the sandbox user owns machine-id: only the read-only mount stops a chmod
    os.chmod('/etc/machine-id', 0o644)
    out['chmod'] = 'done'
except OSError as e:
    out['chmod'] = errno.errorcode[e.errno]
words = os.environ['WORDS'].split()
read, found = 0, []
for d, _, names in os.walk('/etc'):  # links (alternatives) lead to /usr, not /etc's own text
    for n in names:
        path = os.path.join(d, n)
        if os.path.isfile(path) and not os.path.islink(path):
            tokens = open(path, 'rb').read().decode('latin-1').split()
            read += 1
            found += [(path, w) for w in words if w in tokens]
out['read'], out['found'] = read, found
print(json.dumps(out))
""", env={"WORDS": " ".join(words)})
    got = json.loads(r.stdout)
    read, found = got.pop("read"), got.pop("found")
    # host files the sandbox user cannot write anyway may answer EACCES first (as root they
    # show as nobody's); what it owns, and the directory, only the read-only mount protects
    assert got["new-file"] == got["chmod"] == "EROFS", got
    assert set(got.values()) <= {"EROFS", "EACCES"}, got
    assert read > 20 and found == []
