"""The addresses of a network that the allocator can really give out: its
ranges (docker's ``--ip-range``) or else its whole subnet, never the network
and broadcast addresses. Pool gauges count over these, so a pool whose range
is full reads full even when the rest of its subnet is empty."""

from __future__ import annotations

from collections.abc import Iterable

import netaddr

from .model import Network

Span = tuple[int, int]      # first and last address, as integers, both included


def spans(net: Network) -> list[Span]:
    """The allocatable addresses of net, as sorted, merged spans."""
    subnet = netaddr.IPNetwork(net.subnet)
    lo, hi = subnet.first + 1, subnet.last - 1
    ranges = [netaddr.IPNetwork(r) for r in net.ranges] or [subnet]
    clipped = sorted((max(r.first, lo), min(r.last, hi)) for r in ranges)
    merged: list[Span] = []
    for first, last in clipped:
        if first > last:
            continue
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def size(parts: list[Span]) -> int:
    """How many addresses the spans hold."""
    return sum(last - first + 1 for first, last in parts)


def inside(parts: list[Span], ip: str) -> bool:
    value = int(netaddr.IPAddress(ip))
    return any(first <= value <= last for first, last in parts)


def usage(net: Network, endpoint_ips: Iterable[str]) -> tuple[int, int]:
    """(size, used) over the allocatable addresses: used counts the endpoints,
    the gateway and the aux addresses that fall inside them, each address once."""
    parts = spans(net)
    held = {ip for ip in (*endpoint_ips, net.gateway, *net.aux.values()) if ip and inside(parts, ip)}
    return size(parts), len(held)
