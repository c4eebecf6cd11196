"""Restore drills (netplugin/backup/drills.py) over MemoryKV and a fake Docker:
the drill's restore job of the newest good backup, its firing (or a miss
when there is no good backup), the scratch server's life around the restore
(the inner runner is a stub that checks what it was handed), the result with
RTO and RPO, drctl check's verdict, and the metrics."""

from __future__ import annotations

import os

import pytest

from netplugin.backup import cli
from netplugin.backup.config import BackupConfig
from netplugin.backup.drills import (
    DRILL_LABEL,
    JOB_LABEL,
    Drilling,
    DrillResult,
    drill_job,
    drill_spec,
    is_drill,
    sweep_scratch,
)
from netplugin.backup.exporter import BackupCollector
from netplugin.backup.jobs import check_targets, new_job
from netplugin.backup.model import FAILED, RESTORE, RUNNING, STARTING, SUCCEEDED, VERIFYING, Job
from netplugin.backup.schedules import DRILL, Firing, Schedule
from netplugin.backup.store import BackupStore
from netplugin.errors import NotFound
from netplugin.kv import Put

from .backup_fakes import FakeDocker
from .backup_records import put_backup
from .fakes import MemoryKV

PREFIX = "/netplugin/t"
T0 = 1_767_232_800.0


class World:
    def __init__(self, tmp_path, server_ready: bool = True):
        self.kv = MemoryKV()
        self.store = BackupStore(self.kv, PREFIX)
        os.makedirs(tmp_path / "opts")
        os.makedirs(tmp_path / "work")
        self.cfg = BackupConfig(option_dir=str(tmp_path / "opts"), work_dir=str(tmp_path / "work"))
        self.docker = ServerDocker(str(tmp_path), server_ready)
        self.now = T0

    def new_job(self, kind, target, host, spec, now, by):
        return new_job(self.cfg, kind, target, host, spec, now, by)

    def queued_drill(self, slot: int = 0) -> Job:
        job = drill_job(self.store, self.cfg, self.new_job, "weekly", drill_spec("dr", "shop"), "h1", self.now)
        self.store.submit(job)
        found, rev = self.store.get(job.id)
        return self.store.admit(found, rev, slot, self.now, 3600)


class ServerDocker(FakeDocker):
    """FakeDocker whose drill scratch servers "run" and log readiness (or exit)."""

    def __init__(self, root: str, ready: bool):
        super().__init__(root)
        self.ready = ready
        self.servers: list[str] = []

    def _get(self, cid):
        """By id or by name, as dockerd finds a container."""
        named = [c for c in self.containers.values() if c.name == cid]
        return named[0] if named and cid not in self.containers else super()._get(cid)

    def containers_list(self, labels: list[str]) -> list[dict]:
        return [{"Id": c.id, "Names": ["/" + (c.name or "")], "Labels": dict(c.labels)}
                for c in self.containers.values() if all(k in c.labels for k in labels)]

    def remove_container(self, cid, v=False, force=False):
        return super().remove_container(self._get(cid).id, v=v, force=force)

    def start(self, cid):
        c = self._get(cid)
        if not (c.name or "").startswith("drctl-drill-"):
            return super().start(cid)
        self.servers.append(cid)
        c.ip = "10.99.0.7"
        if self.ready:
            c.running = True
            c.logs = ["starting", "mariadbd: ready for connections."]
        else:
            c.running, c.exit_code = False, 1
            c.logs = ["[ERROR] Aborting"]
        c.host_config["NetworkMode"] = "dr"
        return None


class StubRestore:
    """The Runner's place: checks the job it is handed, then ends it as told."""

    def __init__(self, w: World, end: str = SUCCEEDED):
        self.w, self.end, self.seen = w, end, []

    def run(self, job: Job) -> Job:
        self.seen.append(job)
        assert job.spec["db_host"] == "10.99.0.7"
        with open(job.spec["option_file"]) as fh:
            assert fh.read().startswith("[client]\nuser=drill\npassword=")
        assert oct(os.stat(job.spec["option_file"]).st_mode & 0o777) == "0o600"

        def change(j: Job) -> None:
            j.move(RUNNING, "loading", now=self.w.now)
            if self.end == SUCCEEDED:
                j.move(VERIFYING, "checking", now=self.w.now)
            j.move(self.end, "verified 4 tables" if self.end == SUCCEEDED else "table orders: checksum differs",
                   now=self.w.now)
        return self.w.store.update(job.id, change)

    def adopt(self, job: Job) -> Job:
        return job


def drilling(w: World, inner) -> Drilling:
    return Drilling(inner, w.store, w.docker, w.cfg, "h1", clock=lambda: w.now, sleep=lambda s: None,
                    ready_timeout=2)


def test_the_drill_job_restores_the_newest_good_backup_into_its_own_server(tmp_path):
    w = World(tmp_path)
    put_backup(w.store, "shop", created=T0 - 7200, size=1000)
    newest = put_backup(w.store, "shop", created=T0 - 3600, size=1000)
    job = drill_job(w.store, w.cfg, w.new_job, "weekly", drill_spec("dr", "shop"), "h1", T0)
    assert job.kind == RESTORE and is_drill(job) and job.spec["backup"] == newest.name
    assert job.spec["network"] == "dr" and job.spec["db_host"] == f"drctl-drill-{job.id}"
    assert job.server == f"dr@drctl-drill-{job.id.lower()}:3306"
    assert job.spec["option_file"] == os.path.join(w.cfg.option_dir, f"drill-{job.id}.cnf")
    with pytest.raises(NotFound, match="no good backup of crm"):
        drill_job(w.store, w.cfg, w.new_job, "weekly", drill_spec("dr", "crm"), "h1", T0)


def test_a_drill_schedule_fires_its_job_or_records_a_miss_without_a_backup(tmp_path):
    w = World(tmp_path)
    w.store.create_schedule(Schedule(name="weekly", cron="* * * * *", tz="UTC", kind=DRILL, target="shop",
                                     spec=drill_spec("dr", "shop"), host="h1", created=T0, last_due=T0))
    f = Firing(w.store, w.cfg, w.new_job,
               drill_job=lambda s, host, now: drill_job(w.store, w.cfg, w.new_job, s.name, s.spec, host, now))
    assert f.tick(T0 + 61) == []
    s, _ = w.store.get_schedule("weekly")
    assert s.missed_count == 1 and "no good backup of shop" in s.missed[-1]["why"]
    put_backup(w.store, "shop", created=T0, size=1000)
    ids = f.tick(T0 + 121)
    assert len(ids) == 1 and is_drill(w.store.get(ids[0])[0])


def test_a_drill_that_restores_and_verifies_records_rto_and_rpo_and_cleans_up(tmp_path):
    w = World(tmp_path)
    backup = put_backup(w.store, "shop", created=T0 - 3600, size=1000)
    job = w.queued_drill()
    inner = StubRestore(w)
    final = drilling(w, inner).run(job)
    assert final.state == SUCCEEDED and len(inner.seen) == 1
    [r] = w.store.drill_results()
    assert (r.target, r.drill, r.job, r.backup, r.ok) == ("shop", "weekly", job.id, backup.name, True)
    assert r.rpo == 3600 and r.rto is not None and r.rto >= 0
    assert w.docker.servers and w.docker.servers[0] not in w.docker.containers     # scratch server removed
    assert os.listdir(w.cfg.option_dir) == [] and os.listdir(w.cfg.work_dir) == []
    row = check_targets(w.store, ["shop"], 86400 * 2, T0, drill_max_age=8 * 86400)[0]
    assert row["ok"] and row["drill"]["ok"] and row["drill"]["rpo"] == 3600


def test_a_drill_whose_verification_fails_fails_check(tmp_path):
    w = World(tmp_path)
    put_backup(w.store, "shop", created=T0 - 3600, size=1000)
    final = drilling(w, StubRestore(w, end=FAILED)).run(w.queued_drill())
    assert final.state == FAILED
    [r] = w.store.drill_results()
    assert not r.ok and "checksum differs" in r.message and r.rto is None
    row = check_targets(w.store, ["shop"], 86400 * 2, T0, drill_max_age=8 * 86400)[0]
    assert not row["ok"] and any("last drill weekly failed" in p for p in row["problems"])


def test_a_scratch_server_that_never_gets_ready_fails_the_drill_saying_why(tmp_path):
    w = World(tmp_path, server_ready=False)
    put_backup(w.store, "shop", created=T0 - 3600, size=1000)
    job = w.queued_drill()
    inner = StubRestore(w)
    final = drilling(w, inner).run(job)
    assert final.state == FAILED and "exited before it was ready" in final.message and "Aborting" in final.message
    assert inner.seen == []
    [r] = w.store.drill_results()
    assert not r.ok and w.docker.servers[0] not in w.docker.containers
    assert os.listdir(w.cfg.option_dir) == []


def test_an_old_drill_fails_check_and_bad_results_are_skipped_and_counted(tmp_path):
    w = World(tmp_path)
    put_backup(w.store, "shop", created=T0 - 3600, size=1000)
    w.store.put_drill_result(DrillResult(target="shop", drill="weekly", job="j1", backup="b", ok=True, message="ok",
                                         rto=12.0, rpo=3600.0, finished=T0 - 10 * 86400, host="h1"))
    w.kv.txn([], [Put(w.store.k_drill("crm"), b"[1]"), Put(w.store.k_drill("erp"), DrillResult(
        target="other", drill="d", job="j", backup="b", ok=True, message="", rto=1.0, rpo=1.0, finished=T0,
        host="h1").to_json())])
    row = check_targets(w.store, [], 86400 * 2, T0, drill_max_age=8 * 86400)
    assert [r["target"] for r in row] == ["shop"]
    assert not row[0]["ok"] and "10.0 days old" in row[0]["problems"][0]
    assert w.store.bad_drills == 2


def test_other_jobs_go_to_the_inner_runner_untouched(tmp_path):
    w = World(tmp_path)
    seen = []

    class Inner:
        def run(self, job):
            seen.append(job.id)
            return job
    job = Job(id="20260101-000000-abcdef", kind="backup", target="t", host="h1", spec={}, state=STARTING)
    assert drilling(w, Inner()).run(job) is job and seen == [job.id] and w.docker.servers == []


def test_metrics_expose_the_last_drill_per_target(tmp_path):
    w = World(tmp_path)
    w.store.put_drill_result(DrillResult(target="shop", drill="weekly", job="j1", backup="b", ok=True, message="ok",
                                         rto=12.5, rpo=3600.0, finished=T0, host="h1"))
    w.store.put_drill_result(DrillResult(target="crm", drill="weekly", job="j2", backup="b", ok=False,
                                         message="bad", rto=None, rpo=7200.0, finished=T0, host="h1"))

    class Metrics:
        class backend_errors:               # stands for the Counter attribute
            @staticmethod
            def labels(_):
                raise AssertionError("no etcd error expected")
    samples = {(s.name, tuple(s.labels.items())): s.value
               for fam in BackupCollector(w.store, Metrics()).collect() for s in fam.samples}
    assert samples[("netplugin_backup_drill_succeeded", (("target", "shop"),))] == 1
    assert samples[("netplugin_backup_drill_succeeded", (("target", "crm"),))] == 0
    assert samples[("netplugin_backup_drill_rto_seconds", (("target", "shop"),))] == 12.5
    assert ("netplugin_backup_drill_rto_seconds", (("target", "crm"),)) not in samples
    assert samples[("netplugin_backup_drill_rpo_seconds", (("target", "crm"),))] == 7200


def test_labels_mark_drills_only(tmp_path):
    job = Job(id="x", kind=RESTORE, target="t", host="h1", spec={"labels": {DRILL_LABEL: "d"}})
    assert is_drill(job)
    job.spec = {"labels": {"other": "1"}}
    assert not is_drill(job)


# -- an agent killed mid-drill ------------------------------------------------------------

class Client:
    """docker-py's APIClient.containers over a ServerDocker (whose own ``containers``
    is its dict of containers); everything else passes through."""

    def __init__(self, docker: ServerDocker):
        self.d = docker

    def containers(self, all=False, filters=None):
        assert all and set(filters) == {"label"}           # docker-py: every label given must be on it
        return self.d.containers_list(filters["label"])

    def __getattr__(self, name):
        return getattr(self.d, name)


def left_mid_drill(w: World, state: str) -> tuple[Job, str]:
    """A drill job as a killed agent leaves it: admitted, its scratch server made
    and started and its one-time files written; then moved on to state."""
    put_backup(w.store, "shop", created=T0 - 3600, size=1000)
    job = w.queued_drill()
    d = drilling(w, StubRestore(w))
    paths = d._paths(job)
    for path in paths.values():
        d._write(path, "x")
    server = d._create_server(job, paths["init"])
    d._ready(job, server)
    if state != STARTING:
        w.now += 30
        job = w.store.update(job.id, lambda j: j.move(RUNNING, "loading", now=w.now))
    return job, server


class AdoptedRestore(StubRestore):
    """The runner's adopt: the restore the dead agent started ends as told, 40 s later."""

    def adopt(self, job: Job) -> Job:
        self.seen.append(job)
        w = self.w
        w.now += 40

        def change(j: Job) -> None:
            if self.end == SUCCEEDED:
                j.move(VERIFYING, "checking", now=w.now)
            j.move(self.end, "verified" if self.end == SUCCEEDED else "table orders: checksum differs", now=w.now)
        return w.store.update(job.id, change)


def test_an_adopted_drill_whose_restore_ran_is_finished_recorded_and_its_server_removed(tmp_path):
    w = World(tmp_path)
    job, server = left_mid_drill(w, RUNNING)
    assert server in w.docker.containers and os.listdir(w.cfg.option_dir)
    inner = AdoptedRestore(w)
    final = drilling(w, inner).adopt(w.store.get(job.id)[0])
    assert final.state == SUCCEEDED and [j.id for j in inner.seen] == [job.id]
    assert server not in w.docker.containers                                  # the scratch server went
    assert os.listdir(w.cfg.option_dir) == [] and os.listdir(w.cfg.work_dir) == []
    [r] = w.store.drill_results()
    assert r.ok and r.job == job.id and "adopted after an agent restart" in r.message
    assert r.rto == 40 and r.rpo == 3600                     # from the job's running time, this host's clock


def test_an_adopted_drill_whose_restore_fails_records_the_failure(tmp_path):
    w = World(tmp_path)
    job, server = left_mid_drill(w, RUNNING)
    final = drilling(w, AdoptedRestore(w, end=FAILED)).adopt(w.store.get(job.id)[0])
    assert final.state == FAILED and server not in w.docker.containers
    [r] = w.store.drill_results()
    assert not r.ok and "checksum differs" in r.message and r.rto is None


def test_a_drill_killed_while_setting_up_its_server_ends_failed_without_a_result(tmp_path):
    w = World(tmp_path)
    job, server = left_mid_drill(w, STARTING)
    inner = AdoptedRestore(w)
    final = drilling(w, inner).adopt(w.store.get(job.id)[0])
    assert final.state == FAILED and "set up its scratch server" in final.message
    assert inner.seen == []                                        # no restore was carried on
    assert server not in w.docker.containers and os.listdir(w.cfg.option_dir) == []
    assert w.store.drill_results() == []                           # the last real result stands


def test_the_sweep_removes_scratch_servers_of_ended_or_vanished_drills_only(tmp_path):
    w = World(tmp_path)
    ended, ended_server = left_mid_drill(w, RUNNING)
    w.store.update(ended.id, lambda j: j.move(FAILED, "restore failed", now=w.now))
    w.now += 1
    active = w.queued_drill(slot=1)
    d = drilling(w, StubRestore(w))
    active_server = d._create_server(active, d._paths(active)["init"])
    gone = w.queued_drill(slot=2)
    gone_server = d._create_server(gone, d._paths(gone)["init"])
    w.store.delete_job(w.store.get(gone.id)[0])
    # a container of a drill's name whose labels name another job, and one with a crafted job label
    other = w.docker.create_container("x", name="drctl-drill-zzz", labels={DRILL_LABEL: "d", JOB_LABEL: "yyy"})["Id"]
    crafted = w.docker.create_container("x", name="c", labels={DRILL_LABEL: "d", JOB_LABEL: "../etc"})["Id"]
    # the ended drill's restore job container: the drill's label, not a scratch server's job label
    job_box = w.docker.create_container("x", name=f"drctl-{ended.id}", labels={DRILL_LABEL: "d"})["Id"]
    removed = sweep_scratch(w.store, Client(w.docker), w.cfg)
    assert sorted(removed) == sorted([ended.id, gone.id])
    assert ended_server not in w.docker.containers and gone_server not in w.docker.containers
    assert active_server in w.docker.containers                    # its agent is still at it
    assert other in w.docker.containers and crafted in w.docker.containers and job_box in w.docker.containers
    assert sweep_scratch(w.store, Client(w.docker), w.cfg) == []   # nothing left to do


def test_the_agent_sweeps_at_start_and_at_every_clean_up_pass(tmp_path):
    from netplugin.backup.scheduler import Agent
    w = World(tmp_path)
    calls = []
    agent = Agent(w.store, "h1", w.cfg, lambda: None, clock=lambda: w.now, sweeps=[lambda: calls.append(w.now)])
    agent.start(wait_previous=1)
    try:
        assert calls == [T0]
        agent.tick()
        w.now += 61
        agent.tick()
        assert calls == [T0, T0, T0 + 61]
    finally:
        agent.close()


# -- drctl check ---------------------------------------------------------------------------

def check_exit(w: World, *argv: str) -> int:
    args = cli.build_parser().parse_args(["check", *argv])
    ctx = type("Ctx", (), {"store": w.store, "json": False, "quiet": True, "cfg": w.cfg})()
    return cli.cmd_check(args, ctx)


def test_drctl_check_exits_1_for_a_failed_or_too_old_drill_and_0_for_a_fresh_good_one(tmp_path, monkeypatch):
    w = World(tmp_path)
    monkeypatch.setattr(cli.time, "time", lambda: T0)
    put_backup(w.store, "shop", created=T0 - 3600, size=1000)

    def drilled(ok: bool, age: float) -> None:
        w.store.put_drill_result(DrillResult(target="shop", drill="weekly", job="j1", backup="b", ok=ok,
                                             message="ok" if ok else "checksum differs", rto=1.0 if ok else None,
                                             rpo=3600.0, finished=T0 - age, host="h1"))
    drilled(True, 3600)
    assert check_exit(w, "shop") == 0
    drilled(False, 3600)
    assert check_exit(w, "shop") == 1
    drilled(True, 9 * 86400)                                       # older than drill_max_age (8 days)
    assert check_exit(w, "shop") == 1
    assert check_exit(w, "shop", "--drill-max-age", "10d") == 0
