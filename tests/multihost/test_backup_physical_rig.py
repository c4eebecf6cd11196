"""Physical backups across the rig's two hosts: a MariaDB server in a
container on host a (its data in a named volume of host a's dockerd), a
drctl agent per host, the real etcd and netplugin network.

A full physical backup, then an incremental after more writes (inserts,
updates, deletes and a new table), each run by a job on host b: its receiver
container on host b, the sender on host a mounting the server's data volume
read-only and streaming over the netplugin network. Then two physical
restores on host b: the full backup alone and the chain (full + incremental),
each into a fresh data volume and a fresh server on the network. The restored
servers' row counts and CHECKSUM TABLE equal the source's at each backup
point, asked of the servers directly, and the jobs' own verification
compared every table with the manifest.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.daemon import Agent, settings_env
from tests.harness.etcd import etcdctl

from .conftest import DOCKER, ETCD, LABEL

pytestmark = pytest.mark.multihost

SERVER_IMAGE = "netplugin/mariadb:10.11"
TOOLS_IMAGE = "netplugin/mariadb-tools:10.11"
NET, SUBNET, VLAN = "mh-phys", "10.236.0.0/24", 419
SRC_IP, FULL_IP, CHAIN_IP = "10.236.0.10", "10.236.0.50", "10.236.0.51"
DATA, BACKUPS = "phys-src-data", "phys-backups"
PASSWORD = "Ph-" + secrets.token_hex(8)
SQL = """CREATE DATABASE IF NOT EXISTS shop; USE shop;
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(64), balance DECIMAL(12,2)) ENGINE=InnoDB;
INSERT INTO customers SELECT seq, CONCAT('c-', MD5(seq)), seq % 1000 FROM seq_1_to_20000;
CREATE TABLE orders (id INT PRIMARY KEY, customer INT, total DOUBLE, note TEXT) ENGINE=InnoDB;
INSERT INTO orders SELECT seq, 1 + seq % 20000, seq * 1.5, IF(seq % 3 = 0, NULL, SHA1(seq)) FROM seq_1_to_30000;
"""
MORE = """USE shop;
INSERT INTO orders SELECT seq, 1 + seq % 20000, seq * 2.5, MD5(seq) FROM seq_30001_to_40000;
UPDATE customers SET balance = balance + 7 WHERE id % 5 = 0;
DELETE FROM orders WHERE id % 11 = 0;
CREATE TABLE refunds (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT, amount DOUBLE) ENGINE=InnoDB;
INSERT INTO refunds (order_id, amount) SELECT seq, seq / 3 FROM seq_1_to_5000;
"""


class RigHost:
    """One rig host's drctl agent and command."""

    def __init__(self, host, rig, tmp: Path):
        self.host = host
        self.id = host.host_id
        work = tmp / f"work-{host.letter}"
        work.mkdir()
        self.env = settings_env(etcd_endpoints=ETCD, etcd_prefix=rig.prefix, host_id=host.host_id,
                                docker_url=host.docker_host)
        self.env.update(DRCTL_CONFIG=str(tmp / "none.toml"), DRCTL_WORK_DIR=str(work), DRCTL_OPTION_DIR=str(tmp),
                        DRCTL_POLL="0.2", DRCTL_LEASE_TTL="5", DRCTL_SCHEDULE_POLL="0.5")
        self.key = f"{rig.prefix}/backup/agents/{host.host_id}"
        self.agent = Agent(tmp / f"agent-{host.letter}.log", self.env, ETCD, self.key)

    def start(self, within: float = 30) -> None:
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

    def drctl(self, *args: str, timeout: float = 240) -> dict:
        proc = subprocess.run([sys.executable, "-m", "netplugin.backup.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode in (0, 1), f"drctl {' '.join(args)}: {proc.stderr}"
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"drctl {' '.join(args)} ({proc.returncode}): {proc.stderr}\n{proc.stdout}") from None


def load_image(host, image: str) -> None:
    if host.docker("image", "inspect", image, check=False).returncode == 0:
        return
    save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE)
    loaded = subprocess.run([DOCKER, "-H", host.docker_host, "load"], stdin=save.stdout, capture_output=True,
                            text=True, timeout=180)
    save.wait(60)
    assert save.returncode == 0 and loaded.returncode == 0, f"{image} into {host}: {loaded.stderr}"


def secret(path: Path, text: str) -> str:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(text)
    return str(path)


def sql(host, container: str, text: str) -> str:
    proc = subprocess.run([DOCKER, "-H", host.docker_host, "exec", "-i", container, "mariadb", "-uroot", "--batch",
                           "--skip-column-names"], input=text, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"SQL on {container}: {proc.stderr}"
    return proc.stdout


def facts(host, container: str) -> dict:
    """Row count and CHECKSUM TABLE of every table of shop, asked of the server itself."""
    tables = sql(host, container, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='shop' "
                                  "ORDER BY 1").split()
    out = {}
    for t in tables:
        n = sql(host, container, f"SELECT COUNT(*) FROM shop.`{t}`").strip()
        c = sql(host, container, f"CHECKSUM TABLE shop.`{t}` EXTENDED").split()[-1]
        out[t] = (int(n), c)
    return out


def wait_ready(host, name: str) -> None:
    deadline = time.monotonic() + 120
    while host.exec(name, "mariadb", "-uroot", "-e", "SELECT 1").returncode != 0:
        assert time.monotonic() < deadline, f"MariaDB {name} did not start: {host.docker('logs', name).stderr}"
        time.sleep(0.3)


@pytest.fixture
def phys(clean_rig, tmp_path):
    rig = clean_rig
    (tmp_path / "none.toml").write_text("")
    for host in rig.hosts:
        for image in (SERVER_IMAGE, TOOLS_IMAGE):
            load_image(host, image)
    rig.a.netctl("network", "create", NET, "--subnet", SUBNET, "--vlan", str(VLAN))
    for host in rig.hosts:
        host.network(NET, SUBNET)
    init = secret(tmp_path / "db-init.sql", f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{PASSWORD}';\n"
                                            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n")
    cnf = secret(tmp_path / "client.cnf", f"[client]\nuser=root\npassword={PASSWORD}\n")
    rig.a.docker("run", "-d", "--label", LABEL, "--name", "physdb", "--network", NET, "--ip", SRC_IP,
                 "-v", f"{DATA}:/var/lib/mysql", "-v", f"{init}:/run/secrets/db-init.sql:ro", SERVER_IMAGE)
    wait_ready(rig.a, "physdb")
    sql(rig.a, "physdb", SQL)
    hosts = [RigHost(h, rig, tmp_path) for h in rig.hosts]
    for h in hosts:
        h.start()
    try:
        yield rig, hosts, cnf
    finally:
        for h in hosts:
            h.agent.stop()
        rig.clean()
        for host in rig.hosts:
            for vol in (DATA, BACKUPS, "physfull-data", "physchain-data"):
                host.docker("volume", "rm", "-f", vol, check=False)


def test_full_and_incremental_streamed_across_hosts_restore_to_the_backup_points(phys):
    rig, (a, b), cnf = phys
    common = ["--network", NET, "--option-file", cnf, "--host", b.id, "--label", LABEL, "--wait", "--json"]
    backup = ["run", "--method", "physical", "--target", "physdb", "--db-host", SRC_IP, "--database", "shop",
              "--volume", BACKUPS, "--data-volume", DATA, "--db-host-id", a.id, *common]

    full = b.drctl(*backup)
    assert full["state"] == "succeeded", (full["message"], a.agent.tail(), b.agent.tail())
    at_full = facts(rig.a, "physdb")
    sql(rig.a, "physdb", MORE)
    inc = b.drctl(*backup, "--incremental")
    assert inc["state"] == "succeeded", (inc["message"], a.agent.tail(), b.agent.tail())
    at_inc = facts(rig.a, "physdb")
    assert at_inc != at_full and "refunds" in at_inc

    # the catalog keeps the chain; the receiver ran on host b, the sender on host a
    full_name, inc_name = full["result"]["backup"], inc["result"]["backup"]
    assert inc["result"]["parent"] == full_name and full["result"]["parent"] == ""
    assert full["host"] == inc["host"] == b.id
    assert full["result"]["lsn"]["to_lsn"] == inc["result"]["lsn"]["from_lsn"]
    assert full["result"]["checksums_exact"] and inc["result"]["checksums_exact"]
    assert inc["result"]["binlog"] and inc["result"]["binlog"]["pos"] > 0
    assert abs(inc["result"]["binlog"]["time"] - time.time()) < 600      # the source's clock at the backup point
    listed = {r["name"]: r for r in b.drctl("backups", "physdb", "--json")}
    assert {full_name, inc_name} <= set(listed)

    # restores on host b: each into a fresh data volume and a fresh server
    restore = ["restore", *common, "--option-file", cnf]
    r_full = b.drctl(*restore, "--backup", full_name, "--target", "physfull", "--db-host", FULL_IP)
    assert r_full["state"] == "succeeded", (r_full["message"], b.agent.tail())
    r_chain = b.drctl(*restore, "--backup", inc_name, "--target", "physchain", "--db-host", CHAIN_IP)
    assert r_chain["state"] == "succeeded", (r_chain["message"], b.agent.tail())
    assert r_chain["result"]["server"]["chain"] == [full_name, inc_name]
    assert r_chain["result"]["server"]["ip"] == CHAIN_IP
    assert r_chain["result"]["tables_verified"] == 3 and r_full["result"]["tables_verified"] == 2

    assert facts(rig.b, "physfull") == at_full
    assert facts(rig.b, "physchain") == at_inc
    # the restored server answers on the netplugin network, from host a's side too
    probe = rig.a.docker("run", "--rm", "--network", NET, TOOLS_IMAGE, "mariadb", f"--host={CHAIN_IP}", "-uroot",
                         f"-p{PASSWORD}", "--batch", "--skip-column-names", "-e", "SELECT COUNT(*) FROM shop.refunds",
                         check=False, timeout=60)
    assert probe.returncode == 0 and probe.stdout.strip() == "5000", probe.stderr
