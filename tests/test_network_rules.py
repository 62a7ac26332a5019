"""The pure policy of network="filtered" (isol8.network.rules): hostname rules, the SSRF
address guard and the validation of network_filter. No sockets, no DNS: microseconds."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest

from isol8.errors import InvalidRequest
from isol8.network.rules import (
    DEFAULT_MAX_CONNECTIONS,
    MAX_PATTERN_LENGTH,
    Decision,
    NetworkFilter,
    Pin,
    address_refusal,
    normalize_host,
    parse_literal,
    parse_pin_address,
)

# --- SSRF guard: every refused range, with the words its reason must contain -------------

REFUSED_V4 = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("100.100.100.200", "Alibaba"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.8", "IETF protocol"),
    ("192.0.0.192", "metadata"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
]

REFUSED_V6 = [
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fd00:ec2::254", "metadata"),
    ("fc00::1", "unique local"),
    ("fdff:ffff::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "IETF protocol"),
    ("5f00::1", "SRv6"),
    ("4000::1", "reserved"),
    ("::2:1", "IPv4-compatible"),  # ::0.2.0.1 wraps "this network"
    ("64:ff9b:0:0:1::1", "reserved"),  # inside 64:ff9b::/32 but not the /96
    ("64:ff9b:1::808:808", "local-use NAT64"),  # local-use prefix, even with a public IPv4
    ("2001:0:808:808::1", "Teredo"),  # Teredo with public server and client
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above
    "172.15.255.255",
    "172.32.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80e::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # well-known NAT64 of a public address
    "2002:808:808::1",  # 6to4 of a public address
]


@pytest.mark.parametrize(("ip", "why"), REFUSED_V4 + REFUSED_V6)
def test_refused_addresses_name_the_range(ip: str, why: str) -> None:
    reason = address_refusal(ip)
    assert reason is not None and why.lower() in reason.lower(), reason


@pytest.mark.parametrize("ip", ALLOWED)
def test_public_addresses_pass(ip: str) -> None:
    assert address_refusal(ip) is None
    assert address_refusal(ipaddress.ip_address(ip)) is None


def _v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def wrapped_forms(v4: str) -> dict[str, str]:
    """Every IPv6 form that carries ``v4`` and that the guard must unwrap."""
    n = _v4(v4)
    teredo_client = n ^ 0xFFFFFFFF  # Teredo stores the client address inverted
    nat64_48 = (0x0064FF9B0001 << 80) | ((n >> 16) << 64) | ((n & 0xFFFF) << 40)
    return {
        "IPv4-mapped": f"::ffff:{v4}",
        "IPv4-translated": str(ipaddress.IPv6Address((0xFFFF << 48) | n)),
        "IPv4-compatible": f"::{v4}",
        "NAT64": f"64:ff9b::{v4}",
        "local-use NAT64": str(ipaddress.IPv6Address(nat64_48)),
        "local-use NAT64 /96": str(ipaddress.IPv6Address((0x0064FF9B0001 << 80) | n)),
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)),
        "Teredo client": str(
            ipaddress.IPv6Address((0x20010000 << 96) | (_v4("8.8.8.8") << 64) | teredo_client)
        ),
        "Teredo server": str(
            ipaddress.IPv6Address((0x20010000 << 96) | (n << 64) | (_v4("8.8.8.8") ^ 0xFFFFFFFF))
        ),
    }


@pytest.mark.parametrize(("ip", "why"), [r for r in REFUSED_V4 if r[0] != "0.0.0.0"])
def test_every_wrapped_form_of_a_refused_ipv4_is_refused_with_the_inner_reason(
    ip: str, why: str
) -> None:
    for form, v6 in wrapped_forms(ip).items():
        reason = address_refusal(v6)
        assert reason is not None, (form, v6)
        assert why.lower() in reason.lower() and ip in reason, (form, v6, reason)


def test_nat64_metadata_is_refused_although_python_calls_it_global() -> None:
    # Python 3.11 calls it global: the reason the guard has its own tables (issue 10).
    reason = address_refusal("64:ff9b::a9fe:a9fe")
    assert reason is not None and "NAT64" in reason and "metadata" in reason


def test_guard_rejects_non_addresses() -> None:
    with pytest.raises(InvalidRequest, match="not an IP address"):
        address_refusal("example.com")
    with pytest.raises(InvalidRequest, match="not an IP address"):
        address_refusal(42)  # type: ignore[arg-type]


# --- literals ---------------------------------------------------------------------------------

LITERALS = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7F.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("169.254.43518", "169.254.169.254"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("0", "0.0.0.0"),
    ("0x", "0.0.0.0"),
    ("1.2.3.4.", "1.2.3.4"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
    ("[fe80::1%eth0]", "fe80::1"),
    ("[2001:DB8::1]", "2001:db8::1"),
]


@pytest.mark.parametrize(("text", "address"), LITERALS)
def test_parse_literal_recognizes_what_clients_connect_to(text: str, address: str) -> None:
    assert parse_literal(text) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "text",
    [
        "example.com",
        "256.1.1.1",
        "1.2.3.4.5",
        "4294967296",
        "08.1.1.1",
        "0x1g",
        "1..2",
        "",
        "[1.2.3.4]",
        "[::1",
        "::1]",
        "1.2.3.256",
        "１２７.0.0.1",
        "[example.com]",
        ".1.2.3",
    ],
)
def test_parse_literal_refuses_non_literals(text: str) -> None:
    assert parse_literal(text) is None


@pytest.mark.parametrize(
    "text", ["2130706433", "0x7f.1", "0177.0.0.1", "[::ffff:7f00:1]", "[::127.0.0.1]"]
)
def test_obfuscated_literals_meet_the_guard(text: str) -> None:
    address = parse_literal(text)
    assert address is not None
    assert "127.0.0.1" in (address_refusal(address) or "") or "loopback" in (
        address_refusal(address) or ""
    )


# --- hostnames --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("a_b.example.com", "a_b.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("[::1]", "::1"),
        ("[FE80::1]", "fe80::1"),
        ("0x7F.1", "0x7f.1"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 61] * 4) + ".", ".".join(["a" * 61] * 4)),  # 247 chars + root dot
    ],
)
def test_normalize_host(host: str, normal: str) -> None:
    assert normalize_host(host) == normal


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("", "empty"),
        (".", "empty"),
        ("example..com", "label"),
        ("example.com..", "label"),
        (".example.com", "label"),
        ("a" * 64 + ".com", "label"),
        ("x." * 127 + "com", "over 253"),
        ("exa mple.com", "label"),
        ("example.com\n", "label"),
        ("evil.com/x", "label"),
        ("bücher.example", "IDNA"),
        ("example.123", "ends in a number"),
        ("1.2.3.999", "ends in a number"),
        ("[1.2.3.4]", "IPv6"),
        ("[::g]", "IPv6"),
        ("a:b", "not a hostname"),
        (b"example.com", "string"),
    ],
)
def test_normalize_host_refuses(host: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        normalize_host(host)  # type: ignore[arg-type]


# --- rules ------------------------------------------------------------------------------------


def flt(**options: object) -> NetworkFilter:
    return NetworkFilter.from_options(options)


def test_no_filter_allows_every_host() -> None:
    for f in (NetworkFilter.from_options(None), NetworkFilter.from_options({}), NetworkFilter()):
        d = f.decide("anything.example")
        assert d.allowed and "empty whitelist" in d.rule


def test_deny_wins_over_allow_and_names_the_rule() -> None:
    f = flt(whitelist=[r"example\.com$"], blacklist=[r"^evil\.", r"secret"])
    assert f.decide("evil.example.com") == Decision(False, r"blacklist[0] '^evil\\.'")
    assert f.decide("secret.example.com") == Decision(False, "blacklist[1] 'secret'")
    assert f.decide("api.example.com") == Decision(True, r"whitelist[0] 'example\\.com$'")
    assert f.decide("example.org") == Decision(False, "no whitelist rule matches")


def test_blacklist_alone_allows_the_rest() -> None:
    f = flt(blacklist=["tracker"])
    assert not f.decide("tracker.io").allowed
    assert f.decide("good.io").allowed


def test_search_semantics_not_match() -> None:
    # re.search, as upstream's grep -E: a pattern matches anywhere unless anchored.
    f = flt(whitelist=[r"example\.com"])
    assert f.decide("api.example.com").allowed
    assert f.decide("example.com.attacker.net").allowed  # unanchored: the user's choice
    anchored = flt(whitelist=[r"(^|\.)example\.com$"])
    assert anchored.decide("api.example.com").allowed
    assert anchored.decide("example.com").allowed
    assert not anchored.decide("example.com.attacker.net").allowed
    assert not anchored.decide("notexample.com").allowed


@pytest.mark.parametrize("host", ["EVIL.com", "evil.com.", "Evil.Com.", "x.EVIL.COM"])
def test_case_and_trailing_dot_cannot_dodge_a_deny(host: str) -> None:
    assert not flt(blacklist=[r"evil\.com$"]).decide(host).allowed
    assert not flt(blacklist=[r"Evil\.COM$"]).decide(host).allowed  # rules fold case too


def test_newline_cannot_satisfy_an_anchor() -> None:
    # Python's $ matches before a trailing newline; such hosts never reach the rules.
    d = flt(whitelist=[r"^good\.com$"]).decide("good.com\n")
    assert not d.allowed and "invalid host" in d.rule


def test_ip_literals_match_as_written_and_canonically() -> None:
    f = flt(blacklist=[r"^127\.0\.0\.1$"])
    for host in ("127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1"):
        assert not f.decide(host).allowed, host
    assert not flt(blacklist=[r"^::1$"]).decide("[::1]").allowed
    assert flt(whitelist=[r"^0x7f\.1$"]).decide("0X7F.1").allowed


def test_invalid_host_is_a_refusal_not_an_exception() -> None:
    d = NetworkFilter().decide("a" * 300)
    assert not d.allowed and "253" in d.rule
    assert not NetworkFilter().decide(None).allowed  # type: ignore[arg-type]


def test_pins() -> None:
    f = flt(
        hosts={
            "API.Test.": "127.0.0.1:8080",
            "v6.test": "[::1]:9",
            "plain.test": "::1",
            "four.test": "10.0.0.1",
        }
    )
    assert f.pin("api.test") == Pin(ipaddress.ip_address("127.0.0.1"), 8080)
    assert f.pin("API.TEST.") == Pin(ipaddress.ip_address("127.0.0.1"), 8080)
    assert f.pin("v6.test") == Pin(ipaddress.ip_address("::1"), 9)
    assert f.pin("plain.test") == Pin(ipaddress.ip_address("::1"))
    assert f.pin("four.test") == Pin(ipaddress.ip_address("10.0.0.1"))
    assert f.pin("other.test") is None
    assert f.pin("bad host") is None


def test_pinned_address_is_judged_like_a_resolved_one() -> None:
    f = flt(hosts={"meta.test": "169.254.169.254"})
    pin = f.pin("meta.test")
    assert pin is not None and "metadata" in (f.refusal(pin.address) or "")
    assert flt(allow_private=True).refusal(ipaddress.ip_address("127.0.0.1")) is None


def test_defaults_and_options() -> None:
    f = NetworkFilter.from_options(
        {"whitelist": ("a",), "allow_private": True, "max_connections": 5, "capture": "all"}
    )
    assert (f.whitelist, f.allow_private, f.max_connections, f.capture) == (("a",), True, 5, "all")
    g = NetworkFilter.from_options({})
    assert (g.allow_private, g.max_connections, g.capture) == (
        False,
        DEFAULT_MAX_CONNECTIONS,
        "web",
    )
    assert g.max_connections == 64
    with pytest.raises(AttributeError):
        g.allow_private = True  # type: ignore[misc]


VALIDATION = [
    ("not a dict", "network_filter must be a mapping"),
    ({"whitelsit": []}, "unknown key.*'whitelsit'"),
    ({"whitelist": "example.com"}, r"\['whitelist'\] must be a list"),
    ({"blacklist": {"a": 1}}, r"\['blacklist'\] must be a list"),
    ({"whitelist": [1]}, r"\['whitelist'\]\[0\] must be a string"),
    ({"blacklist": ["ok", "("]}, r"\['blacklist'\]\[1\] '\(' is not a valid regex"),
    ({"blacklist": [""]}, r"\['blacklist'\]\[0\] is empty"),
    ({"whitelist": ["a" * (MAX_PATTERN_LENGTH + 1)]}, "over 512"),
    ({"whitelist": ["x"] * 1025}, "over 1024"),
    ({"whitelist": ["bücher"]}, "not ASCII"),
    ({"whitelist": ["(a+)+$"]}, "nests a repeat"),
    ({"blacklist": ["([a-z]+-?)*x"]}, "nests a repeat"),
    ({"allow_private": "yes"}, r"\['allow_private'\] must be true or false"),
    ({"allow_private": 1}, r"\['allow_private'\] must be true or false"),
    ({"max_connections": 0}, r"\['max_connections'\] must be an integer"),
    ({"max_connections": True}, r"\['max_connections'\] must be an integer"),
    ({"max_connections": 2.5}, r"\['max_connections'\] must be an integer"),
    ({"max_connections": 10**9}, r"\['max_connections'\] must be an integer"),
    ({"capture": "tcp"}, r"\['capture'\] must be \"web\" or \"all\""),
    ({"hosts": ["a"]}, r"\['hosts'\] must be a mapping"),
    ({"hosts": {"bad host": "1.2.3.4"}}, r"\['hosts'\]\['bad host'\]: .*label"),
    ({"hosts": {"1.2.3.4": "1.2.3.4"}}, "pin a hostname"),
    ({"hosts": {"a.test": "1.2.3.4", "A.test.": "1.2.3.5"}}, "pinned twice"),
    ({"hosts": {"a.test": 1234}}, r"\['hosts'\]\['a.test'\] must be a string"),
    ({"hosts": {"a.test": "localhost"}}, "'localhost' is not an IP address"),
    ({"hosts": {"a.test": "0x7f.1"}}, "is not an IP address"),
    ({"hosts": {"a.test": "1.2.3.4:0"}}, "port must be a number from 1 to 65535"),
    ({"hosts": {"a.test": "1.2.3.4:65536"}}, "port must be"),
    ({"hosts": {"a.test": "1.2.3.4:+80"}}, "port must be"),
    ({"hosts": {"a.test": "1.2.3.4:"}}, "port must be"),
    ({"hosts": {"a.test": "[::1]8080"}}, r"expected \[IPv6\]"),
    ({"hosts": {"a.test": "[::1"}}, r"expected \[IPv6\]"),
    ({"hosts": {"a.test": "[1.2.3.4]:80"}}, "only IPv6 addresses go in brackets"),
    ({"hosts": {"a.test": "[::1]:x"}}, "port must be"),
    ({"hosts": {"a.test": "[fe80::1%eth0]:80"}}, "zone id"),
]


@pytest.mark.parametrize(("options", "message"), VALIDATION)
def test_validation_errors_name_the_key(options: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        NetworkFilter.from_options(options)  # type: ignore[arg-type]


def test_invalid_request_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        NetworkFilter.from_options({"capture": None})


def test_allowed_nested_shapes_still_compile() -> None:
    # The common "any subdomain" idioms must not trip the backtracking guard.
    f = flt(whitelist=[r"^([a-z0-9-]+\.)*example\.com$", r"(\w+\.)+org$", r"^(a|b)+\.io$"])
    assert (
        f.decide("x.y.example.com").allowed
        and f.decide("a.org").allowed
        and f.decide("abab.io").allowed
    )


def test_parse_pin_address_directly() -> None:
    assert parse_pin_address("[2001:db8::1]:443") == Pin(ipaddress.ip_address("2001:db8::1"), 443)
    assert parse_pin_address("::ffff:1.2.3.4") == Pin(ipaddress.ip_address("::ffff:1.2.3.4"))


# --- invariants, fuzzed (seeded) --------------------------------------------------------------


def test_fuzz_wrapped_forms_agree_with_their_ipv4() -> None:
    rng = random.Random(10)
    samples = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(1000)]
    # Bias towards the interesting ranges: random addresses inside every refused network.
    for ip, _ in REFUSED_V4:
        net = ipaddress.ip_network(ip + "/24", strict=False)
        samples += [ipaddress.IPv4Address(int(net[rng.randrange(256)])) for _ in range(20)]
    for v4 in samples:
        refused = address_refusal(v4) is not None
        for form, v6 in wrapped_forms(str(v4)).items():
            wrapped = address_refusal(v6)
            if refused:
                assert wrapped is not None, (v4, form, v6)
            elif form in ("IPv4-mapped", "NAT64", "6to4"):
                # Forms that reach a public IPv4 stay usable; the rest are refused by prefix.
                assert wrapped is None, (v4, form, v6, wrapped)
            else:
                assert wrapped is not None, (v4, form, v6)


def test_fuzz_lax_ipv4_forms_decode_to_the_same_address() -> None:
    rng = random.Random(1010)
    for _ in range(2000):
        value = rng.getrandbits(32)
        octets = list(ipaddress.IPv4Address(value).packed)
        fmt = [lambda o: str(o), lambda o: hex(o), lambda o: "0" + oct(o)[2:] if o else "0"]
        forms = [
            ".".join(rng.choice(fmt)(o) for o in octets),
            str(value),
            hex(value),
            f"{octets[0]}.{(value & 0xFFFFFF)}",
            f"{rng.choice(fmt)(octets[0])}.{octets[1]}.{(value & 0xFFFF)}",
        ]
        for text in forms:
            assert parse_literal(text) == ipaddress.IPv4Address(value), text
            assert normalize_host(text) == text.lower()


def test_fuzz_decide_is_total_and_consistent() -> None:
    rng = random.Random(99)
    f = flt(whitelist=[r"(^|\.)example\.com$", r"^api\."], blacklist=[r"bad", r"^\d"])
    alphabet = "abcdexmplo.-_0123456789BAD:[]\n %"
    for _ in range(5000):
        host = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        d = f.decide(host)
        assert isinstance(d, Decision) and d.rule
        if d.allowed:
            name = normalize_host(host)
            assert "bad" not in name and not name[0].isdigit()
            assert name == "example.com" or name.endswith(".example.com") or name.startswith("api.")
        # Case and one root dot never change the outcome.
        if host and not host.endswith(".") and "[" not in host and ":" not in host:
            assert f.decide(host.upper() + ".").allowed == d.allowed, host


def test_rules_are_fast_on_hostile_hostnames() -> None:
    # A gross-regression bound: the length cap and the nesting guard keep every decision cheap.
    f = flt(
        whitelist=[r"^([a-z0-9-]+\.)*example\.com$", r"(\w+\.)+org$"], blacklist=[r"a.*b.*c.*d$"]
    )
    hosts = [("a" * 61 + ".") * 4, "a." * 126 + "x", "-" * 63 + "." + "a" * 63, "a" * 253]
    start = time.perf_counter()
    for host in hosts * 50:
        f.decide(host)
    assert time.perf_counter() - start < 2.0
