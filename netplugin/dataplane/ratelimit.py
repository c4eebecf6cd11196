"""Per-port limits on what a container sends (traffic entering the switch).

Two mechanisms, chosen by the ``rate_limit`` setting:

* ``meter``: an OpenFlow 1.3 meter per port (flows.py). Works in the kernel and
  the userspace datapath.
* ``policing``: OVS ``ingress_policing_rate``/``_burst``, which needs tc's police
  action in the kernel (missing on some kernels, e.g. these test machines).
* ``auto`` (default): meters when the bridge reports meter support, else policing.

OVS accepts the policing columns even where the kernel has no police action;
it only logs its failure in its own log, and nothing is limited. So whenever
policing is chosen (by ``auto`` or by the setting), the kernel's configuration
is read, and a missing police action is logged as a warning by the daemon.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import threading
import time

from .flows import Flows
from .ovs import Switch

log = logging.getLogger(__name__)

# What OVS's ingress policing needs in the kernel: tc's police action, and a
# classifier to hang it on (OVS uses "basic", or "matchall" with hw-offload).
POLICE_ACTION = "CONFIG_NET_ACT_POLICE"
POLICE_CLASSIFIERS = ("CONFIG_NET_CLS_BASIC", "CONFIG_NET_CLS_MATCHALL")


def kernel_config() -> str | None:
    """The running kernel's build configuration, or None when it cannot be read."""
    candidates = ["/proc/config.gz", f"/boot/config-{os.uname().release}"]
    for path in candidates:
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt", errors="replace") as fh:
                    return fh.read()
            with open(path, errors="replace") as fh:
                return fh.read()
        except OSError:
            continue
    return None


def tc_police_support(config: str | None) -> bool | None:
    """Whether the kernel can police (built in or as a module), from its
    configuration text; None when that is not known."""
    if config is None:
        return None if not os.path.isdir("/sys/module/act_police") else True

    def enabled(option: str) -> bool:
        return re.search(rf"^{option}=[ym]$", config, re.MULTILINE) is not None

    return enabled(POLICE_ACTION) and any(enabled(c) for c in POLICE_CLASSIFIERS)


class RateLimiter:
    def __init__(self, switch: Switch, flows: Flows, method: str = "auto", kernel_config=kernel_config):
        if method not in ("auto", "meter", "policing"):
            raise ValueError(f"rate limit method {method!r} must be auto, meter or policing")
        self.switch = switch
        self.flows = flows
        self.setting = method
        self._method = None if method == "auto" else method
        self._kernel_config = kernel_config
        self._checked = False
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()

    @property
    def method(self) -> str:
        """The mechanism in use, chosen once (for ``auto``, by asking the bridge)."""
        with self._lock:
            if self._method is None:
                self._method = "meter" if self.flows.meters_supported() else "policing"
            if not self._checked:
                self._checked = True
                log.info("rate limits use %s on bridge %s (setting rate_limit = %s)",
                         self._method, self.flows.bridge, self.setting)
                if self._method == "policing":
                    self._check_policing()
            return self._method

    def _check_policing(self) -> None:
        support = tc_police_support(self._kernel_config())
        why = ("the bridge reports no OpenFlow meter support" if self.setting == "auto"
               else "rate_limit is set to policing")
        if support is False:
            log.warning("rate limits on bridge %s are NOT ENFORCED: %s, so ingress policing is used, but this "
                        "kernel has no tc police action (%s and %s or %s): Open vSwitch accepts the limits and "
                        "drops nothing. Use a bridge whose datapath has meters (rate_limit = meter, e.g. "
                        "datapath_type = netdev) or a kernel with tc police.", self.flows.bridge, why,
                        POLICE_ACTION, *POLICE_CLASSIFIERS)
        elif support is None:
            log.warning("rate limits on bridge %s use ingress policing (%s), and whether this kernel has tc's "
                        "police action cannot be told (no kernel configuration to read): if it has not, limits "
                        "are not enforced; 'tc filter show dev PORT ingress' shows whether one took",
                        self.flows.bridge, why)

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
