#!/usr/bin/env python3
"""Logical against physical backup and restore of one database, in one run.

Real drctl jobs (the agent, the runner, the job containers from
netplugin/mariadb-tools:10.11) against a MariaDB server in a container
(netplugin/mariadb:10.11) on a netplugin network, its data in a named
volume; the same limits in every case (drctl's defaults: 1 CPU, 1 GiB, no
disk limit) and per-table checksums on in every case (both restores verify
every table against the manifest):

  logical backup    mariadb-dump | zstd to the backup volume
  physical backup   mariadb-backup --stream=mbstream | zstd, from a sender next
                    to the data (read-only mount) to the job's receiver
  logical restore   the dump loaded into a fresh schema of a second, running
                    server (its start is not counted)
  physical restore  the stream unpacked and prepared on a scratch copy in a
                    fresh data volume, moved in, a server started on it and
                    verified (the server's start IS counted)

Figures per job: the job's whole time (submission to success) and its work
time (running -> verifying, plus verifying -> succeeded for the physical
restore, whose server start and checks happen while verifying). The ratio
asked by issue 18 is logical restore / physical restore, whole job times.
Rounds alternate the order. Prints figures; never passes or fails on time.

    sudo .venv/bin/python bench/bench_physical.py [--scale 140] [--rounds 1] [--json]
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from tests.harness.daemon import Agent
from tests.harness.mariadb import shop_sql

SERVER_IMAGE = "netplugin/mariadb:10.11"
TOOLS_IMAGE = "netplugin/mariadb-tools:10.11"
SOCKET = "/run/docker/plugins/npphbench.sock"      # its own driver name and bridge
DRIVER = "npphbench"
BRIDGE = "npphbench0"


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--scale", type=int, default=140,
                   help="data size: scale x 120k rows (140: about 1 GB of InnoDB files)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the four jobs (default 1)")
    return C.parse(p, argv, keep_log="keep the daemon and agent logs")


class Bench:
    def __init__(self, args, out: C.Out, logdir: Path):
        self.args, self.out, self.logdir = args, out, logdir
        self.rtag = C.tag()
        self.label = f"npbench={self.rtag}"
        self.daemon = C.Daemon(logdir / "netplugin.log", socket=SOCKET, bridge=BRIDGE, extra_env={
            "NETPLUGIN_METRICS_ADDRESS": f"127.0.0.1:{random.randint(19800, 19999)}"})
        self.secret_dir = Path(tempfile.mkdtemp(prefix="npbench-secrets-"))
        self.env = dict(self.daemon.env, DRCTL_WORK_DIR=str(logdir / "work"), DRCTL_CONFIG="/dev/null",
                        DRCTL_POLL="0.2", DRCTL_SCHEDULE_POLL="0.5", DRCTL_OPTION_DIR=str(self.secret_dir))
        self.agent = Agent(logdir / "agent.log", self.env, C.ETCD,
                           f"{self.daemon.prefix}/backup/agents/{self.daemon.host_id}")
        self.volume = f"npbench-{self.rtag}"
        self.data = f"npbench-data-{self.rtag}"
        self.password = secrets.token_hex(12)
        self.cnf = self._secret("client.cnf", f"[client]\nuser=root\npassword={self.password}\n")
        self.init = self._secret("db-init.sql", f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY "
                                                f"'{self.password}';\nGRANT ALL ON *.* TO 'root'@'%';\n")
        self.subnet = f"10.{C.pick_octets(1)[0]}.0"
        self.vlan = random.choice(list(C.VLANS))
        self.net = f"npbench-phys-{self.rtag}"
        self.restored: list[str] = []

    def _secret(self, name: str, text: str) -> str:
        path = self.secret_dir / name
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(text)
        return str(path)

    def drctl(self, *args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "netplugin.backup.cli", *args, "--label", self.label,
                               "--wait", "--json"], check=False, env=self.env, capture_output=True, text=True,
                              timeout=7200)
        try:
            j = json.loads(proc.stdout)
        except ValueError:
            raise RuntimeError(f"drctl {' '.join(args[:2])}: {proc.stderr[-800:]}") from None
        if j["state"] != "succeeded":
            raise RuntimeError(f"job {j['id']} {j['state']}: {j['message']}\n{j.get('log_tail', '')[-800:]}")
        return j

    def start_db(self, name: str, ip: str, volume: str | None = None) -> None:
        args = ["run", "-d", "--name", name, "--label", self.label, "--network", self.net, "--ip", ip,
                "-v", f"{self.init}:/run/secrets/db-init.sql:ro", "--memory", "2g"]
        if volume:
            args += ["-v", f"{volume}:/var/lib/mysql"]
        C.docker(*args, SERVER_IMAGE, "--innodb-buffer-pool-size=512M")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if C.docker("exec", name, "mariadb", "-uroot", "-e", "SELECT 1", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not start: {C.docker('logs', name, check=False).stderr[-800:]}")

    def common(self) -> list[str]:
        return ["--network", self.net, "--option-file", self.cnf, "--volume", self.volume]

    def logical_backup(self) -> dict:
        return self.drctl("run", "--target", "bench-src", "--db-host", f"{self.subnet}.10", "--database", "shop",
                          *self.common())

    def physical_backup(self) -> dict:
        return self.drctl("run", "--method", "physical", "--target", "bench-src", "--db-host", f"{self.subnet}.10",
                          "--database", "shop", "--data-volume", self.data, *self.common())

    def logical_restore(self, backup: str) -> dict:
        return self.drctl("restore", "--backup", backup, "--target", "bench-dst", "--db-host", f"{self.subnet}.11",
                          "--database", f"shop_{secrets.token_hex(4)}", "--option-file", self.cnf,
                          "--network", self.net)

    def physical_restore(self, backup: str) -> dict:
        name = f"npbench-r{secrets.token_hex(3)}"
        self.restored.append(name)
        ip = f"{self.subnet}.{50 + len(self.restored)}"
        return self.drctl("restore", "--backup", backup, "--target", name, "--db-host", ip,
                          "--data-volume", f"{name}-data", "--option-file", self.cnf, "--network", self.net)


def figures(j: dict) -> dict:
    hist = {h["state"]: h["time"] for h in j["history"]}
    work = hist["verifying"] - hist["running"]
    verify = hist["succeeded"] - hist["verifying"]
    return {"job": j["id"], "total_s": round(hist["succeeded"] - j["created"], 2), "work_s": round(work, 2),
            "verify_s": round(verify, 2), "bytes": j["result"].get("size")}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    logdir = Path(tempfile.mkdtemp(prefix="npbench-physical-"))
    b = Bench(args, out, logdir)
    result: dict = {"benchmark": "physical_vs_logical", "machine": C.machine(),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "settings": {"scale": args.scale, "rounds": args.rounds,
                                 "limits": "drctl defaults: 1 CPU, 1 GiB, 256 pids, no disk limit; checksums on"}}
    state = {"finished": False}
    with C.Cleanup(out) as cleanup:
        cleanup.add("remove the logs", lambda: C.drop_log(logdir, args.keep_log, state["finished"], out))
        cleanup.add("remove the secrets", lambda: shutil.rmtree(b.secret_dir, ignore_errors=True))
        cleanup.add("delete the etcd prefix", lambda: C.etcd_delete_prefix(b.daemon.prefix + "/"))
        cleanup.add(f"remove bridge {BRIDGE}", lambda: C.remove_bridge(BRIDGE))
        cleanup.add("stop the daemon", b.daemon.stop)
        for image in (SERVER_IMAGE, TOOLS_IMAGE):
            C.docker("image", "inspect", image)
        b.daemon.start()
        b.daemon.wait_bridge()

        def remove_docker():
            ids = C.docker("ps", "-aq", "--filter", f"label={b.label}", check=False).stdout.split()
            ids += [C.docker("ps", "-aq", "--filter", f"name={n}", check=False).stdout.strip() for n in b.restored]
            if any(ids):
                C.docker("rm", "-f", *[i for i in ids if i], check=False)
            C.docker("network", "rm", b.net, check=False)
            for vol in (b.volume, b.data, *[f"{n}-data" for n in b.restored]):
                C.docker("volume", "rm", "-f", vol, check=False)
        cleanup.add("remove containers, the network and the volumes", remove_docker)
        C.docker("network", "create", "-d", DRIVER, "--ipam-driver", DRIVER, "--subnet", f"{b.subnet}.0/24",
                 "-o", f"vlan={b.vlan}", b.net)
        cleanup.add("stop the agent", lambda: b.agent.stop(20))
        b.agent.start()
        b.start_db(f"npbench-{b.rtag}-src", f"{b.subnet}.10", b.data)
        b.start_db(f"npbench-{b.rtag}-dst", f"{b.subnet}.11")
        t0 = time.monotonic()
        proc = subprocess.run([C.DOCKER, "exec", "-i", f"npbench-{b.rtag}-src", "mariadb", "-uroot"],
                              input=shop_sql(args.scale), check=False, text=True, capture_output=True, timeout=7200)
        if proc.returncode != 0:
            raise RuntimeError(f"loading the data failed: {proc.stderr[-800:]}")
        mount = Path(C.docker("volume", "inspect", "-f", "{{.Mountpoint}}", b.data).stdout.strip())
        size = sum(f.stat().st_size for f in (mount / "shop").iterdir() if f.is_file())
        result["data"] = {"rows": 120_000 * args.scale, "innodb_bytes": size,
                          "load_s": round(time.monotonic() - t0, 1)}
        out.progress(f"loaded {120_000 * args.scale} rows ({result['data']['innodb_bytes']} bytes of shop's files) "
                     f"in {result['data']['load_s']} s")
        rounds = []
        for r in range(args.rounds):
            row: dict = {"load_before": C.machine().get("loadavg_start")}
            order = ("logical", "physical") if r % 2 == 0 else ("physical", "logical")
            for method in order:
                bk = b.logical_backup() if method == "logical" else b.physical_backup()
                row[f"{method}_backup"] = figures(bk)
                out.progress(f"round {r + 1}: {method} backup {row[f'{method}_backup']}")
                rs = (b.logical_restore if method == "logical" else b.physical_restore)(bk["result"]["backup"])
                row[f"{method}_restore"] = figures(rs)
                out.progress(f"round {r + 1}: {method} restore {row[f'{method}_restore']}")
            row["restore_ratio"] = round(row["logical_restore"]["total_s"] / row["physical_restore"]["total_s"], 2)
            row["backup_ratio"] = round(row["logical_backup"]["total_s"] / row["physical_backup"]["total_s"], 2)
            row["load_after"] = C.machine().get("loadavg_start")
            rounds.append(row)
        result["rounds"] = rounds
        state["finished"] = True
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(C.machine_line(result["machine"]))
        print(f"data: {result['data']}")
        rows = [[r + 1, x["logical_backup"]["total_s"], x["physical_backup"]["total_s"], x["backup_ratio"],
                 x["logical_restore"]["total_s"], x["physical_restore"]["total_s"], x["restore_ratio"],
                 x["load_before"], x["load_after"]] for r, x in enumerate(rounds)]
        print(C.table(["round", "logical backup s", "physical backup s", "ratio", "logical restore s",
                       "physical restore s", "ratio (goal >= 5)", "load before", "load after"], rows))
    return 0


if __name__ == "__main__":
    C.exit_with(main)
