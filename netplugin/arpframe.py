"""The one frame the daemon sends itself: a gratuitous ARP (an ARP request
for the sender's own address, broadcast), 42 bytes built with struct."""

from __future__ import annotations

import ipaddress
import re
import struct

MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
BROADCAST = b"\xff" * 6
ETH_ARP, HW_ETHER, PROTO_IPV4, OP_REQUEST = 0x0806, 1, 0x0800, 1
FRAME = struct.Struct("!6s6sH" "HHBBH6s4s6s4s")      # Ethernet header, then ARP over Ethernet/IPv4


def gratuitous_arp(mac: str, ip: str) -> bytes:
    """The frame announcing that ip is at mac. ValueError names a bad mac or ip."""
    if not isinstance(mac, str) or not MAC_RE.fullmatch(mac):
        raise ValueError(f"MAC address {mac!r} is not six hex pairs separated by ':'")
    hw = bytes.fromhex(mac.replace(":", ""))
    try:
        addr = ipaddress.IPv4Address(ip).packed
    except (ipaddress.AddressValueError, TypeError) as exc:
        raise ValueError(f"IPv4 address {ip!r} is not valid: {exc}") from None
    return FRAME.pack(BROADCAST, hw, ETH_ARP, HW_ETHER, PROTO_IPV4, 6, 4, OP_REQUEST, hw, addr, b"\0" * 6, addr)
