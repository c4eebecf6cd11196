"""netplugin's own calls on the plugin socket, for operators and netctl."""

from flask import Blueprint

from ..errors import InvalidRequest
from .wire import backend, field, protocol

bp = Blueprint("admin", __name__)


@bp.post("/NetPlugin.ReleaseEndpoint")
@protocol
def release_endpoint(body: dict) -> dict:
    """Release a leaked endpoint whole: OVS port, veth, etcd record and address.

    ``{"EndpointID": "<64 hex>"}`` or ``{"Network": "prod", "Address": "10.10.0.7"}``,
    optionally ``"Force": true`` (even if Docker shows it in use) and ``"Wait": 5``
    (seconds to wait for another host to carry it out) ->
    ``{"Status": "released", "EndpointID": ..., "Host": "db17", "Removed": {"ovs_port": "np3f2a9c1d0b7",
    "veth": "np3f2a9c1d0b7", "record": true, "address": "10.10.0.7"}}``, or
    ``{"Status": "already released", ...}``, or ``{"Status": "pending", "Host": "db18"}``."""
    endpoint_id = field(body, "EndpointID", str, False)
    network = field(body, "Network", str, False)
    address = field(body, "Address", str, False)
    if not endpoint_id and not (network and address):
        raise InvalidRequest("give EndpointID, or Network and Address")
    wait = field(body, "Wait", (int, float), False, 0)
    return backend("releaser").release(endpoint_id=endpoint_id, network=network, address=address,
                                       force=field(body, "Force", bool, False, False), wait=float(wait))
