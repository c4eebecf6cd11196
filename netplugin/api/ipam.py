"""IpamDriver: Docker's remote IPAM protocol. Replies to errors carry both
``Err`` and ``Error``: Docker reads IPAM errors from ``Error``."""

from flask import Blueprint

from ..errors import InvalidRequest
from ..ipam import ADDRESS_SPACE, GATEWAY_REQUEST
from .wire import backend, field, protocol

bp = Blueprint("ipam", __name__)


@bp.post("/IpamDriver.GetCapabilities")
@protocol
def get_capabilities(body: dict) -> dict:
    """``{}`` -> ``{"RequiresMACAddress": false, "RequiresRequestReplay": false}``"""
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


@bp.post("/IpamDriver.GetDefaultAddressSpaces")
@protocol
def get_default_address_spaces(body: dict) -> dict:
    """``{}`` -> ``{"LocalDefaultAddressSpace": "netplugin", "GlobalDefaultAddressSpace": "netplugin"}``"""
    return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}


@bp.post("/IpamDriver.RequestPool")
@protocol
def request_pool(body: dict) -> dict:
    """``{"AddressSpace": "netplugin", "Pool": "10.10.0.0/24", "SubPool": "", "Options": {}, "V6": false}``
    -> ``{"PoolID": "10.10.0.0/24", "Pool": "10.10.0.0/24", "Data": {"com.docker.network.gateway": "10.10.0.1/24"}}``
    (Data names the gateway when the global network exists already)."""
    space = field(body, "AddressSpace", str, False, ADDRESS_SPACE)
    if space not in (ADDRESS_SPACE, ""):
        raise InvalidRequest(f"address space {space!r} is unknown: netplugin has only {ADDRESS_SPACE!r}")
    options = field(body, "Options", dict, False, {})
    if options:
        raise InvalidRequest(f"unknown IPAM option(s) {', '.join(sorted(options))}: netplugin takes no --ipam-opt")
    pool_id, pool, data = backend("ipam").request_pool(field(body, "Pool", str, False, ""),
                                                       field(body, "SubPool", str, False, ""),
                                                       field(body, "V6", bool, False, False))
    return {"PoolID": pool_id, "Pool": pool, "Data": data}


@bp.post("/IpamDriver.ReleasePool")
@protocol
def release_pool(body: dict) -> dict:
    """``{"PoolID": "10.10.0.0/24"}`` -> ``{}``: pools are implicit in the subnet; nothing to free."""
    from ..ipam import Pool
    Pool(field(body, "PoolID"))
    return {}


@bp.post("/IpamDriver.RequestAddress")
@protocol
def request_address(body: dict) -> dict:
    """``{"PoolID": "10.10.0.0/24", "Address": "", "Options": {}}`` -> ``{"Address": "10.10.0.7/24", "Data": {}}``

    ``Address`` asks for that address (``--ip``); ``Options.RequestAddressType ==
    "com.docker.network.gateway"`` asks for the gateway."""
    options = field(body, "Options", dict, False, {})
    gateway = options.get("RequestAddressType") == GATEWAY_REQUEST
    address = backend("ipam").request_address(field(body, "PoolID"), field(body, "Address", str, False, ""),
                                              gateway)
    return {"Address": address, "Data": {}}


@bp.post("/IpamDriver.ReleaseAddress")
@protocol
def release_address(body: dict) -> dict:
    """``{"PoolID": "10.10.0.0/24", "Address": "10.10.0.7"}`` -> ``{}`` (idempotent)"""
    backend("ipam").release_address(field(body, "PoolID"), field(body, "Address"))
    return {}
