"""The gratuitous ARP built with struct is byte for byte the frame scapy
builds (scapy is a test dependency only), and bad input is refused by name."""

from __future__ import annotations

import pytest
from scapy.layers.l2 import ARP, Ether

from netplugin.arp_proxy import garp_packet
from netplugin.arpframe import gratuitous_arp


@pytest.mark.parametrize(("mac", "ip"), [("02:4e:0a:c8:00:02", "10.200.0.2"), ("FE:FF:00:01:ab:CD", "192.168.255.254"),
                                         ("00:00:00:00:00:01", "0.0.0.1")])
def test_same_bytes_as_scapy(mac, ip):
    want = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=mac, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip))
    frame = gratuitous_arp(mac, ip)
    assert len(frame) == 42
    assert frame == want
    assert garp_packet(mac, ip) == want.hex()


def test_parsed_by_scapy_as_a_request_for_its_own_address():
    pkt = Ether(gratuitous_arp("02:4e:0a:c8:00:02", "10.200.0.2"))
    assert pkt.dst == "ff:ff:ff:ff:ff:ff" and pkt.src == "02:4e:0a:c8:00:02" and pkt.type == 0x0806
    arp = pkt[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst, arp.hwdst) == (1, "02:4e:0a:c8:00:02", "10.200.0.2",
                                                                  "10.200.0.2", "00:00:00:00:00:00")


@pytest.mark.parametrize(("mac", "ip", "says"), [
    ("02:4e:0a:c8:00", "10.0.0.1", "MAC address"), ("02-4e-0a-c8-00-02", "10.0.0.1", "MAC address"),
    ("02:4e:0a:c8:00:02\n", "10.0.0.1", "MAC address"), ("02:4e:0a:c8:00:02", "10.0.0.256", "IPv4 address"),
    ("02:4e:0a:c8:00:02", "fe80::1", "IPv4 address"), ("02:4e:0a:c8:00:02", None, "IPv4 address")])
def test_bad_input_is_refused_by_name(mac, ip, says):
    with pytest.raises(ValueError, match=says):
        gratuitous_arp(mac, ip)
