"""Releasing an endpoint whole: its OVS port, its veth, its etcd record and
its address, in an order that is safe to repeat after a crash at any step
(datapath first, then record and address together in one transaction, which
also leaves a tombstone so a second call can say "already released").

An endpoint of another host is released by that host: the request is queued
under ``release/<host>/<endpoint-id>``, and every daemon follows its own
queue. An endpoint that Docker still shows attached to a running container is
not released unless forced.
"""

from __future__ import annotations

import logging
import time

import netaddr

from .config import Config
from .dataplane.links import Links
from .dataplane.ovs import Switch
from .docker_api import DockerView
from .errors import Conflict, DataplaneUnavailable, InvalidRequest, NetpluginError, NotFound, StoreUnavailable
from .hostview import HostView
from .limit_sync import LimitSync
from .model import ALLOC_ENDPOINT, Endpoint
from .store import Store
from .watch import SyncLoop

log = logging.getLogger(__name__)

RETRY_EVERY = 10.0
VIEW_PATIENCE = 5.0      # seconds the queue waits for the view's first read


class Releaser:
    def __init__(self, cfg: Config, store: Store, view: HostView, links: Links, switch: Switch,
                 docker: DockerView | None, limits: LimitSync):
        self.cfg = cfg
        self.store = store
        self.view = view                      # this host's queue, kept by a watch
        self.links = links
        self.switch = switch
        self.docker = docker
        self.limits = limits                  # removes a port's meter and flows before the port

    # -- the local, whole release ---------------------------------------------------
    def release_local(self, ep: Endpoint, by: str = "api") -> dict:
        """Remove everything of an endpoint of this host. Idempotent."""
        removed: dict[str, object] = {"ovs_port": None, "veth": None, "record": False, "address": None}
        self.limits.remove(ep.id, ep.port)
        if self.switch.delete_port(ep.port):
            removed["ovs_port"] = ep.port
        if self.links.delete(ep.port):
            removed["veth"] = ep.port
        removed["record"], removed["address"] = self.store.release_endpoint(ep, by)
        log.info("released endpoint %s (%s on %s): %s", ep.id[:12], ep.ip, ep.network_name or ep.network, removed)
        return removed

    def _live_container(self, ep: Endpoint) -> dict | None:
        if self.docker is None:
            return None
        view = self.docker.live_endpoints([ep.docker_network])
        if view is None:
            raise Conflict(f"cannot ask Docker whether endpoint {ep.id[:12]} is in use: "
                           "start dockerd, or pass Force to release it anyway")
        return view.get(ep.id)

    # -- the API's use case --------------------------------------------------------------
    def release(self, endpoint_id: str | None = None, network: str | None = None, address: str | None = None,
                force: bool = False, wait: float = 0.0) -> dict:
        """Release by endpoint id, or by network and address. Returns a reply with
        Status 'released', 'already released' or 'pending' (another host's)."""
        if endpoint_id:
            return self._release_id(endpoint_id, force, wait)
        if not (network and address):
            raise InvalidRequest("give EndpointID, or Network and Address")
        net = self.store.find_network(network)
        subnet = netaddr.IPNetwork(net.subnet)
        try:
            ip = netaddr.IPAddress(address.split("/")[0], flags=netaddr.INET_PTON)
        except (netaddr.AddrFormatError, ValueError):
            raise InvalidRequest(f"Address {address!r} is not an IPv4 address") from None
        if ip not in subnet:
            raise InvalidRequest(f"address {ip} is not in network {net.label} ({net.subnet})")
        held = self.store.get_allocation(net.subnet, int(ip) - subnet.first)
        if held is None:
            return {"Status": "already released", "Network": net.label, "Address": str(ip)}
        alloc, rev = held
        if alloc.kind != ALLOC_ENDPOINT:
            raise Conflict(f"address {ip} is the {alloc.kind} address of network {net.label}, not an endpoint's")
        if alloc.endpoint and self.store.get_endpoint(alloc.endpoint):
            return self._release_id(alloc.endpoint, force, wait)
        # An address with no endpoint record: a claim that never became an endpoint.
        if alloc.host != self.cfg.host_id and self.store.host_alive(alloc.host) and not force:
            raise Conflict(f"address {ip} was claimed by live host {alloc.host} and may be in the middle of "
                           "a container start: retry later, or pass Force")
        self.store.release_address(net.subnet, int(ip) - subnet.first, rev)
        return {"Status": "released", "Network": net.label, "Address": str(ip),
                "Removed": {"ovs_port": None, "veth": None, "record": False, "address": str(ip)}}

    def _release_id(self, endpoint_id: str, force: bool, wait: float) -> dict:
        found = self.store.get_endpoint(endpoint_id)
        if found is None:
            stone = self.store.tombstone(endpoint_id)
            if stone is None:
                raise NotFound(f"endpoint {endpoint_id} is unknown: see 'netctl endpoint ls'")
            return {"Status": "already released", "EndpointID": endpoint_id, "Host": stone["host"],
                    "ReleasedAt": stone["time"], "ReleasedBy": stone["by"]}
        ep = found[0]
        if ep.host == self.cfg.host_id:
            if not force:
                live = self._live_container(ep)
                if live:
                    raise Conflict(f"endpoint {endpoint_id[:12]} belongs to running container {live['name']}: "
                                   "stop it or disconnect it first, or pass Force")
            removed = self.release_local(ep, by="api")
            return {"Status": "released", "EndpointID": endpoint_id, "Host": ep.host, "Removed": removed}
        self.store.request_release(ep.host, endpoint_id, force, by=self.cfg.host_id)
        reply = {"Status": "pending", "EndpointID": endpoint_id, "Host": ep.host}
        if not self.store.host_alive(ep.host):
            reply["Warning"] = f"host {ep.host} is not alive: the release happens when it comes back"
        stop = time.monotonic() + min(max(wait, 0.0), 15.0)
        while time.monotonic() < stop:
            time.sleep(0.2)
            pending = self.store.release_request(ep.host, endpoint_id)
            if pending is None:
                return {"Status": "released", "EndpointID": endpoint_id, "Host": ep.host}
            if pending.get("state") == "refused":
                raise Conflict(f"host {ep.host} refused: {pending.get('message')}")
        return reply

    # -- carrying out requests queued for this host -------------------------------------------
    def follow_requests(self) -> SyncLoop:
        """Carry out this host's queue when it changes, and every RETRY_EVERY
        seconds, so a request that failed for a moment (OVS or etcd away) is
        tried again without anyone writing it again."""
        loop = SyncLoop("release-requests", lambda full: self._drain(), RETRY_EVERY)
        self.view.on("releases", loop.wake)
        return loop.start()

    def _drain(self) -> None:
        if not self.view.ready(VIEW_PATIENCE):
            raise StoreUnavailable("the release queue waits for its first read of etcd")
        waiting = [endpoint_id for endpoint_id, request in self.view.release_requests()
                   if not self._carry_out(endpoint_id, request)]
        if waiting:   # the loop tries again in a second
            raise DataplaneUnavailable(f"{len(waiting)} release request(s) must wait for OVS or etcd")

    def _carry_out(self, endpoint_id: str, request: dict) -> bool:
        """Carry out one request; False when it must be tried again later."""
        if request.get("state") != "pending":
            return True
        try:
            found = self.store.get_endpoint(endpoint_id)
            if found is not None and found[0].host == self.cfg.host_id:
                ep = found[0]
                live = None if request.get("force") else self._live_container(ep)
                if live:
                    self.store.answer_release_request(self.cfg.host_id, endpoint_id, dict(
                        request, state="refused",
                        message=f"endpoint belongs to running container {live['name']}"), asked=request)
                    return True
                self.release_local(ep, by=f"request from {request.get('by')}")
            self.store.answer_release_request(self.cfg.host_id, endpoint_id, None, asked=request)
        except Conflict as exc:
            self.store.answer_release_request(self.cfg.host_id, endpoint_id,
                                              dict(request, state="refused", message=exc.message), asked=request)
        except NetpluginError as exc:
            # OVS or etcd failing now: the request stays pending, the rest of the
            # queue goes on, and the loop tries it again shortly.
            log.warning("release of %s must wait: %s", endpoint_id[:12], exc.message)
            return False
        return True
