"""Judging IP addresses (pure, stdlib ``ipaddress`` only): which are internal, which clients are this machine.

An IPv6 address may carry an IPv4 one that a translator or tunnel delivers to (``::ffff:127.0.0.1``,
``64:ff9b::a9fe:a9fe`` through NAT64, ``2002:a9fe:a9fe::1`` through 6to4): such an address is as internal as
the IPv4 address it embeds, whatever the IPv6 registry says of its prefix.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d (deprecated, still routed by some stacks)
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")  # ::ffff:0:a.b.c.d (RFC 2765)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))  # RFC 6052, RFC 8215


def embedded_ipv4(address: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses ``address`` leads to: IPv4-mapped, 6to4, Teredo (server and client), IPv4-compatible,
    SIIT and NAT64 (the last 32 bits, where RFC 6052 puts them for a /96). Empty for a plain IPv6 address."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    low = IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are IPv6's own unspecified and loopback
        found.append(low)
    if address in _SIIT or any(address in net for net in _NAT64):
        found.append(low)
    return found


def _own_kind(address: IPAddress) -> str | None:
    for kind, flag in (("a loopback", address.is_loopback), ("a link-local", address.is_link_local),
                       ("a multicast", address.is_multicast), ("an unspecified", address.is_unspecified)):  # fmt: skip
        if flag:
            return kind
    return None if address.is_global else "a private or reserved"


def internal_kind(address: IPAddress) -> str | None:
    """What makes ``address`` internal (``"a loopback"``, ``"a link-local"``, ...), judged on every IPv4 address
    it embeds too; None for a public address."""
    if isinstance(address, IPv6Address):
        for inner in embedded_ipv4(address):
            kind = _own_kind(inner)
            if kind is not None:
                return kind
    return _own_kind(address)


def is_loopback_client(remote_addr: str | None) -> bool:
    """Whether a peer address (``REMOTE_ADDR``) is this machine: IPv4 127/8, IPv6 ``::1`` or IPv4-mapped
    ``::ffff:127.x.y.z``; False for anything unparseable."""
    try:
        address = ipaddress.ip_address((remote_addr or "").split("%", 1)[0])  # an IPv6 zone id is no part of it
    except ValueError:
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
