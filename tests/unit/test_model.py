"""Validation helpers shared by the API, netctl and the driver."""

from __future__ import annotations

import netaddr
import pytest

from netplugin.errors import InvalidRequest
from netplugin.model import (Allocation, Binding, Network, check_address, check_docker_id, check_mac,
                             check_name, check_range, check_sandbox_key, check_subnet, check_vlan, mac_for)

from .conftest import did

S24 = netaddr.IPNetwork("10.10.0.0/24")


@pytest.mark.parametrize("value,expected", [("10.10.0.0/24", "10.10.0.0/24"), ("10.0.0.0/16", "10.0.0.0/16"),
                                            ("192.168.7.4/30", "192.168.7.4/30")])
def test_check_subnet_ok(value, expected):
    net = check_subnet(value)
    assert isinstance(net, netaddr.IPNetwork) and str(net) == expected


@pytest.mark.parametrize("value,words", [
    (None, "IPv4 CIDR"), (24, "IPv4 CIDR"), ("10.10.0.0", "IPv4 CIDR"), ("", "IPv4 CIDR"),
    ("10.10.0.300/24", "not a valid"), ("ten/24", "not a valid"), ("10.10.0.0/33", "not a valid"),
    ("fd00::/64", "IPv6"), ("10.10.0.1/24", "did you mean 10.10.0.0/24"),
    ("10.0.0.0/15", "/16 to /30"), ("10.0.0.0/8", "/16 to /30"), ("10.10.0.0/31", "/16 to /30"),
    ("10.10.0.0/32", "/16 to /30"),
])
def test_check_subnet_refuses(value, words):
    with pytest.raises(InvalidRequest) as exc:
        check_subnet(value)
    assert words in exc.value.message


@pytest.mark.parametrize("value,expected", [("10.10.0.7", "10.10.0.7"), ("10.10.0.7/24", "10.10.0.7"),
                                            ("10.10.0.1", "10.10.0.1"), ("10.10.0.254", "10.10.0.254")])
def test_check_address_ok(value, expected):
    assert str(check_address(value, S24)) == expected


@pytest.mark.parametrize("value,words", [
    ("10.10.0.0", "network or broadcast"), ("10.10.0.255", "network or broadcast"),
    ("10.10.1.7", "outside subnet"), ("fd00::1", "outside subnet"), ("", "not a valid IPv4"),
    ("10.10.0", "not a valid IPv4"), ("10.10.0.07", "not a valid IPv4"), ("banana", "not a valid IPv4"),
    (None, "not a valid IPv4"),
])
def test_check_address_refuses(value, words):
    with pytest.raises(InvalidRequest) as exc:
        check_address(value, S24, "gateway")
    assert words in exc.value.message and exc.value.message.startswith("gateway")


@pytest.mark.parametrize("value,expected", [("1", 1), ("4094", 4094), (100, 100), ("0100", 100)])
def test_check_vlan_ok(value, expected):
    assert check_vlan(value) == expected


@pytest.mark.parametrize("value,words", [("0", "out of range"), ("4095", "out of range"), ("5000", "out of range"),
                                         ("-1", "out of range"), ("abc", "not a number"), ("", "not a number"),
                                         (None, "not a number"), ("1.5", "not a number"), ("0x10", "not a number"),
                                         (" 100", "not a number"), ("1_00", "not a number"),
                                         ("+100", "not a number"), ("\u0661\u0660\u0660", "not a number"),
                                         ("100\n", "not a number"), (True, "not a number")])
def test_check_vlan_refuses(value, words):
    with pytest.raises(InvalidRequest) as exc:
        check_vlan(value)
    assert words in exc.value.message and "1 to 4094" in exc.value.message


@pytest.mark.parametrize("value,expected", [("02:42:AC:11:00:05", "02:42:ac:11:00:05"),
                                            ("02-42-ac-11-00-05", "02:42:ac:11:00:05"),
                                            ("00:00:5e:00:53:01", "00:00:5e:00:53:01")])
def test_check_mac_ok(value, expected):
    assert check_mac(value) == expected


@pytest.mark.parametrize("value,words", [("zz:zz:zz:zz:zz:zz", "invalid"), ("02:42:ac:11:00", "invalid"),
                                         ("", "invalid"), (None, "invalid"),
                                         ("01:00:5e:00:00:01", "multicast"), ("ff:ff:ff:ff:ff:ff", "multicast"),
                                         ("33:33:00:00:00:01", "multicast")])
def test_check_mac_refuses(value, words):
    with pytest.raises(InvalidRequest) as exc:
        check_mac(value)
    assert words in exc.value.message


@pytest.mark.parametrize("ip,mac", [("10.10.0.7", "02:4e:0a:0a:00:07"), ("192.168.255.254", "02:4e:c0:a8:ff:fe"),
                                    ("0.0.0.1", "02:4e:00:00:00:01")])
def test_mac_for(ip, mac):
    assert mac_for(ip) == mac
    assert check_mac(mac) == mac                # locally administered unicast, accepted as is


def test_mac_for_is_unique_per_address():
    macs = {mac_for(str(ip)) for ip in netaddr.IPNetwork("10.10.0.0/22")}
    assert len(macs) == 1024


def test_check_docker_id():
    assert check_docker_id(did("x"), "NetworkID") == did("x")
    for bad in (did("x").upper(), did("x")[:-1], "", None, 5, " " + did("x")):
        with pytest.raises(InvalidRequest) as exc:
            check_docker_id(bad, "NetworkID")
        assert "NetworkID" in exc.value.message and "64 lowercase hex" in exc.value.message


@pytest.mark.parametrize("check,value", [
    (lambda v: check_docker_id(v, "NetworkID"), did("x") + "\n"),
    (check_name, "prod\n"),
])
def test_trailing_newline_is_refused(check, value):
    """The patterns end in '$', which also matches before a final newline:
    'prod\n' would become a second network name (and an etcd key with a
    newline in it)."""
    with pytest.raises(InvalidRequest):
        check(value)


def test_check_name():
    assert check_name("prod-db_1.a") == "prod-db_1.a"
    for bad in ("", "-prod", "a b", "x" * 64, None, "prod/1"):
        with pytest.raises(InvalidRequest):
            check_name(bad)


def test_check_range():
    assert str(check_range("10.10.0.128/25", S24)) == "10.10.0.128/25"
    assert str(check_range("10.10.0.0/24", S24)) == "10.10.0.0/24"
    for bad in ("10.10.1.0/25", "10.10.0.129/25", "10.0.0.0/8", "x", None):
        with pytest.raises(InvalidRequest):
            check_range(bad, S24)


def test_records_roundtrip():
    net = Network(id="n-0123456789ab", name=None, subnet="10.10.0.0/24", gateway="10.10.0.1", vlan=7,
                  ranges=["10.10.0.128/25"], aux={"r": "10.10.0.2"})
    assert Network.from_json(net.to_json()) == net
    assert net.label == "n-0123456789ab"
    net.name = "prod"
    assert net.label == "prod"
    alloc = Allocation("10.10.0.7", "endpoint", "h1", endpoint=did("e"))
    assert Allocation.from_json(alloc.to_json().encode()) == alloc
    b = Binding(did("d"), "n-0123456789ab", "h1", pool="10.10.0.0/24")
    assert Binding.from_json(b.to_json()) == b


@pytest.mark.parametrize("value", ["", "/var/run/docker/netns/0123456789ab", "/var/run/docker/netns/default",
                                   "/run/user/1000/docker/netns/ingress_sbox"])
def test_check_sandbox_key_ok(value):
    assert check_sandbox_key(value) == value


@pytest.mark.parametrize("value", ["relative/netns", "/var/run/docker/netns/../../../proc/1/ns/net",
                                   "/var/run/docker/netns/x;reboot", "/var/run/docker/netns/$(id)",
                                   "/var/run/docker/netns/x\n", "/var/run/docker/netns/\u202ex", "/a//b", 5, None])
def test_check_sandbox_key_refuses(value):
    with pytest.raises(InvalidRequest) as exc:
        check_sandbox_key(value)
    assert exc.value.message.startswith("SandboxKey")
