"""Network modes beyond ``none`` and ``host``: ``filtered`` egress by hostname policy.

Built in layers, I/O-free ones first (h11's model: pure code that is easy to fuzz):
``rules`` (hostname allow/deny lists and the SSRF address guard), ``sniff`` (the upstream
host of a captured connection, from an HTTP request head or a TLS ClientHello), ``framing``
(where HTTP/1.1 bodies end, for keep-alive), ``dns`` (the fake-IP resolver's wire format),
``nft`` (the static nftables batch the helper replays). On top: ``outbound`` (resolve,
judge, connect to exactly the judged address), ``relay`` (splice both ways with
backpressure), ``proxy`` (one sandbox's listeners), ``service`` (the loop thread every
proxy of the process shares) and ``filtered`` (what an engine asks of all this).
"""
