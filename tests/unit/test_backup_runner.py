"""The runner (netplugin/backup/runner.py) over FakeDocker, FakeHostEnv and the
in-memory etcd: the whole life of a job, every way it can end, and what it
leaves in the volume and in etcd."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from netplugin.backup import jobscript
from netplugin.backup.config import BackupConfig
from netplugin.backup.model import (BACKUP, CANCELLED, EXPIRED, FAILED, QUEUED, RESTORE, RUNNING, STARTING,
                                    SUCCEEDED, VERIFYING, Job, JobSpec, new_job_id)
from netplugin.backup.runner import Runner
from netplugin.backup.store import BackupStore
from netplugin.model import Endpoint, Host, Profile
from netplugin.store import Store

from .backup_fakes import (CHECKSUMS, FakeDocker, FakeHostEnv, backup_slow, hang_mid_dump, restore_ok, restore_with,
                           write_dump, wrong_password)
from .fakes import MemoryKV

PREFIX = "/netplugin/t"
PASSWORD = "S3cret-in-the-file-only"


class Rig:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.kv = MemoryKV()
        self.store = BackupStore(self.kv, PREFIX)
        self.np = Store(self.kv, PREFIX)
        self.docker = FakeDocker(str(tmp_path / "docker"))
        self.env = FakeHostEnv(self.docker)
        self.cfg = BackupConfig(work_dir=str(tmp_path / "work"), option_dir=str(tmp_path), profile_wait=0.3,
                                min_size=100)
        self.option_file = str(tmp_path / "client.cnf")
        with open(os.open(self.option_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(f"[client]\nuser=root\npassword={PASSWORD}\n")
        self.docker.create_volume("backups")
        self.clock = time.time

    def runner(self) -> Runner:
        return Runner(self.store, self.docker, self.cfg, env=self.env, np_store=self.np, clock=lambda: self.clock(),
                      sleep=lambda s: time.sleep(min(s, 0.02)))

    def job(self, kind=BACKUP, target="prod-db", limits=None, **spec) -> Job:
        base = dict(network="prod", db_host="10.10.0.5", option_file=self.option_file, volume="backups",
                    database="shop", limits=limits if limits is not None else {"cpus": 1.0, "memory": 512 << 20,
                                                                               "pids": 64, "write_bps": 1 << 20})
        base.update(spec)
        now = time.time()
        job = Job(id=new_job_id(now), kind=kind, target=target, host="h1", spec=JobSpec(**base).__dict__,
                  created=now, start_by=now + base.get("start_timeout", 600),
                  history=[{"state": QUEUED, "time": now, "message": "submitted"}])
        self.store.submit(job)
        found, rev = self.store.get(job.id)
        admitted = self.store.admit(found, rev, 0, now, JobSpec(**base).timeout)
        assert admitted is not None
        return admitted

    def run(self, job: Job) -> Job:
        final = self.runner().run(job)
        self.store.release(final)          # the agent's part
        return final

    def files(self, target="prod-db") -> list[str]:
        path = os.path.join(self.docker.volumes["backups"]["Mountpoint"], target)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def backup(self, **kw) -> Job:
        return self.run(self.job(**kw))


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def states(job: Job) -> list[str]:
    return [h["state"] for h in job.history]


# -- success -----------------------------------------------------------------------------------

def test_backup_succeeds_with_manifest_rename_and_catalog(rig):
    job = rig.backup()
    assert job.state == SUCCEEDED, job.message
    assert states(job) == [QUEUED, STARTING, RUNNING, VERIFYING, SUCCEEDED]
    name = job.result["backup"]
    assert rig.files() == [f"{name}.manifest.json", f"{name}.sql.zst"]            # no .partial left
    manifest = json.loads(open(os.path.join(rig.docker.volumes["backups"]["Mountpoint"], "prod-db",
                                            f"{name}.manifest.json")).read())
    assert manifest["size"] == 4096 and manifest["rows"] == 5
    assert manifest["tables"]["a"] == {"engine": "InnoDB", "rows": 3, "checksum": "123456789", "transactional": True}
    assert manifest["format"] == 2 and manifest["checksum_snapshot"] == "dump"
    assert manifest["read_lock"] == {"wait": 0.012, "held": 0.085} and manifest["not_transactional"] == []
    assert manifest["tool"].startswith("mariadb-dump --defaults-file=/run/drctl/client.cnf --single-transaction")
    assert "10.11.19-MariaDB" in manifest["tool_version"]
    assert manifest["server_version"] == "10.11.19-MariaDB"
    assert manifest["limits"]["cgroup"]["write_bps"] == 1 << 20            # the limits actually applied
    assert manifest["limits"]["device"]["node"] == "/dev/vda"
    [b] = rig.store.backups("prod-db")
    assert (b.name, b.size, b.sha256) == (name, 4096, manifest["sha256"])
    assert job.exit_code == 0 and job.oom_killed is False
    assert "dump done" in job.log_tail


def test_container_is_created_limited_labelled_and_never_auto_removed(rig):
    job = rig.backup(labels={"team": "dba"}, ip="10.10.0.77")
    c = rig.docker.containers[job.container]
    hc = c.host_config
    assert hc["NanoCpus"] == 1_000_000_000 and hc["Memory"] == 512 << 20 and hc["MemorySwap"] == 512 << 20
    assert hc["PidsLimit"] == 64 and hc["BlkioDeviceWriteBps"] == [{"Path": "/dev/vda", "Rate": 1 << 20}]
    assert hc["AutoRemove"] is False and hc["NetworkMode"] == "prod" and hc["ReadonlyRootfs"] is True
    assert c.networking["EndpointsConfig"]["prod"]["IPAMConfig"]["IPv4Address"] == "10.10.0.77"
    assert c.labels["team"] == "dba" and c.labels["netplugin.backup.job"] == job.id
    assert job.container in rig.docker.containers                      # still there after the job


def test_password_is_never_on_a_command_line_or_in_the_environment(rig):
    job = rig.backup()
    c = rig.docker.containers[job.container]
    inspect = json.dumps(rig.docker.inspect_container(job.container))
    assert PASSWORD not in inspect and PASSWORD not in json.dumps(c.command)
    mounts = {m["Target"]: m for m in c.host_config["Mounts"]}
    assert mounts["/run/drctl/client.cnf"]["ReadOnly"] is True
    for root, _dirs, files in os.walk(rig.cfg.work_dir):
        for f in files:
            assert PASSWORD not in open(os.path.join(root, f), errors="replace").read()


def test_script_records_every_stage_and_reads_the_option_file():
    assert "--defaults-file=$CNF" in jobscript.SCRIPT
    assert 'st=("${PIPESTATUS[@]}")' in jobscript.SCRIPT
    assert "password" not in jobscript.SCRIPT.lower()
    assert "--single-transaction" in jobscript.SCRIPT and "--routines" in jobscript.SCRIPT
    assert "--triggers" in jobscript.SCRIPT and "--events" in jobscript.SCRIPT


# -- failures ----------------------------------------------------------------------------------

def test_wrong_password_fails_and_leaves_no_file(rig):
    rig.docker.behaviour = wrong_password
    job = rig.backup()
    assert job.state == FAILED
    assert "Access denied" in job.message and job.exit_code == 2
    assert rig.files() == [] and rig.store.backups() == []


@pytest.mark.parametrize("status,why", [
    ("dump=2 tee_raw=0 compress=0 tee_out=0 write=0 tail=0 raw_count=0 sha256=0 count=0", "dump"),
    ("dump=0 tee_raw=0 compress=0 tee_out=0 write=1 tail=0 raw_count=0 sha256=0 count=0", "write"),
])
def test_a_failed_stage_is_never_masked_by_the_last_one(rig, status, why):
    """`dump | gzip` returns gzip's 0: the runner reads every stage's status."""
    def lying(c, job_dir, volume, docker):
        write_dump(job_dir, volume, status=status)
        open(os.path.join(job_dir, "out", "done"), "w").write("ok\n")
        return 0
    rig.docker.behaviour = lying
    job = rig.backup()
    assert job.state == FAILED and why in job.message
    assert rig.files() == [] and rig.store.backups() == []


@pytest.mark.parametrize("dump,why", [({"marker": False}, "completion marker"),
                                       ({"payload": b"\x28\xb5\x2f\xfd"}, "only 4 bytes")],
                         ids=["missing-completion-marker", "tiny-dump"])
def test_a_dump_that_exited_0_but_is_not_whole_fails(rig, dump, why):
    def bad(c, job_dir, volume, docker):
        write_dump(job_dir, volume, **dump)
        open(os.path.join(job_dir, "out", "done"), "w").write("ok\n")
        return 0
    rig.docker.behaviour = bad
    job = rig.backup()
    assert job.state == FAILED and why in job.message
    assert rig.files() == []


def test_oom_killed_job_fails_saying_so(rig):
    def oom(c, job_dir, volume, docker):
        c.oom = True
        return 137
    rig.docker.behaviour = oom
    job = rig.backup()
    assert job.state == FAILED and job.oom_killed is True and "OOM-killed" in job.message


def test_cancel_mid_dump_kills_and_removes_the_partial(rig):
    rig.docker.behaviour = hang_mid_dump
    job = rig.job()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("job", rig.run(job)))
    t.start()
    deadline = time.time() + 5
    while not any(f.endswith(".partial") for f in rig.files()) and time.time() < deadline:
        time.sleep(0.01)
    assert any(f.endswith(".partial") for f in rig.files())
    rig.store.update(job.id, lambda j: setattr(j, "cancel_requested", "op@host"))
    t.join(10)
    final = result["job"]
    assert final.state == CANCELLED and "op@host" in final.message
    assert rig.files() == [] and final.exit_code == 137


def test_run_deadline_expires_the_job_and_removes_the_partial(rig):
    rig.docker.behaviour = hang_mid_dump
    job = rig.job(timeout=0.5)
    final = rig.run(job)
    assert final.state == EXPIRED and "deadline" in final.message
    assert rig.files() == []


def test_start_deadline_expires_a_job_that_cannot_start_in_time(rig):
    job = rig.job()
    rig.store.update(job.id, lambda j: setattr(j, "start_by", time.time() - 1))
    job = rig.store.get(job.id)[0]
    final = rig.run(job)
    assert final.state == EXPIRED and "start deadline" in final.message


def test_option_file_readable_by_others_is_refused(rig):
    os.chmod(rig.option_file, 0o644)
    job = rig.backup()
    assert job.state == FAILED and "chmod 600" in job.message
    assert job.container == ""                                # refused before any container


def test_missing_image_says_how_to_build_it(rig):
    rig.docker.images.clear()
    job = rig.backup()
    assert job.state == FAILED and "make-db-images.sh" in job.message


# -- strict mode -------------------------------------------------------------------------------

def test_strict_mode_fails_when_docker_warns_it_dropped_a_limit(rig):
    rig.docker.warnings = ["Your kernel does not support Block I/O throttling: device write bps discarded."]
    job = rig.backup()
    assert job.state == FAILED and "strict mode" in job.message and "Block I/O" in job.message
    assert not rig.docker.containers[job.container].running    # created, never started
    assert rig.files() == []


def test_strict_mode_fails_when_inspect_lacks_a_limit(rig):
    rig.docker.drop = {"PidsLimit"}
    job = rig.backup()
    assert job.state == FAILED and "pids" in job.message and "HostConfig.PidsLimit" in job.message


def test_strict_mode_fails_when_the_cgroup_does_not_enforce(rig):
    rig.env.override = {"write_bps": None}
    job = rig.backup()
    assert job.state == FAILED and "the kernel does not enforce" in job.message and "write bps" in job.message
    assert rig.files() == []                                  # the gate never opened


def test_swap_without_accounting_fails_only_if_the_host_swaps(rig):
    rig.env.override = {"swap": None}
    assert rig.backup().state == SUCCEEDED                     # no swap on the host: nothing to limit
    rig.env.swap_bytes = 1 << 30
    job = rig.backup()
    assert job.state == FAILED and "swap" in job.message


def test_non_strict_runs_and_records_the_problem(rig):
    rig.env.override = {"write_bps": None}
    job = rig.backup(strict=False)
    assert job.state == SUCCEEDED
    assert any("write bps" in p for p in job.limits_applied["problems"])


def test_disk_limits_on_a_volume_without_a_disk_fail_clearly(rig):
    from netplugin.errors import InvalidRequest
    rig.env.device_error = InvalidRequest("/x is on a tmpfs file system (device 0:52): there is no disk")
    job = rig.backup()
    assert job.state == FAILED and "disk limits cannot be applied" in job.message and "tmpfs" in job.message


# -- bandwidth profile -------------------------------------------------------------------------

def _netplugin_endpoint(rig, rate=50000):
    rig.np.put_profile(Profile(name="bk50", rate_kbps=rate, burst_kb=12500), create=True)
    rig.np.register_host(Host(host="h1", bridge="br0"), rig.kv.grant_lease(30))

    def on_endpoint(c):
        ep = Endpoint(id=c.endpoint, network="n-000000000001", docker_network="d" * 64, host="h1", ip=c.ip, prefixlen=24,
                      mac="02:00:00:00:00:01", port="np" + c.endpoint[:11], peer="nc" + c.endpoint[:11], vlan=100)
        rig.kv.txn([], [__import__("netplugin.kv", fromlist=["Put"]).Put(rig.np.k_legacy_endpoint(ep.id), ep.to_json())])
    rig.docker.on_endpoint = on_endpoint


def test_profile_is_set_on_the_endpoint_and_checked_on_the_switch(rig):
    _netplugin_endpoint(rig)
    orig = rig.np.change_endpoint

    def enforce(endpoint_id, change):            # netplugin's limit sync, at once
        ep = orig(endpoint_id, change)
        rig.env.meters[ep.port] = (50000, 12500)
        return ep
    rig.np.change_endpoint = enforce
    job = rig.backup(limits={"profile": "bk50"})
    assert job.state == SUCCEEDED, job.message
    assert rig.np.get_endpoint(job.endpoint)[0].limit == {"profile": "bk50"}
    assert job.limits_applied["profile"]["rate_kbps"] == 50000


def test_profile_not_enforced_fails_in_strict_mode(rig):
    _netplugin_endpoint(rig)
    job = rig.backup(limits={"profile": "bk50"})
    assert job.state == FAILED and "bk50" in job.message and "not enforced" in job.message


def test_unknown_profile_fails_before_any_container(rig):
    job = rig.backup(limits={"profile": "nope"})
    assert job.state == FAILED and "does not exist" in job.message and job.container == ""


# -- retention after success ----------------------------------------------------------------------

def test_success_prunes_beyond_keep_last_never_the_newest(rig):
    names = []
    for _ in range(3):
        job = rig.backup(keep_last=2)
        assert job.state == SUCCEEDED
        names.append(job.result["backup"])
        time.sleep(0.01)
    kept = [b.name for b in rig.store.backups("prod-db")]
    assert kept == [names[2], names[1]]
    assert job.result["pruned"] == [names[0]]
    assert not any(f.startswith(names[0]) for f in rig.files())


def _spy_prune(monkeypatch, rig, after=None):
    """Record the job's state in etcd whenever retention runs; after(): then fail."""
    from netplugin.backup import runner as runner_mod
    real, seen = runner_mod.retention.prune, []

    def prune(store, target, *args, **kw):
        seen.append([j.state for j in rig.store.list_jobs() if j.state not in (QUEUED,)][-1])
        report = real(store, target, *args, **kw)
        if after:
            after()
        return report
    monkeypatch.setattr(runner_mod.retention, "prune", prune)
    return seen


def test_retention_runs_only_after_the_success_is_recorded(rig, monkeypatch):
    first = rig.backup(keep_last=1)
    seen = _spy_prune(monkeypatch, rig)
    second = rig.backup(keep_last=1)
    assert seen == [SUCCEEDED]                     # in etcd before a single file was deleted
    assert second.state == SUCCEEDED and second.result["pruned"] == [first.result["backup"]]
    assert rig.store.get(second.id)[0].result["pruned"] == [first.result["backup"]]


def test_an_etcd_error_after_pruning_leaves_the_job_succeeded(rig, monkeypatch):
    first = rig.backup(keep_last=1)

    def etcd_down():
        raise ConnectionError("etcd: connection refused")
    _spy_prune(monkeypatch, rig, after=etcd_down)
    second = rig.backup(keep_last=1)
    stored = rig.store.get(second.id)[0]
    assert stored.state == SUCCEEDED, stored.message
    assert "skipped: ConnectionError" in stored.result["pruned"][0]
    assert [b.name for b in rig.store.backups("prod-db")] == [second.result["backup"]]
    assert not any(f.startswith(first.result["backup"]) for f in rig.files())


def test_no_pruning_when_the_success_cannot_be_recorded(rig, monkeypatch):
    first = rig.backup(keep_last=1)
    seen = _spy_prune(monkeypatch, rig)
    real_update = rig.store.update

    def update(job_id, change, tries=8):
        def guarded(j):
            change(j)
            if j.state == SUCCEEDED:
                raise ConnectionError("etcd: connection refused")
        return real_update(job_id, guarded, tries)
    monkeypatch.setattr(rig.store, "update", update)
    second = rig.run(rig.job(keep_last=1, max_age=0))
    assert seen == [] and second.state != SUCCEEDED
    assert first.result["backup"] in [b.name for b in rig.store.backups("prod-db")]
    assert any(f.startswith(first.result["backup"]) for f in rig.files())


def test_a_failed_backup_never_prunes(rig):
    good = rig.backup(keep_last=1)
    rig.docker.behaviour = wrong_password
    bad = rig.backup(keep_last=1, max_age=0)
    assert bad.state == FAILED
    assert [b.name for b in rig.store.backups("prod-db")] == [good.result["backup"]]


# -- restore -----------------------------------------------------------------------------------

def test_restore_verifies_rows_and_checksums_against_the_manifest(rig):
    b = rig.backup()
    rig.docker.behaviours[RESTORE] = restore_ok
    job = rig.run(rig.job(kind=RESTORE, target="dr-db", network="dr", database="shop_dr", backup=b.result["backup"],
                          limits={"read_bps": 1 << 20}))
    assert job.state == SUCCEEDED, job.message
    assert job.result["tables_verified"] == 2 and job.result["rows_verified"] == 5
    params = open(os.path.join(rig.cfg.work_dir, job.id, "params")).read()
    assert "SHA256=" in params and "DIRECT=1" in params
    mounts = {m["Target"]: m for m in rig.docker.containers[job.container].host_config["Mounts"]}
    assert mounts["/backup"]["ReadOnly"] is True


@pytest.mark.parametrize("restored,why", [
    ("a\tInnoDB\t3\t123456789\nb\tInnoDB\t1\t987654321\n", "has 1 rows"),
    ("a\tInnoDB\t3\t123456789\nb\tInnoDB\t2\t111\n", "checksum"),
    ("a\tInnoDB\t3\t123456789\n", "missing"),
])
def test_restore_with_different_data_fails(rig, restored, why):
    b = rig.backup()
    rig.docker.behaviours[RESTORE] = restore_with(restored)
    job = rig.run(rig.job(kind=RESTORE, target="dr-db", network="dr", backup=b.result["backup"]))
    assert job.state == FAILED and why in job.message


def test_backup_params_bound_the_read_lock(rig):
    rig.cfg.lock_timeout = 7.5
    job = rig.backup()
    params = open(os.path.join(rig.cfg.work_dir, job.id, "params")).read()
    assert "LOCK_TIMEOUT=7\n" in params


def test_a_backup_without_snapshot_checksums_fails(rig):
    """Checksums asked for but not recorded: the backup is not catalogued."""
    def no_checksums(c, job_dir, volume, docker):
        write_dump(job_dir, volume)
        os.unlink(os.path.join(job_dir, "out", "checksums"))
        open(os.path.join(job_dir, "out", "done"), "w").write("ok\n")
        return 0
    rig.docker.behaviour = no_checksums
    job = rig.backup()
    assert job.state == FAILED and "no checksums" in job.message
    assert rig.store.backups("prod-db") == [] and rig.files() == []


def test_every_table_of_a_backup_is_compared_at_restore(rig):
    """Every table's checksum comes from the dump's snapshot: none is skipped, even a
    non-transactional one, whose difference is explained."""
    def with_myisam(c, job_dir, volume, docker):
        write_dump(job_dir, volume, checksums=CHECKSUMS + "c\tMyISAM\t4\t42\n")
        open(os.path.join(job_dir, "out", "done"), "w").write("ok\n")
        return 0
    rig.docker.behaviour = with_myisam
    b = rig.backup()
    assert b.state == SUCCEEDED and b.result["not_transactional"] == ["c"]
    assert "engines outside the snapshot: c" in b.message
    rig.docker.behaviours[RESTORE] = restore_with(CHECKSUMS + "c\tMyISAM\t4\t42\n")
    job = rig.run(rig.job(kind=RESTORE, target="dr-db", network="dr", backup=b.result["backup"]))
    assert job.state == SUCCEEDED and job.result["tables_verified"] == 3 and job.result["unverifiable"] == []
    assert "warning" not in job.result and "WARNING" not in job.message
    rig.docker.behaviours[RESTORE] = restore_with(CHECKSUMS + "c\tMyISAM\t5\t43\n")
    job = rig.run(rig.job(kind=RESTORE, target="dr-db2", network="dr", backup=b.result["backup"]))
    assert job.state == FAILED and "table c has 5 rows" in job.message and "outside the snapshot" in job.message


def test_a_format_1_manifest_with_changed_tables_is_flagged_not_verified(rig):
    """Backups made before checksums shared the dump's snapshot: tables that changed
    during them cannot be compared, and the restore says so loudly."""
    b = rig.backup()
    path = os.path.join(rig.docker.volumes["backups"]["Mountpoint"], "prod-db", b.result["backup"] + ".manifest.json")
    data = json.load(open(path))
    data["format"] = 1
    for name, t in data["tables"].items():
        t.pop("transactional")
        t["consistent"] = name != "b"
    json.dump(data, open(path, "w"))
    rig.docker.behaviours[RESTORE] = restore_with("a\tInnoDB\t3\t123456789\nb\tInnoDB\t2\t5\n")
    job = rig.run(rig.job(kind=RESTORE, target="dr-db", network="dr", backup=b.result["backup"]))
    assert job.state == SUCCEEDED and job.result["unverifiable"] == ["b"] and job.result["tables_verified"] == 1
    assert "NOT verified" in job.result["warning"] and "WARNING" in job.message


def test_restore_of_a_damaged_manifest_fails(rig):
    b = rig.backup()
    base = rig.docker.volumes["backups"]["Mountpoint"]
    path = os.path.join(base, "prod-db", b.result["backup"] + ".manifest.json")
    data = json.load(open(path))
    data["sha256"] = "0" * 64
    json.dump(data, open(path, "w"))
    job = rig.run(rig.job(kind=RESTORE, target="dr-db", network="dr", backup=b.result["backup"]))
    assert job.state == FAILED and "does not match the catalog" in job.message


# -- adoption ----------------------------------------------------------------------------------

def _start_only(rig, job):
    """Run a job up to running, then drop its runner, as if the agent died."""
    from netplugin.backup.runner import _Ctx
    ctx = _Ctx(job)
    runner = rig.runner()
    runner._prepare(ctx)
    runner._create_and_start(ctx)
    assert ctx.gate_open
    return ctx


def test_adopting_a_running_job_waits_for_it_and_verifies(rig):
    rig.docker.behaviour = backup_slow(0.3)
    job = rig.job()
    _start_only(rig, job)
    assert rig.store.get(job.id)[0].state == RUNNING
    final = rig.runner().adopt(rig.store.get(job.id)[0])
    assert final.state == SUCCEEDED, final.message
    assert len(rig.files()) == 2 and not any(f.endswith(".partial") for f in rig.files())


class AgentKilled(BaseException):
    """The agent's process dying mid-step: nothing of the runner's catches it."""


def _killed_while_starting(rig, job, where="start"):
    """Run job until the agent dies: before docker start (the container
    created, never started), or after it (started, limits not checked)."""
    runner = rig.runner()
    start, applied = rig.docker.start, rig.env.applied
    if where == "start":
        def die(ctx):
            raise AgentKilled
        runner._attach = die              # the container is made and recorded, not started
    else:
        def die_after(pid, device):
            raise AgentKilled
        runner.env.applied = die_after
    with pytest.raises(AgentKilled):
        runner.run(job)
    rig.docker.start, rig.env.applied = start, applied
    found = rig.store.get(job.id)[0]
    assert found.state == STARTING
    return found


def _requeued_then_admitted(rig, job):
    found, rev = rig.store.get(job.id)
    assert found.state == QUEUED
    assert rig.store.queued("h1") == [job.id]
    again = rig.store.admit(found, rev, 0, time.time(), found.job_spec.timeout)
    assert again is not None
    return again


def test_adopting_a_starting_job_whose_container_never_started_queues_it_again_then_it_succeeds(rig):
    job = rig.job()
    found = _killed_while_starting(rig, job)
    assert found.container and len(rig.docker.containers) == 1
    queued = rig.runner().adopt(found)
    assert queued.state == QUEUED and queued.start_attempts == 1
    assert "attempt 1 of 3 interrupted while starting" in queued.message and "nothing ran" in queued.message
    assert rig.docker.containers == {}                      # the leftover is removed: its name would collide
    assert rig.store.slots("h1") == {} and rig.store.lock_holder(job.lock_key) is None
    assert rig.kv.get(rig.store.k_job_lease(job.id)) is None
    final = rig.run(_requeued_then_admitted(rig, job))
    assert final.state == SUCCEEDED, final.message
    assert states(final) == [QUEUED, STARTING, QUEUED, STARTING, RUNNING, VERIFYING, SUCCEEDED]
    assert final.start_attempts == 1 and len(rig.files()) == 2


def test_adopting_a_starting_job_with_no_container_yet_queues_it_again(rig):
    job = rig.job()                                         # admitted; the agent died before create
    queued = rig.runner().adopt(job)
    assert queued.state == QUEUED and rig.store.queued("h1") == [job.id]
    assert rig.store.slots("h1") == {} and rig.store.lock_holder(job.lock_key) is None


def test_a_job_interrupted_while_starting_too_often_fails_saying_so(rig):
    job = rig.job()
    for attempt in (1, 2):
        found = _killed_while_starting(rig, job)
        assert rig.runner().adopt(found).state == QUEUED
        job = _requeued_then_admitted(rig, job)
        assert job.start_attempts == attempt
    found = _killed_while_starting(rig, job)
    final = rig.runner().adopt(found)
    rig.store.release(final)
    assert final.state == FAILED
    assert "starting 3 times" in final.message and "at most 3 attempts" in final.message
    assert rig.docker.containers == {} and rig.store.queued("h1") == []
    assert rig.store.slots("h1") == {} and rig.store.lock_holder(job.lock_key) is None


def test_adopting_a_starting_job_whose_container_started_fails_it_as_before(rig):
    job = rig.job()
    found = _killed_while_starting(rig, job, where="after start")
    rig.docker.kill(found.container)                         # it ended since: only StartedAt tells it ran
    rig.docker.containers[found.container].pid = 0
    final = rig.runner().adopt(found)
    assert final.state == FAILED and "cannot be proven that nothing ran" in final.message
    assert rig.store.queued("h1") == [] and states(final)[-2:] == [STARTING, FAILED]


def test_a_starting_job_whose_container_is_not_its_own_is_not_queued_again(rig):
    job = rig.job()
    found = _killed_while_starting(rig, job)
    c = rig.docker.containers[found.container]
    c.labels = {**c.labels, "netplugin.backup.job": "another-job"}
    final = rig.runner().adopt(found)
    assert final.state == FAILED and rig.store.queued("h1") == []
    assert found.container in rig.docker.containers          # not ours: never removed


def test_adopting_a_job_whose_container_vanished_fails(rig):
    rig.docker.behaviour = backup_slow(0.2)
    job = rig.job()
    ctx = _start_only(rig, job)
    rig.docker.kill(ctx.container)
    del rig.docker.containers[ctx.container]
    final = rig.runner().adopt(rig.store.get(job.id)[0])
    assert final.state == FAILED and "gone" in final.message
    assert rig.files() == []


def test_adopting_a_job_caught_between_rename_and_end_finishes_it(rig):
    """The agent stopped after renaming the dump, before recording success."""
    job = rig.backup()
    name = job.result["backup"]
    rig.store.remove_backup(rig.store.find_backup(name))
    # Rewind the record to verifying, as the dead agent left it.
    def rewind(j):
        j.state, j.result = "verifying", {}
    rig.store.update(job.id, rewind)
    final = rig.runner().adopt(rig.store.get(job.id)[0])
    assert final.state == SUCCEEDED and "after the agent restarted" in final.message
    assert rig.store.find_backup(name).size == 4096


# -- restore: staging, swap, the source server ------------------------------------------------

def test_restore_writes_what_the_load_must_match_and_names_its_staging_schemas(rig):
    """The job script gets the manifest's tables and checksums to check the
    staged load against before any swap, and the staging schemas' names."""
    b = rig.backup()
    rig.docker.behaviours[RESTORE] = restore_ok
    job = rig.run(rig.job(kind=RESTORE, target="dr-db", network="dr", database="shop", backup=b.result["backup"],
                          replace=True))
    assert job.state == SUCCEEDED, job.message
    folder = os.path.join(rig.cfg.work_dir, job.id)
    assert open(os.path.join(folder, "expected_tables")).read() == "a\nb\n"
    assert open(os.path.join(folder, "expected_checksums")).read() == "a\t3\t123456789\nb\t2\t987654321\n"
    params = open(os.path.join(folder, "params")).read()
    short = job.id.rsplit("-", 1)[1]
    assert f"STAGE=shop__drctl_stage_{short}" in params and f"OLD=shop__drctl_old_{short}" in params
    assert "REPLACE=1" in params


def test_restore_reports_the_swap_and_schemas_it_could_not_drop(rig):
    b = rig.backup()

    def swapped(c, job_dir, volume, docker):
        restore_ok(c, job_dir, volume, docker)
        with open(os.path.join(job_dir, "out", "swap"), "w") as fh:
            fh.write("in=2 out=3\n")
        with open(os.path.join(job_dir, "out", "left_schemas"), "w") as fh:
            fh.write("shop__drctl_old_abc\n")
        return 0
    rig.docker.behaviours[RESTORE] = swapped
    job = rig.run(rig.job(kind=RESTORE, target="dr-db", network="dr", backup=b.result["backup"], replace=True))
    assert job.state == SUCCEEDED, job.message
    assert job.result["swapped"] == {"tables_in": 2, "tables_out": 3}
    assert job.result["left_schemas"] == ["shop__drctl_old_abc"]
    assert "drop them by hand" in job.result["warning"] and "WARNING" in job.message


def test_restore_into_the_source_server_needs_into_source(rig):
    """The backup was read from prod@10.10.0.5:3306: a restore there is refused
    before anything runs, unless asked for explicitly."""
    b = rig.backup()
    rig.docker.behaviours[RESTORE] = restore_ok
    job = rig.run(rig.job(kind=RESTORE, target="prod-db2", network="prod", backup=b.result["backup"], replace=True))
    assert job.state == FAILED and "needs --into-source" in job.message
    assert job.container == ""                                        # nothing was started
    job = rig.run(rig.job(kind=RESTORE, target="prod-db3", network="prod", backup=b.result["backup"], replace=True,
                          into_source=True))
    assert job.state == SUCCEEDED, job.message


def test_a_physical_job_caught_starting_is_not_queued_again(rig):
    """Its start may have asked another host for a sender: failed as before."""
    job = rig.job()
    rig.store.update(job.id, lambda j: j.spec.update(method="physical", db_host_id="h2", data_volume="pgdata"))
    final = rig.runner().adopt(rig.store.get(job.id)[0])
    assert final.state == FAILED and rig.store.queued("h1") == [], final.message
    assert "cannot be proven that nothing ran" in final.message
