"""The pure parts of a job's end (backup/verify.py, backup/manifest.py) over
plain dicts, and the host's meter read through dataplane's Flows
(backup/hostenv.py) over recorded ovs-ofctl and ovs-vsctl answers."""

from __future__ import annotations

import subprocess

import pytest

from netplugin.backup import hostenv, manifest, verify
from netplugin.backup.model import FAILED, JobEnded

SHA = "ab" * 32


def ended(fn, *args) -> str:
    with pytest.raises(JobEnded) as exc:
        fn(*args)
    assert exc.value.state == FAILED
    return exc.value.message


def test_stages_must_all_be_zero_and_done_recorded():
    assert verify.stages({"status": "dump=0 zstd=0\n", "done": "ok\n"}, "dump") == {"dump": 0, "zstd": 0}
    assert ended(verify.stages, {"status": "dump=2 zstd=0\n", "done": "ok"}, "dump") == \
        "verification: stages of the dump failed: {'dump': 2}"
    assert ended(verify.stages, {}, "load") == "verification: stages of the load failed: no status recorded"
    assert ended(verify.stages, {"status": "dump=0"}, "dump") == \
        "verification: the job did not record that it finished"


def test_dump_file_checks_size_minimum_and_sha():
    out = {"bytes": "4096\n", "sha256": f"{SHA}  -\n"}
    assert verify.dump_file(out, 4096, 512) == SHA
    assert ended(verify.dump_file, out, 4000, 512) == "verification: the file has 4000 bytes but 4096 were written"
    assert ended(verify.dump_file, {"bytes": "100"}, 100, 512) == \
        "verification: the dump is only 100 bytes (minimum 512)"
    assert ended(verify.dump_file, {"bytes": "4096", "sha256": "zz"}, 4096, 512) == \
        "verification: no sha256 was recorded"
    assert ended(verify.dump_marker, {"dump_tail": "INSERT ..."}) == \
        "verification: the dump has no completion marker"


def test_restore_compares_every_table():
    m = {"tables": {"a": {"rows": 2, "checksum": "9", "engine": "InnoDB", "transactional": True},
                    "b": {"rows": 1, "checksum": "5", "engine": "InnoDB", "transactional": True}}}
    good = {"checksums.restored": "a\tInnoDB\t2\t9\nb\tInnoDB\t1\t5\n"}
    assert verify.restored_tables(good, m, True) == (2, [], 3)
    assert verify.restore_warning(m, [], True) is None
    bad = {"checksums.restored": "a\tInnoDB\t3\t9\nc\tInnoDB\t1\t1\n"}
    assert ended(verify.restored_tables, bad, m, True) == (
        "verification failed: table a has 3 rows, the backup 2; table b is missing; tables not in the backup: c")
    assert verify.restore_warning(m, [], False) == "NOT verified: --no-checksums"


def test_manifest_round_trip_and_catalog_record(tmp_path):
    m = {"name": "t-1", "database": "shop", "file": "t/t-1.sql.zst", "size": 10, "sha256": SHA, "created": 5.0,
         "job": "j1", "compression": "zstd", "tables": {"a": {"rows": 3}}, "rows": 3}
    path = str(tmp_path / "t-1.manifest.json")
    manifest.write(path, m)
    assert manifest.read(path) == m
    assert not (tmp_path / "t-1.manifest.json.partial").exists()
    b = manifest.catalog_record(m, "t", "backups", "t/t-1.manifest.json", "h1")
    assert (b.name, b.target, b.volume, b.tables, b.rows, b.job) == ("t-1", "t", "backups", 1, 3, "j1")
    assert manifest.summary(m)["not_transactional"] == []


METERS = {7: {"rate_kbps": 50000, "burst_kb": 12500}, 9: {"rate_kbps": 1000, "burst_kb": 250}}


@pytest.fixture
def meters(monkeypatch):
    """The bridges whose meters Flows was asked for (it answers METERS)."""
    asked: list[str] = []

    def read(self):
        asked.append(self.bridge)
        return METERS
    monkeypatch.setattr(hostenv.Flows, "meters", read)
    return asked


@pytest.fixture
def ovs(monkeypatch):
    """ovs-vsctl and ovs-ofctl answers by their arguments."""
    answers: dict[str, str] = {}
    calls: list[list[str]] = []

    def run(cmd, **kw):
        calls.append(cmd)
        for key, text in answers.items():
            if key in cmd:
                return subprocess.CompletedProcess(cmd, 0, text, "")
        return subprocess.CompletedProcess(cmd, 1, "", "no such thing")
    monkeypatch.setattr(subprocess, "run", run)
    return answers, calls


def test_meter_is_read_through_flows(ovs, meters):
    answers, _ = ovs
    answers.update({"ofport": "9\n"})
    assert hostenv.HostEnv().meter("br-np", "veth1") == (1000, 250)
    assert meters == ["br-np"]


def test_no_meter_falls_back_to_ingress_policing(ovs, meters):
    answers, _ = ovs
    answers.update({"ofport": "4\n", "ingress_policing_rate": "2000\n",
                    "ingress_policing_burst": "300\n"})
    assert hostenv.HostEnv().meter("br-np", "veth1") == (2000, 300)
    answers["ingress_policing_rate"] = "0\n"
    assert hostenv.HostEnv().meter("br-np", "veth1") is None
    assert hostenv.HostEnv().meter("bad bridge!", "veth1") is None        # a name Flows refuses
