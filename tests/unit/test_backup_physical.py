"""Physical backups without Docker or a server: reading mariadb-backup's
files, the chain a restore prepares and an incremental's base, retention
that never breaks a kept chain, and what reaches a container's command
line, mounts and params (validated), over the fakes."""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import threading
import time

import pytest

from netplugin.backup import physical, physical_chain, retention, trust
from netplugin.backup.config import BackupConfig
from netplugin.backup.model import BACKUP, RESTORE, Backup
from netplugin.backup.physical import SENT, Sender
from netplugin.backup.physical_sender import Senders
from netplugin.backup.store import BackupStore
from netplugin.errors import InvalidRequest, NotFound, StoreUnavailable

from .backup_fakes import FakeDocker, FakeHostEnv, backup_slow, zstd_frame
from .fakes import MemoryKV
from .test_backup_runner import Rig

CHECKPOINTS = "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 44744\nlast_lsn = 884858\nrecover_binlog_info = 0\n"
INC_CHECKPOINTS = "backup_type = incremental\nfrom_lsn = 44744\nto_lsn = 90210\nlast_lsn = 91000\n"
INFO = """tool_name = mariadb-backup
binlog_pos = filename 'mariadb-bin.000003', position '618524', GTID of the last change '0-1-7'
innodb_from_lsn = 0
"""
SHA = "a" * 64


# -- reading mariadb-backup's files ----------------------------------------------------------
def test_checkpoints_are_parsed_and_checked():
    assert physical.parse_checkpoints(CHECKPOINTS) == {"backup_type": "full-backuped", "from_lsn": 0,
                                                       "to_lsn": 44744, "last_lsn": 884858}
    assert physical.parse_checkpoints(INC_CHECKPOINTS)["from_lsn"] == 44744
    with pytest.raises(InvalidRequest, match="lacks to_lsn"):
        physical.parse_checkpoints("backup_type = full-backuped\nfrom_lsn = 0\nlast_lsn = 5\n")
    with pytest.raises(InvalidRequest, match="not a number"):
        physical.parse_checkpoints(CHECKPOINTS.replace("44744", "44744;reboot"))
    with pytest.raises(InvalidRequest, match="backup_type"):
        physical.parse_checkpoints(CHECKPOINTS.replace("full-backuped", "log-applied"))
    with pytest.raises(InvalidRequest, match="after to_lsn"):
        physical.parse_checkpoints(INC_CHECKPOINTS.replace("from_lsn = 44744", "from_lsn = 99999"))


def test_binlog_coordinates_come_from_xtrabackup_info_or_the_log_line():
    assert physical.parse_binlog(INFO) == {"file": "mariadb-bin.000003", "pos": 618524, "gtid": "0-1-7"}
    line = "[00] 2026-12-04 04:19:42 MySQL binlog position: filename 'b.000001', position '382692'"
    assert physical.parse_binlog(line) == {"file": "b.000001", "pos": 382692, "gtid": None}
    assert physical.parse_binlog("tool_name = mariadb-backup\n") is None        # a server without a binlog
    with pytest.raises(InvalidRequest, match="not a plain file name"):
        physical.parse_binlog("binlog_pos = filename '../../etc/passwd', position '4'")
    with pytest.raises(InvalidRequest, match="GTID"):
        physical.parse_binlog("binlog_pos = filename 'b.1', position '4', GTID of the last change 'x; DROP'")


def test_checksums_are_exact_only_at_the_backups_binlog_position():
    snap = physical.parse_snapshot("Binlog_snapshot_file\tmariadb-bin.000003\nBinlog_snapshot_position\t618524\n")
    assert snap == {"file": "mariadb-bin.000003", "pos": 618524}
    binlog = physical.parse_binlog(INFO)
    assert physical.checksum_point(binlog, snap, True)["exact"] is True
    assert physical.checksum_point(binlog, dict(snap, pos=1), True)["exact"] is False     # a commit in between
    assert physical.checksum_point(None, None, True)["exact"] is True      # no binlog: the stop at BLOCK_COMMIT
    assert physical.checksum_point(None, None, False)["exact"] is False
    assert physical.parse_snapshot("") is None


# -- chains ----------------------------------------------------------------------------------
def bk(name: str, created: float, parent: str = "", method: str = "physical", target: str = "db") -> Backup:
    ext = ".mbstream.zst" if method == "physical" else ".sql.zst"
    return Backup(name=name, target=target, database="shop", volume="bk", path=f"{target}/{name}{ext}",
                  manifest_path=f"{target}/{name}.manifest.json", size=1000, sha256=SHA, created=created,
                  host="h1", job=f"job-{name}", method=method, parent=parent)


def test_the_chain_is_the_full_backup_then_each_incremental_in_order():
    b = [bk("f1", 1), bk("i1", 2, "f1"), bk("i2", 3, "i1"), bk("f2", 4), bk("i3", 5, "f2"), bk("l1", 6, "", "logical")]
    assert [x.name for x in physical_chain.chain(b, "i2")] == ["f1", "i1", "i2"]
    assert [x.name for x in physical_chain.chain(b, "f2")] == ["f2"]
    assert [x.name for x in physical_chain.chain(b, "i3")] == ["f2", "i3"]
    with pytest.raises(InvalidRequest, match="not a physical backup"):
        physical_chain.chain(b, "l1")
    with pytest.raises(NotFound, match="broken: its base f1"):
        physical_chain.chain([x for x in b if x.name != "f1"], "i2")
    with pytest.raises(InvalidRequest, match="loops"):
        physical_chain.chain([bk("a", 1, "b"), bk("b", 2, "a")], "a")
    with pytest.raises(InvalidRequest, match="backup of other"):
        physical_chain.chain([bk("f", 1, target="other"), bk("i", 2, "f")], "i")


def test_an_incremental_is_taken_against_the_newest_physical_backup_of_its_target():
    b = [bk("f1", 1), bk("i1", 2, "f1"), bk("l1", 9, method="logical"), bk("x", 10, target="other")]
    assert physical_chain.newest_base(b, "db").name == "i1"
    with pytest.raises(NotFound, match="run a full one first"):
        physical_chain.newest_base([bk("l1", 9, method="logical")], "db")


# -- retention never breaks a kept chain --------------------------------------------------------
def test_retention_keeps_the_bases_a_kept_incremental_needs():
    now = 100 * 86400.0
    b = [bk("f1", now - 50), bk("i1", now - 40, "f1"), bk("i2", now - 30, "i1"), bk("f2", now - 20),
         bk("i3", now - 10, "f2")]
    p = retention.plan(b, keep_last=1, max_age=None, now=now)
    assert {x.name for x in p.keep} == {"i3", "f2"}              # i3 needs f2; the older chain may go
    assert {x.name for x in p.delete} == {"f1", "i1", "i2"}
    assert "the chain of i3 needs it" in p.reasons["f2"]
    p = retention.plan(b, keep_last=3, max_age=None, now=now)     # keeps i2: its whole chain stays
    assert {x.name for x in p.keep} == {"i3", "f2", "i2", "i1", "f1"}
    p = retention.plan(b, keep_last=None, max_age=25, now=now, tiers=retention.Tiers(daily=1))
    assert {x.name for x in p.keep} >= {"i3", "f2"}


def test_retention_over_random_chains_never_deletes_a_kept_backups_ancestor():
    rnd = random.Random(18)
    for _ in range(300):
        now, backups = 1000.0, []
        for i in range(rnd.randint(1, 12)):
            physical_ones = [x for x in backups if x.method == "physical"]
            kind = rnd.random()
            if kind < 0.2:
                backups.append(bk(f"l{i}", float(i), method="logical"))
            elif kind < 0.45 or not physical_ones:
                backups.append(bk(f"f{i}", float(i)))
            else:
                backups.append(bk(f"i{i}", float(i), rnd.choice(physical_ones).name))
        p = retention.plan(backups, keep_last=rnd.choice([None, 1, 2, 3]), max_age=rnd.choice([None, 3.0, 990.0]),
                           now=now, tiers=rnd.choice([None, retention.Tiers(daily=1)]))
        kept = {x.name for x in p.keep}
        assert len(kept) + len(p.delete) == len(backups)
        assert max(backups, key=lambda x: (x.created, x.name)).name in kept
        for x in p.keep:
            if x.method == "physical":
                assert {c.name for c in physical_chain.chain(backups, x.name)} <= kept, (x.name, kept)


# -- what reaches a container: validated -----------------------------------------------------
def spec(**kw) -> dict:
    base = {"network": "prod", "db_host": "10.0.0.5", "option_file": "/etc/drctl/a.cnf", "volume": "bk",
            "database": "shop", "method": "physical", "data_volume": "db-data", "db_host_id": "host-a"}
    return {**base, **kw}


@pytest.mark.parametrize(("kind", "fields", "why"), [
    (BACKUP, {"data_volume": "../../etc"}, "data volume"),
    (BACKUP, {"data_volume": "bk"}, "must differ"),
    (BACKUP, {"db_host_id": "a/b"}, "host"),
    (BACKUP, {"method": "rsync"}, "logical or physical"),
    (BACKUP, {"incremental": "yes"}, "true or false"),
    (BACKUP, {"server_image": "x"}, "no server image"),
    (BACKUP, {"method": "logical", "incremental": True, "data_volume": "", "db_host_id": ""}, "logical job"),
    (RESTORE, {"backup": "db-1", "db_host_id": "", "replace": True}, "fresh server"),
    (RESTORE, {"backup": "db-1", "db_host_id": "", "server_image": "evil/image:1"}, "not allowed"),
])
def test_a_physical_spec_with_a_bad_field_is_refused(kind, fields, why):
    with pytest.raises(InvalidRequest, match=why):
        trust.check_spec(kind, spec(**fields), BackupConfig())


def test_a_good_physical_spec_and_catalog_record_pass():
    trust.check_spec(BACKUP, spec(incremental=True), BackupConfig())
    trust.check_spec(RESTORE, spec(backup="db-1", db_host_id=""), BackupConfig())
    trust.check_backup(bk("f1", 1))
    with pytest.raises(InvalidRequest, match="path"):
        trust.check_backup(Backup(**{**bk("f1", 1).__dict__, "path": "db/f1.sql.zst"}))
    with pytest.raises(InvalidRequest, match="parent"):
        trust.check_backup(bk("i1", 2, parent="../f1"))


def sender(**kw) -> Sender:
    base = {"job": "20261204-040000-abc123", "host": "host-a", "network": "prod", "db_host": "10.0.0.5",
            "db_port": 3306, "database": "shop", "data_volume": "db-data", "option_file": "/etc/drctl/a.cnf",
            "image": "netplugin/mariadb-tools:10.11", "recv_host": "10.0.0.9"}
    return Sender(**{**base, **kw})


@pytest.mark.parametrize(("fields", "why"), [
    ({"recv_host": "10.0.0.9; sh"}, "not IPv4"),
    ({"data_volume": "/var/lib/mysql"}, "data volume"),
    ({"database": "shop`; DROP"}, "database"),
    ({"db_port": 0}, "not a port"),
    ({"job": "../x"}, "job id"),
    ({"base_checkpoints": "to_lsn = 1; rm -rf /"}, "checkpoints"),
    ({"state": "running"}, "sender state"),
])
def test_a_sender_record_with_a_bad_field_is_refused(fields, why):
    with pytest.raises(InvalidRequest, match=why):
        physical.check_sender(sender(**fields))


def test_the_prepare_chain_file_takes_plain_paths_and_hashes_only():
    assert physical.chain_file([("db/f1.mbstream.zst", 10, SHA)]) == f"db/f1.mbstream.zst\t10\t{SHA}\n"
    for rel, sha in (("../etc/passwd", SHA), ("/etc/passwd", SHA), ("db/a\tb", SHA), ("db/f1", "xyz")):
        with pytest.raises(InvalidRequest):
            physical.chain_file([(rel, 10, sha)])


class SenderDocker(FakeDocker):
    """FakeDocker whose containers need no /backup mount (a sender has none)."""

    def _mount(self, c, target):
        try:
            return super()._mount(c, target)
        except AssertionError:
            return ""


def fake_sender(c, job_dir, volume, docker):
    """What physical.SENDER leaves in /job/out when mariadb-backup succeeded."""
    out = os.path.join(job_dir, "out")
    files = {"status": "backup=0 compress=0 tee=0 send=0 sha256=0 count=0\n", "sha256": f"{SHA}  -\n",
             "bytes": "4096\n", "checkpoints": INC_CHECKPOINTS, "info": INFO, "in_block_commit": "1\n",
             "snapshot": "Binlog_snapshot_file\tmariadb-bin.000003\nBinlog_snapshot_position\t618524\n",
             "checksums": "orders\tInnoDB\t10\t12345\n", "point_time": "1796357982\n", "done": "ok\n"}
    for name, text in files.items():
        with open(os.path.join(out, name), "w") as fh:
            fh.write(text)
    return 0


def sender_options(tmp_path, text: str = "[client]\n", **cfg_kw) -> tuple:
    """An option file of mode 600 in the allowed folder, and the agent's settings: (path, cfg)."""
    options = tmp_path / "etc"
    options.mkdir()
    cnf = options / "a.cnf"
    cnf.write_text(text)
    cnf.chmod(0o600)
    cfg = BackupConfig(work_dir=str(tmp_path / "work"), option_dir=str(options), **cfg_kw)
    os.makedirs(cfg.work_dir)
    return cnf, cfg


def test_the_sender_container_reads_the_data_volume_read_only_with_validated_params(tmp_path):
    docker = SenderDocker(str(tmp_path))
    docker.create_volume("db-data")
    docker.behaviours["/job/bin/job.sh"] = fake_sender
    cnf, cfg = sender_options(tmp_path, "[client]\nuser=backup\n", profile_wait=1)
    store = BackupStore(MemoryKV())
    store.request_sender(sender(option_file=str(cnf), base_checkpoints=CHECKPOINTS, limits={"cpus": 1.0}))
    senders = Senders(store, docker, cfg, "host-a", env=FakeHostEnv(docker))
    assert senders.tick(time.time()) == ["20261204-040000-abc123"]
    assert senders.tick(time.time()) == []                     # claimed once: requested -> sending
    senders.join(10)
    rec = store.get_sender("host-a", "20261204-040000-abc123")
    assert rec is not None and rec.state == SENT, rec
    assert rec.outputs["checkpoints"] == INC_CHECKPOINTS and rec.outputs["done"].strip() == "ok"
    assert rec.outputs["point_time"].strip() == "1796357982"
    assert not docker.containers                                 # removed once recorded
    folder = tmp_path / "work" / "20261204-040000-abc123-send"
    params = dict(line.split("=", 1) for line in (folder / "params").read_text().splitlines())
    values = {k: shlex.split(v)[0] for k, v in params.items()}
    assert values.items() >= {"DB_HOST": "10.0.0.5", "RECV_HOST": "10.0.0.9", "DATABASE": "shop",
                              "INCREMENTAL": "1", "DATA": "/var/lib/mysql"}.items()
    assert (folder / "base" / "xtrabackup_checkpoints").read_text() == CHECKPOINTS
    assert "--incremental-basedir=/job/base" in physical.SENDER and "--stream=mbstream" in physical.SENDER


def killed_agent_left_a_sender(tmp_path, gate: bool = True, behaviour=fake_sender):
    """A sender claimed and started by an agent of host-a that was killed
    right after (its container runs, nobody follows it): (docker, store, cfg, record)."""
    docker = SenderDocker(str(tmp_path))
    docker.create_volume("db-data")
    hold = threading.Event()

    def held(c, job_dir, volume, d):
        hold.wait(10)
        return behaviour(c, job_dir, volume, d)
    docker.behaviours["/job/bin/job.sh"] = held
    cnf, cfg = sender_options(tmp_path, profile_wait=1)
    store = BackupStore(MemoryKV())
    store.request_sender(sender(option_file=str(cnf)))
    killed = Senders(store, docker, cfg, "host-a", env=FakeHostEnv(docker))
    claimed = store.update_sender("host-a", sender().job, Senders._claim)
    cid = killed._start(claimed)                   # started and let go, then the agent died
    if not gate:
        os.unlink(tmp_path / "work" / f"{sender().job}-send" / "go")
    hold.set()
    return docker, store, cfg, cid


def test_the_next_agent_adopts_a_sender_a_killed_agent_let_go_and_records_its_end(tmp_path):
    docker, store, cfg, cid = killed_agent_left_a_sender(tmp_path)
    assert store.get_sender("host-a", sender().job).state == physical.SENDING
    agent = Senders(store, docker, cfg, "host-a", env=FakeHostEnv(docker))
    assert agent.tick(time.time()) == []            # adopted, not started again
    agent.join(10)
    rec = store.get_sender("host-a", sender().job)
    assert rec is not None and rec.state == SENT and rec.container == cid, rec
    assert rec.outputs["done"].strip() == "ok"
    assert not docker.containers                     # no sender container outlives its record's end
    agent.tick(time.time())
    assert len(agent.threads) == 1                  # followed once


def test_a_sender_never_let_go_or_whose_container_is_gone_fails_saying_so(tmp_path):
    docker, store, cfg, cid = killed_agent_left_a_sender(tmp_path / "a", gate=False)
    agent = Senders(store, docker, cfg, "host-a", env=FakeHostEnv(docker))
    agent.tick(time.time())
    agent.join(10)
    rec = store.get_sender("host-a", sender().job)
    assert rec.state == physical.SEND_FAILED and "before the sender was let go" in rec.message, rec
    assert not docker.containers
    docker, store, cfg, cid = killed_agent_left_a_sender(tmp_path / "b")
    docker.remove_container(cid, force=True)
    agent = Senders(store, docker, cfg, "host-a", env=FakeHostEnv(docker))
    agent.tick(time.time())
    agent.join(10)
    rec = store.get_sender("host-a", sender().job)
    assert rec.state == physical.SEND_FAILED and "its container is gone" in rec.message, rec


def test_the_sender_container_is_created_locked_down(tmp_path):
    docker = SenderDocker(str(tmp_path))
    docker.create_volume("db-data")
    seen = {}

    def hold(c, job_dir, volume, d):
        seen.update(host_config=c.host_config, command=c.command, user=c.user)
        return fake_sender(c, job_dir, volume, d)
    docker.behaviours["/job/bin/job.sh"] = hold
    cnf, cfg = sender_options(tmp_path)
    store = BackupStore(MemoryKV())
    store.request_sender(sender(option_file=str(cnf)))
    senders = Senders(store, docker, cfg, "host-a", env=FakeHostEnv(docker))
    senders.tick(time.time())
    senders.join(10)
    hc = seen["host_config"]
    mounts = {m["Target"]: m for m in hc["Mounts"]}
    assert mounts["/var/lib/mysql"] == {"Type": "volume", "Source": "db-data", "Target": "/var/lib/mysql",
                                         "ReadOnly": True}
    assert mounts["/run/drctl/client.cnf"]["ReadOnly"] is True
    assert hc["CapDrop"] == ["ALL"] and hc["CapAdd"] == ["DAC_READ_SEARCH"] and hc["ReadonlyRootfs"] is True
    assert seen["command"] == ["/bin/bash", "/job/bin/job.sh"]
    assert "password" not in str(hc) and "password" not in str(seen["command"])


def test_a_sender_for_a_missing_data_volume_or_foreign_image_fails_saying_why(tmp_path):
    docker = SenderDocker(str(tmp_path))
    cnf, cfg = sender_options(tmp_path)
    store = BackupStore(MemoryKV())
    store.request_sender(sender(option_file=str(cnf)))
    store.request_sender(sender(job="20261204-040000-def456", option_file=str(cnf), image="evil/tools:1"))
    senders = Senders(store, docker, cfg, "host-a", env=FakeHostEnv(docker))
    senders.tick(time.time())
    senders.join(10)
    a = store.get_sender("host-a", "20261204-040000-abc123")
    b = store.get_sender("host-a", "20261204-040000-def456")
    assert a is not None and a.state == "failed" and "data volume db-data does not exist" in a.message
    assert b is not None and b.state == "failed" and "not allowed" in b.message
    assert not docker.containers


# -- the whole job over the fakes: receiver, sender, verification, catalog -----------------------
STREAM = zstd_frame(b"m" * 4086)          # what the fake mariadb-backup | zstd streams (4096 bytes)


class PhysRig:
    """A backup host h1 (the runner) and a data host host-a (its senders) on one fake Docker and etcd."""

    def __init__(self, tmp_path, agents=("host-a",), serve=True):
        self.rig = Rig(tmp_path)
        self.rig.docker = SenderDocker(str(tmp_path / "docker2"))
        self.rig.env = FakeHostEnv(self.rig.docker)
        self.rig.docker.create_volume("backups")
        self.rig.docker.create_volume("db-data")
        self.rig.store.agent_alive = lambda host: host in agents
        self.stream = STREAM
        self.sent: list[Sender] = []
        d = self.rig.docker
        d.behaviours["backup"] = self.receiver
        d.behaviours["/job/bin/job.sh"] = self.sender
        self.senders = Senders(self.rig.store, d, self.rig.cfg, "host-a", env=self.rig.env)
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        if serve:                                   # host-a's agent: its pass over its senders
            self.ticker.start()

    def _tick(self):
        while not self.stop.wait(0.05):
            self.senders.tick(time.time())

    def receiver(self, c, job_dir, volume, docker):
        """physical.RECEIVER: waits for the stream, writes it, hashes what it wrote."""
        with open(os.path.join(job_dir, "params")) as fh:
            params = {k: shlex.split(v)[0] for k, v in (line.split("=", 1) for line in fh.read().splitlines())}
        deadline = time.monotonic() + 10
        while not self.sent and time.monotonic() < deadline:
            if c.killed.wait(0.02):
                return 137
        rel = params["PARTIAL"][len("/backup/"):]
        os.makedirs(os.path.dirname(os.path.join(volume, rel)), exist_ok=True)
        with open(os.path.join(volume, rel), "wb") as fh:
            fh.write(self.stream)
        out = os.path.join(job_dir, "out")
        for name, text in (("status", "receive=0 tee=0 write=0 sha256=0 count=0\n"),
                           ("sha256", hashlib.sha256(self.stream).hexdigest() + "  -\n"),
                           ("bytes", f"{len(self.stream)}\n"), ("done", "ok\n")):
            with open(os.path.join(out, name), "w") as fh:
                fh.write(text)
        return 0

    def sender(self, c, job_dir, volume, docker):
        """physical.SENDER: streams STREAM (whatever the receiver got), records mariadb-backup's files."""
        rec = next(s for s, _ in self.rig.store.senders("host-a") if s.state == "sending")
        self.sent.append(rec)
        fake_sender(c, job_dir, volume, docker)
        base = rec.base_checkpoints
        points = INC_CHECKPOINTS.replace("44744", str(physical.parse_checkpoints(base)["to_lsn"])) if base \
            else CHECKPOINTS
        out = os.path.join(job_dir, "out")
        for name, text in (("checkpoints", points), ("sha256", hashlib.sha256(STREAM).hexdigest() + "  -\n"),
                           ("bytes", f"{len(STREAM)}\n"), ("checksums", "orders\tInnoDB\t10\t12345\n")):
            with open(os.path.join(out, name), "w") as fh:
                fh.write(text)
        time.sleep(0.1)
        return 0

    def job(self, **spec):
        return self.rig.run(self.rig.job(method="physical", data_volume="db-data", db_host_id="host-a",
                                         limits={"cpus": 1.0}, **spec))

    def close(self):
        self.stop.set()
        if self.ticker.is_alive():
            self.ticker.join(5)


@pytest.fixture
def phys(tmp_path):
    p = PhysRig(tmp_path)
    yield p
    p.close()


def test_a_physical_backup_and_its_incremental_are_catalogued_as_a_chain(phys):
    full = phys.job()
    assert full.state == "succeeded", full.message
    inc = phys.job(incremental=True)
    assert inc.state == "succeeded", inc.message
    catalog = {b.name: b for b in phys.rig.store.backups("prod-db")}
    f, i = catalog[full.result["backup"]], catalog[inc.result["backup"]]
    assert f.method == i.method == "physical" and f.parent == "" and i.parent == f.name
    assert i.path.endswith(".mbstream.zst") and i.sha256 == hashlib.sha256(STREAM).hexdigest()
    assert phys.sent[1].base_checkpoints == CHECKPOINTS          # the base's checkpoints went to the sender
    assert inc.result["lsn"]["from_lsn"] == full.result["lsn"]["to_lsn"] == 44744
    assert inc.result["binlog"] == {"file": "mariadb-bin.000003", "pos": 618524, "gtid": "0-1-7",
                                    "time": 1796357982}
    assert inc.result["checksums_exact"] is True
    assert [x.name for x in physical_chain.chain(list(catalog.values()), i.name)] == [f.name, i.name]
    assert phys.rig.store.senders("host-a") == []                 # records removed once read


def test_a_stream_that_differs_from_what_the_sender_sent_is_never_catalogued(phys):
    phys.stream = zstd_frame(b"n" * 4086)                         # a stranger's stream, or a damaged one
    job = phys.job()
    assert job.state == "failed" and "the sender streamed" in job.message, job.message
    assert phys.rig.store.backups() == [] and phys.rig.files() == []


def test_an_incremental_without_a_physical_base_fails_before_anything_moves(phys):
    job = phys.job(incremental=True)
    assert job.state == "failed" and "run a full one first" in job.message, job.message
    assert phys.sent == [] and phys.rig.store.senders("host-a") == []


def test_a_physical_backup_of_a_host_without_an_agent_fails_naming_it(tmp_path):
    p = PhysRig(tmp_path, agents=(), serve=False)
    p.rig.docker.behaviours["backup"] = backup_slow(30)
    try:
        job = p.job()
    finally:
        p.close()
    assert job.state == "failed" and "no drctl agent is running on host host-a" in job.message, job.message
    assert p.rig.store.backups() == []


def test_etcd_not_answering_for_a_moment_does_not_fail_a_physical_backup(phys):
    real, misses = phys.rig.store.get_sender, []

    def flaky(host, job_id):
        if len(misses) < 3:
            misses.append(job_id)
            raise StoreUnavailable("etcd did not answer (test)")
        return real(host, job_id)
    phys.rig.store.get_sender = flaky
    job = phys.job()
    assert len(misses) == 3
    assert job.state == "succeeded", job.message
