"""Network use cases: Docker's path (CreateNetwork, DeleteNetwork, and which
global network a Docker network of this host stands for) and the operator's
(``netctl network create``, inspect, rm). One validator, ``check_request``,
checks what either asked for before etcd is asked anything.

Who owns a network: one made by an operator belongs to the operator, and
``docker network rm`` only removes this host's binding; one Docker made
(``origin: docker``) goes with the last Docker network bound to it, once no
endpoint remains.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass

import netaddr

from . import deadline
from .config import Config
from .errors import Conflict, InvalidRequest, NetpluginError, NotFound
from .ipam import ADDRESS_SPACE, Ipam
from .logs import escape
from .model import (
    ALLOC_AUX,
    ALLOC_GATEWAY,
    Allocation,
    Binding,
    Network,
    check_address,
    check_docker_id,
    check_name,
    check_range,
    check_subnet,
    check_vlan,
)
from .naming import NetworkNamer
from .store import Store

log = logging.getLogger(__name__)

OPERATOR = "netctl"
GENERIC = "com.docker.network.generic"
KNOWN_OPTIONS = {"vlan", "name", "profile"}


def new_network_id() -> str:
    return "n-" + secrets.token_hex(6)


@dataclass
class NetworkRequest:
    """What a network create asked for, checked."""

    subnet: netaddr.IPNetwork
    gateway: str
    vlan: int | None
    name: str | None
    ranges: list[str]
    aux: dict[str, str]


def check_request(subnet: object, gateway: object = None, vlan: object = None, name: object = None,
                  ranges: list | None = None, aux: object = None) -> NetworkRequest:
    """Check a network create without asking etcd; raises InvalidRequest naming
    the first bad value. ``gateway`` None: the subnet's first address. ``vlan``
    and ``name`` None: not given (Docker's path may leave both to an existing
    network)."""
    checked_name = check_name(name) if name is not None else None
    cidr = check_subnet(subnet)
    checked_vlan = check_vlan(vlan) if vlan is not None else None
    gw = str(check_address(gateway, cidr, "gateway")) if gateway is not None else str(netaddr.IPAddress(cidr.first + 1))
    checked_ranges = [str(check_range(r, cidr)) for r in ranges or []]
    if aux is not None and not isinstance(aux, dict):
        raise InvalidRequest("AuxAddresses must be an object of name to address")
    checked_aux = {check_name(k, "aux address name"): str(check_address(v, cidr, f"aux address {k}"))
                   for k, v in (aux or {}).items()}
    if gw in checked_aux.values():
        raise InvalidRequest(f"address {gw} cannot be both the gateway and an aux address")
    if len(set(checked_aux.values())) != len(checked_aux):
        raise InvalidRequest("two aux addresses have the same address")
    return NetworkRequest(cidr, gw, checked_vlan, checked_name, checked_ranges, checked_aux)


def reservations(net: Network, holder: str) -> list[Allocation]:
    """The addresses a network holds while it exists: its gateway and aux addresses."""
    reserved = [Allocation(net.gateway, ALLOC_GATEWAY, holder, network=net.id)]
    return reserved + [Allocation(ip, ALLOC_AUX, holder, network=net.id) for ip in net.aux.values()]


# -- the operator's use cases ---------------------------------------------------------------
def plan(name: str, subnet: str, vlan: int | str, gateway: str | None = None,
         ranges: list[str] | None = None, aux: dict[str, str] | None = None) -> tuple[Network, list[Allocation]]:
    """Check what an operator asked for, without asking etcd: the network record
    and the addresses it reserves (gateway, aux). Raises InvalidRequest naming
    the first bad value."""
    req = check_request(subnet, gateway or None, vlan, name, ranges, aux)
    if req.name is None or req.vlan is None:
        raise InvalidRequest("an operator's network needs a name and a VLAN")
    net = Network(id=new_network_id(), name=req.name, subnet=str(req.subnet), gateway=req.gateway, vlan=req.vlan,
                  ranges=req.ranges, aux=req.aux, origin=OPERATOR)
    return net, reservations(net, OPERATOR)


def create(store: Store, name: str, subnet: str, vlan: int | str, gateway: str | None = None,
           ranges: list[str] | None = None, aux: dict[str, str] | None = None) -> Network:
    """Create a global network and reserve its gateway and aux addresses, in one transaction."""
    net, reserved = plan(name, subnet, vlan, gateway, ranges, aux)
    store.create_network(net, reserved)
    return net


def describe(store: Store, ipam: Ipam, net: Network) -> dict:
    """Everything an operator wants to see about one network."""
    endpoints = store.list_network_endpoints(net.id)
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
    """Delete a network, in one guarded transaction (Store.delete_network).
    Refused while endpoints or addresses in use exist, unless force, which also
    drops their records and the hosts' bindings (their ports and veths are left
    to each host's reconciler)."""
    net = store.find_network(ref)
    store.delete_network(net, force=force)
    return net


# -- Docker's path -------------------------------------------------------------------------
class Networks:
    """CreateNetwork, DeleteNetwork, and the global network behind a Docker network."""

    def __init__(self, cfg: Config, store: Store, ipam: Ipam, namer: NetworkNamer):
        self.cfg = cfg
        self.store = store
        self.ipam = ipam
        self.namer = namer
        self._bound: dict[str, str] = {}                 # Docker network id -> global network id

    def create_network(self, docker_net: str, options: dict, ipv4: list, ipv6: list) -> None:
        check_docker_id(docker_net, "NetworkID")
        generic = self._generic_options(options)
        if ipv6:
            raise InvalidRequest("netplugin networks are IPv4 only: create the network without --ipv6")
        if not isinstance(ipv4, list) or len(ipv4) != 1 or not isinstance(ipv4[0], dict):
            raise InvalidRequest("a netplugin network needs exactly one IPv4 subnet: pass one --subnet")
        data = ipv4[0]
        if data.get("AddressSpace") != ADDRESS_SPACE:
            raise InvalidRequest("this network's addresses do not come from netplugin's IPAM: "
                                 "add --ipam-driver netplugin so addresses are unique across hosts")
        req = check_request(data.get("Pool"), data.get("Gateway") or "", generic.get("vlan"), generic.get("name"),
                            aux=data.get("AuxAddresses") or {})
        subnet, gateway, vlan, name, aux = str(req.subnet), req.gateway, req.vlan, req.name, req.aux
        profile = generic.get("profile", "")
        if profile and profile not in self.store.list_profiles():
            raise NotFound(f"profile {profile!r} does not exist: create it with 'netctl profile create'")

        net = self._existing_network(subnet, name)
        created = False
        if net is not None:
            self._check_matches(net, subnet, gateway, vlan, aux)
            if profile and profile != net.profile:
                raise Conflict(f"network {net.label} has profile {net.profile or 'none'}, not {profile}: "
                               f"change it with 'netctl network set {net.label} --profile {profile}'")
        else:
            if vlan is None:
                raise InvalidRequest(f"no global network has subnet {subnet}: to create one pass -o vlan=N "
                                     "(1-4094), or create it first with 'netctl network create'")
            sub_pool = self.ipam.recent_sub_pool(subnet)
            net = Network(id=new_network_id(), name=name, subnet=subnet, gateway=gateway, vlan=vlan,
                          ranges=[sub_pool] if sub_pool else [], aux=aux, origin="docker", profile=profile)
            try:
                self.store.create_network(net, reservations(net, self.cfg.host_id))
                created = True
            except Conflict:
                # Another host may have created this very network a moment ago: bind to it.
                net = self._existing_network(subnet, name)
                if net is None:
                    raise
                self._check_matches(net, subnet, gateway, vlan, aux)
        try:
            deadline.check("binding the Docker network")
            self.store.put_binding(Binding(docker_net, net.id, self.cfg.host_id, pool=subnet), net.subnet)
        except NetpluginError:
            if created:
                with contextlib.suppress(Conflict, NotFound):   # someone else uses it already: theirs now
                    self.store.delete_network(net, unbound=True)
            raise
        if net.name is None:
            self.namer.name_later(docker_net, net.id)

    def _generic_options(self, options: dict) -> dict:
        if not isinstance(options, dict):
            raise InvalidRequest("Options must be an object")
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise InvalidRequest(f"{GENERIC} must be an object of driver options")
        unknown = sorted(set(generic) - KNOWN_OPTIONS)
        if unknown:
            raise InvalidRequest(f"unknown driver option(s) {', '.join(unknown)}: netplugin understands "
                                 "-o vlan=N, -o name=GLOBAL-NETWORK and -o profile=BANDWIDTH-PROFILE")
        return {k: str(v) for k, v in generic.items()}

    def _existing_network(self, subnet: str, name: str | None) -> Network | None:
        by_name = self.store.network_by_name(name) if name else None
        if by_name is not None and by_name.subnet != subnet:
            raise Conflict(f"network {name} exists with subnet {by_name.subnet}, not {subnet}: "
                           f"use --subnet {by_name.subnet}, or another name")
        by_subnet = by_name or self.store.network_by_subnet(subnet)
        if name and by_subnet is not None and by_subnet.name not in (None, name):
            raise Conflict(f"subnet {subnet} belongs to network {by_subnet.name}, not {name}")
        return by_subnet

    @staticmethod
    def _check_matches(net: Network, subnet: str, gateway: str, vlan: int | None, aux: dict) -> None:
        if vlan is not None and vlan != net.vlan:
            raise Conflict(f"network {net.label} ({subnet}) uses VLAN {net.vlan}, not {vlan}: "
                           f"pass -o vlan={net.vlan} or leave it out")
        if gateway != net.gateway:
            raise Conflict(f"network {net.label} has gateway {net.gateway}, not {gateway}: "
                           f"pass --gateway {net.gateway}")
        for key, ip in aux.items():
            if net.aux.get(key) != ip:
                raise Conflict(f"aux address {key}={ip} is not reserved in network {net.label} "
                               f"(it reserves {net.aux or 'none'}): leave --aux-address out")
        if net.name_conflict:
            raise Conflict(net.name_conflict)

    def delete_network(self, docker_net: str) -> None:
        check_docker_id(docker_net, "NetworkID")
        self._bound.pop(docker_net, None)
        binding = self.store.get_binding(self.cfg.host_id, docker_net)
        if binding is None:
            return
        self.store.delete_binding(self.cfg.host_id, docker_net)
        net = self.store.get_network(binding.network)
        if net is None or net.origin != "docker":
            return
        # A network Docker made goes with the last Docker network bound to it,
        # checked and deleted in one guarded transaction.
        try:
            self.store.delete_network(net, unbound=True)
        except (Conflict, NotFound) as exc:
            log.info("network %s kept: %s", net.label, escape(exc.message))
            return
        log.info("deleted network %s: its last Docker network was removed", net.label)

    def network_for(self, docker_net: str) -> Network:
        """The global network a Docker network of this host stands for, read fresh.

        Which one it stands for never changes while the binding exists, so it is
        read once per process; a network deleted meanwhile is not found."""
        net_id: str | None = self._bound.get(docker_net)
        if net_id is None:
            binding = self.store.get_binding(self.cfg.host_id, docker_net)
            net_id = binding.network if binding else None
        net = self.store.get_network(net_id) if net_id else None
        if net is None:
            self._bound.pop(docker_net, None)
        else:
            self._bound[docker_net] = net.id
        if net is None:
            raise NotFound(f"docker network {docker_net[:12]} is not known to netplugin on host {self.cfg.host_id}: "
                           "remove it and create it again with -d netplugin --ipam-driver netplugin")
        if net.name is None and not net.name_conflict:
            net = self.namer.resolve(docker_net, net.id) or net
        if net.name_conflict:
            raise Conflict(net.name_conflict)
        return net
