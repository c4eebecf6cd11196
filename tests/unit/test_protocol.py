"""Every protocol method through the Flask test client, in the order Docker
calls them, with replies checked exactly."""

from __future__ import annotations

import time
import json

import pytest

from netplugin.api.wire import CONTENT_TYPE
from netplugin.model import Allocation, Endpoint, Network

from .conftest import GATEWAY_TYPE, did

P = "/netplugin/v1"


def network_records(np) -> list[Network]:
    return np.store.list_networks()


# -- discovery and capabilities ----------------------------------------------------------

def test_plugin_activate(np):
    resp = np.post("Plugin.Activate", data=b"")
    assert resp.status_code == 200
    assert resp.mimetype == CONTENT_TYPE
    assert resp.get_json() == {"Implements": ["NetworkDriver", "IpamDriver"]}


def test_network_get_capabilities_is_local_scope(np):
    assert np.ok("NetworkDriver.GetCapabilities", {}) == {"Scope": "local", "ConnectivityScope": "global"}


def test_ipam_get_capabilities(np):
    assert np.ok("IpamDriver.GetCapabilities", {}) == {"RequiresMACAddress": False,
                                                       "RequiresRequestReplay": False}


def test_ipam_default_address_spaces(np):
    assert np.ok("IpamDriver.GetDefaultAddressSpaces", {}) == {
        "LocalDefaultAddressSpace": "netplugin", "GlobalDefaultAddressSpace": "netplugin"}


def test_empty_body_is_an_empty_object(np):
    resp = np.post("NetworkDriver.GetCapabilities", data=b"")
    assert resp.status_code == 200
    assert resp.get_json()["Scope"] == "local"


# -- network create: RequestPool, RequestAddress(gateway), CreateNetwork -------------------

def test_network_create_call_order_writes_one_global_network(np):
    docker_net = did("docker-net-prod")
    pool = np.ok("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.10.0.0/24",
                                            "SubPool": "", "Options": {}, "V6": False})
    assert pool == {"PoolID": "10.10.0.0/24", "Pool": "10.10.0.0/24", "Data": {}}
    assert np.kv.dump() == {}            # RequestPool writes nothing

    gw = np.ok("IpamDriver.RequestAddress", {"PoolID": "10.10.0.0/24", "Address": "",
                                             "Options": {"RequestAddressType": GATEWAY_TYPE}})
    assert gw == {"Address": "10.10.0.1/24", "Data": {}}
    held = np.allocation("10.10.0.0/24", "10.10.0.1")
    assert (held.kind, held.host, held.endpoint) == ("gateway", "h1", "")

    assert np.ok("NetworkDriver.CreateNetwork",
                 np.create_network_body(docker_net, "10.10.0.0/24", "10.10.0.1/24", vlan=100, name="prod")) == {}
    (net,) = network_records(np)
    assert (net.name, net.subnet, net.gateway, net.vlan, net.ranges, net.aux, net.origin) == \
        ("prod", "10.10.0.0/24", "10.10.0.1", 100, [], {}, "docker")
    assert net.id.startswith("n-") and len(net.id) == 14
    assert np.store.network_by_name("prod").id == net.id
    assert np.store.network_by_subnet("10.10.0.0/24").id == net.id
    assert np.kv.get(f"{P}/index/vlan/100").value.decode() == net.id
    binding = np.store.get_binding("h1", docker_net)
    assert (binding.network, binding.host, binding.pool) == (net.id, "h1", "10.10.0.0/24")
    # the gateway allocation now belongs to the network
    held = np.allocation("10.10.0.0/24", "10.10.0.1")
    assert (held.kind, held.network) == ("gateway", net.id)
    # nothing on the datapath until a container comes
    assert np.switch.ports == {} and np.links.links == {}


def test_network_create_with_explicit_gateway(np):
    net = np.create_network(subnet="10.20.0.0/24", vlan=120, name="db", gateway="10.20.0.254")
    assert net.gateway == "10.20.0.254/24"
    assert np.store.network_by_name("db").gateway == "10.20.0.254"
    assert np.allocation("10.20.0.0/24", "10.20.0.254").kind == "gateway"
    assert np.allocation("10.20.0.0/24", "10.20.0.1") is None


def test_request_pool_is_idempotent(np):
    body = {"AddressSpace": "netplugin", "Pool": "10.10.0.0/24", "SubPool": "10.10.0.128/25",
            "Options": {}, "V6": False}
    first, second = np.ok("IpamDriver.RequestPool", body), np.ok("IpamDriver.RequestPool", body)
    assert first == second == {"PoolID": "10.10.0.0/24@10.10.0.128/25", "Pool": "10.10.0.0/24", "Data": {}}


def test_request_pool_of_existing_network_names_its_gateway(np):
    np.create_network(subnet="10.10.0.0/24", gateway="10.10.0.254")
    pool = np.request_pool("10.10.0.0/24")
    assert pool == {"PoolID": "10.10.0.0/24", "Pool": "10.10.0.0/24",
                    "Data": {GATEWAY_TYPE: "10.10.0.254/24"}}


def test_empty_address_space_is_accepted(np):
    pool = np.ok("IpamDriver.RequestPool", {"AddressSpace": "", "Pool": "10.10.0.0/24"})
    assert pool["PoolID"] == "10.10.0.0/24"


def test_network_with_ip_range_records_the_range(np):
    net = np.create_network(subnet="10.10.0.0/24", ip_range="10.10.0.128/25")
    assert net.pool_id == "10.10.0.0/24@10.10.0.128/25"
    assert np.store.network_by_name("prod").ranges == ["10.10.0.128/25"]


def test_network_create_with_aux_address(np):
    """docker network create --aux-address router=10.10.0.2: Docker asks IPAM
    for the aux address (RequestAddress with Address, no options) before
    CreateNetwork, exactly as for the gateway."""
    net = np.create_network(subnet="10.10.0.0/24", aux={"router": "10.10.0.2"})
    record = np.store.network_by_name("prod")
    assert record.aux == {"router": "10.10.0.2"}
    held = np.allocation("10.10.0.0/24", "10.10.0.2")
    assert (held.kind, held.network) == ("aux", record.id)
    c = np.run_container(net)
    assert c.ip not in ("10.10.0.1", "10.10.0.2")


def test_second_docker_network_binds_to_existing_global_network(np):
    first = np.create_network(subnet="10.10.0.0/24", vlan=100, name="prod")
    before = np.kv.count_prefix(f"{P}/networks/")
    # Data names the gateway, so Docker skips the gateway request
    second = np.create_network(subnet="10.10.0.0/24", vlan=None, name="prod")
    assert second.gateway == "10.10.0.1/24"
    assert np.kv.count_prefix(f"{P}/networks/") == before == 1
    b1, b2 = np.store.get_binding("h1", first.id), np.store.get_binding("h1", second.id)
    assert b1.network == b2.network


def test_other_host_joins_existing_network_by_subnet_alone(np, np2):
    np.create_network(subnet="10.10.0.0/24", vlan=100, name="prod")
    net2 = np2.create_network(subnet="10.10.0.0/24", vlan=None, name=None)
    assert np2.store.get_binding("h2", net2.id).network == np.store.network_by_name("prod").id
    c = np2.run_container(net2)
    assert np.switch.ports == {}
    assert np2.switch.ports[f"np{c.endpoint[:11]}"]["tag"] == 100


# -- container: RequestAddress, CreateEndpoint, Join ---------------------------------------

def test_container_lifecycle_full_docker_order(np):
    net = np.create_network(subnet="10.10.0.0/24", vlan=100, name="prod")
    net_id = np.store.network_by_name("prod").id
    ep = did("endpoint-web-1")

    addr = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "", "Options": {}})
    assert set(addr) == {"Address", "Data"} and addr["Data"] == {}
    ip, plen = addr["Address"].split("/")
    assert plen == "24"
    held = np.allocation("10.10.0.0/24", ip)
    assert (held.kind, held.host, held.endpoint, held.network) == ("endpoint", "h1", "", net_id)

    created = np.ok("NetworkDriver.CreateEndpoint", np.endpoint_body(net, ep, addr["Address"]))
    octets = [int(x) for x in ip.split(".")]
    mac = "02:4e:" + ":".join(f"{o:02x}" for o in octets)
    assert created == {"Interface": {"MacAddress": mac}}

    record, _ = np.store.get_endpoint(ep)
    assert (record.network, record.docker_network, record.host, record.ip, record.prefixlen, record.mac,
            record.vlan, record.network_name) == (net_id, net.id, "h1", ip, 24, mac, 100, "prod")
    assert (record.port, record.peer) == (f"np{ep[:11]}", f"nc{ep[:11]}")
    assert np.allocation("10.10.0.0/24", ip).endpoint == ep
    assert np.switch.bridges["nptest0"]["datapath_type"] == "netdev"
    port = np.switch.ports[record.port]
    assert port == {"bridge": "nptest0", "tag": 100, "vlan_mode": "access",
                    "external_ids": {"np-endpoint": ep, "np-network": net_id, "np-host": "h1"}}
    host_end, peer_end = np.links.links[record.port], np.links.links[record.peer]
    assert (peer_end["mac"], peer_end["mtu"], host_end["up"]) == (mac, 1500, True)
    assert not host_end["tx_checksum"] and not peer_end["tx_checksum"]   # netdev datapath

    joined = np.ok("NetworkDriver.Join", {"NetworkID": net.id, "EndpointID": ep,
                                          "SandboxKey": "/var/run/docker/netns/0123456789ab", "Options": {}})
    assert joined["InterfaceName"] == {"SrcName": record.peer, "DstPrefix": "eth"}
    assert joined["Gateway"] == "10.10.0.1"
    assert joined == {"InterfaceName": {"SrcName": record.peer, "DstPrefix": "eth"},
                      "Gateway": "10.10.0.1", "DisableGatewayService": True}
    assert np.store.get_endpoint(ep)[0].sandbox == "/var/run/docker/netns/0123456789ab"

    info = np.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": net.id, "EndpointID": ep})
    assert info == {"Value": {"network": "prod", "network_id": net_id, "vlan": 100, "ip": ip, "mac": mac,
                              "port": record.port, "host": "h1", "bridge": "nptest0"}}

    # container stop / rm: Leave, DeleteEndpoint, ReleaseAddress
    ids = {"NetworkID": net.id, "EndpointID": ep}
    assert np.ok("NetworkDriver.Leave", ids) == {}
    assert np.ok("NetworkDriver.DeleteEndpoint", ids) == {}
    assert np.store.get_endpoint(ep) is None
    assert np.switch.ports == {} and np.links.links == {}
    assert np.allocation("10.10.0.0/24", ip) is not None       # still held until ReleaseAddress
    assert np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": ip}) == {}
    assert np.allocation("10.10.0.0/24", ip) is None

    # network rm: DeleteNetwork, ReleaseAddress(gateway), ReleasePool
    assert np.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net.id}) == {}
    assert np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.10.0.1"}) == {}
    assert np.ok("IpamDriver.ReleasePool", {"PoolID": net.pool_id}) == {}
    assert np.kv.keys() == [f"{P}/meta/networks"]


def test_create_endpoint_with_docker_mac_returns_empty_object(np):
    net = np.create_network()
    c = np.run_container(net, mac="02:42:AC:11:00:05")
    assert c.create_reply == {}
    record, _ = np.store.get_endpoint(c.endpoint)
    assert record.mac == "02:42:ac:11:00:05"
    assert np.links.links[record.peer]["mac"] == "02:42:ac:11:00:05"


def test_static_ip_is_honoured(np):
    net = np.create_network()
    c = np.run_container(net, ip="10.10.0.77")
    assert c.address == "10.10.0.77/24"
    assert np.store.get_endpoint(c.endpoint)[0].ip == "10.10.0.77"


def test_two_containers_get_distinct_addresses_ports_and_veths(np):
    net = np.create_network()
    a, b = np.run_container(net), np.run_container(net)
    assert a.ip != b.ip
    assert len(np.switch.ports) == 2 and len(np.links.links) == 4
    np.stop_container(net, a)
    assert list(np.switch.ports) == [f"np{b.endpoint[:11]}"]
    assert np.allocation("10.10.0.0/24", b.ip).endpoint == b.endpoint


def test_bridge_is_created_once(np):
    net = np.create_network()
    np.run_container(net)
    np.run_container(net)
    assert [c[0] for c in np.switch.calls].count("ensure_bridge") == 1


def test_system_datapath_keeps_tx_checksum(np):
    np.cfg.datapath_type = "system"
    net = np.create_network()
    c = np.run_container(net)
    record, _ = np.store.get_endpoint(c.endpoint)
    assert np.links.links[record.port]["tx_checksum"] is True


def test_mtu_setting_reaches_the_veth(np):
    np.cfg.mtu = 9000
    net = np.create_network()
    c = np.run_container(net)
    assert np.links.links[f"nc{c.endpoint[:11]}"]["mtu"] == 9000


def test_delete_network_keeps_global_network_while_other_docker_network_bound(np):
    first = np.create_network()
    second = np.create_network(vlan=None)
    np.remove_network(first)
    assert np.store.network_by_name("prod") is not None
    assert np.allocation("10.10.0.0/24", "10.10.0.1").kind == "gateway"   # gateway not released
    np.remove_network(second)
    assert np.store.network_by_name("prod") is None
    assert np.kv.keys(f"{P}/ipam/") == []


def test_delete_network_keeps_netctl_network(np):
    np.store.create_network(Network(id="n-0123456789ab", name="prod", subnet="10.10.0.0/24",
                                    gateway="10.10.0.1", vlan=100, origin="netctl"),
                            [Allocation("10.10.0.1", "gateway", "admin", network="n-0123456789ab")])
    net = np.create_network(vlan=None, name="prod")
    np.remove_network(net)
    assert np.store.network_by_name("prod").id == "n-0123456789ab"
    assert np.store.get_binding("h1", net.id) is None
    assert np.allocation("10.10.0.0/24", "10.10.0.1") is not None


def test_delete_unknown_network_succeeds_and_writes_nothing(np):
    before = np.kv.dump()
    assert np.ok("NetworkDriver.DeleteNetwork", {"NetworkID": did("never-created")}) == {}
    assert np.kv.dump() == before


# -- the optional and swarm-only calls ------------------------------------------------------

def test_program_and_revoke_external_connectivity(np):
    net = np.create_network()
    c = np.run_container(net)
    ids = {"NetworkID": net.id, "EndpointID": c.endpoint, "Options": {}}
    before = np.kv.dump()
    assert np.ok("NetworkDriver.ProgramExternalConnectivity", ids) == {}
    assert np.ok("NetworkDriver.RevokeExternalConnectivity", ids) == {}
    assert np.kv.dump() == before


def test_discover_new_and_delete(np):
    body = {"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.5", "self": True}}
    assert np.ok("NetworkDriver.DiscoverNew", body) == {}
    assert np.ok("NetworkDriver.DiscoverDelete", body) == {}
    assert np.kv.dump() == {}


def test_allocate_and_free_network(np):
    assert np.ok("NetworkDriver.AllocateNetwork", {"NetworkID": did("swarm-net"), "Options": {},
                                                   "IPv4Data": []}) == {"Options": {}}
    assert np.ok("NetworkDriver.FreeNetwork", {"NetworkID": did("swarm-net")}) == {}
    assert np.kv.dump() == {}


def test_reply_content_type_is_plugin_json(np):
    resp = np.post("NetworkDriver.GetCapabilities", {})
    assert resp.headers["Content-Type"].startswith(CONTENT_TYPE)
    assert json.loads(resp.get_data()) == {"Scope": "local", "ConnectivityScope": "global"}


def test_compare_ports_with_store_reports_differences(np):
    net = np.create_network()
    a, b = np.run_container(net), np.run_container(net)
    assert np.bridge.compare_with_store() == {"ports_without_record": [], "records_without_port": []}
    np.switch.ports.pop(f"np{a.endpoint[:11]}")
    np.switch.ports["npdeadbeef000"] = {"bridge": "nptest0", "tag": 100, "vlan_mode": "access",
                                        "external_ids": {"np-endpoint": did("ghost"), "np-host": "h1"}}
    assert np.bridge.compare_with_store() == {"ports_without_record": ["npdeadbeef000"],
                                                    "records_without_port": [a.endpoint[:12]]}
    assert b  # b's port and record agree, so it is in neither list


@pytest.mark.parametrize("method", ["NetworkDriver.ProgramExternalConnectivity",
                                    "NetworkDriver.EndpointOperInfo", "NetworkDriver.Join"])
def test_endpoint_calls_only_read(np, method):
    net = np.create_network()
    c = np.run_container(net)
    before = (np.kv.dump(), dict(np.switch.ports), dict(np.links.links))
    # the same SandboxKey run_container joined with: Join has nothing new to record
    np.ok(method, {"NetworkID": net.id, "EndpointID": c.endpoint,
                   "SandboxKey": f"/var/run/docker/netns/{c.endpoint[:12]}", "Options": {}})
    assert (np.kv.dump(), dict(np.switch.ports), dict(np.links.links)) == before


def test_leave_begins_removing_the_port_and_delete_endpoint_finishes(np):
    net = np.create_network()
    c = np.run_container(net)
    port = f"np{c.endpoint[:11]}"
    ids = {"NetworkID": net.id, "EndpointID": c.endpoint}
    np.ok("NetworkDriver.Leave", ids)
    assert np.store.get_endpoint(c.endpoint) is not None        # the record waits for DeleteEndpoint
    deadline = time.monotonic() + 5
    while port in np.switch.ports and time.monotonic() < deadline:
        time.sleep(0.01)
    assert port not in np.switch.ports                           # the port went without DeleteEndpoint
    np.ok("NetworkDriver.DeleteEndpoint", ids)
    assert np.store.get_endpoint(c.endpoint) is None
    np.settle()                                                  # the veth goes right after the answer
    assert np.links.links == {}


def test_join_after_leave_puts_the_port_back(np):
    net = np.create_network()
    c = np.run_container(net)
    port = f"np{c.endpoint[:11]}"
    ids = {"NetworkID": net.id, "EndpointID": c.endpoint}
    np.ok("NetworkDriver.Leave", ids)
    np.ok("NetworkDriver.Join", {**ids, "SandboxKey": f"/var/run/docker/netns/{c.endpoint[:12]}", "Options": {}})
    assert np.switch.ports[port]["tag"] == net_vlan(np, net)
    assert np.switch.ports[port]["external_ids"]["np-endpoint"] == c.endpoint


def net_vlan(np, net) -> int:
    return np.store.get_endpoint(next(iter(np.store.list_endpoints())).id)[0].vlan


def test_join_records_a_new_sandbox_key(np):
    net = np.create_network()
    c = np.run_container(net)
    np.ok("NetworkDriver.Join", {"NetworkID": net.id, "EndpointID": c.endpoint,
                                 "SandboxKey": "/var/run/docker/netns/feedfacecafe"})
    assert np.store.get_endpoint(c.endpoint)[0].sandbox == "/var/run/docker/netns/feedfacecafe"


def test_endpoint_record_roundtrip_json():
    ep = Endpoint(id=did("e"), network="n-0123456789ab", docker_network=did("d"), host="h1", ip="10.10.0.7",
                  prefixlen=24, mac="02:4e:0a:0a:00:07", port="np1", peer="nc1", vlan=100)
    again = Endpoint.from_json(ep.to_json())
    assert again == ep
    data = json.loads(ep.to_json())
    data["future_field"] = 1
    assert Endpoint.from_json(json.dumps(data)) == ep


def test_two_hosts_create_the_same_network_at_the_same_moment(np, np2):
    """h1 and h2 run the same 'docker network create' at once: both claim the
    gateway (the second sees the first's claim and goes on, as Ipam._gateway
    says: 'another host is creating the same network right now'), then h2's
    CreateNetwork lands first. Both must end bound to one global network."""
    pool1, pool2 = np.request_pool("10.10.0.0/24"), np2.request_pool("10.10.0.0/24")
    gw1 = np.request_gateway(pool1["PoolID"])["Address"]
    gw2 = np2.request_gateway(pool2["PoolID"])["Address"]
    assert gw1 == gw2 == "10.10.0.1/24"
    d1, d2 = did("h1-prod"), did("h2-prod")
    np2.ok("NetworkDriver.CreateNetwork", np2.create_network_body(d2, "10.10.0.0/24", gw2, vlan=100, name="prod"))
    np.ok("NetworkDriver.CreateNetwork", np.create_network_body(d1, "10.10.0.0/24", gw1, vlan=100, name="prod"))
    (net,) = np.store.list_networks()
    assert np.store.get_binding("h1", d1).network == np.store.get_binding("h2", d2).network == net.id


def test_join_does_not_wait_for_the_gratuitous_arp(np, monkeypatch):
    """The announcement is sent after Join has answered, and still sent."""
    import threading

    class SlowArp:
        def __init__(self):
            self.release, self.sent = threading.Event(), []

        def announce(self, ep):
            assert self.release.wait(10)
            self.sent.append(ep.ip)

    arp = SlowArp()
    monkeypatch.setattr(np.arp, "announce", arp.announce)
    np.SETTLES = ()                    # the harness must not wait for the background thread here
    net = np.create_network()
    c = np.run_container(net)          # Join answered while the announcement is held
    assert arp.sent == []
    arp.release.set()
    deadline = time.monotonic() + 5
    while not arp.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert arp.sent == [c.ip]


def test_a_bridge_deleted_behind_the_daemon_is_made_again(np):
    """An OVS database reset or a stray del-br must not fail every later
    CreateEndpoint until the daemon restarts."""
    net = np.create_network()
    np.run_container(net)
    np.switch.bridges.clear()
    np.switch.ports.clear()
    c = np.run_container(net)
    assert np.cfg.bridge in np.switch.bridges
    assert np.switch.ports[np.store.get_endpoint(c.endpoint)[0].port]["bridge"] == np.cfg.bridge


def test_join_waits_for_the_switch_to_open_the_port_and_says_when_it_could_not(np):
    """CreateEndpoint answers once OVSDB has the port; Join, after which the
    container can send, answers once ovs-vswitchd has opened it."""
    from netplugin.errors import DataplaneError
    net = np.create_network()
    c = np.run_container(net)
    assert ("wait_ofport", f"np{c.endpoint[:11]}") in np.switch.calls
    np.switch.fail_next("wait_ofport", DataplaneError("Open vSwitch could not open port npx (could not open "
                                                      "network device npx (No such device))"))
    r = np.client.post("/NetworkDriver.Join", json={"NetworkID": net.id, "EndpointID": c.endpoint,
                                                    "SandboxKey": "", "Options": {}})
    assert r.status_code == 500 and "could not open port" in r.get_json()["Err"]


def test_a_backlog_of_veth_deletions_makes_delete_endpoint_wait(np, monkeypatch):
    """Veths go after DeleteEndpoint answers, but never more than VETH_BACKLOG
    of them: past that, DeleteEndpoint deletes its own before answering."""
    import threading
    from netplugin import background as background_mod
    monkeypatch.setattr(background_mod, "BACKLOG", 1)
    net = np.create_network()
    a, b = np.run_container(net), np.run_container(net)
    held, real_delete = threading.Event(), np.links.delete

    def slow_delete(name):
        if name == f"np{a.endpoint[:11]}":
            assert held.wait(10)
        return real_delete(name)
    monkeypatch.setattr(np.links, "delete", slow_delete)
    np.SETTLES = ()
    np.ok("NetworkDriver.Leave", {"NetworkID": net.id, "EndpointID": a.endpoint})
    np.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net.id, "EndpointID": a.endpoint})
    assert f"nc{a.endpoint[:11]}" in np.links.links                 # a's veth waits in the background
    np.ok("NetworkDriver.Leave", {"NetworkID": net.id, "EndpointID": b.endpoint})
    np.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net.id, "EndpointID": b.endpoint})
    assert f"nc{b.endpoint[:11]}" not in np.links.links             # b's was deleted before the answer
    held.set()
    np.settle()
    assert np.links.links == {}
