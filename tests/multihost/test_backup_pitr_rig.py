"""Point-in-time restore on the two-host rig: the source MariaDB server on
host a, the drctl agent, its binlog collector, backup and restore jobs on host
b, all on one global netplugin network (VLAN across the trunk), real etcd.

One scenario, in order (each step needs the one before, and one run keeps the
ring's time small):

* writes run throughout from one session on the source (each row carries the
  server's UNIX_TIMESTAMP() at its insert, the clock its binlog event
  carries); a logical backup records its binlog coordinates; a DDL change
  follows it;
* the collector's container is killed (SIGKILL) while writes go on, and a new
  collector resumes from the archive (the newest file fetched again whole);
  then the agent itself is killed (SIGKILL) and started again: it adopts the
  running collector, which catalogues the files completed after that;
* ``drctl restore --latest --at TIME`` into a fresh server on host b: every
  row written before TIME is there, none written at or after it, the DDL is
  applied, and the rows equal the source's rows before TIME (count and sum of
  CRC32s);
* an archived file removed (the catalog record through the store, the file
  from the volume): the same restore is refused before any job is submitted,
  naming the missing file, its position and the times around it.
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

from netplugin.backup.store import BackupStore
from netplugin.kv import EtcdKV
from tests.harness.daemon import Agent, settings_env
from tests.harness.etcd import etcdctl

from .conftest import DOCKER, ETCD, LABEL, run

pytestmark = pytest.mark.multihost

SERVER_IMAGE = "netplugin/mariadb:10.11"
TOOLS_IMAGE = "netplugin/mariadb-tools:10.11"
NET, SUBNET, VLAN = "mh-pitr", "10.238.0.0/24", 418
SRC_IP, DST_IP, PHYS_IP = "10.238.0.11", "10.238.0.12", "10.238.0.13"
DATA = "pitr-src-data-" + secrets.token_hex(3)        # the source's /var/lib/mysql: a physical backup reads it
PASSWORD = "Pt-" + secrets.token_hex(8)
TARGET = "pitr"
VOLUME = "pitr-" + secrets.token_hex(3)
SCHEMA = """CREATE DATABASE IF NOT EXISTS shop; USE shop;
CREATE TABLE ev (id INT AUTO_INCREMENT PRIMARY KEY, ts BIGINT NOT NULL, v INT NOT NULL) ENGINE=InnoDB;
INSERT INTO ev (ts, v) SELECT UNIX_TIMESTAMP(), seq FROM seq_1_to_2000;
"""
ENDED = ("succeeded", "failed", "expired", "cancelled")


def secret(path: Path, text: str) -> str:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(text)
    return str(path)


def load_image(host, image: str) -> None:
    if host.docker("image", "inspect", image, check=False).returncode == 0:
        return
    save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE)
    loaded = subprocess.run([DOCKER, "-H", host.docker_host, "load"], check=False, stdin=save.stdout,
                            capture_output=True, text=True, timeout=180)
    save.wait(60)
    assert save.returncode == 0 and loaded.returncode == 0, f"{image} into {host}: {loaded.stderr}"


class Writer:
    """One mariadb session on the source, fed an INSERT every 50 ms (and any
    statement asked) until closed: writes running throughout."""

    def __init__(self, host, container: str):
        self.proc = subprocess.Popen([DOCKER, "-H", host.docker_host, "exec", "-i", container, "mariadb", "-uroot",
                                      "shop"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.n = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def send(self, statement: str) -> None:
        with self.lock:
            assert self.proc.stdin is not None and self.proc.poll() is None, "the writer's session ended"
            self.proc.stdin.write(statement + "\n")
            self.proc.stdin.flush()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.n += 1
            try:
                self.send(f"INSERT INTO ev (ts, v) VALUES (UNIX_TIMESTAMP(), {self.n});")
            except (AssertionError, OSError):
                return
            time.sleep(0.05)

    def close(self) -> str:
        self.stop.set()
        self.thread.join(10)
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)
        return self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture(scope="module")
def pitr(rig, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pitr")
    (tmp / "none.toml").write_text("")
    rig.clean()
    a, b = rig.a, rig.b
    for host in rig.hosts:
        for image in (SERVER_IMAGE, TOOLS_IMAGE):
            load_image(host, image)
    a.netctl("network", "create", NET, "--subnet", SUBNET, "--vlan", str(VLAN))
    for host in rig.hosts:
        host.network(NET, SUBNET)
    init = secret(tmp / "db-init.sql", f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{PASSWORD}';\n"
                                       "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n")
    cnf = secret(tmp / "client.cnf", f"[client]\nuser=root\npassword={PASSWORD}\n")
    for host, name, ip, data in ((a, "pitrsrc", SRC_IP, DATA), (b, "pitrdst", DST_IP, None)):
        host.docker("run", "-d", "--label", LABEL, "--name", name, "--network", NET, "--ip", ip,
                    *(["-v", f"{data}:/var/lib/mysql"] if data else []),
                    "-v", f"{init}:/run/secrets/db-init.sql:ro", SERVER_IMAGE)
    for host, name in ((a, "pitrsrc"), (b, "pitrdst")):
        deadline = time.monotonic() + 120
        while host.exec(name, "mariadb", "-uroot", "-e", "SELECT 1").returncode != 0:
            assert time.monotonic() < deadline, f"MariaDB {name} did not start: {host.docker('logs', name).stderr}"
            time.sleep(0.5)
    load = run([DOCKER, "-H", a.docker_host, "exec", "-i", "pitrsrc", "mariadb", "-uroot"], input=SCHEMA,
               check=False, timeout=120)
    assert load.returncode == 0, load.stderr
    agents, env = [], {}
    for host in (a, b):          # b runs the jobs; a runs a physical backup's sender, next to the source's data
        work = tmp / f"work-{host.letter}"
        work.mkdir()
        env = settings_env(etcd_endpoints=ETCD, etcd_prefix=rig.prefix, host_id=host.host_id,
                           docker_url=host.docker_host)
        env.update(DRCTL_CONFIG=str(tmp / "none.toml"), DRCTL_WORK_DIR=str(work), DRCTL_OPTION_DIR=str(tmp),
                   DRCTL_POLL="0.2", DRCTL_LEASE_TTL="5")
        key = f"{rig.prefix}/backup/agents/{host.host_id}"
        agent = Agent(tmp / f"agent-{host.letter}.log", env, ETCD, key)
        agent.launch()
        agents.append(agent)
        deadline = time.monotonic() + 30
        while not etcdctl(ETCD, "get", key, "--print-value-only", check=False).stdout.strip():
            assert time.monotonic() < deadline and agent.proc and agent.proc.poll() is None, agent.tail()
            time.sleep(0.2)
    kv = EtcdKV([ETCD])
    p = type("Pitr", (), {})()
    p.rig, p.a, p.b, p.cnf, p.env, p.store = rig, a, b, cnf, env, BackupStore(kv, rig.prefix)
    p.agent_a, p.agent = agents
    try:
        yield p
    finally:
        for agent in agents:
            agent.stop()
        kv.close()
        rig.clean()
        b.docker("volume", "rm", "-f", VOLUME, "pitrphys-data", check=False)
        a.docker("volume", "rm", "-f", DATA, check=False)


def drctl(p, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "netplugin.backup.cli", *args], check=False, env=p.env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"drctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}\n"
                             f"agent:\n{p.agent.tail(4000)}")
    return proc


def job(p, job_id: str) -> dict:
    return json.loads(drctl(p, "inspect", job_id).stdout)[0]


def wait_state(p, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        j = job(p, job_id)
        if j["state"] in states:
            return j
        assert j["state"] not in ENDED, f"job {job_id} ended {j['state']}: {j['message']}\n{p.agent.tail(4000)}"
        assert time.monotonic() < deadline, f"job {job_id} still {j['state']} after {timeout} s: {j['message']}"
        time.sleep(0.3)


def src_sql(p, query: str) -> str:
    out = p.a.exec("pitrsrc", "mariadb", "-uroot", "--batch", "--skip-column-names", "-e", query)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def server_now(p) -> int:
    return int(src_sql(p, "SELECT UNIX_TIMESTAMP()"))


def wait_server_past(p, t: int) -> None:
    while server_now(p) <= t:
        time.sleep(0.2)


def agent_pid(p) -> int:
    """Start the agent again; its pid once it holds the host's agent key."""
    p.agent.launch()
    assert p.agent.proc is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = etcdctl(ETCD, "get", p.agent.key, "--print-value-only", check=False).stdout.strip()
        if out and json.loads(out).get("pid") == p.agent.proc.pid:
            return p.agent.proc.pid
        time.sleep(0.2)
    raise AssertionError(f"the restarted agent did not register:\n{p.agent.tail(3000)}")


def wait_adopted(p, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while f"adopting job {job_id}" not in p.agent.tail(200000):
        assert time.monotonic() < deadline, f"job {job_id} not adopted:\n{p.agent.tail(3000)}"
        time.sleep(0.3)


def start_collector(p) -> str:
    jid = drctl(p, "binlog", "start", TARGET, "--volume", VOLUME, "--network", NET, "--db-host", SRC_IP,
                "--option-file", p.cnf, "--host", p.b.host_id, "--label", LABEL).stdout.strip()
    wait_state(p, jid, ("running",))
    return jid


def wait_archived(p, at: int, count: int, timeout: float = 90) -> list:
    """Until the catalog has count files, one whose last event is at or after at."""
    deadline = time.monotonic() + timeout
    while True:
        files = p.store.binlogs(TARGET)
        if len(files) >= count and max(f.last_time for f in files) >= at:
            return files
        assert time.monotonic() < deadline, (f"no archived file reaches {at} within {timeout} s: "
                                             f"{[(f.file, f.last_time) for f in files]}\n{p.agent.tail(4000)}")
        time.sleep(0.5)


def rows_digest(p, container_host, container: str, where: str = "") -> tuple[int, int, int]:
    out = container_host.exec(container, "mariadb", "-uroot", "--batch", "--skip-column-names", "-e",
                              f"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('#', id, ts, v))), 0), "
                              f"COALESCE(MAX(ts), 0) FROM shop.ev {where}")
    assert out.returncode == 0, out.stderr
    n, s, m = out.stdout.split()
    return int(n), int(s), int(m)


def test_point_in_time_across_a_collector_kill_and_a_refused_gap(pitr):
    p = pitr
    started = time.monotonic()
    first = start_collector(p)
    writer = Writer(p.a, "pitrsrc")
    try:
        time.sleep(1.5)
        backup = drctl(p, "run", "--target", TARGET, "--database", "shop", "--volume", VOLUME, "--network", NET,
                       "--db-host", SRC_IP, "--option-file", p.cnf, "--host", p.b.host_id, "--label", LABEL,
                       "--wait", "--json")
        result = json.loads(backup.stdout)
        assert result["state"] == "succeeded", result
        rec = next(b for b in p.store.backups(TARGET))
        assert rec.binlog and rec.binlog["file"].startswith("mariadb-bin.") and rec.binlog["pos"] > 4, rec.binlog
        assert isinstance(rec.binlog["time"], float), rec.binlog
        writer.send("ALTER TABLE ev ADD COLUMN note VARCHAR(16) NOT NULL DEFAULT 'after-ddl';")
        writer.send("FLUSH BINARY LOGS;")
        time.sleep(1.5)

        # the collector killed mid-stream (SIGKILL to its container); writes go on meanwhile
        container = job(p, first)["container"]
        p.b.docker("kill", "-s", "KILL", container)
        dead = wait_state(p, first, ENDED, 60)
        assert dead["state"] == "failed", dead
        time.sleep(2)
        second = start_collector(p)
        assert job(p, second)["result"]["resumed_from"], job(p, second)
        time.sleep(1.5)

        # the agent killed (SIGKILL) while its collector runs: the container goes on, the next agent adopts it
        p.agent.kill9()
        time.sleep(1)
        agent_pid(p)
        wait_adopted(p, second)
        assert job(p, second)["state"] == "running"

        at = server_now(p) + 1
        wait_server_past(p, at + 1)
        time.sleep(0.5)
        writer.send("FLUSH BINARY LOGS;")
        time.sleep(1.2)
        writer.send("FLUSH BINARY LOGS;")       # a later file too: a file removed below is a gap, not the end
        files = wait_archived(p, at, count=3)
    finally:
        err = writer.close()
    assert writer.n > 100, f"only {writer.n} writes: {err}"
    assert not err.strip(), err

    before = rows_digest(p, p.a, "pitrsrc", f"WHERE ts < {at}")
    after = rows_digest(p, p.a, "pitrsrc", f"WHERE ts >= {at}")
    assert after[0] > 0, "no row was written after TIME: the test could not fail"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    restore = drctl(p, "restore", "--latest", TARGET, "--at", stamp, "--network", NET, "--db-host", DST_IP,
                    "--option-file", p.cnf, "--host", p.b.host_id, "--label", LABEL, "--wait", "--json")
    done = json.loads(restore.stdout)
    assert done["state"] == "succeeded", done
    assert done["result"]["replay"]["files"], done["result"]
    got = rows_digest(p, p.b, "pitrdst")
    assert got == before, f"restored {got}, the source before TIME {before} (after TIME: {after})"
    assert got[2] < at
    cols = p.b.exec("pitrdst", "mariadb", "-uroot", "--batch", "--skip-column-names", "-e",
                    "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='shop' AND "
                    "TABLE_NAME='ev' AND COLUMN_NAME='note'").stdout.strip()
    assert cols == "1", "the DDL between the backup and TIME was not replayed"
    print(f"pitr: {len(files)} archived files, {got[0]} rows restored to {stamp}, {after[0]} later rows absent, "
          f"{time.monotonic() - started:.1f} s")

    # a gap: one archived file the restore needs, gone (catalog and volume)
    needed = done["result"]["replay"]["files"]
    assert len(needed) >= 2, needed
    gone = next(f for f in p.store.binlogs(TARGET) if f.file == needed[1])
    p.store.remove_binlog(gone)
    p.b.docker("run", "--rm", "-v", f"{VOLUME}:/backup", TOOLS_IMAGE, "rm", "-f", f"/backup/{gone.path}")
    jobs_before = len(p.store.list_jobs())
    refused = drctl(p, "restore", "--latest", TARGET, "--at", stamp, "--network", NET, "--db-host", DST_IP,
                    "--option-file", p.cnf, "--host", p.b.host_id, "--database", "shop2", check=False)
    assert refused.returncode == 1, refused
    assert "gap" in refused.stderr and gone.file in refused.stderr and "position 4" in refused.stderr, refused.stderr
    assert "UTC" in refused.stderr, refused.stderr
    assert len(p.store.list_jobs()) == jobs_before, "a job was submitted although the archive has a gap"
    drctl(p, "binlog", "stop", TARGET)
    wait_state(p, second, ("cancelled",), 60)


def test_point_in_time_from_a_physical_backup_replays_into_its_fresh_server(pitr):
    """The newest backup before TIME is physical (mariadb-backup streamed from a
    sender on host a): its chain is prepared in a fresh server on host b, then
    the whole server's binlogs are replayed into it up to TIME."""
    p = pitr
    started = time.monotonic()
    collector = start_collector(p)
    writer = Writer(p.a, "pitrsrc")
    try:
        time.sleep(1)
        phys = drctl(p, "run", "--method", "physical", "--target", TARGET, "--database", "shop", "--volume", VOLUME,
                     "--data-volume", DATA, "--db-host-id", p.a.host_id, "--network", NET, "--db-host", SRC_IP,
                     "--option-file", p.cnf, "--host", p.b.host_id, "--label", LABEL, "--wait", "--json")
        made = json.loads(phys.stdout)
        assert made["state"] == "succeeded", (made, p.agent_a.tail(3000))
        coords = made["result"]["binlog"]
        assert coords and coords["pos"] > 4, made["result"]
        writer.send("FLUSH BINARY LOGS;")         # the backup's file rotated: its bound is before TIME
        writer.send("INSERT INTO ev (ts, v) VALUES (UNIX_TIMESTAMP(), -1);")
        time.sleep(1.5)
        at = server_now(p) + 1
        wait_server_past(p, at + 1)
        time.sleep(0.5)
        writer.send("FLUSH BINARY LOGS;")
        files = wait_archived(p, at, count=1)
    finally:
        err = writer.close()
    assert not err.strip(), err
    before = rows_digest(p, p.a, "pitrsrc", f"WHERE ts < {at}")
    after = rows_digest(p, p.a, "pitrsrc", f"WHERE ts >= {at}")
    assert after[0] > 0, "no row was written after TIME: the test could not fail"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    restore = drctl(p, "restore", "--latest", TARGET, "--at", stamp, "--target", "pitrphys", "--network", NET,
                    "--db-host", PHYS_IP, "--option-file", p.cnf, "--host", p.b.host_id, "--label", LABEL,
                    "--wait", "--json", check=False)
    done = json.loads(restore.stdout) if restore.stdout.strip().startswith("{") else {}
    assert done.get("state") == "succeeded", (restore.stderr, done, p.agent.tail(4000))
    assert done["result"]["method"] == "physical" and done["result"]["backup"] == made["result"]["backup"]
    assert done["result"]["replay"]["files"][0] == coords["file"], (done["result"]["replay"], coords)
    got = rows_digest(p, p.b, "pitrphys")
    assert got == before, f"restored {got}, the source before TIME {before} (after TIME: {after})"
    print(f"pitr physical: {len(files)} archived files, {got[0]} rows at {stamp}, {after[0]} later rows absent, "
          f"{time.monotonic() - started:.1f} s")
    drctl(p, "binlog", "stop", TARGET)
    wait_state(p, collector, ("cancelled",), 60)
