"""drctl as a fleet service on the two-host rig: a real drctl agent per rig
host (each with its own dockerd, the host's netplugin daemon, real MariaDB
servers on a global VLAN network, the real etcd).

* Exactly once: a per-minute schedule placed by label gives one job per due
  time over three minutes, while the agent that fired the first one is killed
  (SIGKILL) after that first run and comes back after the second due time: no due time missed, none run twice (the job
  list and the schedule's claim keys in etcd say so), every job succeeds.
* Placement: 12 backups submitted with ``--place site=dr`` to two hosts of 5
  slots each: never more than 5 job containers running at once on a host
  (sampled from each host's dockerd and from the job records), both hosts
  used, every job succeeds.

The exactly-once scenario waits for three real minutes by nature; the rest
is kept short (small databases, started together).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
NET, SUBNET, VLAN = "mh-fleet", "10.237.0.0/24", 417
SERVERS = 12                                # one per placed job: the per-server lock never holds a job back
CAP = 5
PASSWORD = "Fl-" + secrets.token_hex(8)
SQL = """CREATE DATABASE IF NOT EXISTS small; USE small;
CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(40)) ENGINE=InnoDB;
INSERT INTO items SELECT seq, CONCAT('item-', MD5(seq)) FROM seq_1_to_3000;
"""
ACTIVE = ("starting", "running", "verifying")
ENDED = ("succeeded", "failed", "expired", "cancelled")
JOB_LABEL = "netplugin.backup.job"          # runner.LABEL_JOB: the label of every job container


def server_ip(i: int) -> str:
    return f"10.237.0.{11 + i}"


class FleetHost:
    """One rig host's drctl: its agent process, its settings, the drctl command."""

    def __init__(self, host, rig, tmp: Path):
        self.host = host
        self.id = host.host_id
        work = tmp / f"work-{host.letter}"
        work.mkdir()
        self.env = settings_env(etcd_endpoints=ETCD, etcd_prefix=rig.prefix, host_id=host.host_id,
                                docker_url=host.docker_host)
        self.env.update(DRCTL_CONFIG=str(tmp / "none.toml"), DRCTL_WORK_DIR=str(work), DRCTL_OPTION_DIR=str(tmp),
                        DRCTL_POLL="0.2", DRCTL_LEASE_TTL="5", DRCTL_SCHEDULE_POLL="1", DRCTL_LABELS="site=dr",
                        DRCTL_MAX_JOBS=str(CAP))
        self.key = f"{rig.prefix}/backup/agents/{host.host_id}"
        self.log = tmp / f"agent-{host.letter}.log"
        self.agent = Agent(self.log, self.env, ETCD, self.key)

    def start(self, within: float = 30) -> None:
        """Start the agent; return once ITS registration (its pid) is in etcd."""
        self.agent.launch()
        proc = self.agent.proc
        assert proc is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"drctl agent {self.id} exited:\n{self.agent.tail()}"
            out = etcdctl(ETCD, "get", self.key, "--print-value-only", check=False).stdout.strip()
            if out and json.loads(out).get("pid") == proc.pid:
                return
            time.sleep(0.2)
        raise AssertionError(f"drctl agent {self.id} did not register within {within} s:\n{self.agent.tail()}")

    def drctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "netplugin.backup.cli", *args], check=False, env=self.env,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"drctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
        return proc

    def running(self) -> int:
        """Job containers running on this host, as its dockerd says."""
        out = run([DOCKER, "-H", self.host.docker_host, "ps", "-q", "--filter", f"label={JOB_LABEL}"],
                  check=False, timeout=30).stdout
        return len(out.split())


def load_image(host, image: str) -> None:
    if host.docker("image", "inspect", image, check=False).returncode == 0:
        return
    save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE)
    loaded = subprocess.run([DOCKER, "-H", host.docker_host, "load"], check=False, stdin=save.stdout,
                            capture_output=True, text=True, timeout=180)
    save.wait(60)
    assert save.returncode == 0 and loaded.returncode == 0, f"{image} into {host}: {loaded.stderr}"


def secret(path: Path, text: str) -> str:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(text)
    return str(path)


@pytest.fixture(scope="module")
def fleet(rig, tmp_path_factory):
    """Two agents labelled site=dr with 5 slots each; SERVERS small MariaDB
    servers on a global network, half on each host."""
    tmp = tmp_path_factory.mktemp("fleet")
    (tmp / "none.toml").write_text("")
    rig.clean()
    for host in rig.hosts:
        for image in (SERVER_IMAGE, TOOLS_IMAGE):
            load_image(host, image)
    rig.a.netctl("network", "create", NET, "--subnet", SUBNET, "--vlan", str(VLAN))
    for host in rig.hosts:
        host.network(NET, SUBNET)
    init = secret(tmp / "db-init.sql", f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{PASSWORD}';\n"
                                       "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n")
    cnf = secret(tmp / "client.cnf", f"[client]\nuser=root\npassword={PASSWORD}\n")
    servers = [(rig.hosts[i % 2], f"fleetdb{i}", server_ip(i)) for i in range(SERVERS)]
    for host, name, ip in servers:
        host.docker("run", "-d", "--label", LABEL, "--name", name, "--network", NET, "--ip", ip,
                    "-v", f"{init}:/run/secrets/db-init.sql:ro", SERVER_IMAGE)

    def ready(item) -> None:
        host, name, _ = item
        deadline = time.monotonic() + 120
        while host.exec(name, "mariadb", "-uroot", "-e", "SELECT 1").returncode != 0:
            assert time.monotonic() < deadline, f"MariaDB {name} did not start: {host.docker('logs', name).stderr}"
            time.sleep(0.5)
        load = run([DOCKER, "-H", host.docker_host, "exec", "-i", name, "mariadb", "-uroot"], input=SQL,
                   check=False, timeout=120)
        assert load.returncode == 0, f"SQL on {name}: {load.stderr}"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(ready, servers))
    hosts = [FleetHost(h, rig, tmp) for h in rig.hosts]
    for h in hosts:
        h.start()
    kv = EtcdKV([ETCD])
    f = type("Fleet", (), {})()
    f.rig, f.hosts, f.cnf, f.store, f.tmp = rig, hosts, cnf, BackupStore(kv, rig.prefix), tmp
    try:
        yield f
    finally:
        for h in hosts:
            h.agent.stop()
        kv.close()
        rig.clean()
        for host in rig.hosts:
            for vol in host.docker("volume", "ls", "-q", "--filter", "name=fleet-").stdout.split():
                host.docker("volume", "rm", "-f", vol, check=False)


def run_args(f, i: int, target: str) -> list[str]:
    return ["--target", target, "--network", NET, "--db-host", server_ip(i), "--database", "small",
            "--option-file", f.cnf, "--volume", f"fleet-{target}", "--label", LABEL, "--place", "site=dr"]


def jobs_of(f, by: str | None = None) -> list[dict]:
    rows = json.loads(f.hosts[0].drctl("ls", "--json").stdout)
    if by is None:
        return rows
    wanted = {j.id for j in f.store.list_jobs() if j.submitted_by == by}
    return [r for r in rows if r["id"] in wanted]


def wait_ended(f, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["id"]: r for r in jobs_of(f) if r["id"] in ids}
        if len(rows) == len(ids) and all(r["state"] in ENDED for r in rows.values()):
            return rows
        if time.monotonic() > deadline:
            logs = "\n".join(h.agent.tail(2000) for h in f.hosts)
            raise AssertionError(f"jobs not ended within {timeout} s: "
                                 f"{[(r['id'], r['host'], r['state'], r['message']) for r in rows.values()]}\n{logs}")
        time.sleep(0.5)


class Sampler:
    """Peak of running jobs per host, from each host's dockerd and from the job
    records; and the hosts seen holding a queued job back for want of a slot
    (printed only: a sample every second or so can miss that moment)."""

    def __init__(self, f):
        self.f = f
        self.docker_peak = {h.id: 0 for h in f.hosts}
        self.record_peak = {h.id: 0 for h in f.hosts}
        self.waited_for_slot: set[str] = set()
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for h in self.f.hosts:
                self.docker_peak[h.id] = max(self.docker_peak[h.id], h.running())
            active: dict[str, int] = {}
            for j in self.f.store.list_jobs():
                if j.state in ACTIVE:
                    active[j.host] = active.get(j.host, 0) + 1
                elif j.state == "queued" and j.message.startswith("waiting for a slot"):
                    self.waited_for_slot.add(j.host)
            for host, n in active.items():
                if host in self.record_peak:
                    self.record_peak[host] = max(self.record_peak[host], n)
            self.samples += 1
            time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def most_at_once(jobs, host: str) -> int:
    """The most of host's jobs between admission and end at one instant."""
    edges = []
    for j in jobs:
        if j.host == host:
            edges += [(j.entered("starting"), 1), (j.entered(j.state), -1)]
    now = peak = 0
    for _, step in sorted(edges):          # at a tie an end (-1) comes before an admission
        now += step
        peak = max(peak, now)
    return peak


def test_placed_jobs_never_exceed_a_hosts_slots_and_use_both_hosts(fleet):
    f = fleet
    sampler = Sampler(f)
    try:
        # a tenth of a CPU each: every job lasts long enough for a host's six to overlap
        def submit(i: int) -> str:
            return f.hosts[i % 2].drctl("run", *run_args(f, i, f"placed{i}"), "--cpus", "0.1", "-q").stdout.strip()
        with ThreadPoolExecutor(SERVERS) as pool:
            ids = list(pool.map(submit, range(SERVERS)))
        assert len(set(ids)) == SERVERS and all(ids), ids
        rows = wait_ended(f, ids, 240)
    finally:
        sampler.close()
    failed = [(r["id"], r["host"], r["state"], r["message"]) for r in rows.values() if r["state"] != "succeeded"]
    assert not failed, failed
    per_host = {h.id: sum(r["host"] == h.id for r in rows.values()) for h in f.hosts}
    print(f"placement: jobs per host {per_host}, peak running per host: dockerd {sampler.docker_peak}, "
          f"records {sampler.record_peak} ({sampler.samples} samples), held back for a slot on "
          f"{sorted(sampler.waited_for_slot)}")
    assert all(n > 0 for n in per_host.values()), f"a host got no job: {per_host}"
    assert sampler.samples > 5
    for h in f.hosts:
        assert 1 <= sampler.docker_peak[h.id] <= CAP, (h.id, sampler.docker_peak, per_host)
        assert 1 <= sampler.record_peak[h.id] <= CAP, (h.id, sampler.record_peak, per_host)
    # Exactly, from each job's history (admitted, ended: its agent's own clock): never more
    # than CAP at once on a host, and CAP reached (so the test could see it exceeded).
    overlap = {h.id: most_at_once([f.store.get(i)[0] for i in ids], h.id) for h in f.hosts}
    print(f"placement: most jobs at once per host, from their histories: {overlap}")
    assert all(n <= CAP for n in overlap.values()) and max(overlap.values()) == CAP, overlap
    # every job's backup is in the catalog
    names = {b.target for b in f.store.backups()}
    assert {f"placed{i}" for i in range(SERVERS)} <= names


def wait_claim(f, name: str, due: float, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = f.store.fired(name).get(due)
        if got:
            return got
        time.sleep(0.5)
    logs = "\n".join(h.agent.tail(2000) for h in f.hosts)
    raise AssertionError(f"due time {due} of {name} not fired within {timeout:.0f} s; claims "
                         f"{f.store.fired(name)}\n{logs}")


def firer(f, job_id: str) -> FleetHost:
    """The agent whose log says it submitted job_id."""
    who = [h for h in f.hosts if f"job {job_id} for host" in h.log.read_text(errors="replace")]
    assert len(who) == 1, f"job {job_id} was logged as submitted by {[h.id for h in who]}"
    return who[0]


def test_a_per_minute_schedule_fires_exactly_once_per_due_time_through_an_agent_kill(fleet):
    f = fleet
    name = "every-minute"
    f.hosts[0].drctl("schedule", "create", name, "--cron", "* * * * *", *run_args(f, 0, "sched"))
    deadline = time.monotonic() + 20
    while (armed := f.store.get_schedule(name)[0].last_due) is None:
        assert time.monotonic() < deadline, "no agent armed the schedule"
        time.sleep(0.2)
    d1, d2, d3 = armed + 60, armed + 120, armed + 180
    first = wait_claim(f, name, d1, d1 - time.time() + 40)
    killed = firer(f, first)
    survivor = next(h for h in f.hosts if h is not killed)
    # after the first run: a job its agent leaves in "starting" is failed at adoption, by design
    assert wait_ended(f, [first], 40)[first]["state"] == "succeeded"
    killed.agent.kill9()
    assert time.time() < d2 - 10, "the kill came too late to leave one agent over the second due time"
    second = wait_claim(f, name, d2, d2 - time.time() + 40)
    assert firer(f, second) is survivor
    killed.start()                      # back before the third due time: both race for it
    assert time.time() < d3 - 5
    third = wait_claim(f, name, d3, d3 - time.time() + 40)
    f.hosts[0].drctl("schedule", "pause", name)
    claims = f.store.fired(name)
    assert claims == {d1: first, d2: second, d3: third}
    jobs = jobs_of(f, f"schedule {name}")
    assert sorted(j["id"] for j in jobs) == sorted(claims.values())
    s = f.store.get_schedule(name)[0]
    assert (s.runs, s.missed_count, s.last_due, s.last_job) == (3, 0, d3, third)
    rows = wait_ended(f, [first, second, third], 180)
    failed = [(r["id"], r["host"], r["state"], r["message"]) for r in rows.values() if r["state"] != "succeeded"]
    assert not failed, failed
