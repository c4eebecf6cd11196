"""Limits (netplugin/backup/resources.py): parsing, the disk behind a folder,
Docker's host config, and reading back what Docker and the cgroup files say."""

from __future__ import annotations

import os

import pytest

from netplugin.backup.resources import (BlockDevice, backing_device, cgroup_dirs, check_applied, check_inspect,
                                     host_config_kwargs, limit_warnings, make_limits, parse_size, read_applied)
from netplugin.backup.model import Limits
from netplugin.errors import InvalidRequest

DEV = BlockDevice(254, 0, "/dev/vda", "vda")


@pytest.mark.parametrize("text,value", [("512m", 512 << 20), ("1g", 1 << 30), ("20mb", 20 << 20),
                                        ("20MiB/s", 20 << 20), ("256k", 256 << 10), (4096, 4096),
                                        ("1.5g", int(1.5 * (1 << 30)))])
def test_sizes_read_as_docker_reads_them(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "fast", "-1m", "0", "12q"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InvalidRequest):
        parse_size(text)


def test_make_limits_treats_empty_and_zero_as_unlimited():
    lim = make_limits(cpus="1.5", memory="256m", pids="100", read_bps="", write_bps="10m", read_iops=0)
    assert lim == Limits(cpus=1.5, memory=256 << 20, pids=100, write_bps=10 << 20)
    with pytest.raises(InvalidRequest, match="below 16m"):
        make_limits(memory="8m")
    with pytest.raises(InvalidRequest, match="cpus"):
        make_limits(cpus="lots")


def test_host_config_has_no_swap_and_disk_limits_on_the_device():
    kw = host_config_kwargs(Limits(cpus=0.5, memory=1 << 30, pids=64, write_bps=5 << 20, read_iops=300), DEV)
    assert kw["nano_cpus"] == 500_000_000
    assert kw["mem_limit"] == kw["memswap_limit"] == 1 << 30
    assert kw["pids_limit"] == 64
    assert kw["device_write_bps"] == [{"Path": "/dev/vda", "Rate": 5 << 20}]
    assert kw["device_read_iops"] == [{"Path": "/dev/vda", "Rate": 300}]
    assert "device_read_bps" not in kw
    with pytest.raises(InvalidRequest):
        host_config_kwargs(Limits(write_bps=1), None)


def test_check_inspect_names_what_docker_lacks():
    lim = Limits(cpus=1.0, memory=1 << 30, pids=10, write_bps=1 << 20)
    good = {"NanoCpus": 10 ** 9, "Memory": 1 << 30, "MemorySwap": 1 << 30, "PidsLimit": 10,
            "BlkioDeviceWriteBps": [{"Path": "/dev/vda", "Rate": 1 << 20}]}
    assert check_inspect(good, lim, DEV) == []
    bad = dict(good, MemorySwap=-1, BlkioDeviceWriteBps=None)
    problems = check_inspect(bad, lim, DEV)
    assert any("memory+swap" in p for p in problems) and any("write bps on /dev/vda" in p for p in problems)


def test_limit_warnings_are_picked_out():
    w = ["Your kernel does not support swap limit capabilities or the cgroup is not mounted. "
         "Memory limited without swap.", "Published ports are discarded when using host network mode"]
    assert limit_warnings(w) == w[:1]


def _cgroup_tree(tmp_path, files: dict[str, str]):
    proc = tmp_path / "proc" / "42"
    proc.mkdir(parents=True)
    proc.joinpath("cgroup").write_text(
        "12:blkio:/docker/abc\n11:memory:/docker/abc\n10:pids:/docker/abc\n9:cpu,cpuacct:/docker/abc\n"
        "1:name=systemd:/docker/abc\n0::/docker/abc\n")
    root = tmp_path / "cg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return cgroup_dirs(42, proc=str(tmp_path / "proc"), root=str(root))


def test_read_applied_cgroup_v1(tmp_path):
    dirs = _cgroup_tree(tmp_path, {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        "memory/docker/abc/memory.limit_in_bytes": str(1 << 30),
        "memory/docker/abc/memory.memsw.limit_in_bytes": str(1 << 30),
        "pids/docker/abc/pids.max": "64",
        "blkio/docker/abc/blkio.throttle.write_bps_device": "254:0 1048576\n8:0 5",
        "blkio/docker/abc/blkio.throttle.read_bps_device": "",
    })
    got = read_applied(dirs, DEV)
    assert got["cgroup"] == "v1"
    assert (got["cpus"], got["memory"], got["swap"], got["pids"], got["write_bps"], got["read_bps"]) == \
        (0.5, 1 << 30, 0, 64, 1 << 20, None)
    assert check_applied(got, Limits(cpus=0.5, memory=1 << 30, pids=64, write_bps=1 << 20), 0) == []
    problems = check_applied(got, Limits(read_bps=1 << 20, pids=65), 0)
    assert any("read bps" in p for p in problems) and any("pids" in p for p in problems)


def test_swap_unlimited_or_unaccounted(tmp_path):
    assert check_applied({"memory": 100, "swap": "unlimited"}, Limits(memory=100), 0) != []
    assert check_applied({"memory": 100, "swap": None}, Limits(memory=100), 0) == []         # host has no swap
    assert "swapaccount" in check_applied({"memory": 100, "swap": None}, Limits(memory=100), 1 << 30)[0]


def test_read_applied_cgroup_v2(tmp_path):
    base = tmp_path / "cg"
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpu io memory pids")
    d = base / "system.slice" / "docker-abc.scope"
    d.mkdir(parents=True)
    (d / "cpu.max").write_text("150000 100000")
    (d / "memory.max").write_text(str(1 << 29))
    (d / "memory.swap.max").write_text("0")
    (d / "pids.max").write_text("max")
    (d / "io.max").write_text("254:0 rbps=max wbps=2097152 riops=max wiops=100\n")
    proc = tmp_path / "proc" / "7"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("0::/system.slice/docker-abc.scope\n")
    got = read_applied(cgroup_dirs(7, proc=str(tmp_path / "proc"), root=str(base)), DEV)
    assert got == {"cgroup": "v2", "cpus": 1.5, "memory": 1 << 29, "swap": 0, "pids": None, "read_bps": None,
                   "write_bps": 2 << 20, "read_iops": None, "write_iops": 100}


def _sys_block(tmp_path, majmin: str, partition_of: str | None = None) -> str:
    sysb = tmp_path / "sys" / "dev" / "block"
    sysb.mkdir(parents=True)
    real = tmp_path / "sys" / "devices" / "disk"
    real.mkdir(parents=True)
    (real / "dev").write_text("259:7\n")
    (real / "uevent").write_text("MAJOR=259\nMINOR=7\nDEVNAME=vdz\nDEVTYPE=disk\n")
    if partition_of:
        part = real / "vda1"
        part.mkdir()
        (part / "partition").write_text("1")
        (part / "dev").write_text(majmin)
        (part / "uevent").write_text("DEVNAME=vda1\nDEVTYPE=partition\n")
        os.symlink(part, sysb / majmin)
    else:
        os.symlink(real, sysb / majmin)
    os.symlink(real, sysb / "259:7")
    return str(sysb)


def test_backing_device_of_a_folder_on_a_disk(tmp_path):
    st = os.stat(tmp_path)
    majmin = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if os.major(st.st_dev) == 0:
        pytest.skip("tmp is on an anonymous device here")   # pragma: no cover
    sysb = _sys_block(tmp_path, majmin)
    dev = backing_device(str(tmp_path), sys_block=sysb)
    assert (dev.majmin, dev.node) == (majmin, "/dev/vdz")


def test_a_partition_is_resolved_to_its_disk(tmp_path):
    st = os.stat(tmp_path)
    majmin = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if os.major(st.st_dev) == 0:
        pytest.skip("tmp is on an anonymous device here")   # pragma: no cover
    sysb = _sys_block(tmp_path, majmin, partition_of="vda")
    dev = backing_device(str(tmp_path), sys_block=sysb)
    assert (dev.major, dev.minor, dev.node) == (259, 7, "/dev/vdz")
    assert "partition" in dev.via


def test_a_folder_without_a_block_device_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="cannot be limited|no disk"):
        backing_device(str(tmp_path), sys_block=str(tmp_path / "nothing"))
    if os.path.isdir("/proc/self"):
        with pytest.raises(InvalidRequest, match="proc"):
            backing_device("/proc/self")
