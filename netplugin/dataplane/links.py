"""Kernel links through pyroute2: the veth pair of each endpoint.

The host end (``np`` + 11 hex of the endpoint id) becomes an OVS port; the
container end (``nc`` + the same) is handed to Docker in Join, which moves it
into the container and renames it. On a userspace (netdev) datapath the tx
checksum offload must be off on both ends, or TCP through the bridge fails,
unless ovs-vswitchd runs with userspace TSO (tso.py): then both ends keep
every offload and TCP is about 10x faster.
"""

from __future__ import annotations

import errno
import logging
import os
import re

from ..errors import DataplaneError, InvalidRequest
from .tso import UserspaceTso

log = logging.getLogger(__name__)

HOST_PREFIX = "np"
PEER_PREFIX = "nc"
SYS_CLASS_NET = "/sys/class/net"
HOST_END_RE = re.compile(r"^np[0-9a-f]{11}$")
# A warm pool's pair (portpool.py): ``npp``/``ncp`` + 10 random hex digits. An
# endpoint that took one keeps these names (its record says which).
POOL_PREFIX = "npp"
POOL_HOST_RE = re.compile(r"^npp[0-9a-f]{10}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """(host end, container end) for an endpoint id."""
    short = endpoint_id[:11]
    return HOST_PREFIX + short, PEER_PREFIX + short


def pool_names(token: str) -> tuple[str, str]:
    """(host end, container end) of a pool pair; token: 10 lowercase hex digits."""
    if not re.fullmatch(r"[0-9a-f]{10}", token or ""):
        raise InvalidRequest(f"pool pair token {token!r} is not 10 hex digits")
    return POOL_PREFIX + token, "ncp" + token


def peer_of(host_end: str) -> str:
    """The container end's name for a host end of either kind (np… -> nc…)."""
    if not (HOST_END_RE.fullmatch(host_end or "") or POOL_HOST_RE.fullmatch(host_end or "")):
        raise InvalidRequest(f"{host_end!r} is not the host end of a netplugin veth")
    return PEER_PREFIX + host_end[len(HOST_PREFIX):]


def is_host_end(name: str) -> bool:
    """An endpoint's or a pool pair's host end, by its name alone."""
    return bool(HOST_END_RE.fullmatch(name) or POOL_HOST_RE.fullmatch(name))


def _checked(name: str) -> str:
    if not _NAME_RE.fullmatch(name or ""):
        raise InvalidRequest(f"interface name {name!r} is invalid")
    return name


class Links:
    """Creates, inspects and deletes veth pairs. ``tso``: whether userspace TSO
    is in effect, with which a netdev datapath's veths keep their offloads."""

    def __init__(self, tso: UserspaceTso | None = None):
        self.tso = tso

    def _ipr(self):
        from pyroute2 import IPRoute
        return IPRoute()

    def exists(self, name: str) -> bool:
        with self._ipr() as ipr:
            return bool(ipr.link_lookup(ifname=_checked(name)))

    def list_names(self, prefix: str = HOST_PREFIX) -> list[str]:
        """Names of this namespace's links that start with prefix.

        Read from sysfs, which lists the links of the namespace it was
        mounted in: a directory listing, where a netlink dump parses every
        link's attributes (17-28 s at 10,000 veths, against ~20 ms)."""
        try:
            names = os.listdir(SYS_CLASS_NET)
        except OSError:
            with self._ipr() as ipr:
                names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
        return sorted(n for n in names if n and n.startswith(prefix))

    def create_veth(self, host: str, peer: str, mtu: int, peer_mac: str, tx_checksum_off: bool,
                    host_up: bool = True) -> None:
        """Make the pair, set MTU and the container end's MAC, bring the host end up.

        One netlink message makes the pair with every setting (CreateEndpoint
        waits for this). Idempotent: an existing pair of the same names is
        reused after its settings are applied again (a retry after a crash
        lands here). ``host_up=False`` (a pool pair): the host end is made
        down, so the kernel drops whatever the container end sends.
        """
        from pyroute2 import NetlinkError
        _checked(host), _checked(peer)
        try:
            with self._ipr() as ipr:
                try:
                    ipr.link("add", ifname=host, kind="veth", mtu=mtu, state="up" if host_up else "down",
                             peer={"ifname": peer, "address": peer_mac, "mtu": mtu})
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    self._apply_settings(ipr, host, peer, mtu, peer_mac)
        except NetlinkError as exc:
            raise DataplaneError(f"cannot create veth pair {host}/{peer}: {exc}") from None
        if tx_checksum_off and not (self.tso and self.tso.in_effect()):
            for name in (host, peer):
                self.disable_tx_checksum(name)

    @staticmethod
    def _apply_settings(ipr, host: str, peer: str, mtu: int, peer_mac: str) -> None:
        (h,) = ipr.link_lookup(ifname=host)
        peers = ipr.link_lookup(ifname=peer)
        if not peers:
            raise DataplaneError(f"veth {host} exists without its peer {peer}: delete {host} and retry")
        ipr.link("set", index=peers[0], address=peer_mac, mtu=mtu)
        ipr.link("set", index=h, mtu=mtu, state="up")

    def activate(self, host: str, peer: str, peer_mac: str, alias: str) -> None:
        """A pool pair taken by an endpoint: the container end gets its MAC, the
        host end the endpoint id as its alias (how the reconciler tells whose
        it is by the name alone) and comes up, so traffic can pass."""
        from pyroute2 import NetlinkError
        _checked(host), _checked(peer)
        if not re.fullmatch(r"[0-9a-f]{64}", alias or ""):
            raise InvalidRequest(f"alias {alias!r} is not an endpoint id")
        try:
            with self._ipr() as ipr:
                hosts, peers = ipr.link_lookup(ifname=host), ipr.link_lookup(ifname=peer)
                if not hosts or not peers:
                    raise DataplaneError(f"veth pair {host}/{peer} is incomplete")
                ipr.link("set", index=peers[0], address=peer_mac)
                ipr.link("set", index=hosts[0], ifalias=alias, state="up")
        except NetlinkError as exc:
            raise DataplaneError(f"cannot set up veth pair {host}/{peer}: {exc}") from None

    def is_up(self, name: str) -> bool | None:
        """Whether the link is administratively up; None when it is not here."""
        try:
            with open(f"{SYS_CLASS_NET}/{_checked(name)}/flags", encoding="ascii") as fh:
                return bool(int(fh.read().strip(), 16) & 0x1)
        except (OSError, ValueError):
            return None

    def alias(self, name: str) -> str:
        """The link's alias ('' when none, or when the link is not here)."""
        try:
            with open(f"{SYS_CLASS_NET}/{_checked(name)}/ifalias", encoding="utf-8", errors="replace") as fh:
                return fh.read().strip()
        except OSError:
            return ""

    def disable_tx_checksum(self, name: str) -> None:
        """The legacy ethtool ioctl (one system call, ~0.1 ms); the generic
        netlink route reads every feature first (~2.5 ms per link)."""
        from pyroute2.ethtool.ioctl import IoctlEthtool
        eth = IoctlEthtool(_checked(name))
        try:
            eth.set_offload_flag("tx-checksumming", 0)
        except Exception as exc:  # noqa: BLE001 - pyroute2 raises plain errors here
            raise DataplaneError(f"cannot turn off tx checksum offload on {name}: {exc}") from None
        finally:
            eth.close()

    def plug_into_netns(self, peer: str, netns_path: str, ip: str, prefixlen: int,
                        gateway: str | None) -> str:
        """Move peer into a container's network namespace and configure it as
        Docker would have: the next free ethN, the address, up, and a default
        route through gateway if the container has none. Returns the name."""
        from pyroute2 import NetNS
        _checked(peer)
        with self._ipr() as ipr:
            (idx,) = ipr.link_lookup(ifname=peer)
            ipr.link("set", index=idx, net_ns_fd=netns_path)
        ns = NetNS(netns_path)
        try:
            names = {link.get_attr("IFLA_IFNAME") for link in ns.get_links()}
            name = next(f"eth{i}" for i in range(64) if f"eth{i}" not in names)
            (idx,) = ns.link_lookup(ifname=peer)
            ns.link("set", index=idx, ifname=name)
            ns.addr("add", index=idx, address=ip, prefixlen=prefixlen)
            ns.link("set", index=idx, state="up")
            if gateway and not ns.get_default_routes(family=2):
                ns.route("add", dst="0.0.0.0/0", gateway=gateway)
            return name
        finally:
            ns.close()

    def delete(self, name: str) -> bool:
        """Delete a link (its veth peer goes with it). False when it was not there."""
        from pyroute2 import NetlinkError
        try:
            with self._ipr() as ipr:
                found = ipr.link_lookup(ifname=_checked(name))
                if not found:
                    return False
                ipr.link("del", index=found[0])
                return True
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise DataplaneError(f"cannot delete link {name}: {exc}") from None
