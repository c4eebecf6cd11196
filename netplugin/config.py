"""All settings in one dataclass, read from defaults, a TOML file, the
environment (``NETPLUGIN_<FIELD>``) and command-line flags, later winning
(the loader is settings.py, shared with drctl).

Example file (``/etc/netplugin/netplugin.toml``)::

    etcd_endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    host_id = "db-host-17"
    bridge = "netplugin0"
    datapath_type = "system"
    uplink = "bond0"
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import etcd_access
from .errors import InvalidRequest
from .settings import load_settings

DEFAULT_CONFIG_FILE = "/etc/netplugin/netplugin.toml"
ENV_PREFIX = "NETPLUGIN_"

# Names that reach OVS or the kernel are checked against this before use.
_IFACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass
class Config:
    """Settings of the daemon and of netctl."""

    etcd_endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    etcd_prefix: str = "/netplugin/v1"
    etcd_timeout: float = 3.0
    etcd_cacert: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_user: str | None = None
    etcd_password: str | None = None
    # A password over http:// is refused unless this is set and every endpoint
    # is on loopback (a test cluster on this machine): etcd_access.py.
    etcd_allow_plaintext_password: bool = False
    host_id: str = field(default_factory=socket.gethostname)
    bridge: str = "netplugin0"
    datapath_type: str = "system"
    # netdev datapath: turn on ovs-vswitchd's userspace TSO (one restart) and keep
    # veth offloads; off: veth tx checksum offload off (dataplane/tso.py)
    userspace_tso: bool = True
    uplink: str | None = None
    socket: str = "/run/docker/plugins/netplugin.sock"
    socket_group: str | None = None
    mtu: int = 1500
    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    ovs_timeout: float = 5.0
    # Opening the OVSDB connection downloads the Port and Interface tables: the
    # daemon's requests are bounded by their deadline anyway.
    ovs_connect_timeout: float = 15.0
    docker_url: str = "unix:///var/run/docker.sock"
    docker_timeout: float = 5.0
    rate_limit: str = "auto"
    handler_deadline: float = 20.0
    threads: int = 32
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_address: str = "127.0.0.1:9109"
    # drctl's fleet-wide figures (jobs, catalog, drills) on this daemon's /metrics.
    # They cost a scrape a read of every job's key: turn them on for the one or two
    # hosts Prometheus asks for them, not on every host of a fleet (docs/operations.md).
    backup_metrics: bool = False
    # The reconciler (netplugin-reconcile): a new process each run, whose first
    # OVSDB dump at 10,000 ports takes 20-60 s on a loaded host.
    reconcile_ovs_connect_timeout: float = 300.0
    reconcile_dead_host_after: float | None = None     # seconds; unset = never release dead hosts' endpoints
    reconcile_tombstone_max_age: float = 7 * 86400.0   # release tombstones older than this are pruned
    # Parked veth pairs kept ready on the switch for CreateEndpoint (portpool.py); 0 turns the pool off.
    port_pool_size: int = 4

    def validate(self) -> Config:
        """Raise InvalidRequest naming the first setting that cannot work."""
        if not self.etcd_endpoints:
            raise InvalidRequest("etcd_endpoints is empty: give at least one URL such as http://127.0.0.1:2379")
        for url in self.etcd_endpoints:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+:\d+/?", url):
                raise InvalidRequest(f"etcd endpoint {url!r} is not of the form http(s)://HOST:PORT")
        if not _HOST_ID_RE.fullmatch(self.host_id or ""):
            raise InvalidRequest(f"host_id {self.host_id!r} must be 1-63 letters, digits, '.', '_' or '-'")
        if not _IFACE_RE.fullmatch(self.bridge or ""):
            raise InvalidRequest(f"bridge {self.bridge!r} is not a valid interface name "
                                 "(1-15 letters, digits, '.', '_', '-')")
        if self.uplink is not None and not _IFACE_RE.fullmatch(self.uplink):
            raise InvalidRequest(f"uplink {self.uplink!r} is not a valid interface name")
        if self.datapath_type not in ("system", "netdev"):
            raise InvalidRequest(f"datapath_type {self.datapath_type!r} must be 'system' or 'netdev'")
        if not 576 <= int(self.mtu) <= 9216:
            raise InvalidRequest(f"mtu {self.mtu} must be between 576 and 9216")
        if not self.etcd_prefix.startswith("/") or self.etcd_prefix.endswith("/"):
            raise InvalidRequest("etcd_prefix must start with '/' and not end with '/'")
        if self.log_format not in ("text", "json"):
            raise InvalidRequest(f"log_format {self.log_format!r} must be text or json")
        if self.metrics_address.lower() in ("off", "none", "no", "false"):
            self.metrics_address = ""            # an empty variable is ignored, so say "off"
        if self.metrics_address:
            from .metrics_server import parse_address
            parse_address(self.metrics_address)
        if self.rate_limit not in ("auto", "meter", "policing"):
            raise InvalidRequest(f"rate_limit {self.rate_limit!r} must be auto, meter or policing")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise InvalidRequest(f"log_level {self.log_level!r} must be DEBUG, INFO, WARNING or ERROR")
        for name in ("etcd_timeout", "ovs_timeout", "ovs_connect_timeout", "docker_timeout", "handler_deadline",
                     "reconcile_ovs_connect_timeout", "reconcile_tombstone_max_age"):
            if not getattr(self, name) > 0:
                raise InvalidRequest(f"{name} must be a positive number of seconds, not {getattr(self, name)}")
        if self.reconcile_dead_host_after is not None and not self.reconcile_dead_host_after > 0:
            raise InvalidRequest("reconcile_dead_host_after must be a positive number of seconds "
                                 f"(leave it unset to never release dead hosts' endpoints), "
                                 f"not {self.reconcile_dead_host_after}")
        if isinstance(self.port_pool_size, bool) or not 0 <= int(self.port_pool_size) <= 64:
            raise InvalidRequest(f"port_pool_size {self.port_pool_size} must be between 0 (no pool) and 64")
        if not 1 <= int(self.threads) <= 512:
            raise InvalidRequest(f"threads {self.threads} must be between 1 and 512")
        etcd_access.check(self.etcd_endpoints, self.etcd_cacert, self.etcd_cert, self.etcd_key,
                          self.etcd_user, self.etcd_password, self.etcd_allow_plaintext_password)
        return self


def load(path: str | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Build a Config: defaults < file < environment < overrides (flags), by
    the loader both tools share (settings.py). A missing default file is
    fine; a missing file that was asked for is not."""
    return load_settings(Config, ENV_PREFIX, DEFAULT_CONFIG_FILE, path, env, overrides)
