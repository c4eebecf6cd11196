"""drctl trusts nothing it reads, end to end: the real agent process, real
dockerd and etcd; and a backup volume that fills during a real MariaDB dump.

- job records written straight into etcd (a path id, a foreign image that is
  on the host, a foreign option file, a path volume) and a volume whose target
  folder is a symlink out: each is refused and marked failed with its reason,
  no container is created for it, and canaries outside the work folder and the
  volume survive;
- a backup volume on a 4 MiB loop-mounted ext4 fills during the dump: the job
  fails naming ENOSPC, nothing is catalogued, no partial file is left, and a
  backup of another server on a roomy volume of the same host succeeds meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.etcd import etcdctl

from .conftest import ETCD, docker, new_network, run
from .test_backup import RANDOM_SQL, SMALL_SQL, dr  # noqa: F401 - dr is the fixture these tests use

pytestmark = pytest.mark.e2e


def _record(dr, job_id: str, **spec) -> dict:
    """A job record as `drctl run` would queue it, with spec fields overridden."""
    now = time.time()
    base = {"network": "trustnet", "db_host": "10.122.0.10", "db_port": 3306, "option_file": dr.client_cnf,
            "volume": "drtrust-unused", "database": "small", "image": "", "limits": {}, "labels": {},
            "compression": "zstd", "start_timeout": 600.0, "timeout": 600.0, "checksums": True, "strict": True}
    base.update(spec)
    return {"id": job_id, "kind": "backup", "target": "crafted", "host": dr.plugin.host_id, "spec": base,
            "state": "queued", "created": now, "updated": now, "start_by": now + 600,
            "history": [{"state": "queued", "time": now, "message": "submitted"}], "server": "trustnet@x:3306"}


def _put(dr, record: dict) -> None:
    root = f"{dr.plugin.prefix}/backup"
    etcdctl(ETCD, "put", f"{root}/jobs/{record['id']}", json.dumps(record))
    etcdctl(ETCD, "put", f"{root}/queue/{dr.plugin.host_id}/{record['id']}", record["id"])


def _read(dr, job_id: str) -> dict:
    out = etcdctl(ETCD, "get", "--print-value-only", f"{dr.plugin.prefix}/backup/jobs/{job_id}").stdout
    return json.loads(out)


def _ended(dr, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = _read(dr, job_id)
        if rec["state"] in ("succeeded", "failed", "expired", "cancelled"):
            return rec
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {_read(dr, job_id)}\nagent log:\n{dr.agent.tail()}")


def _canary(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "canary").write_text("alive")
    return folder


def test_crafted_job_records_are_refused_and_touch_nothing(dr, tmp_path_factory):
    outside = _canary(tmp_path_factory.mktemp("outside"))
    secret = outside / "foreign.cnf"
    secret.write_text("[client]\npassword=not-yours\n")
    secret.chmod(0o600)
    # work/.. is the test's folder: a job id '..' would have the agent rmtree it.
    _canary(dr.tmp / "beside-work")
    crafted = {
        "dotdot": (_record(dr, ".."), "job id"),
        "image": (_record(dr, "20261203-000001-aaaaaa", image="netplugin/busybox:latest"), "is not allowed"),
        "option": (_record(dr, "20261203-000002-aaaaaa", option_file=str(secret)), "option_dir"),
        "shadow": (_record(dr, "20261203-000003-aaaaaa", option_file="/etc/shadow"), "option_dir"),
        "volume": (_record(dr, "20261203-000004-aaaaaa", volume="../../etc"), "volume"),
    }
    for rec, _ in crafted.values():
        _put(dr, rec)
    for name, (rec, why) in crafted.items():
        got = _ended(dr, rec["id"])
        assert got["state"] == "failed" and got["message"].startswith("refused: "), (name, got["message"])
        assert why in got["message"], (name, got["message"])
        assert not got.get("container"), name
        assert docker("ps", "-aq", "--filter", f"label=netplugin.backup.job={rec['id']}").stdout.strip() == ""
    assert (dr.tmp / "beside-work" / "canary").read_text() == "alive"
    assert sorted(p.name for p in outside.iterdir()) == ["canary", "foreign.cnf"]
    assert (outside / "canary").read_text() == "alive"
    # The CLI refuses the same with the same words, before anything is queued.
    out = dr.drctl(*dr.backup_args("crafted", "trustnet", "10.122.0.10", "small", dr.volume(), "--image",
                                   "netplugin/busybox:latest"), check=False)
    assert out.returncode == 1 and "is not allowed" in out.stderr, out.stderr
    # The agent is alive and logged each refusal once.
    assert dr.agent.proc is not None and dr.agent.proc.poll() is None
    log = dr.agent_log.read_text()
    assert log.count("'20261203-000001-aaaaaa' refused") == 1, log[-3000:]


def test_a_symlinked_target_folder_in_the_volume_is_refused(dr, tmp_path_factory):
    outside = _canary(tmp_path_factory.mktemp("outside"))
    volume = dr.volume()
    docker("volume", "create", volume)
    os.symlink(outside, dr.volume_path(volume) / "linked")
    out = dr.drctl(*dr.backup_args("linked", "trustnet", "10.122.0.10", "small", volume, "--wait", "--json"),
                   check=False)
    j = json.loads(out.stdout)
    assert out.returncode == 1 and j["state"] == "failed" and "symlink" in j["message"], j["message"]
    assert not j.get("container")
    assert sorted(p.name for p in outside.iterdir()) == ["canary"]


class LoopVolume:
    """A Docker volume whose folder is a small ext4 file system on a loop device."""

    def __init__(self, dr, image: Path, size_mb: int):
        self.name = dr.volume()
        docker("volume", "create", self.name)
        self.path = dr.volume_path(self.name)
        run("truncate", "-s", f"{size_mb}M", str(image))
        run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        run("mount", "-o", "loop", str(image), str(self.path))

    def close(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, capture_output=True, timeout=30)


def test_a_volume_that_fills_fails_the_job_and_the_hosts_other_job_succeeds(dr, tmp_path):
    new_network("fullnet", "10.123.0.0/24", 176)
    dr.start_dbs([("full-db", "10.123.0.10"), ("roomy-db", "10.123.0.11")], "fullnet")
    dr.sql("full-db", RANDOM_SQL)               # 8 MiB of random bytes: no compression saves it
    dr.sql("roomy-db", SMALL_SQL)
    small = LoopVolume(dr, tmp_path / "small.ext4", 4)
    try:
        roomy = dr.volume()
        full_id = dr.drctl(*dr.backup_args("noise-full", "fullnet", "10.123.0.10", "noise", small.name,
                                           "--no-checksums", "-q")).stdout.strip()
        roomy_id = dr.drctl(*dr.backup_args("small-roomy", "fullnet", "10.123.0.11", "small", roomy,
                                            "-q")).stdout.strip()
        j = dr.wait_job(full_id)
        assert j["state"] == "failed", (j["message"], j["log_tail"])
        assert "ENOSPC" in j["message"] and small.name in j["message"], j["message"]
        assert dr.drctl("backups", "noise-full", "-q").stdout.strip() == ""
        left = list((small.path / "noise-full").iterdir()) if (small.path / "noise-full").exists() else []
        assert left == [], left
        other = dr.wait_job(roomy_id)
        assert other["state"] == "succeeded", (other["message"], other["log_tail"])
        assert dr.drctl("backups", "small-roomy", "-q").stdout.split() == [other["result"]["backup"]]
    finally:
        small.close()
