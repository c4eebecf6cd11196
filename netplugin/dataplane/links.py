"""Kernel links through pyroute2: the veth pair of each endpoint.

The host end (``np`` + 11 hex of the endpoint id) becomes an OVS port; the
container end (``nc`` + the same) is handed to Docker in Join, which moves it
into the container and renames it. On a userspace (netdev) datapath the tx
checksum offload must be off on both ends, or TCP through the bridge fails.
"""

from __future__ import annotations

import errno
import logging
import re

from ..errors import DataplaneError, InvalidRequest

log = logging.getLogger(__name__)

HOST_PREFIX = "np"
PEER_PREFIX = "nc"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def veth_names(endpoint_id: str) -> tuple[str, str]:
    """(host end, container end) for an endpoint id."""
    short = endpoint_id[:11]
    return HOST_PREFIX + short, PEER_PREFIX + short


def _checked(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise InvalidRequest(f"interface name {name!r} is invalid")
    return name


class Links:
    """Creates, inspects and deletes veth pairs."""

    def _ipr(self):
        from pyroute2 import IPRoute
        return IPRoute()

    def exists(self, name: str) -> bool:
        with self._ipr() as ipr:
            return bool(ipr.link_lookup(ifname=_checked(name)))

    def list_names(self, prefix: str = HOST_PREFIX) -> list[str]:
        with self._ipr() as ipr:
            names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
        return sorted(n for n in names if n and n.startswith(prefix))

    def create_veth(self, host: str, peer: str, mtu: int, peer_mac: str, tx_checksum_off: bool) -> None:
        """Make the pair, set MTU and the container end's MAC, bring the host end up.

        Idempotent: an existing pair of the same names is reused after its
        settings are applied again (a retry after a crash lands here).
        """
        from pyroute2 import NetlinkError
        _checked(host), _checked(peer)
        try:
            with self._ipr() as ipr:
                if not ipr.link_lookup(ifname=host):
                    ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer})
                (h,) = ipr.link_lookup(ifname=host)
                peers = ipr.link_lookup(ifname=peer)
                if not peers:
                    raise DataplaneError(f"veth {host} exists without its peer {peer}: delete {host} and retry")
                p = peers[0]
                ipr.link("set", index=p, address=peer_mac, mtu=mtu)
                ipr.link("set", index=h, mtu=mtu, state="up")
        except NetlinkError as exc:
            raise DataplaneError(f"cannot create veth pair {host}/{peer}: {exc}") from None
        if tx_checksum_off:
            for name in (host, peer):
                self.disable_tx_checksum(name)

    def disable_tx_checksum(self, name: str) -> None:
        from pyroute2.ethtool import Ethtool
        eth = Ethtool()
        try:
            feats = eth.get_features(_checked(name))
            for key, feat in feats.features.items():
                if key.startswith("tx-checksum") and feat.available:
                    feat.enable = False
            eth.set_features(name, feats)
        except Exception as exc:  # noqa: BLE001 - pyroute2 raises plain errors here
            raise DataplaneError(f"cannot turn off tx checksum offload on {name}: {exc}") from None
        finally:
            eth.close()

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
