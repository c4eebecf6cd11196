"""Switch (netplugin/dataplane/ovs.py) as Open vSwitch answers it, and Links
(netplugin/dataplane/links.py) as the kernel does.

``switch_world`` gives:
  switch          the Switch under test
  bridge          a bridge name nobody uses (the bridge is not made yet)
  datapath_type   the datapath to make bridges with
  device()        the name of a new kernel link that a port can open

``links_world`` gives:
  links           the Links under test
  names()         (host end, container end) names of a new veth pair, not made yet
  netns()         the path of a new, empty network namespace
  inside(path)    the links of that namespace but lo: name -> "address/prefixlen"
"""

from __future__ import annotations

import pytest

from netplugin.dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK
from netplugin.errors import DataplaneError, InvalidRequest

MAC = "02:00:0a:00:00:05"


def ext(n: int) -> dict[str, str]:
    return {EXT_ENDPOINT: f"{n:064x}", EXT_NETWORK: "n-000000000001", EXT_HOST: "h1"}


class SwitchContract:
    def test_a_bridge_is_made_once(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        assert not s.bridge_exists(br)
        s.ensure_bridge(br, switch_world.datapath_type)
        s.ensure_bridge(br, switch_world.datapath_type)
        assert s.bridge_exists(br)
        assert s.list_ports(br) == []

    def test_access_ports_are_listed_with_tag_and_external_ids(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        s.ensure_bridge(br, switch_world.datapath_type)
        one, two = switch_world.device(), switch_world.device()
        s.add_access_port(br, one, 100, ext(1))
        s.add_access_port(br, two, 200, ext(2), wait_vswitchd=False)
        assert s.port_exists(one) and s.port_exists(two)
        assert sorted(s.list_ports(br), key=lambda p: p["name"]) == sorted(
            [{"name": one, "tag": 100, "external_ids": ext(1)}, {"name": two, "tag": 200, "external_ids": ext(2)}],
            key=lambda p: p["name"])
        bridges = s.port_bridges()
        assert bridges[one] == br and bridges[two] == br

    def test_adding_a_port_again_updates_it(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        s.ensure_bridge(br, switch_world.datapath_type)
        port = switch_world.device()
        s.add_access_port(br, port, 100, ext(1))
        s.add_access_port(br, port, 300, ext(3))
        assert s.list_ports(br) == [{"name": port, "tag": 300, "external_ids": ext(3)}]

    def test_the_uplink_is_a_port_but_not_an_access_port(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        uplink = switch_world.device()
        s.ensure_bridge(br, switch_world.datapath_type, uplink)
        assert s.port_exists(uplink) and s.port_bridges()[uplink] == br
        assert s.list_ports(br) == []

    def test_a_port_needs_its_bridge(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        port = switch_world.device()
        with pytest.raises(DataplaneError) as exc:
            s.add_access_port(br, port, 100, ext(1))
        assert exc.value.message.startswith(f"Open vSwitch refused to add port {port} to {br}: ")
        assert not s.port_exists(port)
        assert s.list_ports(br) == []

    def test_port_numbers_are_distinct_and_stable(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        s.ensure_bridge(br, switch_world.datapath_type)
        ports = [switch_world.device() for _ in range(3)]
        for n, port in enumerate(ports):
            s.add_access_port(br, port, 100, ext(n))
        numbers = [s.wait_ofport(p, 10) for p in ports]
        assert len(set(numbers)) == 3 and all(isinstance(n, int) and n > 0 for n in numbers)
        assert [s.ofport(p) for p in ports] == numbers
        s.delete_port(ports[0], wait_vswitchd=True)
        assert s.ofport(ports[0]) is None
        assert [s.ofport(p) for p in ports[1:]] == numbers[1:]       # the others keep theirs

    def test_a_missing_port(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        s.ensure_bridge(br, switch_world.datapath_type)
        port = switch_world.device()
        assert not s.port_exists(port)
        assert s.ofport(port) is None
        assert s.port_bridges().get(port) is None
        with pytest.raises(DataplaneError) as exc:
            s.wait_ofport(port, 1)
        assert exc.value.message == f"port {port} is not on the switch: remove the container and start it again"
        s.set_policing(port, 1000, 100)                 # no row to set: Open vSwitch says nothing
        assert not s.port_exists(port)
        assert s.delete_port(port) is False

    def test_deleting_a_port(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        s.ensure_bridge(br, switch_world.datapath_type)
        port = switch_world.device()
        s.add_access_port(br, port, 100, ext(1))
        s.set_policing(port, 10_000, 1_000)
        s.set_policing(port, 0, 0)
        assert s.delete_port(port) is True
        assert not s.port_exists(port) and s.list_ports(br) == []
        assert s.delete_port(port, wait_vswitchd=True) is False

    def test_ports_of_another_bridge_are_not_listed(self, switch_world):
        s, br = switch_world.switch, switch_world.bridge
        s.ensure_bridge(br, switch_world.datapath_type)
        assert s.list_ports(br + "x") == []


class LinksContract:
    def test_a_veth_pair(self, links_world):
        links = links_world.links
        host, peer = links_world.names()
        assert not links.exists(host) and not links.exists(peer)
        links.create_veth(host, peer, 1450, MAC, True)
        assert links.exists(host) and links.exists(peer)
        assert host in links.list_names("np") and peer not in links.list_names("np")
        assert peer in links.list_names("nc")
        assert links.list_names(host) == [host]

    def test_making_the_pair_again_is_no_error(self, links_world):
        links = links_world.links
        host, peer = links_world.names()
        links.create_veth(host, peer, 1500, MAC, False)
        links.create_veth(host, peer, 1450, MAC, True)
        assert links.exists(host) and links.exists(peer)

    def test_a_host_end_without_its_peer_is_refused(self, links_world):
        links = links_world.links
        host, peer = links_world.names()
        _, other = links_world.names()
        links.create_veth(host, other, 1500, MAC, False)
        with pytest.raises(DataplaneError) as exc:
            links.create_veth(host, peer, 1500, MAC, False)
        assert exc.value.message == f"veth {host} exists without its peer {peer}: delete {host} and retry"
        assert not links.exists(peer)

    def test_deleting_one_end_deletes_the_pair(self, links_world):
        links = links_world.links
        host, peer = links_world.names()
        links.create_veth(host, peer, 1500, MAC, False)
        assert links.delete(host) is True
        assert not links.exists(host) and not links.exists(peer)
        assert links.delete(host) is False and links.delete(peer) is False

    def test_the_container_end_moves_into_the_namespace(self, links_world):
        links = links_world.links
        ns = links_world.netns()
        host, peer = links_world.names()
        host2, peer2 = links_world.names()
        links.create_veth(host, peer, 1500, MAC, True)
        links.create_veth(host2, peer2, 1500, MAC.replace("05", "06"), True)
        assert links.plug_into_netns(peer, ns, "10.77.0.5", 24, "10.77.0.1") == "eth0"
        assert links.plug_into_netns(peer2, ns, "10.77.0.6", 24, "10.77.0.1") == "eth1"
        assert not links.exists(peer) and links.exists(host)
        assert links_world.inside(ns) == {"eth0": "10.77.0.5/24", "eth1": "10.77.0.6/24"}
        assert links.delete(host) is True                      # the end inside goes with it
        assert links_world.inside(ns) == {"eth1": "10.77.0.6/24"}

    def test_tx_checksum_of_a_missing_link(self, links_world):
        host, _ = links_world.names()
        with pytest.raises(DataplaneError) as exc:
            links_world.links.disable_tx_checksum(host)
        assert exc.value.message.startswith(f"cannot turn off tx checksum offload on {host}: ")

    @pytest.mark.parametrize("name", ["", "-np", "a" * 16, "np 1", "np/1", "np;x"])
    def test_bad_names_are_refused_before_the_kernel_sees_them(self, links_world, name):
        links = links_world.links
        with pytest.raises(InvalidRequest) as exc:
            links.exists(name)
        assert exc.value.message == f"interface name {name!r} is invalid"
        _, peer = links_world.names()
        with pytest.raises(InvalidRequest):
            links.create_veth(name, peer, 1500, MAC, False)
        with pytest.raises(InvalidRequest):
            links.delete(name)
        assert not links.exists(peer)
