"""Per-port limits on what a container sends (traffic entering the switch).

Two mechanisms, chosen by the ``rate_limit`` setting:

* ``meter``: an OpenFlow 1.3 meter per port (flows.py). Works in the kernel and
  the userspace datapath.
* ``policing``: OVS ``ingress_policing_rate``/``_burst``, which needs tc's police
  action in the kernel (missing on some kernels, e.g. these test machines).
* ``auto`` (default): meters when the bridge reports meter support, else policing.
"""

from __future__ import annotations

import logging
import threading
import time

from .flows import Flows
from .ovs import Switch

log = logging.getLogger(__name__)


class RateLimiter:
    def __init__(self, switch: Switch, flows: Flows, method: str = "auto"):
        self.switch = switch
        self.flows = flows
        self._method = None if method == "auto" else method
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()

    @property
    def method(self) -> str:
        with self._lock:
            if self._method is None:
                self._method = "meter" if self.flows.meters_supported() else "policing"
                log.info("rate limits use %s on bridge %s", self._method, self.flows.bridge)
            return self._method

    def apply(self, endpoint_id: str, port: str, vlan: int, limit: tuple[int, int] | None,
              wait_port: float = 0.0, wanted=None) -> bool:
        """Set or remove the limit of one port (and keep its table-0 flow).
        False when the port has no OpenFlow number yet (ovs-vswitchd has not
        taken it in), after waiting up to ``wait_port`` seconds for one.

        Serialized with ``remove``: CreateEndpoint and the etcd-driven sync may
        set the same port's meter at the same moment, and a pass that read the
        endpoint just before its DeleteEndpoint must not put back what the
        deletion removed: under the lock, ``wanted()`` is asked again and the
        port's number read again."""
        if self._ofport(port, wait_port) is None:
            return False
        with self._apply_lock:
            if wanted is not None and not wanted():
                return True              # the endpoint is going: nothing to set
            return self._apply(endpoint_id, port, vlan, limit, self.switch.ofport(port))

    def _ofport(self, port: str, wait: float) -> int | None:
        give_up = time.monotonic() + wait
        while (ofport := self.switch.ofport(port)) is None and time.monotonic() < give_up:
            time.sleep(0.01)
        return ofport

    def _apply(self, endpoint_id: str, port: str, vlan: int, limit: tuple[int, int] | None,
               ofport: int | None) -> bool:
        if self.method == "meter":
            if ofport is not None:
                self.flows.set_port(endpoint_id, ofport, vlan, limit)
        else:
            if ofport is not None:
                self.flows.set_port(endpoint_id, ofport, vlan, None)
            self.switch.set_policing(port, *(limit or (0, 0)))
        return ofport is not None

    def remove(self, endpoint_id: str, port: str, defer=None) -> None:
        """Before a port goes: its meter and every flow of it go first (under the
        same lock as apply, so a pass in flight cannot put them back after).

        ``defer(fn, *args)``, when given, may run the flow deletion later, off
        the caller's path, if the port has no meter: flows are found by the
        endpoint's cookie, so deleting them late can never touch another
        endpoint's. A meter (id = OpenFlow port number, which a new port may
        get) is always deleted at once."""
        with self._apply_lock:
            ofport = self.switch.ofport(port) if self.switch.port_exists(port) else None
            if defer is not None and not self.flows.has_meter(ofport):
                defer(self.flows.delete_endpoint_flows, endpoint_id)
            else:
                self.flows.clear_port(endpoint_id, ofport)

    def delete_meters(self, ids: set[int], in_use) -> list[int]:
        """Delete the meters among ids that are not in ``in_use()``, asked under
        the apply lock (so no port is being given one of them meanwhile)."""
        gone = []
        with self._apply_lock:
            keep = in_use()
            for meter in sorted(ids - keep):
                self.flows.del_meter(meter)
                gone.append(meter)
        return gone

    def applied(self) -> dict[int, dict]:
        """What the bridge enforces now: meter id (ofport) -> rate and burst."""
        return self.flows.meters() if self.method == "meter" else {}
