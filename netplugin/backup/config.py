"""drctl settings: defaults < ``/etc/netplugin/drctl.toml`` (or the file that
``--drctl-config`` or ``DRCTL_CONFIG`` names, which must exist) < ``DRCTL_*`` <
flags, by the loader netplugin's settings use too (netplugin/settings.py).

etcd, the host id and Docker's address are netplugin's own settings
(``/etc/netplugin/netplugin.toml``, ``NETPLUGIN_*``): drctl reads them with
netplugin's loader, so a host's drctl and netplugin always agree.

Example ``/etc/netplugin/drctl.toml``::

    max_jobs = 5
    work_dir = "/var/lib/drctl"
    cpus = 1.0
    memory = "1g"
    pids = 256
    write_bps = "50mb"
    option_dir = "/etc/drctl"                  # where job option files must lie
    images = ["netplugin/mariadb-tools:10.11"] # the tools images jobs may name
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest
from ..settings import load_settings
from .placement import label_map

DEFAULT_FILE = "/etc/netplugin/drctl.toml"
ENV_PREFIX = "DRCTL_"


@dataclass
class BackupConfig:
    max_jobs: int = 5                          # per host: more jobs wait in the queue
    work_dir: str = "/var/lib/drctl"           # per-job folders (script, status files, log)
    image: str = "netplugin/mariadb-tools:10.11"
    images: list[str] = field(default_factory=list)  # the images a job may name; empty: only ``image``
    option_dir: str = "/etc/drctl"             # option files are mounted only from here (resolved)
    strict: bool = True                        # a limit Docker or the kernel dropped fails the job
    lease_ttl: int = 15                        # seconds an agent's slots outlive the agent
    poll: float = 0.5                          # scheduler tick
    start_timeout: float = 600.0
    timeout: float = 6 * 3600.0
    # default limits of a job (flags of drctl run/restore override them)
    cpus: float = 1.0
    memory: str = "1g"
    pids: int = 256
    read_bps: str = ""
    write_bps: str = ""
    read_iops: int = 0
    write_iops: int = 0
    profile: str = ""
    compression: str = "zstd"
    min_size: int = 512                        # a compressed dump smaller than this is refused
    log_tail_lines: int = 50
    keep_containers: float = 7 * 86400.0       # the agent removes ended jobs' containers after this
    keep_history: float = 90 * 86400.0         # and their records after this
    profile_wait: float = 15.0                 # seconds to wait for netplugin to enforce a profile
    lock_timeout: float = 20.0                 # seconds the backup may hold the source's global read lock
    missed_window: float = 3600.0              # a due time missed by every agent still runs when this recent
    schedule_poll: float = 5.0                 # seconds between an agent's passes over the schedules
    labels: list[str] = field(default_factory=list)  # KEY=VALUE this host offers to --place (site=dr)
    drill_image: str = "netplugin/mariadb:10.11"   # scratch servers of restore drills (built locally)
    drill_memory: str = "1g"                       # their memory limit
    drill_max_age: float = 8 * 86400.0             # drctl check fails a target whose last drill is older

    def validate(self) -> BackupConfig:
        if not 1 <= int(self.max_jobs) <= 256:
            raise InvalidRequest(f"max_jobs {self.max_jobs} must be between 1 and 256")
        if not os.path.isabs(self.work_dir):
            raise InvalidRequest(f"work_dir {self.work_dir!r} must be an absolute path")
        if not os.path.isabs(self.option_dir):
            raise InvalidRequest(f"option_dir {self.option_dir!r} must be an absolute path")
        if self.images and self.image not in self.images:
            raise InvalidRequest(f"image {self.image!r} must be one of images ({', '.join(self.images)})")
        if self.compression not in ("zstd", "gzip"):
            raise InvalidRequest(f"compression {self.compression!r} must be zstd or gzip")
        if self.lease_ttl < 5:
            raise InvalidRequest("lease_ttl must be at least 5 seconds")
        for name in ("poll", "start_timeout", "timeout", "schedule_poll"):
            if not getattr(self, name) > 0:
                raise InvalidRequest(f"{name} must be a positive number of seconds")
        label_map(self.labels)
        if not self.missed_window >= 0:
            raise InvalidRequest("missed_window must be a number of seconds, 0 or more")
        return self


def load(path: str | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> BackupConfig:
    """Build a BackupConfig by the loader both tools share (settings.py)."""
    return load_settings(BackupConfig, ENV_PREFIX, DEFAULT_FILE, path, env, overrides)
