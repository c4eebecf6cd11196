"""NetworkDriver: Docker's remote network driver protocol."""

from flask import Blueprint

from ..model import check_docker_id, check_sandbox_key
from .wire import backend, field, protocol

bp = Blueprint("network", __name__)


def _ids(body: dict) -> tuple[str, str]:
    return field(body, "NetworkID"), field(body, "EndpointID")


@bp.post("/NetworkDriver.GetCapabilities")
@protocol
def get_capabilities(body: dict) -> dict:
    """``{}`` -> ``{"Scope": "local", "ConnectivityScope": "global"}``

    Local scope: each host's Docker network is bound to one global network by
    the plugin itself, without swarm or a Docker cluster store."""
    return {"Scope": "local", "ConnectivityScope": "global"}


@bp.post("/NetworkDriver.CreateNetwork")
@protocol
def create_network(body: dict) -> dict:
    """``{"NetworkID": "<64 hex>", "Options": {"com.docker.network.generic": {"vlan": "100"}},
    "IPv4Data": [{"AddressSpace": "netplugin", "Pool": "10.10.0.0/24", "Gateway": "10.10.0.1/24",
    "AuxAddresses": {}}], "IPv6Data": []}`` -> ``{}``"""
    backend("networks").create_network(field(body, "NetworkID"), field(body, "Options", dict, False, {}),
                                     field(body, "IPv4Data", list, False, []),
                                     field(body, "IPv6Data", list, False, []))
    return {}


@bp.post("/NetworkDriver.DeleteNetwork")
@protocol
def delete_network(body: dict) -> dict:
    """``{"NetworkID": "<64 hex>"}`` -> ``{}``"""
    backend("networks").delete_network(field(body, "NetworkID"))
    return {}


@bp.post("/NetworkDriver.CreateEndpoint")
@protocol
def create_endpoint(body: dict) -> dict:
    """``{"NetworkID": ..., "EndpointID": ..., "Options": {}, "Interface": {"Address": "10.10.0.7/24",
    "AddressIPv6": "", "MacAddress": ""}}`` -> ``{"Interface": {"MacAddress": "02:4e:0a:0a:00:07"}}``

    Only the fields Docker left empty come back; with nothing to add, ``{}``."""
    net, ep = _ids(body)
    field(body, "Options", dict, False, {})
    iface = backend("endpoints").create_endpoint(net, ep, field(body, "Interface", dict, False, {}))
    return {"Interface": iface} if iface else {}


@bp.post("/NetworkDriver.EndpointOperInfo")
@protocol
def endpoint_oper_info(body: dict) -> dict:
    """``{"NetworkID": ..., "EndpointID": ...}`` -> ``{"Value": {"ip": ..., "vlan": 100, ...}}``"""
    return {"Value": backend("endpoints").endpoint_info(*_ids(body))}


@bp.post("/NetworkDriver.DeleteEndpoint")
@protocol
def delete_endpoint(body: dict) -> dict:
    """``{"NetworkID": ..., "EndpointID": ...}`` -> ``{}`` (an unknown endpoint succeeds)"""
    backend("endpoints").delete_endpoint(*_ids(body))
    return {}


@bp.post("/NetworkDriver.Join")
@protocol
def join(body: dict) -> dict:
    """``{"NetworkID": ..., "EndpointID": ..., "SandboxKey": "/var/run/docker/netns/...", "Options": {}}``
    -> ``{"InterfaceName": {"SrcName": "nc3f2a9c1d0b7", "DstPrefix": "eth"}, "Gateway": "10.10.0.1",
    "DisableGatewayService": true}``"""
    net, ep = _ids(body)
    field(body, "Options", dict, False, {})
    return backend("endpoints").join(net, ep, check_sandbox_key(field(body, "SandboxKey", str, False, "")))


@bp.post("/NetworkDriver.Leave")
@protocol
def leave(body: dict) -> dict:
    """``{"NetworkID": ..., "EndpointID": ...}`` -> ``{}``"""
    backend("endpoints").leave(*_ids(body))
    return {}


@bp.post("/NetworkDriver.ProgramExternalConnectivity")
@protocol
def program_external_connectivity(body: dict) -> dict:
    """``{"NetworkID": ..., "EndpointID": ..., "Options": {}}`` -> ``{}``: containers are
    reached directly on their VLAN, so there is no port mapping to program."""
    field(body, "Options", dict, False, {})
    backend("endpoints").check_endpoint(*_ids(body))
    return {}


@bp.post("/NetworkDriver.RevokeExternalConnectivity")
@protocol
def revoke_external_connectivity(body: dict) -> dict:
    """``{"NetworkID": ..., "EndpointID": ...}`` -> ``{}``"""
    backend("endpoints").check_ids(*_ids(body))
    return {}


@bp.post("/NetworkDriver.DiscoverNew")
@protocol
def discover_new(body: dict) -> dict:
    """``{"DiscoveryType": 1, "DiscoveryData": {...}}`` -> ``{}``: hosts find each other through etcd."""
    field(body, "DiscoveryType", int)
    return {}


@bp.post("/NetworkDriver.DiscoverDelete")
@protocol
def discover_delete(body: dict) -> dict:
    """``{"DiscoveryType": 1, "DiscoveryData": {...}}`` -> ``{}``"""
    field(body, "DiscoveryType", int)
    return {}


@bp.post("/NetworkDriver.AllocateNetwork")
@protocol
def allocate_network(body: dict) -> dict:
    """Swarm managers only: ``{"NetworkID": ..., "Options": {}, "IPv4Data": [...]}`` -> ``{"Options": {}}``"""
    check_docker_id(field(body, "NetworkID"), "NetworkID")
    field(body, "Options", dict, False, {})
    field(body, "IPv4Data", list, False, [])
    return {"Options": {}}


@bp.post("/NetworkDriver.FreeNetwork")
@protocol
def free_network(body: dict) -> dict:
    """Swarm managers only: ``{"NetworkID": ...}`` -> ``{}``"""
    check_docker_id(field(body, "NetworkID"), "NetworkID")
    return {}
