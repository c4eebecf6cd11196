"""drctl settings: defaults < ``/etc/netplugin/drctl.toml`` < ``DRCTL_*`` < flags.

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
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..errors import InvalidRequest

DEFAULT_FILE = "/etc/netplugin/drctl.toml"
ENV_PREFIX = "DRCTL_"


@dataclass
class BackupConfig:
    max_jobs: int = 5                          # per host: more jobs wait in the queue
    work_dir: str = "/var/lib/drctl"           # per-job folders (script, status files, log)
    image: str = "netplugin/mariadb-tools:10.11"
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

    def validate(self) -> "BackupConfig":
        if not 1 <= int(self.max_jobs) <= 256:
            raise InvalidRequest(f"max_jobs {self.max_jobs} must be between 1 and 256")
        if not os.path.isabs(self.work_dir):
            raise InvalidRequest(f"work_dir {self.work_dir!r} must be an absolute path")
        if self.compression not in ("zstd", "gzip"):
            raise InvalidRequest(f"compression {self.compression!r} must be zstd or gzip")
        if self.lease_ttl < 5:
            raise InvalidRequest("lease_ttl must be at least 5 seconds")
        for name in ("poll", "start_timeout", "timeout"):
            if not getattr(self, name) > 0:
                raise InvalidRequest(f"{name} must be a positive number of seconds")
        return self


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    text = str(kind)
    if text.startswith("bool") or kind is bool:
        if isinstance(raw, bool):
            return raw
        value = str(raw).strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise InvalidRequest(f"setting {name} must be true or false, not {raw!r}")
    try:
        if text.startswith("int") or kind is int:
            return int(raw)
        if text.startswith("float") or kind is float:
            return float(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"setting {name} must be a number, not {raw!r}") from None
    return str(raw)


def load(path: str | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> BackupConfig:
    env = os.environ if env is None else env
    known = {f.name: f.type for f in fields(BackupConfig)}
    values: dict[str, Any] = {}
    file_path = path or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_FILE
    if os.path.exists(file_path):
        try:
            with open(file_path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRequest(f"cannot read {file_path}: {exc}") from None
        for key, raw in data.items():
            key = key.replace("-", "_")
            if key not in known:
                raise InvalidRequest(f"{file_path}: unknown setting {key!r}")
            values[key] = _coerce(key, known[key], raw)
    elif path:
        raise InvalidRequest(f"config file {path} does not exist")
    for key, kind in known.items():
        raw = env.get(ENV_PREFIX + key.upper())
        if raw not in (None, ""):
            values[key] = _coerce(key, kind, raw)
    for key, raw in (overrides or {}).items():
        if key not in known:
            raise InvalidRequest(f"unknown setting {key!r}")
        if raw is not None:
            values[key] = _coerce(key, known[key], raw)
    return dataclasses.replace(BackupConfig(), **values).validate()
