"""Operator use cases on global networks, shared by netctl and the admin API:
create one ahead of Docker, describe it, remove it."""

from __future__ import annotations

import netaddr

from .driver import new_network_id
from .errors import Conflict, InvalidRequest
from .ipam import Ipam
from .model import (ALLOC_AUX, ALLOC_GATEWAY, Allocation, Network, check_address, check_name, check_range,
                    check_subnet, check_vlan)
from .store import Store

OPERATOR = "netctl"


def plan(name: str, subnet: str, vlan: int | str, gateway: str | None = None,
         ranges: list[str] | None = None, aux: dict[str, str] | None = None) -> tuple[Network, list[Allocation]]:
    """Check what an operator asked for, without asking etcd: the network record
    and the addresses it reserves (gateway, aux). Raises InvalidRequest naming
    the first bad value."""
    check_name(name)
    cidr = check_subnet(subnet)
    checked_vlan = check_vlan(vlan)
    gw = str(check_address(gateway, cidr, "gateway")) if gateway else str(netaddr.IPAddress(cidr.first + 1))
    checked_ranges = [str(check_range(r, cidr)) for r in ranges or []]
    checked_aux = {check_name(k, "aux address name"): str(check_address(v, cidr, f"aux address {k}"))
                   for k, v in (aux or {}).items()}
    if gw in checked_aux.values():
        raise InvalidRequest(f"address {gw} cannot be both the gateway and an aux address")
    if len(set(checked_aux.values())) != len(checked_aux):
        raise InvalidRequest("two aux addresses have the same address")
    net = Network(id=new_network_id(), name=name, subnet=str(cidr), gateway=gw, vlan=checked_vlan,
                  ranges=checked_ranges, aux=checked_aux, origin=OPERATOR)
    reserved = [Allocation(gw, ALLOC_GATEWAY, OPERATOR, network=net.id)]
    reserved += [Allocation(ip, ALLOC_AUX, OPERATOR, network=net.id) for ip in checked_aux.values()]
    return net, reserved


def create(store: Store, name: str, subnet: str, vlan: int | str, gateway: str | None = None,
           ranges: list[str] | None = None, aux: dict[str, str] | None = None) -> Network:
    """Create a global network and reserve its gateway and aux addresses, in one transaction."""
    net, reserved = plan(name, subnet, vlan, gateway, ranges, aux)
    store.create_network(net, reserved)
    return net


def describe(store: Store, ipam: Ipam, net: Network) -> dict:
    """Everything an operator wants to see about one network."""
    endpoints = [ep for ep in store.list_endpoints() if ep.network == net.id]
    bindings = [b for b in store.list_bindings() if b.network == net.id]
    return {
        "id": net.id, "name": net.name, "subnet": net.subnet, "gateway": net.gateway, "vlan": net.vlan,
        "ranges": net.ranges, "aux": net.aux, "origin": net.origin, "created": net.created,
        "name_conflict": net.name_conflict or None,
        "pool": ipam.usage(net),
        "endpoints": [{"id": ep.id, "host": ep.host, "ip": ep.ip, "mac": ep.mac} for ep in endpoints],
        "hosts": sorted({b.host for b in bindings}),
    }


def remove(store: Store, ref: str, force: bool = False) -> Network:
    """Delete a network. Refused while endpoints exist, unless force, which also
    drops their records and the hosts' bindings (their ports and veths are left
    to each host's reconciler)."""
    net = store.find_network(ref)
    endpoints = [ep for ep in store.list_endpoints() if ep.network == net.id]
    if endpoints and not force:
        hosts = sorted({ep.host for ep in endpoints})
        raise Conflict(f"network {net.label} still has {len(endpoints)} endpoint(s) on host(s) {', '.join(hosts)}: "
                       "stop those containers first, or pass --force")
    for ep in endpoints:
        store.delete_endpoint(ep.id)
    for binding in store.list_bindings():
        if binding.network == net.id:
            store.delete_binding(binding.host, binding.docker_network)
    store.delete_network(net)
    return net
