"""drctl trusts nothing it reads (netplugin/backup/trust.py, ondisk.py): job
records written straight into etcd with path ids, foreign images and option
files are refused by the agent, marked failed with the reason and never run;
the runner touches no file outside its work folder and the volume (canaries
outside survive symlinks); a dump is re-read from disk before it is
catalogued, and a full volume is named."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from netplugin.backup import config, trust
from netplugin.backup.config import BackupConfig
from netplugin.backup.model import FAILED, QUEUED, RUNNING, SUCCEEDED, Backup, Job, JobSpec, new_job_id
from netplugin.backup.ondisk import sha256_of
from netplugin.backup.scheduler import Agent
from netplugin.backup.store import BackupStore
from netplugin.errors import InvalidRequest
from netplugin.kv import Put

from .backup_fakes import backup_ok, write_dump
from .fakes import MemoryKV
from .test_backup_runner import Rig

PREFIX = "/netplugin/t"
NOW = 1_800_000_000.0


def _spec(**over) -> dict:
    spec = JobSpec(network="prod", db_host="db", option_file="/etc/drctl/x.cnf", volume="v", database="d").__dict__
    spec.update(over)
    return spec


def _job(job_id: str | None = None, state: str = QUEUED, **spec) -> Job:
    return Job(id=job_id or new_job_id(NOW), kind="backup", target="t1", host="h1", spec=_spec(**spec),
               created=NOW, start_by=NOW + 600, state=state,
               history=[{"state": QUEUED, "time": NOW, "message": "submitted"}])


# -- one check, its words ----------------------------------------------------------------------

@pytest.mark.parametrize("job,why", [
    (_job(".."), "job id"),
    (_job("../../etc"), "job id"),
    (_job("/etc"), "job id"),
    (_job(image="evil/rootkit:latest"), "is not allowed"),
    (_job(option_file="/etc/shadow"), "/etc/drctl"),
    (_job(option_file="/etc/drctl/../shadow"), "normalised"),
    (_job(option_file="etc/drctl/x.cnf"), "absolute"),
    (_job(volume="../../etc"), "volume"),
    (_job(database="x`; DROP"), "database"),
    (_job(db_port="3306; rm"), "port"),
    (_job(labels={"a": "b\nc"}), "label value"),
    (_job(limits={"memory": "1g; rm -rf /"}), "limit memory"),
    (_job(compression="lz4"), "compression"),
])
def test_check_job_refuses_with_what_is_wrong(job, why):
    with pytest.raises(InvalidRequest) as exc:
        trust.check_job(job, BackupConfig())
    assert why in exc.value.message


def test_check_job_refuses_a_path_target_and_host():
    for field, value in (("target", "../x"), ("target", "/etc"), ("host", "../h"), ("host", "a/b")):
        job = _job()
        setattr(job, field, value)
        with pytest.raises(InvalidRequest, match=field):
            trust.check_job(job, BackupConfig())


def test_check_job_accepts_a_good_record_and_the_allowlisted_images():
    assert trust.check_job(_job(), BackupConfig()).volume == "v"
    cfg = BackupConfig(images=["netplugin/mariadb-tools:10.11", "site/tools:2"])
    trust.check_job(_job(image="site/tools:2"), cfg)
    with pytest.raises(InvalidRequest, match="not allowed"):
        trust.check_job(_job(image="site/tools:3"), cfg)


def test_check_backup_refuses_paths_out_of_the_volume():
    good = Backup(name="t1-x", target="t1", database="d", volume="v", path="t1/t1-x.sql.zst",
                  manifest_path="t1/t1-x.manifest.json", size=10, sha256="a" * 64, created=NOW, host="h1", job="x")
    trust.check_backup(good)
    for field, value in (("path", "../../etc/passwd"), ("path", "/etc/passwd"), ("manifest_path", "t1/../../x"),
                         ("name", "../x"), ("sha256", "zz"), ("job", "../j")):
        bad = Backup(**{**good.__dict__, field: value})
        with pytest.raises(InvalidRequest):
            trust.check_backup(bad)


def test_inside_refuses_dotdot_absolute_and_symlinks_out(tmp_path):
    base = tmp_path / "base"
    (base / "in").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, base / "link")
    assert trust.inside(str(base), "in/x") == str(base / "in" / "x")
    for rel in ("../outside", "/etc", "link/x", "in/../../outside", "."):
        with pytest.raises(InvalidRequest):
            trust.inside(str(base), rel)


# -- the agent: crafted records straight into etcd ------------------------------------------------

class Calls:
    def __init__(self):
        self.runs: list[str] = []

    def factory(self):
        calls = self

        class Recording:
            def run(self, job):
                calls.runs.append(job.id)
                return job

            def adopt(self, job):
                calls.runs.append(job.id)
                return job
        return Recording()


def _write(kv: MemoryKV, store: BackupStore, job: Job, queue: bool = True, raw: str | None = None) -> None:
    ops = [Put(store.k_job(job.id), raw if raw is not None else job.to_json())]
    if queue:
        ops.append(Put(store.k_queue("h1", job.id), job.id))
    assert kv.txn([], ops)


def test_agent_refuses_crafted_queued_records_marks_them_failed_and_runs_the_good_one(caplog):
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    calls = Calls()
    cfg = BackupConfig(poll=0.01, lease_ttl=5)
    agent = Agent(store, "h1", cfg, calls.factory, clock=lambda: NOW + 1)
    agent.start(wait_previous=0)
    crafted = {
        "..": _job(".."),
        "img": _job("20261126-000001-aaaaaa", image="evil/rootkit:latest"),
        "opt": _job("20261126-000002-aaaaaa", option_file="/etc/shadow"),
        "vol": _job("20261126-000003-aaaaaa", volume="../../etc"),
    }
    for job in crafted.values():
        _write(kv, store, job)
    garbage = _job("20261126-000004-aaaaaa")
    _write(kv, store, garbage, raw="{not json")
    good = _job("20261126-000009-aaaaaa")
    _write(kv, store, good)
    for _ in range(3):
        agent.tick()
    agent.join(5)
    assert calls.runs == [good.id]                         # the loop went on past every bad record
    for key, job in crafted.items():
        got = store.get(job.id)[0]
        assert got.state == FAILED and got.message.startswith("refused: "), (key, got.message)
        assert store.queued("h1").count(job.id) == 0
    assert "is not allowed" in store.get(crafted["img"].id)[0].message
    assert "/etc/drctl" in store.get(crafted["opt"].id)[0].message
    refused_logs = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused_logs) == len(crafted) + 1           # once each, though ticked three times
    agent.close()


def test_agent_adopts_no_crafted_active_record(tmp_path):
    """An active record with a path id (the rmtree of an arbitrary folder) is
    marked failed at adoption and never handed to a runner."""
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    calls = Calls()
    job = _job("../../etc", state=RUNNING)
    job.slot = 0
    _write(kv, store, job, queue=False)
    agent = Agent(store, "h1", BackupConfig(poll=0.01, lease_ttl=5), calls.factory, clock=lambda: NOW + 1)
    agent.start(wait_previous=0)
    agent.join(5)
    assert calls.runs == []
    got = store.get("../../etc")[0]
    assert got.state == FAILED and "job id" in got.message
    agent.close()


# -- the runner: nothing outside the work folder and the volume ------------------------------------

@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


@pytest.fixture
def canary(tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "canary").write_text("alive")
    return outside


def _intact(canary) -> None:
    assert sorted(os.listdir(canary)) == ["canary"] and (canary / "canary").read_text() == "alive"


def test_runner_refuses_a_record_changed_after_admission(rig, canary):
    """The runner checks again: a record made bad after the agent read it is refused, nothing touched."""
    job = rig.job()
    job.spec["option_file"] = str(canary / "canary")
    final = rig.run(job)
    assert final.state == FAILED and final.message.startswith("refused: ") and rig.docker.containers == {}
    _intact(canary)


def test_a_symlinked_target_folder_in_the_volume_is_refused(rig, canary):
    os.symlink(canary, os.path.join(rig.docker.volumes["backups"]["Mountpoint"], "prod-db"))
    job = rig.backup()
    assert job.state == FAILED and "symlink" in job.message, job.message
    assert rig.docker.containers == {} and rig.store.backups() == []
    _intact(canary)


def test_a_symlinked_work_folder_is_never_removed(rig, canary):
    job = rig.job()
    os.makedirs(rig.cfg.work_dir, exist_ok=True)
    os.symlink(canary, os.path.join(rig.cfg.work_dir, job.id))
    final = rig.run(job)
    assert final.state == FAILED and "symlink" in final.message, final.message
    _intact(canary)


def test_an_option_file_linked_out_of_the_allowed_folder_is_refused(rig, canary):
    link = os.path.join(rig.cfg.option_dir, "linked.cnf")
    os.symlink(canary / "canary", link)
    job = rig.backup(option_file=link)
    assert job.state == FAILED and "outside" in job.message, job.message
    assert rig.docker.containers == {}
    _intact(canary)


def test_a_foreign_volume_folder_symlink_is_refused(rig, canary):
    vol = rig.docker.volumes["backups"]
    os.rmdir(vol["Mountpoint"])
    os.symlink(canary, vol["Mountpoint"])
    job = rig.backup()
    assert job.state == FAILED and "symlink" in job.message, job.message
    _intact(canary)


# -- verification reads what was written ------------------------------------------------------------

def _partial(job_dir: str, volume: str) -> str:
    lines = Path(job_dir, "params").read_text().splitlines()
    rel = next(line.split("=", 1)[1].strip().strip("'") for line in lines if line.startswith("PARTIAL="))
    return os.path.join(volume, rel[len("/backup/"):])


def test_a_file_changed_on_disk_after_the_stream_is_not_catalogued(rig):
    def flipped(c, job_dir, volume, docker):
        path = write_dump(job_dir, volume)
        data = bytearray(Path(path).read_bytes())
        data[-1] ^= 0xFF                                    # same size, one byte differs
        Path(path).write_bytes(bytes(data))
        Path(job_dir, "out", "done").write_text("ok\n")
        return 0
    rig.docker.behaviour = flipped
    job = rig.backup()
    assert job.state == FAILED and "read back from disk" in job.message, job.message
    assert rig.store.backups() == [] and rig.files() == []


def test_a_file_that_does_not_decompress_is_not_catalogued(rig):
    def not_zstd(c, job_dir, volume, docker):
        write_dump(job_dir, volume, payload=b"x" * 4096)    # its sha256 is right; it is no zstd stream
        Path(job_dir, "out", "done").write_text("ok\n")
        return 0
    rig.docker.behaviour = not_zstd
    job = rig.backup()
    assert job.state == FAILED and "does not decompress" in job.message, job.message
    assert rig.store.backups() == [] and rig.files() == []


def test_a_good_dump_is_read_back_and_catalogued(rig):
    job = rig.backup()
    assert job.state == SUCCEEDED, job.message
    [b] = rig.store.backups()
    path = os.path.join(rig.docker.volumes["backups"]["Mountpoint"], b.path)
    assert sha256_of(path) == (b.size, b.sha256)


def test_a_full_volume_is_named_and_nothing_is_catalogued(rig):
    def full(c, job_dir, volume, docker):
        path = _partial(job_dir, volume)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(b"half")
        Path(job_dir, "out", "error").write_text("write: No space left on device\n")
        return 1
    rig.docker.behaviour = full
    job = rig.backup()
    assert job.state == FAILED and "ENOSPC" in job.message and "is full" in job.message, job.message
    assert rig.store.backups() == [] and rig.files() == []


def test_other_jobs_of_the_host_go_on_after_a_full_volume(rig):
    done = threading.Event()

    def full(c, job_dir, volume, docker):
        Path(job_dir, "out", "error").write_text("No space left on device\n")
        done.set()
        return 1
    rig.docker.behaviour = full
    assert rig.backup().state == FAILED and done.is_set()
    rig.docker.behaviour = backup_ok
    assert rig.backup(target="other-db").state == SUCCEEDED
    assert [b.target for b in rig.store.backups()] == ["other-db"]


def test_catalog_records_carry_their_host(rig):
    rig.backup()
    [b] = rig.store.backups()
    assert b.host == "h1" and json.loads(b.to_json())["host"] == "h1"


def test_clean_up_never_removes_a_container_that_is_not_the_jobs():
    """A terminal record naming another container (crafted or stale) leaves it alone."""
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    removed: list[str] = []

    class Docker:
        def inspect_container(self, cid):
            return {"Config": {"Labels": {"netplugin.backup.job": "someone-else" if cid == "prod" else cid[4:]}}}

        def remove_container(self, cid, v=False, force=False):
            removed.append(cid)
    cfg = BackupConfig(poll=0.01, lease_ttl=5)
    agent = Agent(store, "h1", cfg, Calls().factory, clock=lambda: NOW + 1, docker=Docker())
    foreign, own = _job("20261126-000001-bbbbbb", state=FAILED), _job("20261126-000002-bbbbbb", state=FAILED)
    foreign.container, own.container = "prod", "own-20261126-000002-bbbbbb"
    crafted = _job("20261126-000003-bbbbbb", state=FAILED)
    for job in (foreign, own, crafted):
        _write(kv, store, job, queue=False)
    bad = json.loads(crafted.to_json())
    bad["updated"], bad["container"] = "yesterday", "prod"
    _write(kv, store, crafted, queue=False, raw=json.dumps(bad))
    agent.gc(NOW + cfg.keep_containers + 10)
    assert removed == ["own-20261126-000002-bbbbbb"]


def test_the_allowlist_and_option_folder_are_settings():
    cfg = config.load(env={"DRCTL_CONFIG": "/dev/null", "DRCTL_IMAGES": "site/tools:2, netplugin/mariadb-tools:10.11",
                           "DRCTL_OPTION_DIR": "/srv/drctl"})
    assert cfg.images == ["site/tools:2", "netplugin/mariadb-tools:10.11"] and cfg.option_dir == "/srv/drctl"
    assert trust.allowed_images(BackupConfig()) == ["netplugin/mariadb-tools:10.11"]
    with pytest.raises(InvalidRequest, match="must be one of images"):
        config.load(env={"DRCTL_CONFIG": "/dev/null", "DRCTL_IMAGES": "site/tools:2"})
    with pytest.raises(InvalidRequest, match="option_dir"):
        config.load(env={"DRCTL_CONFIG": "/dev/null", "DRCTL_OPTION_DIR": "relative/dir"})


def test_records_nested_a_thousand_deep_are_skipped_not_a_crash():
    """A job, catalog or agent record nested far deeper than any real one is
    left out of every listing, where json would raise RecursionError."""
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    deep = "[" * 5000 + "]" * 5000
    kv.txn([], [Put(f"{PREFIX}/backup/jobs/20260101-000000-abcdef", deep),
                Put(f"{PREFIX}/backup/catalog/db1/deep", deep),
                Put(f"{PREFIX}/backup/agents/h9", deep)])
    assert store.list_jobs() == []
    assert store.agents() == {}
    assert list(store.backups("db1")) == []
