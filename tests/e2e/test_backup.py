"""drctl end to end: real dockerd, real MariaDB servers and job containers on
netplugin networks, the real agent as a process, etcd.

- a DR drill: a source database on prod (VLAN 100) with 120k generated rows,
  a backup to a named volume, a restore on dr (VLAN 200) into a fresh server
  through a 50 Mbit/s bandwidth profile, checksums equal on both sides;
- the per-host cap: 8 jobs, never more than 5 at once, all finish;
- limits in docker inspect and in the cgroup files, and direct-I/O writes of a
  job running at the configured write rate (within 20%);
- failures: a wrong password, a job cancelled and one expired mid-dump (their
  partial files removed), the volume surviving the job container;
- retention never deleting the last good backup.

Images: netplugin/mariadb:10.11 and netplugin/mariadb-tools:10.11 from
scripts/make-db-images.sh (run by scripts/test.sh).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness.daemon import Agent
from tests.harness.mariadb import shop_sql

from .conftest import ETCD, LABEL, docker, new_network, run

pytestmark = pytest.mark.e2e

SERVER_IMAGE = "netplugin/mariadb:10.11"
TOOLS_IMAGE = "netplugin/mariadb-tools:10.11"
PASSWORD = "Dr-" + secrets.token_hex(8)

SHOP_SQL = shop_sql(1, objects=True)
SHOP_TABLES = {"customers": 20000, "orders": 50000, "order_lines": 40000, "blobs": 10000}

SMALL_SQL = """
CREATE DATABASE IF NOT EXISTS small;
USE small;
CREATE TABLE small.items (id INT PRIMARY KEY, label VARCHAR(40), price DECIMAL(8,2)) ENGINE=InnoDB;
INSERT INTO small.items SELECT seq, CONCAT('item-', MD5(seq)), seq % 1000 / 10 FROM seq_1_to_20000;
"""

# Random bytes do not compress: the dump's size is known, so its write rate can be measured.
RANDOM_SQL = """
CREATE DATABASE IF NOT EXISTS noise;
USE noise;
CREATE TABLE noise.payload (id INT PRIMARY KEY, data VARBINARY(1024)) ENGINE=InnoDB;
INSERT INTO noise.payload SELECT seq, RANDOM_BYTES(1024) FROM seq_1_to_8192;
"""

# A source that is written to all the time: every loop commits to every table.
BUSY_SQL = """
CREATE DATABASE IF NOT EXISTS busy;
USE busy;
CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, note VARCHAR(64)) ENGINE=InnoDB;
INSERT INTO accounts SELECT seq, 1000, MD5(seq) FROM seq_1_to_20000;
CREATE TABLE events (id INT AUTO_INCREMENT PRIMARY KEY, account INT NOT NULL, amount INT, at DOUBLE) ENGINE=InnoDB;
INSERT INTO events (account, amount, at) SELECT 1 + seq % 20000, seq % 100, 0 FROM seq_1_to_20000;
CREATE TABLE payload (id INT PRIMARY KEY, data VARBINARY(1024)) ENGINE=InnoDB;
INSERT INTO payload SELECT seq, RANDOM_BYTES(1024) FROM seq_1_to_2048;
CREATE TABLE control (id INT PRIMARY KEY, stop TINYINT NOT NULL, loops BIGINT NOT NULL) ENGINE=InnoDB;
INSERT INTO control VALUES (1, 0, 0);
DELIMITER //
CREATE PROCEDURE churn() BEGIN
  DECLARE a INT;
  WHILE (SELECT stop FROM control WHERE id = 1) = 0 DO
    SET a = 1 + FLOOR(RAND() * 20000);
    UPDATE accounts SET balance = balance - 7, note = MD5(RAND()) WHERE id = a;
    INSERT INTO events (account, amount, at) VALUES (a, 7, UNIX_TIMESTAMP(NOW(6)));
    DELETE FROM events WHERE id = 1 + FLOOR(RAND() * 20000);
    UPDATE payload SET data = RANDOM_BYTES(1024) WHERE id = 1 + FLOOR(RAND() * 2048);
    UPDATE control SET loops = loops + 1 WHERE id = 1;
    DO SLEEP(0.002);
  END WHILE;
END//
DELIMITER ;
"""


class DR:
    """The agent process, the secrets, and helpers for one test."""

    def __init__(self, plugin, tmp: Path):
        self.plugin = plugin
        self.tmp = tmp
        self.volumes: list[str] = []
        self.init_sql = self._secret("db-init.sql", (
            f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{PASSWORD}';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n"))
        self.client_cnf = self._secret("client.cnf", f"[client]\nuser=root\npassword={PASSWORD}\n")
        self.bad_cnf = self._secret("bad.cnf", "[client]\nuser=root\npassword=not-the-password\n")
        self.env = dict(plugin.env, DRCTL_WORK_DIR=str(tmp / "work"), DRCTL_CONFIG=str(tmp / "none.toml"),
                        DRCTL_POLL="0.2", DRCTL_LEASE_TTL="10", DRCTL_OPTION_DIR=str(tmp))
        self.agent_log = tmp / "agent.log"
        self.agent = Agent(self.agent_log, self.env, ETCD, f"{plugin.prefix}/backup/agents/{plugin.host_id}")

    def _secret(self, name: str, text: str) -> str:
        path = self.tmp / name
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(text)
        return str(path)

    def start_agent(self) -> None:
        (self.tmp / "none.toml").write_text("")
        self.agent.start()

    def stop_agent(self) -> None:
        self.agent.stop()

    def drctl(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "netplugin.backup.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"drctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
                                 f"\nagent log:\n{self.agent.tail()}")
        return proc

    def job(self, job_id: str) -> dict:
        return json.loads(self.drctl("inspect", job_id).stdout)[0]

    def wait_job(self, job_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = self.job(job_id)
            if j["state"] in ("succeeded", "failed", "expired", "cancelled"):
                return j
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not end within {timeout} s: {self.job(job_id)}")

    def volume(self) -> str:
        name = "drtest-" + secrets.token_hex(4)
        self.volumes.append(name)
        return name

    def volume_path(self, name: str) -> Path:
        return Path(docker("volume", "inspect", "-f", "{{.Mountpoint}}", name).stdout.strip())

    def start_db(self, name: str, network: str, ip: str, sql: str | None = None) -> None:
        self.start_dbs([(name, ip)], network, sql)

    def start_dbs(self, servers: list[tuple[str, str]], network: str, sql: str | None = None) -> None:
        """Start (name, ip) servers at once, then wait for each and load sql."""
        for name, ip in servers:
            docker("run", "-d", "--label", LABEL, "--name", name, "--network", network, "--ip", ip,
                   "-v", f"{self.init_sql}:/run/secrets/db-init.sql:ro", SERVER_IMAGE)
        for name, _ in servers:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if docker("exec", name, "mariadb", "-uroot", "-e", "SELECT 1", check=False).returncode == 0:
                    break
                time.sleep(0.3)
            else:
                raise AssertionError(f"MariaDB {name} did not start:\n"
                                     f"{docker('logs', name, check=False).stderr[-2000:]}")
            if sql:
                self.sql(name, sql)

    def sql(self, container: str, text: str, db: str = "") -> str:
        proc = subprocess.run(["/usr/bin/docker", "exec", "-i", container, "mariadb", "-uroot", "--batch",
                               "--skip-column-names", *([db] if db else [])], input=text, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"SQL on {container} failed: {proc.stderr}"
        return proc.stdout

    def backup_args(self, target: str, network: str, db_host: str, database: str, volume: str, *extra: str,
                    option_file: str | None = None) -> list[str]:
        return ["run", "--target", target, "--network", network, "--db-host", db_host, "--database", database,
                "--option-file", option_file or self.client_cnf, "--volume", volume, "--label", LABEL, *extra]

    def close(self) -> None:
        self.stop_agent()
        ids = docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)
        for v in self.volumes:
            docker("volume", "rm", "-f", v, check=False)


@pytest.fixture
def dr(clean, tmp_path):
    docker("image", "inspect", SERVER_IMAGE)
    docker("image", "inspect", TOOLS_IMAGE)
    d = DR(clean, tmp_path)
    d.start_agent()
    yield d
    d.close()


class PortTags:
    """Samples the VLAN tag of every netplugin port on the switch, by endpoint id
    (the port's external_ids), while jobs come and go."""

    def __init__(self):
        self.tags: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            out = subprocess.run(["ovs-vsctl", "--format=json", "--columns=tag,external_ids", "list", "Port"],
                                 capture_output=True, text=True).stdout
            for tag, ext in (json.loads(out)["data"] if out.strip() else []):
                ids = dict(ext[1])
                if "np-endpoint" in ids and isinstance(tag, int):
                    self.tags[ids["np-endpoint"]] = tag
            time.sleep(0.05)

    def close(self) -> dict[str, int]:
        self.stop.set()
        self.thread.join(5)
        return self.tags


def table_facts(d: DR, container: str, db: str, tables) -> dict:
    """Row counts and CHECKSUM TABLE, asked of the server directly (not through drctl)."""
    out = {}
    for t in tables:
        count = d.sql(container, f"SELECT COUNT(*) FROM `{t}`", db).strip()
        checksum = d.sql(container, f"CHECKSUM TABLE `{t}` EXTENDED", db).split()[-1]
        out[t] = (int(count), checksum)
    return out


def test_dr_drill_backup_on_prod_restore_on_dr(dr):
    """Source on prod (VLAN 100), backup to a named volume, restore on dr (VLAN 200)
    into a fresh server through a bandwidth profile; the data is equal."""
    new_network("prod", "10.117.0.0/24", 100)
    new_network("dr", "10.127.0.0/24", 200)
    dr.start_db("dr-source", "prod", "10.117.0.10", SHOP_SQL)
    dr.start_db("dr-target", "dr", "10.127.0.10")
    volume = dr.volume()
    ports = PortTags()

    out = dr.drctl(*dr.backup_args("shop-prod", "prod", "10.117.0.10", "shop", volume, "--ip", "10.117.0.50",
                                   "--cpus", "1", "--memory", "512m", "--pids", "128", "--write-bps", "64m",
                                   "--wait", "--json"), check=False)
    backup = json.loads(out.stdout)
    assert backup["state"] == "succeeded", (backup["message"], backup["log_tail"])
    assert backup["ip"] == "10.117.0.50" and backup["exit_code"] == 0 and backup["oom_killed"] is False
    assert backup["result"]["rows"] == sum(SHOP_TABLES.values()) >= 100_000
    assert backup["result"]["tables"] == len(SHOP_TABLES) and backup["result"]["not_transactional"] == []

    # The file and its manifest, renamed from .partial, in the named volume.
    base = dr.volume_path(volume)
    name = backup["result"]["backup"]
    assert sorted(p.name for p in (base / "shop-prod").iterdir()) == [f"{name}.manifest.json", f"{name}.sql.zst"]
    manifest = json.loads((base / "shop-prod" / f"{name}.manifest.json").read_text())
    assert manifest["size"] == (base / manifest["file"]).stat().st_size
    assert manifest["server_version"].startswith("10.11")
    assert manifest["limits"]["cgroup"]["write_bps"] == 64 << 20
    assert {t: v["rows"] for t, v in manifest["tables"].items()} == SHOP_TABLES

    # The password is in no command line, no environment, no etcd record.
    inspect = docker("inspect", backup["container"]).stdout
    assert PASSWORD not in inspect
    assert PASSWORD not in run("etcdctl", f"--endpoints={ETCD}", "get", "--prefix", dr.plugin.prefix + "/").stdout

    # Restore on dr through a 50 Mbit/s profile, into a fresh server.
    dr.plugin.netctl("profile", "create", "dr50", "--rate", "50mbit")
    out = dr.drctl("restore", "--latest", "shop-prod", "--target", "shop-dr", "--network", "dr",
                   "--db-host", "10.127.0.10", "--option-file", dr.client_cnf, "--label", LABEL,
                   "--read-bps", "64m", "--profile", "dr50", "--wait", "--json", check=False)
    restore = json.loads(out.stdout)
    assert restore["state"] == "succeeded", (restore["message"], restore["log_tail"])
    assert restore["result"]["tables_verified"] == len(SHOP_TABLES)
    assert restore["result"]["rows_verified"] == sum(SHOP_TABLES.values())
    assert restore["limits_applied"]["profile"]["rate_kbps"] == 50000
    # The job containers' switch ports were access ports of their networks' VLANs.
    tags = ports.close()
    assert tags.get(backup["endpoint"]) == 100 and tags.get(restore["endpoint"]) == 200, \
        (backup["endpoint"], restore["endpoint"], tags)

    # Equal, asked of both servers directly; routines, triggers, events and views came along.
    assert table_facts(dr, "dr-source", "shop", SHOP_TABLES) == table_facts(dr, "dr-target", "shop", SHOP_TABLES)
    for q in ("SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='shop'",
              "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='shop'",
              "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA='shop'",
              "SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA='shop'"):
        assert dr.sql("dr-target", q).strip() == dr.sql("dr-source", q).strip() == "1", q

    # A second restore into the now non-empty schema is refused without --replace.
    out = dr.drctl("restore", "--backup", name, "--target", "shop-dr", "--network", "dr", "--db-host", "10.127.0.10",
                   "--option-file", dr.client_cnf, "--label", LABEL, "--wait", check=False)
    assert out.returncode == 1 and "--replace" in out.stdout

    # The volume outlives the job containers, even `docker rm -v`.
    dr.drctl("rm", backup["id"])
    docker("rm", "-v", restore["container"])
    assert docker("ps", "-aq", "--filter", f"id={backup['container']}").stdout.strip() == ""
    assert (base / manifest["file"]).stat().st_size == manifest["size"]
    assert name in dr.drctl("backups", "shop-prod", "-q").stdout


def test_checksums_share_the_dumps_snapshot_while_the_source_is_written(dr):
    """Every table is written to during the whole dump; the manifest's checksums still
    describe exactly the dumped rows, and the restore compares every table."""
    new_network("busynet", "10.122.0.0/24", 177)
    dr.start_db("busy-db", "busynet", "10.122.0.10", BUSY_SQL)
    dr.start_db("busy-restore", "busynet", "10.122.0.11")
    volume = dr.volume()
    tables = {"accounts", "events", "payload", "control"}
    writer = subprocess.Popen(["/usr/bin/docker", "exec", "busy-db", "mariadb", "-uroot", "busy", "-e", "CALL churn()"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        assert writer.poll() is None, writer.communicate()
        loops_before = int(dr.sql("busy-db", "SELECT loops FROM control", "busy"))
        # The random payload (2 MiB) does not compress: at 512 KiB/s the dump lasts seconds.
        out = dr.drctl(*dr.backup_args("busy", "busynet", "10.122.0.10", "busy", volume, "--write-bps", "512k",
                                       "--wait", "--json"), check=False)
        loops_after = int(dr.sql("busy-db", "SELECT loops FROM control", "busy"))
    finally:
        dr.sql("busy-db", "UPDATE control SET stop = 1", "busy")
        writer.wait(30)
    backup = json.loads(out.stdout)
    assert backup["state"] == "succeeded", (backup["message"], backup["log_tail"])
    began = next(h["time"] for h in backup["history"] if h["state"] == "running")
    ended = next(h["time"] for h in backup["history"] if h["state"] == "verifying")
    # The source was written to all along the dump.
    during = int(dr.sql("busy-db", f"SELECT COUNT(*) FROM events WHERE at BETWEEN {began} AND {ended}", "busy"))
    assert ended - began >= 3 and during >= 100, (ended - began, during)

    name = backup["result"]["backup"]
    manifest = json.loads((dr.volume_path(volume) / "busy" / f"{name}.manifest.json").read_text())
    assert set(manifest["tables"]) == tables and manifest["checksum_snapshot"] == "dump"
    assert all(t["transactional"] for t in manifest["tables"].values()) and manifest["not_transactional"] == []
    assert manifest["read_lock"]["held"] < 5, manifest["read_lock"]
    print(f"busy source: {during} commits during a {ended - began:.1f} s dump; read lock waited "
          f"{manifest['read_lock']['wait']:.3f} s, held {manifest['read_lock']['held']:.3f} s")

    out = dr.drctl("restore", "--latest", "busy", "--target", "busy-restore", "--network", "busynet",
                   "--db-host", "10.122.0.11", "--option-file", dr.client_cnf, "--label", LABEL,
                   "--wait", "--json", check=False)
    restore = json.loads(out.stdout)
    assert restore["state"] == "succeeded", (restore["message"], restore["log_tail"])
    assert restore["result"]["tables_verified"] == len(tables) and restore["result"]["unverifiable"] == []
    assert "warning" not in restore["result"], restore["result"]
    assert restore["result"]["rows_verified"] == manifest["rows"]
    # What was loaded is one moment in the middle of the writes, not their start or end.
    loaded = int(dr.sql("busy-restore", "SELECT loops FROM control", "busy"))
    assert loops_before < loaded < loops_after, (loops_before, loaded, loops_after)
    assert int(dr.sql("busy-restore", "SELECT COUNT(*) FROM events", "busy")) == manifest["tables"]["events"]["rows"]


def test_cap_eight_jobs_never_more_than_five(dr):
    """8 jobs over 5 source servers (one job at a time per server, so 5 can run at
    once): never more than 5 run, and all finish."""
    new_network("capnet", "10.118.0.0/24", 171)
    servers = [(f"cap-db{n}", f"10.118.0.{10 + n}") for n in range(5)]
    dr.start_dbs(servers, "capnet", SMALL_SQL)
    volume = dr.volume()
    seen, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            out = subprocess.run(["/usr/bin/docker", "ps", "-q", "--filter", "label=netplugin.backup.kind"],
                                 capture_output=True, text=True).stdout.split()
            seen.append(len(out))
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ids = [dr.drctl(*dr.backup_args(f"cap{i}", "capnet", servers[i % 5][1], "small", volume, "--write-bps", "128k",
                                    "-q")).stdout.strip() for i in range(8)]
    jobs = [dr.wait_job(i, timeout=240) for i in ids]
    stop.set()
    sampler.join(5)
    assert [j["state"] for j in jobs] == ["succeeded"] * 8, [(j["id"], j["message"]) for j in jobs]
    # From the jobs' own histories: admitted (starting) .. ended, never more than 5 overlapping.
    edges = []
    for j in jobs:
        began = next(h["time"] for h in j["history"] if h["state"] == "starting")
        edges += [(began, 1), (j["history"][-1]["time"], -1)]
    active = peak = 0
    for _, step in sorted(edges):
        active += step
        peak = max(peak, active)
    assert peak == 5, f"the cap was {'exceeded' if peak > 5 else 'never reached'}: {peak}"
    assert max(seen) <= 5, f"docker ps saw {max(seen)} job containers running at once"
    # One server, one job at a time, whatever the target's name.
    for n, (_, ip) in enumerate(servers):
        spans = sorted((next(h["time"] for h in j["history"] if h["state"] == "starting"), j["history"][-1]["time"])
                       for i, j in enumerate(jobs) if i % 5 == n)
        assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), (ip, spans)
        assert all(j["server"] == f"capnet@{ip}:3306" for i, j in enumerate(jobs) if i % 5 == n)


def _cgroup_file(pid: int, controller: str, name: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            for folder in (ctrls, controller):
                p = Path("/sys/fs/cgroup") / folder / path.lstrip("/") / name
                if p.exists():
                    return p.read_text()
    raise AssertionError(f"no {controller} cgroup file {name} for pid {pid}")


def test_limits_in_inspect_in_cgroups_and_direct_io_at_the_write_rate(dr):
    new_network("limnet", "10.119.0.0/24", 172)
    dr.start_db("lim-db", "limnet", "10.119.0.10", RANDOM_SQL)
    volume = dr.volume()
    write_bps = 1 << 20
    # Hold the dump: a session locks the table it must read, so the job's own writer
    # is idle and the direct-I/O probe below is the only writer in the cgroup (the
    # throttle is per cgroup: a dump writing beside it would take part of the rate).
    holder = subprocess.Popen(["/usr/bin/docker", "exec", "-i", "lim-db", "mariadb", "-uroot", "--unbuffered",
                               "--batch", "--skip-column-names", "noise"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder.stdin.write("LOCK TABLES payload WRITE;\nSELECT 'held';\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    job_id = dr.drctl(*dr.backup_args("noise", "limnet", "10.119.0.10", "noise", volume, "--cpus", "1.5",
                                      "--memory", "256m", "--pids", "100", "--write-bps", "1m", "--read-bps", "8m",
                                      "--write-iops", "4000", "--no-checksums", "-q")).stdout.strip()
    deadline = time.monotonic() + 60
    while (j := dr.job(job_id))["state"] in ("queued", "starting"):
        assert time.monotonic() < deadline, j
        time.sleep(0.05)
    assert j["state"] == "running", j["message"]
    info = json.loads(docker("inspect", j["container"]).stdout)[0]
    hc, pid = info["HostConfig"], info["State"]["Pid"]
    # The disk behind the volume's folder, found the way an operator would.
    st = os.stat(dr.volume_path(volume))
    sysdir = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}").resolve()
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    majmin = (sysdir / "dev").read_text().strip()
    device = j["limits_applied"]["device"]
    assert f"{device['major']}:{device['minor']}" == majmin, (device, majmin)
    dev_node = device["node"]

    # docker inspect
    assert hc["NanoCpus"] == 1_500_000_000 and hc["Memory"] == 256 << 20 and hc["MemorySwap"] == 256 << 20
    assert hc["PidsLimit"] == 100 and hc["AutoRemove"] is False
    assert hc["BlkioDeviceWriteBps"] == [{"Path": dev_node, "Rate": write_bps}]
    assert hc["BlkioDeviceReadBps"] == [{"Path": dev_node, "Rate": 8 << 20}]
    assert hc["BlkioDeviceWriteIOps"] == [{"Path": dev_node, "Rate": 4000}]
    # the cgroup files
    quota = int(_cgroup_file(pid, "cpu", "cpu.cfs_quota_us"))
    period = int(_cgroup_file(pid, "cpu", "cpu.cfs_period_us"))
    assert quota / period == 1.5
    assert int(_cgroup_file(pid, "memory", "memory.limit_in_bytes")) == 256 << 20
    assert int(_cgroup_file(pid, "memory", "memory.memsw.limit_in_bytes")) == 256 << 20
    assert _cgroup_file(pid, "pids", "pids.max").strip() == "100"
    assert f"{majmin} {write_bps}" in _cgroup_file(pid, "blkio", "blkio.throttle.write_bps_device")
    assert f"{majmin} {8 << 20}" in _cgroup_file(pid, "blkio", "blkio.throttle.read_bps_device")
    assert f"{majmin} 4000" in _cgroup_file(pid, "blkio", "blkio.throttle.write_iops_device")

    # The dump is waiting for the table: nothing of the job writes.
    deadline = time.monotonic() + 30
    while "Waiting for table metadata lock" not in dr.sql("lim-db", "SHOW PROCESSLIST"):
        assert time.monotonic() < deadline, dr.sql("lim-db", "SHOW PROCESSLIST")
        time.sleep(0.1)

    # A direct-I/O write inside the job container, alone: the probe's own bytes
    # (/proc/PID/io) must grow at the configured rate, and the cgroup's counter by
    # the probe's bytes only.
    def cgroup_written() -> int:
        text = _cgroup_file(pid, "blkio", "blkio.throttle.io_service_bytes")
        return sum(int(line.split()[2]) for line in text.splitlines() if line.startswith(majmin + " Write"))

    def cmdlines() -> dict[int, str]:
        out = {}
        for p in _cgroup_file(pid, "pids", "cgroup.procs").split():
            try:
                out[int(p)] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
        return out

    def probe_written(probe_pid: int) -> int | None:
        try:
            text = Path(f"/proc/{probe_pid}/io").read_text()
        except OSError:
            return None
        return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("write_bytes:"))
    probe = subprocess.Popen(["/usr/bin/docker", "exec", j["container"], "dd", "if=/dev/zero",
                              "of=/backup/probe.bin", "bs=256k", "count=12", "oflag=direct"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples, seen, probe_pid = [], set(), None
    while probe.poll() is None:
        procs = cmdlines()
        seen.update(procs.values())
        if probe_pid is None:
            probe_pid = next((p for p, c in procs.items() if c.startswith("dd if=/dev/zero of=/backup/probe.bin")),
                             None)
        own = probe_written(probe_pid) if probe_pid else None
        if own is not None:
            samples.append((time.monotonic(), own, cgroup_written()))
        time.sleep(0.05)
    # What `ps` shows of the job: the dump is there, the password is not.
    assert any(c.startswith("mariadb-dump --defaults-file=/run/drctl/client.cnf") for c in seen), seen
    assert not any(PASSWORD in c for c in seen)
    _, dd_err = probe.communicate()
    assert probe.returncode == 0, f"the probe failed ({probe.returncode}; did the job end first?): {dd_err}"
    assert samples, f"the probe was never seen in the job's cgroup: {seen}"
    window = [s for s in samples if s[0] >= samples[0][0] + 0.5]
    (t0, b0, c0), (t1, b1, c1) = window[0], window[-1]
    rate = (b1 - b0) / (t1 - t0)
    print(f"direct-I/O probe alone in the job container: {rate / 1048576:.3f} MiB/s over {t1 - t0:.1f} s "
          f"(configured {write_bps / 1048576:.3f} MiB/s; the cgroup wrote {(c1 - c0) / 1048576:.3f} MiB, the probe "
          f"{(b1 - b0) / 1048576:.3f} MiB); dd's own figure: {dd_err.strip().splitlines()[-1]}")
    assert t1 - t0 >= 1.5, f"the probe was too short to measure: {dd_err}"
    assert c1 - c0 <= (b1 - b0) + (256 << 10), "something beside the probe wrote in the job's cgroup"
    assert 0.8 * write_bps <= rate <= 1.2 * write_bps, \
        f"the probe wrote at {rate / 1048576:.2f} MiB/s, configured {write_bps / 1048576:.2f} MiB/s"
    # Let the dump go: the job finishes normally.
    holder.stdin.write("UNLOCK TABLES;\n")
    holder.stdin.close()
    holder.wait(30)
    j = dr.wait_job(job_id)
    assert j["state"] == "succeeded", (j["message"], j["log_tail"])
    assert j["result"]["size"] >= 6 << 20
    (dr.volume_path(volume) / "probe.bin").unlink()


def test_failures_leave_no_backup_file(dr):
    new_network("failnet", "10.120.0.0/24", 173)
    dr.start_db("fail-db", "failnet", "10.120.0.10", RANDOM_SQL)
    volume = dr.volume()

    # A wrong password: failed, no file at all.
    out = dr.drctl(*dr.backup_args("noise-a", "failnet", "10.120.0.10", "noise", volume, "--wait", "--json",
                                   option_file=dr.bad_cnf), check=False)
    j = json.loads(out.stdout)
    assert out.returncode == 1 and j["state"] == "failed" and "Access denied" in j["message"], j["message"]
    base = dr.volume_path(volume)
    assert not (base / "noise-a").exists() or list((base / "noise-a").iterdir()) == []
    assert dr.drctl("backups", "noise-a", "-q").stdout.strip() == ""

    def partial_appears(target: str, job_id: str) -> Path:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [p for p in (base / target).glob("*.partial") if p.stat().st_size > 0] \
                if (base / target).exists() else []
            if found:
                return found[0]
            assert dr.job(job_id)["state"] in ("queued", "starting", "running"), dr.job(job_id)
            time.sleep(0.1)
        raise AssertionError("no partial file appeared")

    # Cancelled mid-dump: killed, the partial file removed.
    job_id = dr.drctl(*dr.backup_args("noise-b", "failnet", "10.120.0.10", "noise", volume, "--write-bps", "256k",
                                      "-q")).stdout.strip()
    partial = partial_appears("noise-b", job_id)
    dr.drctl("cancel", "--wait", job_id)
    j = dr.job(job_id)
    assert j["state"] == "cancelled" and j["exit_code"] == 137
    assert not partial.exists() and list((base / "noise-b").iterdir()) == []

    # Past its deadline mid-dump: expired, the partial file removed.
    job_id = dr.drctl(*dr.backup_args("noise-c", "failnet", "10.120.0.10", "noise", volume, "--write-bps", "256k",
                                      "--timeout", "15s", "--no-checksums", "-q")).stdout.strip()
    partial = partial_appears("noise-c", job_id)
    j = dr.wait_job(job_id)
    assert j["state"] == "expired" and "deadline" in j["message"] and "while running" in j["message"]
    assert "dumping noise" in j["log_tail"] and "dump done" not in j["log_tail"]
    assert not partial.exists() and list((base / "noise-c").iterdir()) == []
    # The job containers are kept (never auto-removed), with their exit codes.
    assert json.loads(docker("inspect", j["container"]).stdout)[0]["State"]["Running"] is False


def test_retention_never_deletes_the_last_good_backup(dr):
    new_network("retnet", "10.121.0.0/24", 174)
    dr.start_db("ret-db", "retnet", "10.121.0.10", SMALL_SQL)
    volume = dr.volume()
    names = []
    for _ in range(3):
        out = dr.drctl(*dr.backup_args("small", "retnet", "10.121.0.10", "small", volume, "--keep-last", "2",
                                       "--wait", "--json"), check=False)
        j = json.loads(out.stdout)
        assert j["state"] == "succeeded", j["message"]
        names.append(j["result"]["backup"])
    assert dr.drctl("backups", "small", "-q").stdout.split() == [names[2], names[1]]
    base = dr.volume_path(volume)
    assert sorted(p.name for p in (base / "small").iterdir()) == sorted(
        [f"{n}.manifest.json" for n in names[1:]] + [f"{n}.sql.zst" for n in names[1:]])

    # A failed backup with the harshest retention prunes nothing.
    out = dr.drctl(*dr.backup_args("small", "retnet", "10.121.0.10", "small", volume, "--keep-last", "1",
                                   "--max-age", "0s", "--wait", option_file=dr.bad_cnf), check=False)
    assert out.returncode == 1
    assert dr.drctl("backups", "small", "-q").stdout.split() == [names[2], names[1]]

    # Pruning everything older than 0 s keeps the newest; again, still the newest.
    dr.drctl("prune", "small", "--max-age", "0s")
    assert dr.drctl("backups", "small", "-q").stdout.split() == [names[2]]
    dr.drctl("prune", "small", "--keep-last", "1", "--max-age", "0s")
    assert dr.drctl("backups", "small", "-q").stdout.split() == [names[2]]
    assert (base / "small" / f"{names[2]}.sql.zst").exists()

    # `drctl check` sees the last job failed (silence is not success).
    assert dr.drctl("check", "small", check=False).returncode == 1
