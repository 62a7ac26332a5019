"""The nftables ruleset of ``network="filtered"`` as one nfnetlink batch, hand-encoded.

The helper replays these bytes in the sandbox's own network namespace while it still holds
CAP_NET_ADMIN there: one ``sendto`` on a NETLINK_NETFILTER socket, 0.14 ms (0.21 ms with
``capture="all"``; medians of 200 fresh namespaces). So the per-run path needs neither the
``nft`` binary, nor libnftables, nor pyroute2 (100+ ms to import).
The batch is the same for every sandbox: :func:`batch` builds it once per ``capture`` value.

What it adds to the capture of ``csrc/net.c`` (``local`` default routes on lo, listeners on
TCP 80, 443, 53, UDP 53 and a loopback proxy port), in ``nft`` syntax::

    table inet isol8 {
        chain output {
            type filter hook output priority 0; policy accept;
            meta l4proto != udp accept
            udp dport 53 accept              # DNS, to the supervisor's wildcard :53
            udp sport 53 accept              # its answers (only it holds port 53)
            ip daddr 127.0.0.0/8 accept      # the sandbox's own loopback traffic
            ip6 daddr ::1 accept
            reject with icmpx admin-prohibited
        }
        chain nat_output {                   # capture "all" only
            type nat hook output priority -100; policy accept;
            ip daddr 127.0.0.0/8 return      # the sandbox's own servers, the proxy's port
            ip6 daddr ::1 return
            tcp dport 53 return              # the supervisor's own listeners
            tcp dport 80 return
            tcp dport 443 return
            meta l4proto tcp redirect to :8119
        }
    }

Without it, a UDP datagram to any address but port 53 is delivered to nobody (every address
is local) and the sender learns nothing; with it ``sendto`` fails at once with EPERM (the
output hook's verdict is NF_DROP, which ``ip_local_out`` returns as -EPERM, after the
reject sent its ICMP error). With ``capture="all"``, TCP to any other port lands on
:data:`CAPTURE_PORT` (``redirect`` in the output hook rewrites the destination to 127.0.0.1
or ::1, so the listener must take both: the dual-stack wildcard does), and the supervisor
reads the dialled address with ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (IPv4, also on a
dual-stack socket's v4-mapped connection) or ``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)``;
the kernel looks the conntrack entry up in the socket's netns, not the caller's.

The messages are those ``nft -f`` 1.0.6 sends for the text above (checked byte for byte
with ``strace -e write=3``, and with ``nft list ruleset`` after a replay), but for their
sequence numbers and two flags. The table and chains are NLM_F_EXCL: the netns is new, and
anything already in it is a surprise. The last rule asks for an acknowledgement
(NLM_F_ACK): nfnetlink queues a message's ack while it runs the batch and delivers the
queue after the commit, and a commit error it sends before the queue, on BATCH_BEGIN's
sequence number; so the first answer on the socket is the verdict on the whole batch,
either an error or this ack, which only a committed batch yields. ``nft`` itself asks for
no acks and takes silence for success, which would also pass a batch the kernel never ran.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Literal

#: The loopback port that ``capture="all"`` redirects TCP to; the supervisor listens there.
CAPTURE_PORT = 8119
#: Ports whose TCP the supervisor serves itself (csrc/net.c's wildcard listeners).
SERVED_TCP_PORTS = (53, 80, 443)
TABLE = "isol8"

# <linux/netlink.h>
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE, _NLM_F_APPEND = 1, 4, 0x200, 0x400, 0x800
_NLA_F_NESTED = 0x8000
# <linux/netfilter/nfnetlink.h>
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NFNL_SUBSYS_NFTABLES = 10
# <linux/netfilter/nf_tables.h>: messages (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*)
_NFT_MSG_NEWTABLE, _NFT_MSG_NEWCHAIN, _NFT_MSG_NEWRULE = 0, 3, 6
_NFTA_TABLE_NAME, _NFTA_TABLE_FLAGS = 1, 2
_NFTA_CHAIN_TABLE, _NFTA_CHAIN_NAME, _NFTA_CHAIN_HOOK, _NFTA_CHAIN_POLICY = 1, 3, 4, 5
_NFTA_CHAIN_TYPE = 7
_NFTA_HOOK_HOOKNUM, _NFTA_HOOK_PRIORITY = 1, 2
_NFTA_RULE_TABLE, _NFTA_RULE_CHAIN, _NFTA_RULE_EXPRESSIONS = 1, 2, 4
_NFTA_LIST_ELEM = 1
_NFTA_EXPR_NAME, _NFTA_EXPR_DATA = 1, 2
_NFTA_DATA_VALUE, _NFTA_DATA_VERDICT = 1, 2
_NFTA_VERDICT_CODE = 1
_NFTA_META_DREG, _NFTA_META_KEY = 1, 2
_NFT_META_NFPROTO, _NFT_META_L4PROTO = 15, 16
_NFTA_CMP_SREG, _NFTA_CMP_OP, _NFTA_CMP_DATA = 1, 2, 3
_NFT_CMP_EQ, _NFT_CMP_NEQ = 0, 1
_NFTA_PAYLOAD_DREG, _NFTA_PAYLOAD_BASE, _NFTA_PAYLOAD_OFFSET, _NFTA_PAYLOAD_LEN = 1, 2, 3, 4
_NFT_PAYLOAD_NETWORK_HEADER, _NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
_NFTA_IMMEDIATE_DREG, _NFTA_IMMEDIATE_DATA = 1, 2
_NFTA_REJECT_TYPE, _NFTA_REJECT_ICMP_CODE = 1, 2
_NFT_REJECT_ICMPX_UNREACH, _NFT_REJECT_ICMPX_ADMIN_PROHIBITED = 2, 3
_NFTA_REDIR_REG_PROTO_MIN, _NFTA_REDIR_FLAGS = 1, 3
_NF_NAT_RANGE_PROTO_SPECIFIED = 2  # <linux/netfilter/nf_nat.h>
_NFT_REG_VERDICT, _NFT_REG_1 = 0, 1
_NF_ACCEPT, _NFT_RETURN = 1, -5
# <linux/netfilter.h>
_NFPROTO_UNSPEC, _NFPROTO_INET, _NFPROTO_IPV4, _NFPROTO_IPV6 = 0, 1, 2, 10
_NF_INET_LOCAL_OUT = 3
_IPPROTO_TCP, _IPPROTO_UDP = 6, 17


def _attr(kind: int, payload: bytes) -> bytes:
    """A netlink attribute, padded to 4 bytes (NLA_ALIGN)."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(attrs))


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    """nf_tables' integer attributes are big-endian (NLA_BE32), signed verdicts included."""
    return _attr(kind, struct.pack("!i", value))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(_NFTA_LIST_ELEM, _string(_NFTA_EXPR_NAME, name), _nest(_NFTA_EXPR_DATA, *attrs))


# -- expressions, each as ``nft --debug=netlink`` prints it ----------------------------------


def _meta(key: int) -> bytes:
    """[ meta load <key> => reg 1 ]"""
    return _expr("meta", _be32(_NFTA_META_KEY, key), _be32(_NFTA_META_DREG, _NFT_REG_1))


def _cmp(op: int, data: bytes) -> bytes:
    """[ cmp eq|neq reg 1 <data> ]"""
    return _expr(
        "cmp",
        _be32(_NFTA_CMP_SREG, _NFT_REG_1),
        _be32(_NFTA_CMP_OP, op),
        _nest(_NFTA_CMP_DATA, _attr(_NFTA_DATA_VALUE, data)),
    )


def _payload(base: int, offset: int, length: int) -> bytes:
    """[ payload load <length>b @ <base> header + <offset> => reg 1 ]"""
    return _expr(
        "payload",
        _be32(_NFTA_PAYLOAD_DREG, _NFT_REG_1),
        _be32(_NFTA_PAYLOAD_BASE, base),
        _be32(_NFTA_PAYLOAD_OFFSET, offset),
        _be32(_NFTA_PAYLOAD_LEN, length),
    )


def _verdict(code: int) -> bytes:
    """[ immediate reg 0 accept|return ]"""
    return _expr(
        "immediate",
        _be32(_NFTA_IMMEDIATE_DREG, _NFT_REG_VERDICT),
        _nest(_NFTA_IMMEDIATE_DATA, _nest(_NFTA_DATA_VERDICT, _be32(_NFTA_VERDICT_CODE, code))),
    )


def _l4proto(op: int, proto: int) -> bytes:
    """``meta l4proto [!=] <proto>``: one byte, compared as such."""
    return _meta(_NFT_META_L4PROTO) + _cmp(op, bytes([proto]))


def _port(proto: int, offset: int, port: int) -> bytes:
    """``tcp|udp sport|dport <port>`` (offset 0: source, 2: destination): nft matches the
    protocol first, since the transport header means nothing otherwise."""
    return (
        _l4proto(_NFT_CMP_EQ, proto)
        + _payload(_NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2)
        + _cmp(_NFT_CMP_EQ, struct.pack("!H", port))
    )


def _ipv4_loopback() -> bytes:
    """``ip daddr 127.0.0.0/8``: in an inet table, nft tests the family first, and a prefix
    on a byte boundary becomes a shorter load: the daddr's first byte (IPv4 header + 16)."""
    return (
        _meta(_NFT_META_NFPROTO)
        + _cmp(_NFT_CMP_EQ, bytes([_NFPROTO_IPV4]))
        + _payload(_NFT_PAYLOAD_NETWORK_HEADER, 16, 1)
        + _cmp(_NFT_CMP_EQ, b"\x7f")
    )


def _ipv6_loopback() -> bytes:
    """``ip6 daddr ::1`` (IPv6 header + 24, 16 bytes)."""
    return (
        _meta(_NFT_META_NFPROTO)
        + _cmp(_NFT_CMP_EQ, bytes([_NFPROTO_IPV6]))
        + _payload(_NFT_PAYLOAD_NETWORK_HEADER, 24, 16)
        + _cmp(_NFT_CMP_EQ, b"\0" * 15 + b"\1")
    )


def _reject_admin_prohibited() -> bytes:
    """[ reject type 2 code 3 ]: icmpx, so it answers IPv4 and IPv6 alike (an inet table
    refuses the family-specific ``icmp`` type for the other family)."""
    return _expr(
        "reject",
        _be32(_NFTA_REJECT_TYPE, _NFT_REJECT_ICMPX_UNREACH),
        _attr(_NFTA_REJECT_ICMP_CODE, bytes([_NFT_REJECT_ICMPX_ADMIN_PROHIBITED])),
    )


def _redirect(port: int) -> bytes:
    """[ immediate reg 1 <port> ] [ redir proto_min reg 1 flags 0x2 ]"""
    load = _expr(
        "immediate",
        _be32(_NFTA_IMMEDIATE_DREG, _NFT_REG_1),
        _nest(_NFTA_IMMEDIATE_DATA, _attr(_NFTA_DATA_VALUE, struct.pack("!H", port))),
    )
    redir = _expr(
        "redir",
        _be32(_NFTA_REDIR_REG_PROTO_MIN, _NFT_REG_1),
        _be32(_NFTA_REDIR_FLAGS, _NF_NAT_RANGE_PROTO_SPECIFIED),
    )
    return load + redir


# -- messages --------------------------------------------------------------------------------


def _message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    """nlmsghdr + nfgenmsg (family, version 0, big-endian res_id) + attributes."""
    size = 16 + 4 + len(body)
    return (
        struct.pack("=IHHII", size, kind, _NLM_F_REQUEST | flags, seq, 0)
        + struct.pack("!BBH", family, 0, res_id)
        + body
    )


def _new(message: int, flags: int, *attrs: bytes) -> tuple[int, int, bytes]:
    return (_NFNL_SUBSYS_NFTABLES << 8 | message, flags, b"".join(attrs))


def _table() -> tuple[int, int, bytes]:
    # add table inet isol8   (EXCL: the netns is new; anything already there is a surprise)
    return _new(
        _NFT_MSG_NEWTABLE,
        _NLM_F_CREATE | _NLM_F_EXCL,
        _string(_NFTA_TABLE_NAME, TABLE),
        _be32(_NFTA_TABLE_FLAGS, 0),
    )


def _chain(name: str, kind: str, priority: int) -> tuple[int, int, bytes]:
    # add chain inet isol8 <name> { type <kind> hook output priority <priority>; policy accept; }
    return _new(
        _NFT_MSG_NEWCHAIN,
        _NLM_F_CREATE | _NLM_F_EXCL,
        _string(_NFTA_CHAIN_TABLE, TABLE),
        _string(_NFTA_CHAIN_NAME, name),
        _string(_NFTA_CHAIN_TYPE, kind),
        _be32(_NFTA_CHAIN_POLICY, _NF_ACCEPT),
        _nest(
            _NFTA_CHAIN_HOOK,
            _be32(_NFTA_HOOK_HOOKNUM, _NF_INET_LOCAL_OUT),
            _be32(_NFTA_HOOK_PRIORITY, priority),
        ),
    )


def _rule(chain: str, *exprs: bytes) -> tuple[int, int, bytes]:
    """APPEND: without it the kernel inserts each rule at the head of the chain."""
    return _new(
        _NFT_MSG_NEWRULE,
        _NLM_F_CREATE | _NLM_F_APPEND,
        _string(_NFTA_RULE_TABLE, TABLE),
        _string(_NFTA_RULE_CHAIN, chain),
        _nest(_NFTA_RULE_EXPRESSIONS, *exprs),
    )


_OUTPUT, _NAT_OUTPUT = "output", "nat_output"


def _chains(capture: Literal["web", "all"]) -> list[tuple[int, int, bytes]]:
    chains = [
        # chain output { type filter hook output priority 0; policy accept; }
        _chain(_OUTPUT, "filter", 0),
    ]
    if capture == "all":
        # chain nat_output { type nat hook output priority -100; policy accept; }
        chains.append(_chain(_NAT_OUTPUT, "nat", -100))
    return chains


def _filter_rules() -> list[tuple[int, int, bytes]]:
    return [
        # meta l4proto != udp accept
        _rule(_OUTPUT, _l4proto(_NFT_CMP_NEQ, _IPPROTO_UDP), _verdict(_NF_ACCEPT)),
        # udp dport 53 accept
        _rule(_OUTPUT, _port(_IPPROTO_UDP, 2, 53), _verdict(_NF_ACCEPT)),
        # udp sport 53 accept
        _rule(_OUTPUT, _port(_IPPROTO_UDP, 0, 53), _verdict(_NF_ACCEPT)),
        # ip daddr 127.0.0.0/8 accept
        _rule(_OUTPUT, _ipv4_loopback(), _verdict(_NF_ACCEPT)),
        # ip6 daddr ::1 accept
        _rule(_OUTPUT, _ipv6_loopback(), _verdict(_NF_ACCEPT)),
        # reject with icmpx admin-prohibited
        _rule(_OUTPUT, _reject_admin_prohibited()),
    ]


def _nat_rules() -> list[tuple[int, int, bytes]]:
    return [
        # ip daddr 127.0.0.0/8 return
        _rule(_NAT_OUTPUT, _ipv4_loopback(), _verdict(_NFT_RETURN)),
        # ip6 daddr ::1 return
        _rule(_NAT_OUTPUT, _ipv6_loopback(), _verdict(_NFT_RETURN)),
        # tcp dport 53 return; tcp dport 80 return; tcp dport 443 return
        *(
            _rule(_NAT_OUTPUT, _port(_IPPROTO_TCP, 2, port), _verdict(_NFT_RETURN))
            for port in SERVED_TCP_PORTS
        ),
        # meta l4proto tcp redirect to :8119
        _rule(_NAT_OUTPUT, _l4proto(_NFT_CMP_EQ, _IPPROTO_TCP), _redirect(CAPTURE_PORT)),
    ]


@cache
def batch(capture: Literal["web", "all"]) -> bytes:
    """The whole ruleset for ``network_filter["capture"]``, framed as one nfnetlink batch:
    BATCH_BEGIN, the table, its chains and rules, BATCH_END. The last rule carries NLM_F_ACK
    (see the module's docstring); the helper checks the framing and waits for that ack."""
    if capture not in ("web", "all"):
        raise ValueError(f'capture must be "web" or "all", not {capture!r}')
    body = [_table(), *_chains(capture), *_filter_rules()]
    if capture == "all":
        body += _nat_rules()
    last = len(body)
    out = [_message(_NFNL_MSG_BATCH_BEGIN, 0, 0, _NFPROTO_UNSPEC, b"", _NFNL_SUBSYS_NFTABLES)]
    for seq, (kind, flags, attrs) in enumerate(body, 1):
        out.append(
            _message(kind, flags | (_NLM_F_ACK if seq == last else 0), seq, _NFPROTO_INET, attrs)
        )
    out.append(
        _message(_NFNL_MSG_BATCH_END, 0, last + 1, _NFPROTO_UNSPEC, b"", _NFNL_SUBSYS_NFTABLES)
    )
    return b"".join(out)
