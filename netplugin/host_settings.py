"""The reconciler's settings come from its host's daemon: the ones the
daemon published in its registration (identity.PUBLISHED) are adopted
where the reconciler's own are at their defaults; one set explicitly (to
anything but its default) that disagrees is refused, as is a host id that
no daemon ever registered under this etcd prefix. So a reconciler started by
hand without the daemon's ``--bridge`` acts on the daemon's bridge, never on
a default one that does not exist."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import Config
from .errors import InvalidRequest
from .store import Store

ADOPTED = ("bridge", "datapath_type", "uplink", "mtu")
CHECKED = (*ADOPTED, "socket")


def adopt(cfg: Config, store: Store) -> Config:
    """cfg with the registration's settings, checked like any setting; InvalidRequest when they disagree."""
    host = cfg.host_id
    reg, _alive = store.host_registration(host)
    if reg is None:
        raise InvalidRequest(f"refused: no netplugin daemon has registered as host {host} under etcd prefix "
                             f"{cfg.etcd_prefix}: nothing was changed. Check host_id and etcd_prefix against the "
                             "daemon's settings ('netctl host ls' lists the hosts), or start the daemon first")
    theirs_prefix = reg.settings.get("etcd_prefix")
    if theirs_prefix is not None and theirs_prefix != cfg.etcd_prefix:
        raise InvalidRequest(f"refused: the registration of host {host} names etcd prefix {theirs_prefix!r}, "
                             f"not {cfg.etcd_prefix!r}: nothing was changed")
    defaults = Config(host_id=host)
    changes: dict[str, Any] = {}
    clashes: list[str] = []
    for name in CHECKED:
        theirs, mine = reg.settings.get(name), getattr(cfg, name)
        if (theirs is None and name != "uplink") or theirs == mine:
            continue
        if mine != getattr(defaults, name):
            clashes.append(f"{name} {mine!r} (the daemon's is {theirs!r})")
        elif name in ADOPTED:
            changes[name] = theirs
    if clashes:
        raise InvalidRequest(f"refused: this reconciler's settings disagree with the daemon of host {host}: "
                             f"{', '.join(clashes)}; nothing was changed. Leave them out to adopt the daemon's, "
                             "or use the daemon's own settings file")
    return dataclasses.replace(cfg, **changes).validate()
