"""The drctl fakes' own behaviour (backup_fakes.py): the gate of a fake job
container, a kill, and the cgroup files of FakeHostEnv."""

from __future__ import annotations

import json
import time

import pytest

from .backup_fakes import DEVICE, UNLIMITED_BYTES, FakeDocker, FakeHostEnv, ReadTimeout, cgroup_files, hang_mid_dump


def test_fake_container_waits_for_the_gate_and_exits(tmp_path):
    d = FakeDocker(str(tmp_path))
    d.create_volume("v")
    job = tmp_path / "job"
    (job / "out").mkdir(parents=True)
    (job / "params").write_text("PARTIAL='/backup/t/n.sql.zst.partial'\n")
    hc = d.create_host_config(mounts=[{"Type": "volume", "Source": "v", "Target": "/backup"},
                                      {"Type": "bind", "Source": str(job), "Target": "/job"}], network_mode="prod")
    cid = d.create_container("netplugin/mariadb-tools:10.11", command=["/bin/bash", "/job/bin/job.sh", "backup"],
                             host_config=hc)["Id"]
    d.start(cid)
    with pytest.raises(ReadTimeout):
        d.wait(cid, timeout=0.05)           # gate closed: still waiting
    (job / "go").write_text("")
    assert d.wait(cid, timeout=5) == {"StatusCode": 0}
    assert (tmp_path / "volumes/v/_data/t/n.sql.zst.partial").exists()
    assert json.loads(json.dumps(d.inspect_container(cid)))["State"]["Running"] is False


def test_fake_kill_ends_a_hanging_container(tmp_path):
    d = FakeDocker(str(tmp_path))
    d.create_volume("v")
    d.behaviour = hang_mid_dump
    job = tmp_path / "job"
    (job / "out").mkdir(parents=True)
    (job / "params").write_text("PARTIAL='/backup/t/n.partial'\n")
    (job / "go").write_text("")
    hc = d.create_host_config(mounts=[{"Type": "volume", "Source": "v", "Target": "/backup"},
                                      {"Type": "bind", "Source": str(job), "Target": "/job"}])
    cid = d.create_container("img", command=["backup"], host_config=hc)["Id"]
    d.start(cid)
    time.sleep(0.1)
    d.kill(cid)
    assert d.wait(cid, timeout=5) == {"StatusCode": 137}


def _started(tmp_path, **limits):
    d = FakeDocker(str(tmp_path))
    hc = d.create_host_config(network_mode="prod", **limits)
    cid = d.create_container("img", command=["backup"], host_config=hc)["Id"]
    d.containers[cid].pid = 4242
    return d


def test_the_fake_kernel_is_read_through_the_real_reader(tmp_path):
    d = _started(tmp_path, nano_cpus=1_500_000_000, mem_limit=256 << 20, memswap_limit=256 << 20, pids_limit=64,
                 device_write_bps=[{"Path": DEVICE.node, "Rate": 1 << 20}])
    env = FakeHostEnv(d)
    assert env.applied(4242, DEVICE) == {"cgroup": "v1", "cpus": 1.5, "memory": 256 << 20, "swap": 0, "pids": 64,
                                         "read_bps": None, "write_bps": 1 << 20, "read_iops": None,
                                         "write_iops": None}
    env.override = {"write_bps": None, "pids": None, "swap": None}
    applied = env.applied(4242, DEVICE)
    assert (applied["write_bps"], applied["pids"], applied["swap"]) == (None, None, None)


def test_the_fake_kernel_of_an_unlimited_container(tmp_path):
    files = cgroup_files(_started(tmp_path).containers[f"{1:064x}"].host_config, DEVICE)
    assert files["cpu/cpu.cfs_quota_us"] == "-1" and files["pids/pids.max"] == "max"
    assert files["memory/memory.limit_in_bytes"] == files["memory/memory.memsw.limit_in_bytes"] == str(UNLIMITED_BYTES)
    assert files["blkio/blkio.throttle.write_bps_device"] == ""
