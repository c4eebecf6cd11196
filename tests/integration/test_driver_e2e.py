"""The driver end to end without Docker: the calls Docker would make, in
Docker's order, against real etcd, real OVS and real veths; the container
side is played by network namespaces."""

from __future__ import annotations

import json
import secrets

import netaddr
import pytest

from netplugin.config import Config
from netplugin.dataplane.flows import Flows
from netplugin.dataplane.links import Links, veth_names
from netplugin.dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK
from netplugin.errors import NotFound
from netplugin.ipam import ADDRESS_SPACE
from netplugin.networks import GENERIC
from netplugin.wiring import assemble

pytestmark = pytest.mark.integration


class FakeDockerNames:
    """Docker is not running: the network's name comes from -o name=... anyway."""

    def __init__(self, names: dict[str, str]):
        self.names = names
        self.asked: list[str] = []

    def network_name(self, docker_network_id: str) -> str | None:
        self.asked.append(docker_network_id)
        return self.names.get(docker_network_id)


@pytest.fixture
def driver(etcd_endpoint, prefix, store, switch, bridge, veths):
    host_id = "nptest-host-" + secrets.token_hex(3)
    cfg = Config(etcd_endpoints=[etcd_endpoint], etcd_prefix=prefix, host_id=host_id, bridge=bridge,
                 datapath_type="netdev", mtu=1500, ovsdb=switch.ovsdb).validate()
    parts = assemble(cfg, store, switch, Links(), Flows(bridge, cfg.ovs_timeout), FakeDockerNames({}), None)
    yield parts
    parts.background.drain()
    # Whatever the test left (it failed half-way): veths by name go with `veths`,
    # the bridge with `bridge`, the keys with `prefix`.


def _ext_ports(h, endpoint_id):
    out = h.vsctl("--format=json", "--columns=name,external_ids", "find", "Port",
                  f"external_ids:{EXT_ENDPOINT}={endpoint_id}").stdout
    return json.loads(out)["data"]


def test_driver_network_endpoints_join_ping_and_full_teardown(h, driver, store, kv, prefix, netns, veths):
    ipam = driver.ipam
    third = secrets.randbelow(250) + 1
    subnet = f"10.250.{third}.0/24"
    vlan = 100 + secrets.randbelow(3000)
    name = "nptest-" + secrets.token_hex(4)
    docker_net = secrets.token_hex(32)

    # -- docker network create -d netplugin --ipam-driver netplugin --subnet S -o vlan=V -o name=N
    pool_id, pool, data = ipam.request_pool(subnet, "", False)
    assert (pool_id, pool, data) == (subnet, subnet, {})
    gateway = ipam.request_address(pool_id, "", True)
    assert gateway == f"10.250.{third}.1/24"
    driver.networks.create_network(docker_net, {GENERIC: {"vlan": str(vlan), "name": name}},
                          [{"AddressSpace": ADDRESS_SPACE, "Pool": pool, "Gateway": gateway}], [])
    net = store.network_by_name(name)
    assert net is not None and net.subnet == subnet and net.vlan == vlan and net.origin == "docker"
    assert store.get_binding(driver.cfg.host_id, docker_net).network == net.id

    # -- two containers: RequestAddress, CreateEndpoint, Join; Docker then moves the peer in
    endpoints = []
    for _ in range(2):
        endpoint_id = secrets.token_hex(32)
        veths.made.extend(veth_names(endpoint_id))     # removed by name even if the test fails
        address = ipam.request_address(pool_id, "", False)
        ip = address.split("/")[0]
        reply = driver.endpoints.create_endpoint(docker_net, endpoint_id, {"Address": address, "MacAddress": ""})
        mac = reply["MacAddress"]
        joined = driver.endpoints.join(docker_net, endpoint_id, f"/var/run/docker/netns/{endpoint_id[:12]}")
        assert joined["Gateway"] == f"10.250.{third}.1"
        src = joined["InterfaceName"]["SrcName"]
        assert joined["InterfaceName"]["DstPrefix"] == "eth"
        ep, _ = store.get_endpoint(endpoint_id)
        assert src == ep.peer and ep.ip == ip and ep.vlan == vlan and ep.mac == mac

        # the port as OVS has it
        rows = h.ovs_find("Port", f"name={ep.port}", columns=["name", "tag", "vlan_mode", "external_ids"])
        assert len(rows) == 1
        assert rows[0]["tag"] == vlan and rows[0]["vlan_mode"] == "access"
        assert rows[0]["external_ids"] == {EXT_ENDPOINT: endpoint_id, EXT_NETWORK: net.id,
                                          EXT_HOST: driver.cfg.host_id}
        assert ep.port in h.vsctl("list-ports", driver.cfg.bridge).stdout.split()
        # the allocation now names its endpoint
        alloc, _ = store.get_allocation(subnet, int(netaddr.IPAddress(ip)) - netaddr.IPNetwork(subnet).first)
        assert alloc.endpoint == endpoint_id and alloc.network == net.id and alloc.host == driver.cfg.host_id

        ns = netns.new()
        h.move_into(ns, src, address, new_name="eth0")
        link = json.loads(h.run(["ip", "-n", ns, "-j", "link", "show", "dev", "eth0"]).stdout)[0]
        assert link["address"] == mac and link["mtu"] == 1500
        endpoints.append((endpoint_id, ip, address, ns, ep))

    (id1, ip1, _, ns1, ep1), (id2, ip2, _, ns2, ep2) = endpoints
    proc = h.ping_until(ns1, ip2)
    assert proc.returncode == 0, f"endpoint {ip1} cannot ping {ip2}:\n{proc.stdout}{proc.stderr}"
    assert h.ping(ns2, ip1).returncode == 0
    got, seconds = h.tcp_transfer(ns1, ip1, ns2, 8 << 20)
    assert got == 8 << 20, "TCP between two endpoints failed: tx checksum offload not handled on netdev?"
    print(f"\n[driver] two endpoints on VLAN {vlan}: ping ok, TCP 8 MiB in {seconds:.2f} s")
    assert driver.bridge.compare_with_store() == {"ports_without_record": [], "records_without_port": []}
    info = driver.endpoints.endpoint_info(docker_net, id1)
    assert info["ip"] == ip1 and info["port"] == ep1.port and info["bridge"] == driver.cfg.bridge

    # -- teardown in Docker's order: Leave, DeleteEndpoint, ReleaseAddress; DeleteNetwork, ReleaseAddress(gw)
    for endpoint_id, ip, address, ns, ep in endpoints:
        driver.endpoints.leave(docker_net, endpoint_id)
        assert ipam.release_address(pool_id, ip) is False, "an address must not be freed while its endpoint exists"
        driver.endpoints.delete_endpoint(docker_net, endpoint_id)
        assert ipam.release_address(pool_id, ip) is True
        assert ipam.release_address(pool_id, ip) is False          # a repeated release is harmless
        driver.endpoints.delete_endpoint(docker_net, endpoint_id)             # so is a repeated delete
        with pytest.raises(NotFound):
            driver.endpoints.leave(docker_net, endpoint_id)
    driver.networks.delete_network(docker_net)
    assert ipam.release_address(pool_id, f"10.250.{third}.1") is False
    driver.networks.delete_network(docker_net)                                # twice is fine

    # -- nothing is left: no port, no veth (either end), no keys
    for endpoint_id, ip, address, ns, ep in endpoints:
        assert _ext_ports(h, endpoint_id) == []
        assert not driver.links.exists(ep.port)
        assert not driver.links.exists(ep.peer)
        assert h.run(["ip", "-n", ns, "link", "show", "dev", "eth0"], check=False).returncode != 0
    assert driver.switch.list_ports(driver.cfg.bridge) == []
    assert h.vsctl("list-ports", driver.cfg.bridge).stdout.split() == []
    left = h.keys_under(kv, prefix)
    for part in ("/endpoints/", "/bindings/", "/networks/", "/ipam/", "/index/"):
        assert not [k for k in left if part in k], f"keys left under {prefix}: {left}"
    assert store.list_networks() == [] and store.list_endpoints() == [] and store.list_bindings() == []
