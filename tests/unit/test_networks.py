"""networks.check_request: one validator for Docker's CreateNetwork and
netctl's network create. Where one path used to check something the other
did not, both check it now, with the same message."""

from __future__ import annotations

import pytest

from netplugin import networks
from netplugin.errors import InvalidRequest

from .conftest import did

GATEWAY_AND_AUX = "address 10.10.0.1 cannot be both the gateway and an aux address"
SAME_AUX = "two aux addresses have the same address"


def docker_create(np, aux: dict) -> str:
    """docker network create ... --aux-address ...: RequestPool, the gateway, then CreateNetwork."""
    pool = np.request_pool("10.10.0.0/24")
    gw = np.request_gateway(pool["PoolID"])["Address"]
    before = np.kv.dump()
    msg = np.fail("NetworkDriver.CreateNetwork",
                  np.create_network_body(did("aux-net"), "10.10.0.0/24", gw, aux=aux), status=400)
    assert np.kv.dump() == before and np.store.list_networks() == []
    return msg


@pytest.mark.parametrize("aux,message", [({"router": "10.10.0.1/24"}, GATEWAY_AND_AUX),
                                         ({"a": "10.10.0.5/24", "b": "10.10.0.5/24"}, SAME_AUX)])
def test_docker_path_checks_aux_addresses_as_netctl_does(np, aux, message):
    assert docker_create(np, aux) == message
    with pytest.raises(InvalidRequest) as exc:
        networks.plan("prod", "10.10.0.0/24", 100, None, None, {k: v.split("/")[0] for k, v in aux.items()})
    assert exc.value.message == message


@pytest.mark.parametrize("kwargs,message", [
    ({"vlan": "5000"}, "vlan 5000 is out of range: give a VLAN id from 1 to 4094"),
    ({"name": "bad name"}, "network name 'bad name' is invalid"),
    ({"gateway": "10.20.0.1"}, "gateway"),
    ({"aux": {"r": "10.10.0.300"}}, "aux address r"),
])
def test_both_paths_give_one_message(kwargs, message):
    """The same bad value gets the same message from both paths."""
    args = {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1", "vlan": 100, "name": "prod", **kwargs}
    with pytest.raises(InvalidRequest) as docker:
        networks.check_request(args["subnet"], args["gateway"], args["vlan"], args["name"], aux=args.get("aux"))
    with pytest.raises(InvalidRequest) as netctl:
        networks.plan(args["name"], args["subnet"], args["vlan"], args["gateway"], None, args.get("aux"))
    assert docker.value.message == netctl.value.message and message in docker.value.message


def test_docker_path_may_leave_vlan_and_name_to_an_existing_network():
    req = networks.check_request("10.10.0.0/24", "10.10.0.1/24")
    assert (req.vlan, req.name, req.gateway, req.aux, req.ranges) == (None, None, "10.10.0.1", {}, [])
    assert networks.check_request("10.10.0.0/24").gateway == "10.10.0.1"      # netctl's default gateway
