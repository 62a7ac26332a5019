"""Network modes beyond ``none`` and ``host``: ``filtered`` egress by hostname policy.

Built in layers, I/O-free ones first (h11's model: pure code that is easy to fuzz):
``rules`` (hostname allow/deny lists and the SSRF address guard), ``sniff`` (the upstream
host of a captured connection, from an HTTP request head or a TLS ClientHello), ``dns``
(the fake-IP resolver's wire format). The proxy that uses them comes on top.
"""
