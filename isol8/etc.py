"""The sandbox's ``/etc``: synthesized, read-only, and naming nothing of the host.

Real programs look things up here long before they touch the network: ``getservbyname`` and
``getaddrinfo(host, "http")`` read ``services``, ``getprotobyname`` reads ``protocols``,
``mimetypes`` reads ``mime.types``, fontconfig refuses to start without ``fonts/``, systemd
and D-Bus libraries expect a ``machine-id``. Tables that describe the distribution, not the
machine (services, protocols, MIME types, the loader cache, CA roots, os-release, fonts) are
the host's files bound read-only; what would identify the machine (its name, addresses,
users, ``machine-id``) is made up here. A host without netbase still gets a ``services`` and
``protocols`` table: the well-known entries below, so port names resolve the same anywhere.
"""

from __future__ import annotations

import os
import secrets

from .protocol import BindRO, Dir, File, MountOp, Symlink

HOSTNAME = "sandbox"
PASSWD = (b"root:x:0:0:root:/root:/usr/sbin/nologin\n"
          b"sandbox:x:1000:1000:sandbox:/sandbox:/bin/bash\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = b"root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"
HOSTS = b"127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NSSWITCH = (b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
            b"services: files\nprotocols: files\n")

# Host tables runtimes read (paths under /etc): the loader cache, TLS roots, alternatives
# links, the time zone, address selection, MIME types, fonts and their cache's config.
HOST_TABLES = ("ld.so.cache", "ssl/certs", "ssl/openssl.cnf", "ca-certificates.conf",
               "alternatives", "localtime", "os-release", "gai.conf", "mime.types", "fonts")
# Tables with a built-in fallback, for hosts that lack them (netbase is not essential).
FALLBACK_TABLES = ("services", "protocols")

# IANA's well-known assignments, in netbase's format and names (name port/proto aliases).
SERVICES = b"""\
echo\t\t7/tcp
echo\t\t7/udp
discard\t\t9/tcp\t\tsink null
discard\t\t9/udp\t\tsink null
daytime\t\t13/tcp
daytime\t\t13/udp
ftp-data\t20/tcp
ftp\t\t21/tcp
ssh\t\t22/tcp
telnet\t\t23/tcp
smtp\t\t25/tcp\t\tmail
time\t\t37/tcp\t\ttimserver
time\t\t37/udp\t\ttimserver
whois\t\t43/tcp\t\tnicname
domain\t\t53/tcp
domain\t\t53/udp
bootps\t\t67/udp
bootpc\t\t68/udp
tftp\t\t69/udp
gopher\t\t70/tcp
finger\t\t79/tcp
http\t\t80/tcp\t\twww
kerberos\t88/tcp\t\tkerberos5 krb5 kerberos-sec
kerberos\t88/udp\t\tkerberos5 krb5 kerberos-sec
pop3\t\t110/tcp\t\tpop-3
sunrpc\t\t111/tcp\t\tportmapper
sunrpc\t\t111/udp\t\tportmapper
auth\t\t113/tcp\t\tauthentication tap ident
nntp\t\t119/tcp\t\treadnews untp
ntp\t\t123/udp
epmap\t\t135/tcp\t\tloc-srv
netbios-ns\t137/udp
netbios-dgm\t138/udp
netbios-ssn\t139/tcp
imap2\t\t143/tcp\t\timap
snmp\t\t161/tcp
snmp\t\t161/udp
snmp-trap\t162/udp\t\tsnmptrap
bgp\t\t179/tcp
irc\t\t194/tcp
ldap\t\t389/tcp
ldap\t\t389/udp
https\t\t443/tcp
https\t\t443/udp
microsoft-ds\t445/tcp
kpasswd\t\t464/tcp
submissions\t465/tcp\t\tssmtp smtps urd
syslog\t\t514/udp
printer\t\t515/tcp\t\tspooler
submission\t587/tcp
ldaps\t\t636/tcp
rsync\t\t873/tcp
ftps-data\t989/tcp
ftps\t\t990/tcp
imaps\t\t993/tcp
pop3s\t\t995/tcp
socks\t\t1080/tcp
openvpn\t\t1194/tcp
openvpn\t\t1194/udp
ms-sql-s\t1433/tcp
mysql\t\t3306/tcp
postgresql\t5432/tcp\tpostgres
amqp\t\t5672/tcp
x11\t\t6000/tcp\t\tx11-0
redis\t\t6379/tcp
http-alt\t8080/tcp\t\twebcache
mongodb\t\t27017/tcp
"""
PROTOCOLS = b"""\
ip\t0\tIP
icmp\t1\tICMP
igmp\t2\tIGMP
tcp\t6\tTCP
udp\t17\tUDP
ipv6\t41\tIPv6
ipv6-route\t43\tIPv6-Route
ipv6-frag\t44\tIPv6-Frag
gre\t47\tGRE
esp\t50\tIPSEC-ESP
ah\t51\tIPSEC-AH
ipv6-icmp\t58\tIPv6-ICMP
ipv6-nonxt\t59\tIPv6-NoNxt
ipv6-opts\t60\tIPv6-Opts
sctp\t132\tSCTP
udplite\t136\tUDPLite
raw\t255\tRAW
"""
_FALLBACKS = {"services": SERVICES, "protocols": PROTOCOLS}
# The host's resolver files, shared only with the host's network.
_RESOLVER = ("resolv.conf", "hosts")


def etc_plan(*, host_network: bool, tables: str = "/etc", confined: bool = False,
             resolv_conf: bytes = b"") -> list[MountOp]:
    """The ops that build ``/etc`` in the new root, which turns read-only after setup.
    ``resolv_conf``: the sandbox's own resolver file when it has its own network (filtered
    mode points it at the supervisor's DNS); empty, nothing resolves.

    ``tables`` is where the distribution's tables are read from: the host's ``/etc`` (which
    a test points elsewhere to exercise the fallbacks) or an image's. ``confined`` (an image): a table that is a symlink is recreated as one, to
    resolve inside the sandbox, and one below a symlinked directory is left out, so the host
    path bound is always inside the image. Inside the sandbox they always land under
    ``/etc``; the resolver files shared with the host's network are always the host's."""
    ops: list[MountOp] = [
        Dir("/etc"), File("/etc/passwd", PASSWD), File("/etc/group", GROUP),
        File("/etc/hostname", HOSTNAME.encode() + b"\n"), File("/etc/nsswitch.conf", NSSWITCH),
    ]
    for name in HOST_TABLES + FALLBACK_TABLES:
        source, target = os.path.join(tables, name), "/etc/" + name
        if confined and not _plain_below(tables, name):
            source = ""
        if source and os.path.islink(source) and (
                confined or os.path.realpath(source).startswith("/usr/")):
            # os-release and localtime are links into /usr, which the sandbox has too.
            ops.append(Symlink(os.readlink(source), target))
        elif source and os.path.exists(source):
            ops.append(BindRO(source, target))
        elif name in _FALLBACKS:
            ops.append(File(target, _FALLBACKS[name]))
    if host_network:
        # Sharing the host's network means sharing its resolver and names.
        ops += [_copy_or_empty(os.path.join("/etc", name), "/etc/" + name)
                for name in _RESOLVER]
    else:
        ops += [File("/etc/hosts", HOSTS), File("/etc/resolv.conf", resolv_conf)]
    return ops


def _plain_below(tables: str, name: str) -> bool:
    """No symlink on the way from ``tables`` to ``name`` (itself may be one), nor
    ``tables`` itself."""
    path = tables
    for part in [""] + name.split("/")[:-1]:
        path = os.path.join(path, part) if part else path
        if os.path.islink(path):
            return False
    return True


def per_sandbox_plan() -> tuple[MountOp, ...]:
    """What differs from one sandbox to the next: a random ``machine-id`` (systemd's format,
    32 lowercase hex digits), so nothing inside can tie two sandboxes, or a sandbox and its
    host, together by it."""
    return (File("/etc/machine-id", secrets.token_hex(16).encode() + b"\n", mode=0o444),)


def _copy_or_empty(path: str, target: str) -> File:
    try:
        with open(path, "rb") as fh:
            return File(target, fh.read(65536))
    except OSError:
        return File(target, b"")
