"""Every error path of the protocol: the status is 4xx/5xx, Err and Error are
both present, equal and non-empty, the message says what to do, and the store
(and the datapath) are untouched wherever nothing should change."""

from __future__ import annotations

import contextlib
import copy
import time

import pytest

import netplugin.naming as naming_mod
import netplugin.networks as networks_mod
from netplugin.errors import DataplaneError
from netplugin.model import Allocation, Network

from .conftest import GATEWAY_TYPE, GENERIC, did
from .fakes import ovs_down

P = "/netplugin/v1"
NET = did("some-docker-network")
EP = did("some-endpoint")


@contextlib.contextmanager
def nothing_changes(np):
    before = (np.kv.dump(), copy.deepcopy(np.switch.ports), copy.deepcopy(np.links.links))
    yield
    after = (np.kv.dump(), np.switch.ports, np.links.links)
    assert after[0] == before[0], "the store changed"
    assert after[1] == before[1], "OVS ports changed"
    assert after[2] == before[2], "links changed"


# -- transport --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["NetworkDriver.CreateNetwork", "IpamDriver.RequestPool",
                                    "NetworkDriver.CreateEndpoint", "IpamDriver.RequestAddress"])
def test_bad_json(np, method):
    with nothing_changes(np):
        msg = np.fail(method, data=b'{"NetworkID": ', status=400)
    assert "not valid JSON" in msg


def test_body_that_is_not_utf8(np):
    msg = np.fail("IpamDriver.RequestPool", data=b'{"Pool": "\xff\xfe"}', status=400)
    assert "JSON" in msg


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_body_that_is_not_an_object(np, raw):
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", data=raw, status=400)
    assert "JSON object" in msg


def test_body_over_one_mib(np):
    body = b'{"Pool": "' + b"x" * (1 << 20) + b'"}'
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestPool", data=body, status=413)
    assert "1 MiB" in msg


def test_body_just_under_one_mib_is_read(np):
    pad = (1 << 20) - 200
    body = ('{"AddressSpace": "netplugin", "Pool": "10.10.0.0/24", "Pad": "' + "x" * pad + '"}').encode()
    assert len(body) <= 1 << 20
    resp = np.post("IpamDriver.RequestPool", data=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)


@pytest.mark.parametrize("path", ["NetworkDriver.Frobnicate", "IpamDriver.RequestPools", "Plugin.Deactivate",
                                  "NetworkDriver", "nothing/here"])
def test_unknown_method_is_404_with_err(np, path):
    msg = np.fail(path, {}, status=404)
    assert path in msg and "not implement" in msg


def test_get_instead_of_post(np):
    resp = np.client.get("/NetworkDriver.GetCapabilities")
    assert resp.status_code == 405
    body = resp.get_json(force=True)
    assert body["Err"] and body["Err"] == body["Error"]


# -- missing fields and wrong types ----------------------------------------------------------

MISSING = [
    ("NetworkDriver.CreateNetwork", {"Options": {}, "IPv4Data": []}, "NetworkID"),
    ("NetworkDriver.DeleteNetwork", {}, "NetworkID"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "Interface": {}}, "EndpointID"),
    ("NetworkDriver.CreateEndpoint", {"EndpointID": EP, "Interface": {}}, "NetworkID"),
    ("NetworkDriver.Join", {"NetworkID": NET}, "EndpointID"),
    ("NetworkDriver.Leave", {"EndpointID": EP}, "NetworkID"),
    ("NetworkDriver.DeleteEndpoint", {"NetworkID": NET}, "EndpointID"),
    ("NetworkDriver.EndpointOperInfo", {"NetworkID": NET}, "EndpointID"),
    ("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET}, "EndpointID"),
    ("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET}, "EndpointID"),
    ("NetworkDriver.DiscoverNew", {"DiscoveryData": {}}, "DiscoveryType"),
    ("NetworkDriver.DiscoverDelete", {"DiscoveryData": {}}, "DiscoveryType"),
    ("NetworkDriver.AllocateNetwork", {"Options": {}}, "NetworkID"),
    ("NetworkDriver.FreeNetwork", {}, "NetworkID"),
    ("IpamDriver.RequestAddress", {"Address": ""}, "PoolID"),
    ("IpamDriver.ReleaseAddress", {"Address": "10.10.0.5"}, "PoolID"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "10.10.0.0/24"}, "Address"),
    ("IpamDriver.ReleasePool", {}, "PoolID"),
]


@pytest.mark.parametrize("method,body,name", MISSING, ids=[f"{m}-{n}" for m, _, n in MISSING])
def test_missing_field(np, method, body, name):
    with nothing_changes(np):
        msg = np.fail(method, body, status=400)
    assert f"field {name} is missing" in msg


WRONG_TYPES = [
    ("NetworkDriver.CreateNetwork", {"NetworkID": 7}, "NetworkID"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": []}, "Options"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "IPv4Data": {"Pool": "10.10.0.0/24"}}, "IPv4Data"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "IPv6Data": "none"}, "IPv6Data"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP, "Interface": "eth0"}, "Interface"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP, "Options": "x"}, "Options"),
    ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": 5}, "SandboxKey"),
    ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": ["x"]}, "EndpointID"),
    ("NetworkDriver.DiscoverNew", {"DiscoveryType": "1"}, "DiscoveryType"),
    ("NetworkDriver.DiscoverNew", {"DiscoveryType": True}, "DiscoveryType"),
    ("IpamDriver.RequestPool", {"Pool": "10.10.0.0/24", "V6": "no"}, "V6"),
    ("IpamDriver.RequestPool", {"Pool": ["10.10.0.0/24"]}, "Pool"),
    ("IpamDriver.RequestPool", {"Pool": "10.10.0.0/24", "SubPool": 5}, "SubPool"),
    ("IpamDriver.RequestPool", {"Pool": "10.10.0.0/24", "Options": "x"}, "Options"),
    ("IpamDriver.RequestPool", {"AddressSpace": 1, "Pool": "10.10.0.0/24"}, "AddressSpace"),
    ("IpamDriver.RequestAddress", {"PoolID": "10.10.0.0/24", "Address": 167772165}, "Address"),
    ("IpamDriver.RequestAddress", {"PoolID": "10.10.0.0/24", "Options": ["gw"]}, "Options"),
    ("IpamDriver.ReleaseAddress", {"PoolID": 3, "Address": "10.10.0.5"}, "PoolID"),
]


@pytest.mark.parametrize("method,body,name", WRONG_TYPES, ids=[f"{m}-{n}" for m, _, n in WRONG_TYPES])
def test_wrong_type(np, method, body, name):
    with nothing_changes(np):
        msg = np.fail(method, body, status=400)
    assert f"field {name} must be a" in msg


# -- invalid Docker ids ---------------------------------------------------------------------

BAD_IDS = ["abc", did("x")[:63], did("x").upper(), did("x") + "0", "g" * 64, ""]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("method,field", [
    ("NetworkDriver.CreateNetwork", "NetworkID"), ("NetworkDriver.DeleteNetwork", "NetworkID"),
    ("NetworkDriver.CreateEndpoint", "NetworkID"), ("NetworkDriver.CreateEndpoint", "EndpointID"),
    ("NetworkDriver.Join", "EndpointID"), ("NetworkDriver.Leave", "NetworkID"),
    ("NetworkDriver.DeleteEndpoint", "EndpointID"), ("NetworkDriver.EndpointOperInfo", "EndpointID"),
])
def test_invalid_docker_ids(np, method, field, bad):
    net = np.create_network()
    body = {"NetworkID": net.id, "EndpointID": did("ok-endpoint"), "Options": {},
            "IPv4Data": [{"AddressSpace": "netplugin", "Pool": "10.10.0.0/24", "Gateway": "10.10.0.1/24"}],
            "Interface": {"Address": "10.10.0.9/24"}, field: bad}
    with nothing_changes(np):
        msg = np.fail(method, body, status=400)
    assert f"{field} {bad!r} is not a Docker id" in msg


# -- CreateNetwork options --------------------------------------------------------------------

def new_network_request(np, subnet="10.10.0.0/24"):
    """RequestPool + gateway RequestAddress, as Docker does before CreateNetwork."""
    pool = np.request_pool(subnet)
    gw = np.request_gateway(pool["PoolID"])["Address"]
    return pool, gw


@pytest.mark.parametrize("vlan,words", [("5000", "out of range"), ("0", "out of range"), ("-3", "out of range"),
                                        ("abc", "not a number"), ("", "not a number"), ("10.5", "not a number")])
def test_bad_vlan_option(np, vlan, words):
    pool, gw = new_network_request(np)
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n"), "10.10.0.0/24", gw, vlan=vlan), status=400)
    assert words in msg and "1 to 4094" in msg
    assert np.store.list_networks() == []


def test_unknown_driver_options(np):
    pool, gw = new_network_request(np)
    body = np.create_network_body(did("n"), "10.10.0.0/24", gw, extra={"mtu": "9000", "bridge": "br0"})
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", body, status=400)
    assert "bridge, mtu" in msg and "-o vlan=N" in msg


def test_generic_options_not_an_object(np):
    pool, gw = new_network_request(np)
    body = np.create_network_body(did("n"), "10.10.0.0/24", gw)
    body["Options"][GENERIC] = "vlan=100"
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", body, status=400)
    assert GENERIC in msg


def test_bad_network_name_option(np):
    pool, gw = new_network_request(np)
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n"), "10.10.0.0/24", gw, name="bad name!"), status=400)
    assert "network name 'bad name!' is invalid" in msg


def test_no_vlan_for_a_new_subnet(np):
    pool, gw = new_network_request(np)
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n"), "10.10.0.0/24", gw, vlan=None), status=400)
    assert "no global network has subnet 10.10.0.0/24" in msg and "-o vlan=N" in msg


def test_failed_network_create_is_undone_by_dockers_cleanup(np):
    """After CreateNetwork fails, Docker releases the gateway and the pool:
    the store ends exactly as it was before RequestPool."""
    before = np.kv.dump()
    pool, gw = new_network_request(np)
    np.fail("NetworkDriver.CreateNetwork", np.create_network_body(did("n"), "10.10.0.0/24", gw, vlan=None), 400)
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": gw.split("/")[0]})
    np.ok("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})
    assert np.kv.dump() == before


def test_ipv6_requested_at_request_pool(np):
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "fd00::/64", "V6": True},
                      status=400)
    assert "IPv4" in msg and "--ipv6" in msg


def test_ipv6_data_at_create_network(np):
    pool, gw = new_network_request(np)
    body = np.create_network_body(did("n"), "10.10.0.0/24", gw)
    body["IPv6Data"] = [{"AddressSpace": "netplugin", "Pool": "fd00::/64", "Gateway": "fd00::1/64"}]
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", body, status=400)
    assert "--ipv6" in msg


def test_ipv6_subnet_at_request_pool_without_v6_flag(np):
    msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "fd00::/64"}, status=400)
    assert "IPv6" in msg


def test_missing_ipam_driver(np):
    """docker network create -d netplugin without --ipam-driver: Docker's own
    IPAM fills AddressSpace with its default space."""
    body = np.create_network_body(did("n"), "172.18.0.0/16", "172.18.0.1/16")
    body["IPv4Data"][0]["AddressSpace"] = "LocalDefault"
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", body, status=400)
    assert "--ipam-driver netplugin" in msg


def test_unknown_address_space_at_request_pool(np):
    msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "GlobalDefault", "Pool": "10.10.0.0/24"}, status=400)
    assert "address space 'GlobalDefault'" in msg


def test_ipam_options_refused(np):
    msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.10.0.0/24",
                                             "Options": {"driver-opt": "1"}}, status=400)
    assert "driver-opt" in msg and "--ipam-opt" in msg


@pytest.mark.parametrize("pool,words", [("", "--subnet"), ("10.0.0.0/8", "/16 to /30"),
                                        ("10.10.0.0/31", "/16 to /30"), ("10.10.0.5/24", "did you mean 10.10.0.0/24"),
                                        ("10.10.0.0", "CIDR"), ("banana/24", "not a valid IPv4 CIDR")])
def test_bad_pools(np, pool, words):
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": pool}, status=400)
    assert words in msg


@pytest.mark.parametrize("sub", ["10.20.0.0/25", "10.10.0.5/25", "nonsense"])
def test_bad_ip_range(np, sub):
    msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.10.0.0/24",
                                             "SubPool": sub}, status=400)
    assert "ip range" in msg


def test_create_network_needs_exactly_one_ipv4_subnet(np):
    body = np.create_network_body(did("n"), "10.10.0.0/24", "10.10.0.1/24")
    body["IPv4Data"] = body["IPv4Data"] * 2
    assert "exactly one IPv4 subnet" in np.fail("NetworkDriver.CreateNetwork", body, status=400)
    body["IPv4Data"] = []
    assert "exactly one IPv4 subnet" in np.fail("NetworkDriver.CreateNetwork", body, status=400)
    body["IPv4Data"] = ["10.10.0.0/24"]
    assert "exactly one IPv4 subnet" in np.fail("NetworkDriver.CreateNetwork", body, status=400)


@pytest.mark.parametrize("aux,words", [("router=10.10.0.2", "AuxAddresses"),
                                       ({"router": "10.20.0.2"}, "outside subnet"),
                                       ({"bad name": "10.10.0.2"}, "aux address name"),
                                       ({"router": "10.10.0.255"}, "broadcast")])
def test_bad_aux_addresses(np, aux, words):
    pool, gw = new_network_request(np)
    body = np.create_network_body(did("n"), "10.10.0.0/24", gw)
    body["IPv4Data"][0]["AuxAddresses"] = aux
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", body, status=400)
    assert words in msg


@pytest.mark.parametrize("gateway", ["", "10.20.0.1/24", "10.10.0.0/24", "not-an-ip"])
def test_bad_gateway_at_create_network(np, gateway):
    body = np.create_network_body(did("n"), "10.10.0.0/24", gateway)
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", body, status=400)
    assert "gateway" in msg


# -- clashes with existing networks -----------------------------------------------------------

def test_overlapping_subnet_refused_at_request_pool(np):
    np.create_network(subnet="10.10.0.0/24")
    for pool in ("10.10.0.0/16", "10.10.0.128/25", "10.10.0.252/30"):
        with nothing_changes(np):
            msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": pool}, status=409)
        assert f"subnet {pool} overlaps network prod (10.10.0.0/24)" in msg and "choose another subnet" in msg
    assert np.request_pool("10.10.1.0/24")["PoolID"] == "10.10.1.0/24"   # a neighbour is fine


def test_overlapping_subnet_refused_at_create_network(np, np2):
    pool, gw = new_network_request(np, "10.10.0.0/16")          # h1 starts a /16 ...
    np2.create_network(subnet="10.10.5.0/24", vlan=200, name="db")  # ... h2 creates a /24 inside it meanwhile
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n16"), "10.10.0.0/16", gw, vlan=100, name="big"), status=409)
    assert "overlaps network db (10.10.5.0/24)" in msg


def test_vlan_used_by_another_network(np):
    np.create_network(subnet="10.10.0.0/24", vlan=100, name="prod")
    pool, gw = new_network_request(np, "10.20.0.0/24")
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n2"), "10.20.0.0/24", gw, vlan=100, name="dev"), status=409)
    assert "VLAN 100 is used by network prod (10.10.0.0/24)" in msg and "choose another VLAN" in msg


def test_existing_network_with_different_vlan(np):
    np.create_network(subnet="10.10.0.0/24", vlan=100, name="prod")
    pool = np.request_pool("10.10.0.0/24")
    gw = pool["Data"][GATEWAY_TYPE]
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n2"), "10.10.0.0/24", gw, vlan=200, name="prod"), status=409)
    assert "uses VLAN 100, not 200" in msg and "-o vlan=100" in msg


def test_existing_network_with_different_gateway_at_create_network(np):
    np.create_network(subnet="10.10.0.0/24")
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n2"), "10.10.0.0/24", "10.10.0.254/24", vlan=None), status=409)
    assert "has gateway 10.10.0.1, not 10.10.0.254" in msg and "--gateway 10.10.0.1" in msg


def test_existing_network_with_different_gateway_at_request_address(np):
    """docker network create --gateway 10.10.0.254: Docker asks for that
    gateway even though RequestPool named another."""
    np.create_network(subnet="10.10.0.0/24")
    pool = np.request_pool("10.10.0.0/24")
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.10.0.254",
                                                    "Options": {"RequestAddressType": GATEWAY_TYPE}}, status=409)
    assert "gateway 10.10.0.1, not 10.10.0.254" in msg


def test_existing_network_with_unknown_aux(np):
    np.create_network(subnet="10.10.0.0/24")
    body = np.create_network_body(did("n2"), "10.10.0.0/24", "10.10.0.1/24", vlan=None,
                                  aux={"router": "10.10.0.2"})
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork", body, status=409)
    assert "aux address router=10.10.0.2 is not reserved in network prod" in msg


def test_name_of_existing_network_with_other_subnet(np):
    np.create_network(subnet="10.10.0.0/24", name="prod")
    pool, gw = new_network_request(np, "10.30.0.0/24")
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n2"), "10.30.0.0/24", gw, vlan=300, name="prod"), status=409)
    assert "network prod exists with subnet 10.10.0.0/24, not 10.30.0.0/24" in msg
    assert "--subnet 10.10.0.0/24" in msg


def test_subnet_of_existing_network_under_another_name(np):
    np.create_network(subnet="10.10.0.0/24", name="prod")
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n2"), "10.10.0.0/24", "10.10.0.1/24", vlan=None, name="dev"),
                      status=409)
    assert "subnet 10.10.0.0/24 belongs to network prod, not dev" in msg


# -- addresses -----------------------------------------------------------------------------

def fill(np, net, count):
    """Claim count addresses through the real Ipam (faster than HTTP)."""
    return [np.ipam.request_address(net.pool_id, "", False) for _ in range(count)]


def test_exhausted_pool_message_counts_what_is_in_use(np):
    net = np.create_network(subnet="10.10.0.0/24")
    fill(np, net, 253)                                  # .1 is the gateway: 254 usable in all
    in_use = np.kv.count_prefix(f"{P}/ipam/10.10.0.0-24/")
    assert in_use == 254
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "", "Options": {}},
                      status=409)
    assert msg.startswith(f"network prod has no free address in 10.10.0.0/24 ({in_use} in use)")
    assert "release unused endpoints" in msg


def test_exhausted_range_message_names_the_range(np):
    net = np.create_network(subnet="10.10.0.0/24", ip_range="10.10.0.240/28")
    got = fill(np, net, 15)                             # .240-.254 (255 is broadcast)
    assert sorted(int(a.split("/")[0].split(".")[3]) for a in got) == list(range(240, 255))
    msg = np.fail("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""}, status=409)
    assert msg.startswith("network prod has no free address in 10.10.0.240/28 (15 in use)")


def test_exhausted_tiny_network(np):
    net = np.create_network(subnet="10.10.0.0/30")
    c = np.run_container(net)
    assert c.ip == "10.10.0.2"
    msg = np.fail("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""}, status=409)
    assert "network prod has no free address in 10.10.0.0/30 (2 in use)" in msg


def test_duplicate_static_ip_names_holder(np, np2):
    net = np.create_network()
    holder = np.run_container(net, ip="10.10.0.77")
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "10.10.0.77"}, status=409)
    assert f"address 10.10.0.77 in network prod is already in use by endpoint {holder.endpoint[:12]} on host h1" in msg
    assert "choose another --ip" in msg
    # the same from another host
    net2 = np2.create_network(vlan=None)
    msg2 = np2.fail("IpamDriver.RequestAddress", {"PoolID": net2.pool_id, "Address": "10.10.0.77"}, status=409)
    assert f"endpoint {holder.endpoint[:12]} on host h1" in msg2


def test_duplicate_static_ip_before_create_endpoint_names_host(np, np2):
    net = np.create_network()
    np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "10.10.0.78"})
    net2 = np2.create_network(vlan=None)
    msg = np2.fail("IpamDriver.RequestAddress", {"PoolID": net2.pool_id, "Address": "10.10.0.78"}, status=409)
    assert "a container being created on host h1" in msg


def test_gateway_as_static_ip(np):
    net = np.create_network()
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "10.10.0.1"}, status=409)
    assert "10.10.0.1" in msg and "the gateway of its network" in msg


def netctl_network_with_aux(np):
    net = Network(id="n-00000000aaaa", name="prod", subnet="10.10.0.0/24", gateway="10.10.0.1", vlan=100,
                  aux={"router": "10.10.0.2"}, origin="netctl")
    np.store.create_network(net, [Allocation("10.10.0.1", "gateway", "admin", network=net.id),
                                  Allocation("10.10.0.2", "aux", "admin", network=net.id)])
    return net


def test_aux_address_as_static_ip(np):
    netctl_network_with_aux(np)
    net = np.create_network(vlan=None, name="prod")
    ep = did("wants-the-router")
    address = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "10.10.0.2"})["Address"]
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, ep, address), status=409)
    assert "address 10.10.0.2 is an auxiliary address of network prod" in msg and "choose another --ip" in msg
    # Docker then releases the address it asked for: the aux reservation stays
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.10.0.2"})
    assert np.allocation("10.10.0.0/24", "10.10.0.2").kind == "aux"


@pytest.mark.parametrize("address,status,words", [
    ("10.10.0.300", 400, "not a valid IPv4 address"), ("10.20.0.5", 400, "outside subnet"),
    ("10.10.0.0", 400, "network or broadcast"), ("10.10.0.255", 400, "network or broadcast"),
    ("fd00::5", 400, "outside subnet"),
])
def test_bad_static_ip(np, address, status, words):
    net = np.create_network()
    with nothing_changes(np):
        msg = np.fail("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": address}, status=status)
    assert words in msg


@pytest.mark.parametrize("pool_id", ["garbage", "10.10.0.0/8", "10.10.0.0/24@10.20.0.0/25", "10.10.0.0/24@x"])
def test_unknown_pool_ids(np, pool_id):
    np.create_network()
    with nothing_changes(np):
        for method, body in (("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": ""}),
                             ("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": "10.10.0.5"}),
                             ("IpamDriver.ReleasePool", {"PoolID": pool_id})):
            msg = np.fail(method, body, status=404)
            assert "unknown to netplugin" in msg


def test_release_address_outside_pool(np):
    net = np.create_network()
    with nothing_changes(np):
        msg = np.fail("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.99.0.5"}, status=400)
    assert "outside subnet" in msg


# -- endpoints -------------------------------------------------------------------------------

def test_create_endpoint_on_unknown_network(np):
    np.create_network()
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateEndpoint",
                      {"NetworkID": did("unknown-net"), "EndpointID": EP,
                       "Interface": {"Address": "10.10.0.5/24", "MacAddress": ""}}, status=404)
    assert "not known to netplugin on host h1" in msg and "--ipam-driver netplugin" in msg


def test_create_endpoint_of_another_hosts_docker_network(np, np2):
    net2 = np2.create_network()
    address = np2.ok("IpamDriver.RequestAddress", {"PoolID": net2.pool_id, "Address": ""})["Address"]
    with nothing_changes(np):
        np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net2, EP, address), status=404)


@pytest.mark.parametrize("method", ["NetworkDriver.Join", "NetworkDriver.Leave", "NetworkDriver.EndpointOperInfo",
                                    "NetworkDriver.ProgramExternalConnectivity"])
def test_unknown_endpoint(np, method):
    net = np.create_network()
    with nothing_changes(np):
        msg = np.fail(method, {"NetworkID": net.id, "EndpointID": did("ghost"), "SandboxKey": "", "Options": {}},
                      status=404)
    assert f"endpoint {did('ghost')[:12]} does not exist" in msg


@pytest.mark.parametrize("method", ["NetworkDriver.Join", "NetworkDriver.Leave", "NetworkDriver.EndpointOperInfo"])
def test_endpoint_under_another_docker_network(np, method):
    net = np.create_network()
    other = np.create_network(vlan=None)
    c = np.run_container(net)
    with nothing_changes(np):
        np.fail(method, {"NetworkID": other.id, "EndpointID": c.endpoint, "SandboxKey": ""}, status=404)


def test_delete_unknown_endpoint_succeeds(np):
    net = np.create_network()
    with nothing_changes(np):
        assert np.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net.id, "EndpointID": did("ghost")}) == {}


def test_delete_unknown_endpoint_cleans_leftovers_by_name(np):
    net = np.create_network()
    ghost = did("ghost")
    np.links.create_veth(f"np{ghost[:11]}", f"nc{ghost[:11]}", 1500, "02:00:00:00:00:01", True)
    np.switch.ensure_bridge("nptest0", "netdev")
    np.switch.add_access_port("nptest0", f"np{ghost[:11]}", 100, {"np-endpoint": ghost})
    assert np.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net.id, "EndpointID": ghost}) == {}
    assert np.links.links == {} and np.switch.ports == {}


def test_create_endpoint_twice(np):
    net = np.create_network()
    c = np.run_container(net)
    address = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})["Address"]
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, c.endpoint, address), status=409)
    assert f"endpoint {c.endpoint[:12]} exists already on host h1" in msg


def test_create_endpoint_with_unallocated_address(np):
    net = np.create_network()
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, EP, "10.10.0.50/24"), status=409)
    assert "address 10.10.0.50 is not allocated in network prod" in msg


def test_create_endpoint_with_another_hosts_address(np, np2):
    net = np.create_network()
    net2 = np2.create_network(vlan=None)
    address = np2.ok("IpamDriver.RequestAddress", {"PoolID": net2.pool_id, "Address": ""})["Address"]
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, EP, address), status=409)
    assert "belongs to someone else (endpoint on host h2)" in msg


def test_create_endpoint_with_gateway_address(np):
    net = np.create_network()
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, EP, "10.10.0.1/24"), status=409)
    assert "gateway on host h1" in msg


@pytest.mark.parametrize("iface,words", [
    ({"Address": "", "MacAddress": ""}, "Interface.Address is empty"),
    ({"MacAddress": ""}, "Interface.Address is empty"),
    ({"Address": "10.20.0.5/24"}, "outside subnet"),
    ({"Address": "10.10.0.5/24", "AddressIPv6": "fd00::5/64"}, "IPv4 only"),
    ({"Address": "10.10.0.5/24", "MacAddress": "zz:zz"}, "MAC address 'zz:zz' is invalid"),
    ({"Address": "10.10.0.5/24", "MacAddress": "01:00:5e:00:00:01"}, "multicast"),
])
def test_create_endpoint_bad_interface(np, iface, words):
    net = np.create_network()
    np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "10.10.0.5"})
    body = np.endpoint_body(net, EP, "")
    body["Interface"] = iface
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateEndpoint", body, status=400)
    assert words in msg


def test_join_when_container_end_is_missing(np):
    net = np.create_network()
    c = np.run_container(net)
    np.links.links.pop(f"nc{c.endpoint[:11]}")
    before = np.kv.dump()
    msg = np.fail("NetworkDriver.Join", {"NetworkID": net.id, "EndpointID": c.endpoint,
                                         "SandboxKey": "/var/run/docker/netns/x"}, status=500)
    assert f"nc{c.endpoint[:11]}" in msg and "is missing" in msg
    # at most the endpoint's sandbox was recorded (for the reconciler); nothing else moved
    after = np.kv.dump()
    assert after.keys() == before.keys()
    key = np.store.k_legacy_endpoint(c.endpoint)
    assert {k for k in after if after[k] != before[k]} <= {key}
    assert np.store.get_endpoint(c.endpoint)[0].ip == c.ip


# -- the store is down ----------------------------------------------------------------------

DOWN_CALLS = [
    ("IpamDriver.RequestPool", lambda net, c: {"AddressSpace": "netplugin", "Pool": "10.20.0.0/24"}),
    ("IpamDriver.RequestAddress", lambda net, c: {"PoolID": net.pool_id, "Address": ""}),
    ("IpamDriver.RequestAddress", lambda net, c: {"PoolID": net.pool_id, "Address": "",
                                                  "Options": {"RequestAddressType": GATEWAY_TYPE}}),
    ("IpamDriver.ReleaseAddress", lambda net, c: {"PoolID": net.pool_id, "Address": c.ip}),
    ("NetworkDriver.CreateNetwork", lambda net, c: {
        "NetworkID": did("new"), "Options": {GENERIC: {"vlan": "300"}},
        "IPv4Data": [{"AddressSpace": "netplugin", "Pool": "10.30.0.0/24", "Gateway": "10.30.0.1/24"}]}),
    ("NetworkDriver.DeleteNetwork", lambda net, c: {"NetworkID": net.id}),
    ("NetworkDriver.CreateEndpoint", lambda net, c: {"NetworkID": net.id, "EndpointID": did("new-ep"),
                                                     "Interface": {"Address": "10.10.0.99/24"}}),
    ("NetworkDriver.Join", lambda net, c: {"NetworkID": net.id, "EndpointID": c.endpoint, "SandboxKey": ""}),
    ("NetworkDriver.Leave", lambda net, c: {"NetworkID": net.id, "EndpointID": c.endpoint}),
    ("NetworkDriver.EndpointOperInfo", lambda net, c: {"NetworkID": net.id, "EndpointID": c.endpoint}),
]


@pytest.mark.parametrize("method,body", DOWN_CALLS, ids=[m for m, _ in DOWN_CALLS])
def test_store_down(np, method, body, monkeypatch):
    net = np.create_network()
    c = np.run_container(net)
    monkeypatch.setattr(np.endpoints, "_made", {})      # as after a restart: nothing answered from memory
    np.kv.down = True
    with nothing_changes(np):
        msg = np.fail(method, body(net, c), status=503)
    assert "store unavailable" in msg and "etcd" in msg
    np.kv.down = False
    assert np.store.get_endpoint(c.endpoint) is not None


def test_store_down_at_delete_endpoint_keeps_the_record_and_its_address(np):
    """The port goes (Docker has forgotten the endpoint whatever the answer, and
    the switch needs no etcd), but the record and its address are not lost:
    a 503 says why, and the deletion is finished once etcd is back."""
    net = np.create_network()
    c = np.run_container(net)
    ids = {"NetworkID": net.id, "EndpointID": c.endpoint}
    np.ok("NetworkDriver.Leave", ids)
    np.kv.down = True
    msg = np.fail("NetworkDriver.DeleteEndpoint", ids, status=503)
    assert "store unavailable" in msg and "etcd" in msg
    np.kv.down = False
    assert np.store.get_endpoint(c.endpoint) is not None
    assert np.allocation(net.subnet, c.ip).endpoint == c.endpoint
    assert np.switch.ports == {}


@pytest.mark.parametrize("method", ["NetworkDriver.Leave", "NetworkDriver.EndpointOperInfo",
                                    "NetworkDriver.ProgramExternalConnectivity"])
def test_calls_about_an_endpoint_this_daemon_made_need_no_store(np, method):
    """They read only what never changes under the endpoint's id."""
    net = np.create_network()
    c = np.run_container(net)
    np.kv.down = True
    np.ok(method, {"NetworkID": net.id, "EndpointID": c.endpoint, "Options": {}})
    np.kv.down = False
    with nothing_changes(np):     # and still refused for an endpoint of another Docker network
        np.fail(method, {"NetworkID": did("other-net"), "EndpointID": c.endpoint, "Options": {}}, status=404)


def test_store_down_then_back(np):
    np.kv.down = True
    np.fail("IpamDriver.RequestPool", {"Pool": "10.10.0.0/24"}, status=503)
    np.kv.down = False
    net = np.create_network()
    assert np.run_container(net).ip


def test_calls_that_need_no_store_work_while_it_is_down(np):
    np.kv.down = True
    np.ok("Plugin.Activate", {})
    np.ok("NetworkDriver.GetCapabilities", {})
    np.ok("IpamDriver.GetCapabilities", {})
    np.ok("IpamDriver.GetDefaultAddressSpaces", {})


# -- the datapath fails during CreateEndpoint: nothing is left -------------------------------

@pytest.mark.parametrize("fake,method,exc,status", [
    ("switch", "add_access_port", DataplaneError("Open vSwitch refused to add port: boom"), 500),
    ("switch", "add_access_port", ovs_down(), 503),
    ("switch", "ensure_bridge", ovs_down(), 503),
    ("links", "create_veth", DataplaneError("cannot create veth pair: File exists"), 500),
    ("links", "create_veth", RuntimeError("netlink socket closed"), 500),
])
def test_dataplane_failure_during_create_endpoint_rolls_back(np, fake, method, exc, status):
    net = np.create_network()
    ep = did("doomed")
    address = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})["Address"]
    ip = address.split("/")[0]
    getattr(np, fake).fail_next(method, exc)
    msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, ep, address), status=status)
    assert msg
    assert np.store.get_endpoint(ep) is None                      # no endpoint record
    assert np.switch.ports == {}                                  # no OVS port
    assert np.links.links == {}                                   # no veth
    held = np.allocation("10.10.0.0/24", ip)                      # the address stays until ReleaseAddress
    assert held is not None and held.host == "h1"
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": ip})
    assert np.allocation("10.10.0.0/24", ip) is None
    # and the next container works
    assert np.run_container(net).create_reply["Interface"]["MacAddress"]


def test_deadline_passing_after_port_was_added_rolls_back(np, monkeypatch):
    net = np.create_network()
    ep = did("slow")
    address = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})["Address"]
    real_add = np.switch.add_access_port

    def slow_add(*args, **kwargs):
        real_add(*args, **kwargs)
        time.sleep(0.15)
    monkeypatch.setattr(np.switch, "add_access_port", slow_add)
    np.cfg.handler_deadline = 0.1
    msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, ep, address), status=504)
    assert "deadline" in msg and "applying the bandwidth limit" in msg
    assert np.store.get_endpoint(ep) is None and np.switch.ports == {} and np.links.links == {}


def test_deadline_passing_during_create_network_removes_the_new_network(np, monkeypatch):
    pool, gw = new_network_request(np)
    np.cfg.handler_deadline = 0.0
    monkeypatch.setattr(networks_mod.deadline, "check", _always_late)
    msg = np.fail("NetworkDriver.CreateNetwork", np.create_network_body(did("n"), "10.10.0.0/24", gw), status=504)
    assert "binding the Docker network" in msg
    assert np.store.list_networks() == [] and np.store.list_bindings() == []


def _always_late(step):
    from netplugin.errors import DeadlineExceeded
    raise DeadlineExceeded(f"the call ran past its deadline while {step}")


def test_rollback_continues_when_an_undo_step_fails(np):
    net = np.create_network()
    ep = did("double-trouble")
    address = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})["Address"]
    np.switch.fail_next("add_access_port")
    np.switch.fail_next("delete_port", ovs_down())
    np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, ep, address), status=500)
    assert np.links.links == {}
    assert np.store.get_endpoint(ep) is None


def test_ovs_failure_during_delete_endpoint_keeps_the_record(np):
    """Docker only logs DeleteEndpoint errors: what is left must name what may
    still exist, and a late ReleaseAddress must not free the address."""
    net = np.create_network()
    c = np.run_container(net)
    ids = {"NetworkID": net.id, "EndpointID": c.endpoint}
    np.switch.fail_next("delete_port", ovs_down())     # the removal Leave begins ...
    np.switch.fail_next("delete_port", ovs_down())     # ... and DeleteEndpoint's own try
    np.ok("NetworkDriver.Leave", ids)
    np.fail("NetworkDriver.DeleteEndpoint", ids, status=503)
    assert np.store.get_endpoint(c.endpoint) is not None
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": c.ip})
    assert np.allocation("10.10.0.0/24", c.ip).endpoint == c.endpoint      # still held
    # a retry finishes the job
    np.ok("NetworkDriver.DeleteEndpoint", ids)
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": c.ip})
    assert np.allocation("10.10.0.0/24", c.ip) is None
    assert np.switch.ports == {} and np.links.links == {}


def test_unexpected_exception_is_a_500_with_a_message(np, monkeypatch):
    def boom(*a, **k):
        raise KeyError("surprise")
    monkeypatch.setattr(np.ipam, "request_pool", boom)
    msg = np.fail("IpamDriver.RequestPool", {"Pool": "10.10.0.0/24"}, status=500)
    assert "internal error" in msg and "KeyError" in msg


def test_network_name_with_trailing_newline(np):
    pool, gw = new_network_request(np)
    with nothing_changes(np):
        msg = np.fail("NetworkDriver.CreateNetwork",
                      np.create_network_body(did("n"), "10.10.0.0/24", gw, name="prod\n"), status=400)
    assert "network name" in msg


def test_veth_made_then_offload_failure_is_rolled_back(np, monkeypatch):
    """Links.create_veth can fail after the pair exists (turning tx checksum
    offload off on a netdev datapath): the pair must not be left behind."""
    net = np.create_network()
    ep = did("offload")
    address = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})["Address"]
    real_create = np.links.create_veth

    def create_then_fail(host, peer, mtu, mac, tx_off):
        real_create(host, peer, mtu, mac, tx_off)
        raise DataplaneError(f"cannot turn off tx checksum offload on {host}: Operation not supported")
    monkeypatch.setattr(np.links, "create_veth", create_then_fail)
    msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, ep, address), status=500)
    assert "tx checksum" in msg
    assert np.links.links == {} and np.switch.ports == {} and np.store.get_endpoint(ep) is None


def test_delete_endpoint_refused_by_etcd_is_finished_in_the_background(np, monkeypatch):
    """Docker forgets the endpoint whatever DeleteEndpoint answers: when etcd
    is away the daemon finishes the deletion itself once it is back."""
    import time
    from netplugin import endpoints as endpoints_mod
    monkeypatch.setattr(endpoints_mod, "DELETE_RETRY_EVERY", 0.6)   # the first retry comes after the ReleaseAddress
    net = np.create_network()
    c = np.run_container(net)
    np.ok("NetworkDriver.Leave", {"NetworkID": net.id, "EndpointID": c.endpoint})
    np.kv.down = True
    np.fail("NetworkDriver.DeleteEndpoint", {"NetworkID": net.id, "EndpointID": c.endpoint}, status=503)
    np.kv.down = False
    # Docker moved on: its ReleaseAddress finds the record still there and keeps the address.
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": c.ip})
    deadline = time.monotonic() + 5
    while np.store.get_endpoint(c.endpoint) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert np.store.get_endpoint(c.endpoint) is None
    assert not np.switch.ports and not np.links.links
    deadline = time.monotonic() + 5
    while np.allocation(net.subnet, c.ip) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert np.allocation(net.subnet, c.ip) is None, "the address outlived the late deletion"


def test_overlap_error_names_a_docker_made_network_docker_has_just_stored(np, monkeypatch):
    """`docker network create` of an overlapping subnet right after the first one:
    the error names the first network as Docker does, not by its netplugin id."""
    monkeypatch.setattr(naming_mod, "NAMING_PATIENCE", 0.0)    # no background naming: the error must do it
    net = np.create_network(subnet="10.10.0.0/24", name=None)
    assert np.store.network_by_subnet("10.10.0.0/24").name is None
    np.docker.names[net.id] = "e2e-ok"                     # Docker has stored it by now
    msg = np.fail("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.10.0.0/16"}, status=409)
    assert "overlaps network e2e-ok (10.10.0.0/24)" in msg
    assert [n.subnet for n in np.store.list_networks()] == ["10.10.0.0/24"]   # naming is all that happened
