"""Fakes at drctl's boundaries. tests/contract holds them to the real things:
docker_suite (FakeDocker against docker-py on dockerd) and cgroup_suite
(FakeHostEnv's cgroup files against a real container's).

- FakeDocker: the docker.APIClient methods the runner and the agent call. A
  container "runs" a behaviour in a thread: it waits for the runner's gate
  (``/job/go``) like the real job script, then writes what the script writes
  (status, sha256, the partial dump, checksums...) and exits with a code.
- FakeHostEnv: the host reads of backup.hostenv.HostEnv (disk, cgroup files,
  swap, the switch's meter): the cgroup files are written from the fake
  containers' HostConfig as runc writes them and read by the real reader.

Everything above (Runner, Agent, BackupStore over MemoryKV, retention) is the
real code under test.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time

import docker.types

from netplugin.backup.resources import BlockDevice, read_applied

DEVICE = BlockDevice(254, 0, "/dev/vda", "vda", "fake")
API_VERSION = "1.41"
# What dockerd 20.10's inspect says of the HostConfig fields drctl reads when the
# create request did not set them (tests/contract/docker_suite.py checks it).
DOCKERD_HOST_CONFIG = {"AutoRemove": False, "NanoCpus": 0, "Memory": 0, "MemorySwap": 0, "PidsLimit": None,
                       "BlkioDeviceReadBps": None, "BlkioDeviceWriteBps": None, "BlkioDeviceReadIOps": None,
                       "BlkioDeviceWriteIOps": None, "ReadonlyRootfs": False, "CapDrop": None, "SecurityOpt": None}


class NotFound(Exception):
    """Named like docker.errors.NotFound, which is how the runner recognises it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.explanation = message
        self.response = type("R", (), {"status_code": 404})()


class ReadTimeout(Exception):
    """Named like requests' ReadTimeout: what docker's wait(timeout=...) raises."""


ZERO_TIME = "0001-01-01T00:00:00Z"       # Go's zero time: what dockerd says of a never-started container


class FakeContainer:
    def __init__(self, cid, name, image, command, labels, host_config, networking, environment, user):
        self.id, self.name, self.image, self.command = cid, name, image, command
        self.labels, self.host_config, self.networking = labels, host_config, networking
        self.environment, self.user = environment, user
        self.running = False
        self.exit_code: int | None = None
        self.oom = False
        self.pid = 0
        self.started_at = ZERO_TIME              # dockerd's State.StartedAt until the first start
        self.logs: list[str] = []
        self.done = threading.Event()
        self.killed = threading.Event()
        self.endpoint = ""
        self.ip = ""


class FakeDocker:
    """docker.APIClient, as far as drctl uses it."""

    def __init__(self, root: str):
        self.root = root
        self.containers: dict[str, FakeContainer] = {}
        self.volumes: dict[str, dict] = {}
        self.images = {"netplugin/mariadb-tools:10.11"}
        self.networks = {"prod", "dr"}
        self.warnings: list[str] = []
        self.drop: set[str] = set()                   # HostConfig fields Docker "drops"
        self.behaviour = backup_ok
        self.behaviours: dict[str, object] = {}        # by job kind, overrides behaviour
        self._ids = itertools.count(1)
        self.lock = threading.Lock()
        self.on_endpoint = None                        # callback(container) after start: netplugin's endpoint

    # -- images, networks, volumes ----------------------------------------------------------
    def inspect_image(self, image):
        if image not in self.images:
            raise NotFound(f"No such image: {image}")
        return {"Id": "sha256:" + hashlib.sha256(image.encode()).hexdigest()}

    def inspect_network(self, name):
        if name not in self.networks:
            raise NotFound(f"network {name} not found")
        return {"Name": name, "Driver": "netplugin"}

    def inspect_volume(self, name):
        if name not in self.volumes:
            raise NotFound(f"get {name}: no such volume")
        return self.volumes[name]

    def create_volume(self, name, driver="local", labels=None):
        path = os.path.join(self.root, "volumes", name, "_data")
        os.makedirs(path, exist_ok=True)
        self.volumes[name] = {"Name": name, "Driver": driver, "Mountpoint": path, "Labels": labels or {}}
        return self.volumes[name]

    # -- containers: the request bodies are docker-py's own ---------------------------------
    def create_host_config(self, **kw):
        return docker.types.HostConfig(version=API_VERSION, **kw)

    def create_endpoint_config(self, ipv4_address=None):
        return docker.types.EndpointConfig(API_VERSION, ipv4_address=ipv4_address)

    def create_networking_config(self, endpoints):
        return docker.types.NetworkingConfig(endpoints)

    def create_container(self, image, command=None, name=None, labels=None, host_config=None, networking_config=None,
                         user=None, working_dir=None, environment=None, use_config_proxy=True):
        cid = f"{next(self._ids):064x}"
        hc = {**DOCKERD_HOST_CONFIG, **{k: v for k, v in (host_config or {}).items() if k not in self.drop}}
        self.containers[cid] = FakeContainer(cid, name, image, command, labels or {}, hc, networking_config,
                                             environment or {}, user)
        return {"Id": cid, "Warnings": list(self.warnings)}

    def _get(self, cid) -> FakeContainer:
        """By id or, as dockerd resolves them, by name."""
        if cid in self.containers:
            return self.containers[cid]
        for c in self.containers.values():
            if c.name and cid == c.name:
                return c
        raise NotFound(f"No such container: {cid}")

    def inspect_container(self, cid):
        c = self._get(cid)
        net = c.host_config.get("NetworkMode")
        return {"Id": c.id, "Name": "/" + (c.name or ""), "HostConfig": dict(c.host_config),
                "Config": {"Env": [f"{k}={v}" for k, v in c.environment.items()], "Cmd": c.command,
                           "Labels": c.labels},
                "State": {"Running": c.running, "ExitCode": c.exit_code if c.exit_code is not None else 0,
                          "OOMKilled": c.oom, "Pid": c.pid, "StartedAt": c.started_at},
                "NetworkSettings": {"Networks": {net: {"EndpointID": c.endpoint, "IPAddress": c.ip}}}}

    def start(self, cid):
        c = self._get(cid)
        c.running, c.pid = True, 40000 + int(c.id, 16)
        c.started_at = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        c.endpoint = hashlib.sha256(c.id.encode()).hexdigest()
        c.ip = f"10.0.0.{int(c.id, 16) % 250 + 2}"
        if self.on_endpoint:
            self.on_endpoint(c)
        kind = c.command[-1] if c.command else "backup"
        behaviour = self.behaviours.get(kind, self.behaviour)
        threading.Thread(target=self._run, args=(c, behaviour), daemon=True).start()

    def _run(self, c: FakeContainer, behaviour):
        job_dir = self._mount(c, "/job")
        volume = self._mount(c, "/backup")
        while not os.path.exists(os.path.join(job_dir, "go")):
            if os.path.exists(os.path.join(job_dir, "abort")) or c.killed.is_set():
                self._exit(c, 3 if not c.killed.is_set() else 137)
                return
            time.sleep(0.01)
        code = behaviour(c, job_dir, volume, self)
        if not c.killed.is_set():
            self._exit(c, code)

    def _exit(self, c: FakeContainer, code: int):
        with self.lock:
            if c.done.is_set():
                return
            c.exit_code, c.running = code, False
            c.done.set()

    def _mount(self, c: FakeContainer, target: str) -> str:
        for m in c.host_config.get("Mounts") or []:
            if m["Target"] == target:
                if m["Type"] == "volume":
                    return self.volumes[m["Source"]]["Mountpoint"]
                return m["Source"]
        raise AssertionError(f"no mount at {target}")

    def attach(self, cid, stdout=True, stderr=True, stream=False, logs=False):
        c = self._get(cid)

        def gen():
            c.done.wait(30)
            for line in c.logs:
                yield (line + "\n").encode()
        return gen()

    def wait(self, cid, timeout=None):
        c = self._get(cid)
        if not c.done.wait(timeout):
            raise ReadTimeout("Read timed out.")
        return {"StatusCode": c.exit_code}

    def kill(self, cid):
        c = self._get(cid)
        c.killed.set()
        self._exit(c, 137)

    def logs(self, cid, stdout=True, stderr=True, tail="all", stream=False, follow=False):
        c = self._get(cid)
        lines = c.logs if tail == "all" else c.logs[-int(tail):]
        return "".join(line + "\n" for line in lines).encode()

    def remove_container(self, cid, v=False, force=False):
        self._get(cid)
        del self.containers[cid]

    def version(self):
        return {"ApiVersion": API_VERSION}


UNLIMITED_BYTES = 9223372036854771712        # what cgroup v1 memory files say of no limit
CFS_PERIOD_US = 100000                        # the period runc sets with a cpu quota
BLKIO = (("read_bps", "BlkioDeviceReadBps", "read_bps_device"),
         ("write_bps", "BlkioDeviceWriteBps", "write_bps_device"),
         ("read_iops", "BlkioDeviceReadIOps", "read_iops_device"),
         ("write_iops", "BlkioDeviceWriteIOps", "write_iops_device"))


def cgroup_files(host_config: dict, device: BlockDevice) -> dict[str, str]:
    """The cgroup v1 files that resources.read_applied reads ("controller/file"
    -> content), as runc writes them for a container made with this inspected
    HostConfig whose block I/O limits name device. Checked against a real
    container in tests/e2e/test_contract_cgroups.py."""
    nano, memory, memswap = host_config.get("NanoCpus") or 0, host_config.get("Memory") or 0, \
        host_config.get("MemorySwap") or 0
    if memswap == 0 and memory:
        memswap = 2 * memory                  # Docker's default: as much swap as memory
    files = {"cpu/cpu.cfs_period_us": str(CFS_PERIOD_US),
             "cpu/cpu.cfs_quota_us": str(nano * CFS_PERIOD_US // 10**9) if nano else "-1",
             "memory/memory.limit_in_bytes": str(memory // 4096 * 4096 if memory else UNLIMITED_BYTES),
             "memory/memory.memsw.limit_in_bytes": str(memswap if memswap > 0 else UNLIMITED_BYTES),
             "pids/pids.max": str(host_config["PidsLimit"]) if (host_config.get("PidsLimit") or 0) > 0 else "max"}
    for _, fld, name in BLKIO:
        rates = [e["Rate"] for e in host_config.get(fld) or [] if e["Path"] == device.node]
        files[f"blkio/blkio.throttle.{name}"] = "".join(f"{device.majmin} {r}\n" for r in rates).strip()
    return files


class FakeHostEnv:
    """The host of the fake containers. The kernel is a folder of cgroup v1
    files per container, written from its HostConfig as runc writes them
    (cgroup_files), and read back by the real resources.read_applied.

    ``override`` makes the kernel not enforce what was asked (a value of
    None: no limit; for "swap", None means no swap accounting): the
    strict-mode tests that use it test the runner's logic over such an
    answer. That the real strict mode refuses a limit the kernel did not
    apply rests on this fake answering as the kernel does (the e2e check
    above) and on resources.check_applied (test_backup_resources.py)."""

    def __init__(self, docker: FakeDocker):
        self.docker = docker
        self.override: dict = {}
        self.swap_bytes = 0
        self.meters: dict[str, tuple[int, int]] = {}   # port -> (rate, burst)
        self.device_error: Exception | None = None

    def device(self, path):
        if self.device_error is not None:
            raise self.device_error
        return DEVICE

    def _kernel(self, files: dict[str, str | None]) -> None:
        """Apply override to the files: what the kernel enforces instead."""
        memory = files["memory/memory.limit_in_bytes"]
        lacks = {"cpus": ("cpu/cpu.cfs_quota_us", "-1"), "memory": ("memory/memory.limit_in_bytes", None),
                 "pids": ("pids/pids.max", "max"),
                 **{key: (f"blkio/blkio.throttle.{name}", "") for key, _, name in BLKIO}}
        for key, value in self.override.items():
            if key == "swap":
                files["memory/memory.memsw.limit_in_bytes"] = (
                    None if value is None else str(UNLIMITED_BYTES) if value == "unlimited"
                    else str(int(memory or 0) + int(value)))
            elif value is None:
                path, none = lacks[key]
                files[path] = str(UNLIMITED_BYTES) if none is None else none
            else:
                raise ValueError(f"FakeHostEnv.override: only None (not enforced) for {key}")

    def applied(self, pid, device):
        c = next(x for x in self.docker.containers.values() if x.pid == pid)
        files: dict[str, str | None] = dict(cgroup_files(c.host_config, device or DEVICE))
        self._kernel(files)
        root = os.path.join(self.docker.root, "cgroup", c.id)
        for rel, text in files.items():
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            path = os.path.join(root, rel)
            if text is None:
                if os.path.exists(path):
                    os.remove(path)
                continue
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return read_applied({ctrl: os.path.join(root, ctrl) for ctrl in ("cpu", "memory", "pids", "blkio")},
                            device)

    def swap(self):
        return self.swap_bytes

    def meter(self, bridge, port):
        return self.meters.get(port)


# -- behaviours: what the job script does in the container ---------------------------------

CHECKSUMS = "a\tInnoDB\t3\t123456789\nb\tInnoDB\t2\t987654321\n"


def _params(job_dir: str) -> dict:
    out = {}
    with open(os.path.join(job_dir, "params")) as fh:
        for line in fh:
            key, _, value = line.strip().partition("=")
            out[key] = value.strip("'")
    return out


def _write(job_dir: str, name: str, text: str) -> None:
    with open(os.path.join(job_dir, "out", name), "w") as fh:
        fh.write(text)


def zstd_frame(data: bytes) -> bytes:
    """A valid zstd frame holding data as one raw block (what ``zstd -t`` accepts),
    10 bytes longer than data; data of 256 to 65791 bytes."""
    assert 256 <= len(data) <= 65791
    header = ((len(data) << 3) | 1).to_bytes(3, "little")          # last block, raw, its size
    return b"\x28\xb5\x2f\xfd" + b"\x60" + (len(data) - 256).to_bytes(2, "little") + header + data


DUMP = zstd_frame(b"x" * 4086)          # 4096 bytes that decompress


def write_dump(job_dir: str, volume: str, payload: bytes = DUMP, marker: bool = True,
               status: str | None = None, checksums: str | None = None) -> str:
    """What a good backup run leaves: the partial dump and every status file."""
    p = _params(job_dir)
    partial = os.path.join(volume, p["PARTIAL"][len("/backup/"):])
    os.makedirs(os.path.dirname(partial), exist_ok=True)
    with open(partial, "wb") as fh:
        fh.write(payload)
    _write(job_dir, "server_version", "10.11.19-MariaDB\n")
    _write(job_dir, "checksums", CHECKSUMS if checksums is None else checksums)
    _write(job_dir, "lock", "wait=0.012 held=0.085\n")
    _write(job_dir, "dump_command", "mariadb-dump --defaults-file=/run/drctl/client.cnf --single-transaction shop\n")
    _write(job_dir, "dump_version", "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB\n")
    _write(job_dir, "dump_tail", "...\n-- Dump completed on 2026-11-26\n" if marker else "INSERT INTO a VALUES")
    _write(job_dir, "raw_bytes", "20000\n")
    _write(job_dir, "bytes", f"{len(payload)}\n")
    _write(job_dir, "sha256", hashlib.sha256(payload).hexdigest() + "  -\n")
    _write(job_dir, "status", status or "dump=0 tee_raw=0 compress=0 tee_out=0 write=0 tail=0 raw_count=0 "
                                        "sha256=0 count=0\n")
    return partial


def backup_ok(c, job_dir, volume, docker):
    c.logs.append("drctl backup: dumping")
    write_dump(job_dir, volume)
    _write(job_dir, "done", "ok\n")
    c.logs.append("drctl backup: dump done")
    return 0


def backup_slow(seconds: float):
    def run(c, job_dir, volume, docker):
        if c.killed.wait(seconds):
            return 137
        return backup_ok(c, job_dir, volume, docker)
    return run


def wrong_password(c, job_dir, volume, docker):
    _write(job_dir, "error", "cannot log in to db:3306: ERROR 1045 (28000): Access denied for user 'root'\n")
    c.logs.append("drctl backup: FAILED: cannot log in")
    return 2


def hang_mid_dump(c, job_dir, volume, docker):
    """Writes part of the dump, then never ends (until killed)."""
    p = _params(job_dir)
    partial = os.path.join(volume, p["PARTIAL"][len("/backup/"):])
    os.makedirs(os.path.dirname(partial), exist_ok=True)
    with open(partial, "wb") as fh:
        fh.write(b"partial" * 100)
    c.killed.wait(60)
    return 137


def restore_ok(c, job_dir, volume, docker):
    _write(job_dir, "server_version", "10.11.19-MariaDB\n")
    _write(job_dir, "status", "read=0 decompress=0 load=0\n")
    _write(job_dir, "checksums.restored", CHECKSUMS)
    _write(job_dir, "done", "ok\n")
    return 0


def restore_with(checksums: str):
    def run(c, job_dir, volume, docker):
        restore_ok(c, job_dir, volume, docker)
        _write(job_dir, "checksums.restored", checksums)
        return 0
    return run
