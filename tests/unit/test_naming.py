"""Docker-made networks: created without -o name, named after their Docker
network once Docker tells the name; a name that clashes with another global
network blocks containers with a message that says what to do."""

from __future__ import annotations

import threading
import time

import pytest

import netplugin.naming as naming_mod
from netplugin.errors import Conflict, NotFound

from .conftest import did


def unnamed_network(np, subnet="10.20.0.0/24", vlan=200):
    net = np.create_network(subnet=subnet, vlan=vlan, name=None)
    (record,) = [n for n in np.store.list_networks() if n.subnet == subnet]
    return net, record


def test_network_without_name_is_created_unnamed(np):
    net, record = unnamed_network(np)
    assert record.name is None and record.name_conflict == "" and record.origin == "docker"
    assert np.kv.keys("/netplugin/v1/index/name/") == []
    assert np.store.get_binding("h1", net.id).network == record.id


def test_create_endpoint_names_the_network_from_docker(np):
    net, record = unnamed_network(np)
    np.docker.names[net.id] = "web"
    c = np.run_container(net)
    named = np.store.get_network(record.id)
    assert named.name == "web"
    assert np.store.network_by_name("web").id == record.id
    assert np.store.get_endpoint(c.endpoint)[0].network_name == "web"
    assert net.id in np.docker.calls


def test_resolve_name_directly(np):
    net, record = unnamed_network(np)
    assert np.namer.resolve(net.id, record.id) is None        # Docker does not know it yet
    assert np.store.get_network(record.id).name is None
    np.docker.names[net.id] = "web"
    assert np.namer.resolve(net.id, record.id).name == "web"
    calls = len(np.docker.calls)
    assert np.namer.resolve(net.id, record.id).name == "web"  # named: Docker is not asked again
    assert len(np.docker.calls) == calls


def test_network_for(np):
    net, record = unnamed_network(np)
    assert np.networks.network_for(net.id).id == record.id            # works while unnamed
    np.docker.names[net.id] = "web"
    assert np.networks.network_for(net.id).name == "web"
    with pytest.raises(NotFound) as exc:
        np.networks.network_for(did("not-bound-here"))
    assert "not known to netplugin on host h1" in exc.value.message


def test_unnamed_network_still_serves_containers(np):
    net, record = unnamed_network(np)
    c = np.run_container(net)
    assert np.store.get_endpoint(c.endpoint)[0].network_name == record.id
    assert c.join_reply["Gateway"] == "10.20.0.1"


def test_name_clash_blocks_containers_with_what_to_do(np):
    np.create_network(subnet="10.10.0.0/24", vlan=100, name="prod")       # the global prod
    net, record = unnamed_network(np, subnet="10.20.0.0/24", vlan=200)    # docker network "prod", other subnet
    np.docker.names[net.id] = "prod"
    address = np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})["Address"]
    ep = did("blocked")
    msg = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, ep, address), status=409)
    assert msg == ("docker network prod has subnet 10.20.0.0/24, but global network prod has subnet "
                   "10.10.0.0/24: docker network rm prod, then create it with --subnet 10.10.0.0/24 "
                   "(or with -o name=ANOTHER-NAME for a new network)")
    assert np.store.get_endpoint(ep) is None and np.switch.ports == {} and np.links.links == {}
    stored = np.store.get_network(record.id)
    assert stored.name is None and stored.name_conflict == msg
    assert np.store.network_by_name("prod").subnet == "10.10.0.0/24"
    # the next container fails the same way, without asking Docker again
    calls = len(np.docker.calls)
    msg2 = np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, did("blocked-2"), address), status=409)
    assert msg2 == msg and len(np.docker.calls) == calls
    with pytest.raises(Conflict):
        np.networks.network_for(net.id)
    # Docker releases the address; the user follows the advice and removes the network
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": address.split("/")[0]})
    np.remove_network(net)
    assert np.store.get_network(record.id) is None
    assert np.kv.keys("/netplugin/v1/ipam/10.20.0.0-24/") == []


def test_name_clash_also_refuses_binding_another_docker_network(np):
    np.create_network(subnet="10.10.0.0/24", vlan=100, name="prod")
    net, record = unnamed_network(np, subnet="10.20.0.0/24", vlan=200)
    np.docker.names[net.id] = "prod"
    np.namer.resolve(net.id, record.id)
    body = np.create_network_body(did("another"), "10.20.0.0/24", "10.20.0.1/24", vlan=None, name=None)
    msg = np.fail("NetworkDriver.CreateNetwork", body, status=409)
    assert "docker network rm prod" in msg


def test_background_namer_names_the_network(np, monkeypatch):
    monkeypatch.setattr(naming_mod, "NAMING_PATIENCE", 5.0)
    docker_net = did("named-later")
    np.docker.names[docker_net] = "batch"
    np.create_network(subnet="10.30.0.0/24", vlan=300, name=None, docker_net=docker_net)
    record = np.store.network_by_subnet("10.30.0.0/24")
    namer = [t for t in threading.enumerate() if t.name == f"namer-{record.id}"]
    for t in namer:
        t.join(5)
    assert np.store.get_network(record.id).name == "batch"


def test_background_namer_waits_for_docker(np, monkeypatch):
    monkeypatch.setattr(naming_mod, "NAMING_PATIENCE", 5.0)
    docker_net = did("slow-docker")
    np.create_network(subnet="10.30.0.0/24", vlan=300, name=None, docker_net=docker_net)
    record = np.store.network_by_subnet("10.30.0.0/24")
    time.sleep(0.3)
    assert np.store.get_network(record.id).name is None
    np.docker.names[docker_net] = "batch"       # Docker has now stored the network
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and np.store.get_network(record.id).name is None:
        time.sleep(0.05)
    assert np.store.get_network(record.id).name == "batch"


def test_named_network_is_joined_by_name_from_another_host(np, np2):
    net, record = unnamed_network(np)
    np.docker.names[net.id] = "web"
    np.run_container(net)
    # h2: docker network create -o name=web --subnet 10.20.0.0/24 (no vlan needed: it exists)
    net2 = np2.create_network(subnet="10.20.0.0/24", vlan=None, name="web")
    assert np2.store.get_binding("h2", net2.id).network == record.id
