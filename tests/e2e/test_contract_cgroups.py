"""FakeHostEnv's kernel (tests/unit/backup_fakes.py: cgroup_files) against a
real container's cgroup v1 files: for the HostConfig dockerd reports, the
fake writes what runc wrote, so the unit ring's strict-mode checks read the
kernel's answer, not the request."""

from __future__ import annotations

import os
import secrets
from types import SimpleNamespace

import docker
import pytest

from netplugin.backup import resources as lim

from ..unit.backup_fakes import cgroup_files
from .conftest import IMAGE

LIMITED = {"nano_cpus": 500_000_000, "mem_limit": 64 << 20, "memswap_limit": 64 << 20, "pids_limit": 50}


@pytest.fixture
def rig():
    """A docker client, a volume on the disk to limit, and the containers made."""
    client = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=120, version="auto")
    volume = client.create_volume("nptest-contract-" + secrets.token_hex(4), driver="local")
    r = SimpleNamespace(client=client, volume=volume, made=[])
    yield r
    for cid in r.made:
        client.remove_container(cid, force=True)
    client.remove_volume(volume["Name"])
    client.close()


def run(rig, device: lim.BlockDevice | None, **limits) -> dict:
    """A sleeping busybox with these limits, started: its inspect answer."""
    if device is not None:
        limits.update(device_read_bps=[{"Path": device.node, "Rate": 8 << 20}],
                      device_write_bps=[{"Path": device.node, "Rate": 4 << 20}],
                      device_read_iops=[{"Path": device.node, "Rate": 3000}],
                      device_write_iops=[{"Path": device.node, "Rate": 2000}])
    c = rig.client
    cid = c.create_container(IMAGE, command=["sleep", "600"], labels={"netplugin.test": "1"},
                             host_config=c.create_host_config(network_mode="none", **limits))["Id"]
    rig.made.append(cid)
    c.start(cid)
    return c.inspect_container(cid)


def real_files(pid: int, names) -> dict[str, str | None]:
    dirs = lim.cgroup_dirs(pid)
    out: dict[str, str | None] = {}
    for rel in names:
        ctrl, name = rel.split("/")
        try:
            with open(os.path.join(dirs[ctrl], name)) as fh:
                out[rel] = fh.read().strip()
        except OSError:
            out[rel] = None
    return out


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "unlimited"])
def test_the_fake_kernel_writes_what_runc_wrote(rig, limited):
    device = lim.backing_device(rig.volume["Mountpoint"]) if limited else None
    info = run(rig, device, **(LIMITED if limited else {}))
    fake_device = device or lim.BlockDevice(0, 0, "/dev/none", "none")
    want = cgroup_files(info["HostConfig"], fake_device)
    got = real_files(info["State"]["Pid"], want)
    assert got == want
    if device is not None:         # and both read back as the limits asked
        applied = lim.read_applied(lim.cgroup_dirs(info["State"]["Pid"]), device)
        assert lim.check_applied(applied, lim.make_limits(cpus="0.5", memory="64m", pids=50, read_bps="8m",
                                                          write_bps="4m", read_iops=3000, write_iops=2000),
                                 lim.host_swap_bytes()) == []
