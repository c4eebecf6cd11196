"""Job container limits: parsing what operators type, finding the disk behind a
volume, building Docker's host config, and checking what the kernel really
enforces.

Why the checks: Docker drops a limit the kernel cannot enforce and says so only
in a warning of the create response (``Your kernel does not support ...``).
In strict mode (the default) every requested limit is read back twice: from
``docker inspect`` (HostConfig) and from the container's cgroup files, and a
missing or different value fails the job before it touches the database.

Disk limits are per block device (``blkio.throttle.*`` on cgroup v1,
``io.max`` on v2). drctl finds the device that holds the backup volume's
folder (a partition is resolved to its disk: the throttle takes whole disks).
On cgroup v1 the throttle sees only direct I/O (``O_DIRECT``): buffered writes
reach the disk later from the kernel's flusher, outside the container's cgroup.
So the job script writes the dump with ``dd oflag=direct`` (and reads it back
for a restore with ``iflag=direct``) whenever a disk limit is set, or the limit
would be decoration.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import InvalidRequest
from .model import Limits

_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*(/s)?\s*", re.I)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(text: object, what: str = "size") -> int:
    """'512m' / '1g' / '20mb' / '20MiB/s' / 1048576 -> bytes, as Docker reads them (1k = 1024)."""
    if isinstance(text, bool):
        raise InvalidRequest(f"{what} {text!r} is not a size such as 512m or 2g")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.fullmatch(str(text))
        if m is None:
            raise InvalidRequest(f"{what} {text!r} is not a size such as 512k, 20m or 2g")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise InvalidRequest(f"{what} {text!r} must be more than zero")
    return value


def parse_cpus(text: object) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]  # any object: float() itself says what is not a number
    except (TypeError, ValueError):
        raise InvalidRequest(f"cpus {text!r} is not a number such as 0.5 or 2") from None
    if not 0.01 <= value <= 1024:
        raise InvalidRequest(f"cpus {text!r} must be between 0.01 and 1024")
    return value


def parse_count(text: object, what: str) -> int:
    try:
        value = int(text)  # type: ignore[call-overload]  # any object: what int() refuses is said below
    except (TypeError, ValueError):
        raise InvalidRequest(f"{what} {text!r} is not a whole number") from None
    if value <= 0:
        raise InvalidRequest(f"{what} {text!r} must be more than zero")
    return value


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def make_limits(cpus=None, memory=None, pids=None, read_bps=None, write_bps=None, read_iops=None,
                write_iops=None, profile: str = "") -> Limits:
    """From flags or settings; '', 0 and None mean 'not limited'."""
    def given(v):
        return v not in (None, "", 0, "0")
    if profile:
        from ..model import check_name
        check_name(profile, "profile name")
    if given(memory):
        mem = parse_size(memory, "memory")
        if mem < 16 * 1024 ** 2:
            raise InvalidRequest(f"memory {memory!r} is below 16m: mariadb-dump would not start")
    return Limits(
        cpus=parse_cpus(cpus) if given(cpus) else None,
        memory=parse_size(memory, "memory") if given(memory) else None,
        pids=parse_count(pids, "pids") if given(pids) else None,
        read_bps=parse_size(read_bps, "read bps") if given(read_bps) else None,
        write_bps=parse_size(write_bps, "write bps") if given(write_bps) else None,
        read_iops=parse_count(read_iops, "read iops") if given(read_iops) else None,
        write_iops=parse_count(write_iops, "write iops") if given(write_iops) else None,
        profile=profile or "")


# -- the disk behind a folder -------------------------------------------------------------

@dataclass(frozen=True)
class BlockDevice:
    major: int
    minor: int
    node: str                                 # /dev/vda, for Docker's {"Path": ..., "Rate": ...}
    name: str                                 # vda
    via: str = ""                             # how it was found, for messages

    @property
    def majmin(self) -> str:
        return f"{self.major}:{self.minor}"


def _uevent(sysdir: str) -> dict[str, str]:
    try:
        with open(os.path.join(sysdir, "uevent")) as fh:
            return dict(line.strip().split("=", 1) for line in fh if "=" in line)
    except OSError:
        return {}


def _mount_source(path: str, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str] | None:
    """(source, fstype) of the mount that holds path: the longest mount point prefix."""
    real = os.path.realpath(path)
    best: tuple[int, str, str] | None = None
    try:
        with open(mountinfo) as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                parts, rparts = left.split(), right.split()
                if len(parts) < 5 or len(rparts) < 2:
                    continue
                mnt = parts[4].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and (best is None or len(mnt) >= best[0]):
                    best = (len(mnt), rparts[1], rparts[0])
    except OSError:
        return None
    return (best[1], best[2]) if best else None


def backing_device(path: str, sys_block: str = "/sys/dev/block") -> BlockDevice:
    """The whole disk that holds path, as the blkio throttle wants it.

    st_dev of the folder; an anonymous device (major 0: overlay, btrfs, a
    tmpfs) is looked up through the mount's source; a partition becomes its
    disk. Raises InvalidRequest saying why when there is no disk to throttle.
    """
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    via = f"st_dev of {path}"
    if major == 0:
        found = _mount_source(path)
        if found is None or not found[0].startswith("/dev/"):
            kind = f"a {found[1]} file system" if found else "a file system without a block device"
            raise InvalidRequest(f"{path} is on {kind} (device {major}:{minor}): there is no disk whose I/O "
                                 "could be limited; put the backup volume on a disk, or give no disk limits")
        try:
            dst = os.stat(found[0])
        except OSError as exc:
            raise InvalidRequest(f"cannot stat {found[0]}, the device behind {path}: {exc}") from None
        major, minor = os.major(dst.st_rdev), os.minor(dst.st_rdev)
        via = f"mount source {found[0]} of {path}"
    sysdir = os.path.join(sys_block, f"{major}:{minor}")
    if not os.path.exists(sysdir):
        raise InvalidRequest(f"device {major}:{minor} behind {path} is not a block device "
                             f"({sysdir} is missing): its I/O cannot be limited")
    if os.path.exists(os.path.join(sysdir, "partition")):
        parent = os.path.dirname(os.path.realpath(sysdir))
        try:
            with open(os.path.join(parent, "dev")) as fh:
                major, minor = (int(x) for x in fh.read().strip().split(":"))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot find the disk of partition {sysdir}: {exc}") from None
        via += ", partition resolved to its disk"
        sysdir = os.path.join(sys_block, f"{major}:{minor}")
    name = _uevent(sysdir).get("DEVNAME") or os.path.basename(os.path.realpath(sysdir))
    return BlockDevice(major, minor, f"/dev/{name}", name, via)


# -- Docker ------------------------------------------------------------------------------

def host_config_kwargs(limits: Limits, device: BlockDevice | None) -> dict:
    """Keyword arguments of docker's create_host_config for these limits."""
    kw: dict = {}
    if limits.cpus:
        kw["nano_cpus"] = round(limits.cpus * 1e9)
    if limits.memory:
        kw["mem_limit"] = limits.memory
        kw["memswap_limit"] = limits.memory         # memory + swap == memory: no swap at all
    if limits.pids:
        kw["pids_limit"] = limits.pids
    if limits.disk_limited():
        if device is None:
            raise InvalidRequest("disk limits need the device behind the backup volume")
        for key, value in (("device_read_bps", limits.read_bps), ("device_write_bps", limits.write_bps),
                           ("device_read_iops", limits.read_iops), ("device_write_iops", limits.write_iops)):
            if value:
                kw[key] = [{"Path": device.node, "Rate": int(value)}]
    return kw


def _docker_rate(entries, device: BlockDevice) -> int | None:
    """A HostConfig BlkioDevice*Bps list -> the rate for our device (Docker keeps the path)."""
    for e in entries or []:
        path = e.get("Path", "")
        if path == device.node or os.path.realpath(path) == os.path.realpath(device.node):
            return int(e.get("Rate", 0))
    return None


def check_inspect(host_config: dict, limits: Limits, device: BlockDevice | None) -> list[str]:
    """Differences between the requested limits and docker inspect's HostConfig."""
    problems = []

    def expect(field_name: str, want, got, label: str):
        if want and (got or 0) != want:
            problems.append(f"{label}: asked {want}, Docker has {got or 'none'} (HostConfig.{field_name})")
    expect("NanoCpus", round(limits.cpus * 1e9) if limits.cpus else None, host_config.get("NanoCpus"), "cpus")
    expect("Memory", limits.memory, host_config.get("Memory"), "memory")
    expect("MemorySwap", limits.memory, host_config.get("MemorySwap"), "memory+swap")
    expect("PidsLimit", limits.pids, host_config.get("PidsLimit"), "pids")
    if device is not None:
        for fld, want, label in (("BlkioDeviceReadBps", limits.read_bps, "read bps"),
                                 ("BlkioDeviceWriteBps", limits.write_bps, "write bps"),
                                 ("BlkioDeviceReadIOps", limits.read_iops, "read iops"),
                                 ("BlkioDeviceWriteIOps", limits.write_iops, "write iops")):
            expect(fld, want, _docker_rate(host_config.get(fld), device), f"{label} on {device.node}")
    return problems


def limit_warnings(warnings: list[str] | None) -> list[str]:
    """The create response warnings that mean a limit was dropped or weakened."""
    words = ("limit", "swap", "cpu", "memory", "pids", "blkio", "bps", "iops", "kernel does not support",
             "oom", "throttl")
    return [w for w in (warnings or []) if any(k in w.lower() for k in words)]


# -- cgroups: what the kernel enforces ----------------------------------------------------

def cgroup_dirs(pid: int, proc: str = "/proc", root: str = "/sys/fs/cgroup") -> dict[str, str]:
    """controller -> folder of the process's cgroup; 'unified' for cgroup v2."""
    dirs: dict[str, str] = {}
    with open(f"{proc}/{pid}/cgroup") as fh:
        for line in fh:
            num, ctrls, path = line.rstrip("\n").split(":", 2)
            if num == "0" and ctrls == "":
                if os.path.exists(os.path.join(root, "cgroup.controllers")):
                    dirs["unified"] = os.path.join(root, path.lstrip("/"))
                continue
            joined = ctrls.replace("name=", "")
            for ctrl in ctrls.split(","):
                name = ctrl.replace("name=", "")
                # co-mounted controllers (cpu,cpuacct) live in one folder; cpu is often a link to it
                mount = joined if os.path.isdir(os.path.join(root, joined)) else name
                dirs[name] = os.path.join(root, mount, path.lstrip("/"))
    return dirs


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "", "max") else None
    except ValueError:
        return None


def _device_rate(text: str | None, device: BlockDevice) -> int | None:
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == device.majmin:
            return int(parts[1])
    return None


def host_swap_bytes(meminfo: str = "/proc/meminfo") -> int:
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("SwapTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def read_applied(dirs: dict[str, str], device: BlockDevice | None) -> dict:
    """What the cgroup files say, in the units of Limits, plus where it was read."""
    out: dict = {"cgroup": "v2" if "unified" in dirs and len(dirs) == 1 else "v1"}
    if out["cgroup"] == "v2":
        base = dirs["unified"]
        quota_period = (_read(f"{base}/cpu.max") or "max 100000").split()
        out["cpus"] = round(int(quota_period[0]) / int(quota_period[1]), 4) if quota_period[0] != "max" else None
        out["memory"] = _int(_read(f"{base}/memory.max"))
        swap = _read(f"{base}/memory.swap.max")
        out["swap"] = None if swap is None else (_int(swap) if swap != "max" else "unlimited")
        out["pids"] = _int(_read(f"{base}/pids.max"))
        if device is not None:
            for line in (_read(f"{base}/io.max") or "").splitlines():
                parts = line.split()
                if parts and parts[0] == device.majmin:
                    kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
                    out.update(read_bps=_int(kv.get("rbps")), write_bps=_int(kv.get("wbps")),
                               read_iops=_int(kv.get("riops")), write_iops=_int(kv.get("wiops")))
        return out
    cpu = dirs.get("cpu") or dirs.get("cpu,cpuacct")
    quota = _int(_read(f"{cpu}/cpu.cfs_quota_us")) if cpu else None
    period = _int(_read(f"{cpu}/cpu.cfs_period_us")) if cpu else None
    out["cpus"] = round(quota / period, 4) if quota and quota > 0 and period else None
    mem = dirs.get("memory")
    unlimited = 1 << 62
    limit = _int(_read(f"{mem}/memory.limit_in_bytes")) if mem else None
    out["memory"] = limit if limit and limit < unlimited else None
    memsw_text = _read(f"{mem}/memory.memsw.limit_in_bytes") if mem else None
    if memsw_text is None:
        out["swap"] = None                                    # no swap accounting in this kernel
    else:
        memsw = _int(memsw_text)
        out["swap"] = (memsw - limit) if memsw and limit and memsw < unlimited else "unlimited"
    pids = dirs.get("pids")
    out["pids"] = _int(_read(f"{pids}/pids.max")) if pids else None
    blkio = dirs.get("blkio")
    if device is not None and blkio:
        for key, fname in (("read_bps", "read_bps_device"), ("write_bps", "write_bps_device"),
                           ("read_iops", "read_iops_device"), ("write_iops", "write_iops_device")):
            out[key] = _device_rate(_read(f"{blkio}/blkio.throttle.{fname}"), device)
    return out


def check_applied(applied: dict, limits: Limits, swap_on_host: int) -> list[str]:
    """Differences between the requested limits and the cgroup files."""
    problems = []
    if limits.cpus and (applied.get("cpus") is None or abs(applied["cpus"] - limits.cpus) > 0.011):
        problems.append(f"cpus: asked {limits.cpus}, the cgroup enforces {applied.get('cpus') or 'no limit'}")
    if limits.memory and applied.get("memory") != limits.memory:
        problems.append(f"memory: asked {limits.memory} bytes, the cgroup enforces "
                        f"{applied.get('memory') or 'no limit'}")
    if limits.memory:
        swap = applied.get("swap")
        if swap is None:
            if swap_on_host:
                problems.append("swap: the kernel has no swap accounting, so the job could swap "
                                f"(host swap {human_bytes(swap_on_host)}); disable swap or enable swapaccount")
        elif swap != 0:
            problems.append(f"swap: asked none, the cgroup allows {swap}")
    if limits.pids and applied.get("pids") != limits.pids:
        problems.append(f"pids: asked {limits.pids}, the cgroup enforces {applied.get('pids') or 'no limit'}")
    for key, label in (("read_bps", "read bps"), ("write_bps", "write bps"), ("read_iops", "read iops"),
                       ("write_iops", "write iops")):
        want = getattr(limits, key)
        if want and applied.get(key) != want:
            problems.append(f"{label}: asked {want}, the cgroup enforces {applied.get(key) or 'no limit'}")
    return problems
