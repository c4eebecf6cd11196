"""Who holds a host id: the identity of one running instance (a netplugin
daemon or a drctl agent), and the rule that says whether a claim found in
etcd may be taken by this instance.

A claim is taken when it is absent, when it is this very instance's (same
token), or when it was made by an earlier instance on this same machine that
is no longer running. "This machine" is the kernel's boot id and the pid
namespace; "no longer running" is: no process with that pid, or one that
started at another moment (the kernel's start time in clock ticks since
boot, so a reused pid is told apart). That is how a daemon killed with
kill -9 and started again within its lease's TTL gets its id back at once,
while a second daemon started by mistake with the same id, here or on a
cloned machine, is refused and told who holds it. Nothing here compares two
machines' clocks: ``started`` is shown to people only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_BOOT_ID_RE = re.compile(r"^[0-9a-f-]{1,64}$")
_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$")


class BadRecord(ValueError):
    """A claim read from etcd that is not one: never taken, never trusted."""


@dataclass(frozen=True)
class Instance:
    """One running daemon or agent."""

    boot_id: str
    token: str
    pid: int
    pid_ns: int
    proc_start: int
    node: str
    started: float
    address: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Instance:
        """Checked field by field: an etcd record is input like any other."""
        if not isinstance(data, dict):
            raise BadRecord("the instance is not an object")
        try:
            inst = cls(boot_id=str(data["boot_id"]), token=str(data["token"]), pid=data["pid"],
                       pid_ns=data["pid_ns"], proc_start=data["proc_start"], node=str(data["node"]),
                       started=data["started"], address=str(data.get("address") or ""))
        except KeyError as exc:
            raise BadRecord(f"the instance has no {exc.args[0]}") from None
        if not _BOOT_ID_RE.fullmatch(inst.boot_id) or not _TOKEN_RE.fullmatch(inst.token):
            raise BadRecord("the instance's boot id or token is malformed")
        for name in ("pid", "pid_ns", "proc_start"):
            value = getattr(inst, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadRecord(f"the instance's {name} is not a whole number")
        if isinstance(inst.started, bool) or not isinstance(inst.started, (int, float)):
            raise BadRecord("the instance's start time is not a number")
        if not _NODE_RE.fullmatch(inst.node) or len(inst.address) > 256 or not inst.address.isprintable():
            raise BadRecord("the instance's node or address is malformed")
        return inst

    def describe(self) -> str:
        """The instance in words an operator can act on."""
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        where = f" at {self.address}" if self.address else ""
        return f"pid {self.pid} on {self.node}{where}, boot id {self.boot_id}, started {at}"


def boot_id(path: str = BOOT_ID_FILE) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # Field 2 (the command) may hold spaces and parentheses: count from the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def this_instance(address: str = "", started: float | None = None) -> Instance:
    """This process, with a fresh random token."""
    pid = os.getpid()
    return Instance(boot_id=boot_id(), token=secrets.token_hex(16), pid=pid, pid_ns=pid_namespace(),
                    proc_start=process_start(pid) or 0, node=socket.gethostname(),
                    started=time.time() if started is None else started, address=address)


def still_running(inst: Instance) -> bool:
    """Whether the instance's process runs: only asked on its own machine."""
    return process_start(inst.pid) == inst.proc_start


def may_take(found: Instance | None, me: Instance, running: Callable[[Instance], bool] = still_running) -> bool:
    """May ``me`` take a claim held by ``found``?

    A claim from another boot id is never taken while it lives: its holder
    may be another machine (a clone) whose processes cannot be seen from
    here. One from another pid namespace of this machine neither: its pid
    means nothing here."""
    if found is None or found.token == me.token:
        return True
    if found.boot_id != me.boot_id or found.pid_ns != me.pid_ns:
        return False
    return not running(found)


def refusal(what: str, host: str, found: Instance | None, setting: str) -> str:
    """The error of an instance that may not take a host id."""
    holder = found.describe() if found else "a record that is not a valid claim (written by hand or by an " \
                                            "older version)"
    return (f"{what} for host id {host!r} is already running: {holder}. Two instances with one host id would "
            f"act on each other's records (addresses, endpoints, jobs). Stop that one, or give this one another "
            f"id ({setting}).")


# -- a daemon's registration ------------------------------------------------------

# The daemon's settings a reconciler of its host must share: published in the claim.
PUBLISHED = ("bridge", "datapath_type", "uplink", "etcd_prefix", "socket", "mtu")


@dataclass(frozen=True)
class Registration:
    """What a daemon claims ``hosts/<host>`` with: the host's record (the
    fields of model.Host, so ``hostinfo/`` readers see a Host), the settings
    in PUBLISHED, and the instance."""

    host: str
    instance: Instance
    settings: dict
    version: str
    last_seen: float

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "version": self.version, "started": self.instance.started,
                           "last_seen": self.last_seen, "instance": self.instance.to_dict(), **self.settings},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Registration:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRecord("not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("host"), str):
            raise BadRecord("not a host record")
        settings = {name: data.get(name) for name in PUBLISHED}
        for name, value in settings.items():
            if value is not None and (not isinstance(value, (str, int)) or isinstance(value, bool)
                                      or not str(value).isprintable() or len(str(value)) > 256):
                raise BadRecord(f"its {name} is malformed")
        last_seen = data.get("last_seen")
        if isinstance(last_seen, bool) or not isinstance(last_seen, (int, float)):
            raise BadRecord("its last_seen is not a number")
        return cls(host=data["host"], instance=Instance.from_dict(data.get("instance")), settings=settings,
                   version=str(data.get("version") or ""), last_seen=float(last_seen))
