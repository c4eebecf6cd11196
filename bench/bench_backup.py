#!/usr/bin/env python3
"""Dump and restore throughput of drctl jobs: over a netplugin network, over
loopback on the host, and under a 50 Mbit/s bandwidth profile, in one run.

Real drctl jobs (the agent, the runner, the job containers from
netplugin/mariadb-tools:10.11) against MariaDB servers in containers
(netplugin/mariadb:10.11), with the same data and the same limits (1 CPU,
1 GiB, no disk limit) in every case:

  netplugin     source and job on one netplugin network (VLAN a), target and the
                restore job on another (VLAN b)
  loopback      the same servers and jobs on the host's network namespace
                (--network host), talking over 127.0.0.1
  docker-bridge the same on two of Docker's own bridge networks (the goal's
                yardstick: netplugin >= 0.9x of this)
  profile-job   as netplugin, each job's endpoint under a bandwidth profile
                (default 50mbit)
  profile-src   the backup only, with the profile on the *source server's*
                endpoint instead (netplugin meters what a port sends: a backup
                job receives its data, so only a limit on the sender binds)

Rounds are interleaved (each round runs every case once) so slow spells of
this noisy machine hit every case alike; the median of the rounds is reported.

Figures per job: the SQL text moved (the dump's uncompressed size) divided by
the job's work time (running -> verifying: connect, dump or load, write or read
the file; per-table checksums are off, --no-checksums, to time the pipeline
alone), in MB/s and Mbit/s; and the whole job time (submission to success,
with container start and the limit checks).

    sudo /tmp/venv/bin/python bench/bench_backup.py [--scale 5] [--rounds 3] [--rate 50mbit] [--json]
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from tests.harness.daemon import Agent
from tests.harness.mariadb import shop_sql

SERVER_IMAGE = "netplugin/mariadb:10.11"
TOOLS_IMAGE = "netplugin/mariadb-tools:10.11"
# Its own socket (so Docker knows the driver as 'npdrbench') and bridge: the other
# benchmarks share npbench.sock and npbench0 and may run at the same time.
SOCKET = "/run/docker/plugins/npdrbench.sock"
DRIVER = "npdrbench"
BRIDGE = "npdrbench0"


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--scale", type=int, default=5, help="data size: scale x 120k rows (default 5: 600k rows)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every case once (default 3)")
    p.add_argument("--rate", default="50mbit", help="the profile's rate (default 50mbit)")
    p.add_argument("--cases", default="netplugin,loopback,docker-bridge,profile-job,profile-src")
    return C.parse(p, argv, keep_log="keep the daemon and agent logs")


class Bench:
    def __init__(self, args, out: C.Out, logdir: Path):
        self.args, self.out, self.logdir = args, out, logdir
        self.rtag = C.tag()
        self.label = f"npbench={self.rtag}"
        # this benchmark's own socket and bridge, and a metrics port
        self.daemon = C.Daemon(logdir / "netplugin.log", socket=SOCKET, bridge=BRIDGE, extra_env={
            "NETPLUGIN_METRICS_ADDRESS": f"127.0.0.1:{random.randint(19200, 19799)}"})
        self.env = dict(self.daemon.env, DRCTL_WORK_DIR=str(logdir / "work"), DRCTL_CONFIG="/dev/null",
                        DRCTL_POLL="0.2")
        self.agent = Agent(logdir / "agent.log", self.env, C.ETCD,
                           f"{self.daemon.prefix}/backup/agents/{self.daemon.host_id}")
        self.volume = f"npbench-{self.rtag}"
        self.password = secrets.token_hex(12)
        self.secret_dir = Path(tempfile.mkdtemp(prefix="npbench-secrets-"))
        self.env["DRCTL_OPTION_DIR"] = str(self.secret_dir)     # drctl mounts option files only from there
        self.cnf = self._secret("client.cnf", f"[client]\nuser=root\npassword={self.password}\n")
        self.init = self._secret("db-init.sql", f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY "
                                                f"'{self.password}';\nGRANT ALL ON *.* TO 'root'@'%';\n")
        a, b, c, d = C.pick_octets(4)
        self.subnets = {"src": f"10.{a}.0", "dst": f"10.{b}.0"}
        self.br_subnets = {"src": f"10.{c}.0", "dst": f"10.{d}.0"}
        self.br_nets = {"src": f"npbench-brsrc-{self.rtag}", "dst": f"npbench-brdst-{self.rtag}"}
        vlans = random.sample(list(C.VLANS), 2)
        self.vlans = {"src": vlans[0], "dst": vlans[1]}
        self.nets = {"src": f"npbench-src-{self.rtag}", "dst": f"npbench-dst-{self.rtag}"}
        self.ports = dict(zip(("src", "dst"), random.sample(range(33100, 33900), 2)))
        self.profile = f"bench{self.rtag}"

    def _secret(self, name: str, text: str) -> str:
        path = self.secret_dir / name
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(text)
        return str(path)

    # -- pieces ---------------------------------------------------------------------------
    def drctl(self, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "netplugin.backup.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"drctl {' '.join(args[:3])}... failed: {proc.stderr[-800:]} {proc.stdout[-1500:]}")
        return proc

    def netctl(self, *args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "netplugin.cli.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"netctl {' '.join(args)} failed: {proc.stderr.strip()}")

    def start_db(self, name: str, network: str, *extra: str, ip: str | None = None, port: int | None = None):
        args = ["run", "-d", "--name", name, "--label", self.label, "--network", network,
                "-v", f"{self.init}:/run/secrets/db-init.sql:ro"]
        if ip:
            args += ["--ip", ip]
        C.docker(*args, SERVER_IMAGE, *extra)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if C.docker("exec", name, "mariadb", "-uroot", "-e", "SELECT 1", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not start: {C.docker('logs', name, check=False).stderr[-800:]}")

    def sql(self, name: str, text: str) -> None:
        subprocess.run([C.DOCKER, "exec", "-i", name, "mariadb", "-uroot"], input=text, text=True, check=True,
                       capture_output=True, timeout=1800)

    def job(self, *args: str) -> dict:
        out = self.drctl(*args, "--label", self.label, "--no-checksums", "--wait", "--json", check=False)
        try:
            j = json.loads(out.stdout)
        except ValueError:
            raise RuntimeError(f"drctl {' '.join(args[:2])}: {out.stderr[-800:]}") from None
        if j["state"] != "succeeded":
            raise RuntimeError(f"job {j['id']} {j['state']}: {j['message']}\n{j['log_tail'][-800:]}")
        return j

    # -- one case -------------------------------------------------------------------------
    def backup(self, case: str) -> dict:
        if case == "loopback":
            return self.job("run", "--target", f"bench-{case}", "--network", "host", "--db-host", "127.0.0.1",
                            "--db-port", str(self.ports["src"]), "--database", "shop", "--option-file", self.cnf,
                            "--volume", self.volume)
        if case == "docker-bridge":
            return self.job("run", "--target", f"bench-{case}", "--network", self.br_nets["src"],
                            "--db-host", f"{self.br_subnets['src']}.10", "--database", "shop",
                            "--option-file", self.cnf, "--volume", self.volume)
        extra = ["--profile", self.profile] if case == "profile-job" else []
        return self.job("run", "--target", f"bench-{case}", "--network", self.nets["src"],
                        "--db-host", f"{self.subnets['src']}.10", "--database", "shop", "--option-file", self.cnf,
                        "--volume", self.volume, *extra)

    def restore(self, case: str, backup: str) -> dict:
        """Into a fresh schema each time: drctl refuses --replace for a backup made
        with --no-checksums (nothing to compare the swap against)."""
        into = ["--database", f"shop_{secrets.token_hex(4)}", "--option-file", self.cnf]
        if case == "loopback":
            return self.job("restore", "--backup", backup, "--target", f"bench-{case}-dst", "--network", "host",
                            "--db-host", "127.0.0.1", "--db-port", str(self.ports["dst"]), *into)
        if case == "docker-bridge":
            return self.job("restore", "--backup", backup, "--target", f"bench-{case}-dst",
                            "--network", self.br_nets["dst"], "--db-host", f"{self.br_subnets['dst']}.10", *into)
        extra = ["--profile", self.profile] if case == "profile-job" else []
        return self.job("restore", "--backup", backup, "--target", f"bench-{case}-dst", "--network", self.nets["dst"],
                        "--db-host", f"{self.subnets['dst']}.10", *into, *extra)


def figures(j: dict, sql_bytes: int) -> dict:
    hist = {h["state"]: h["time"] for h in j["history"]}
    work = hist["verifying"] - hist["running"]
    return {"job": j["id"], "work_s": round(work, 3), "total_s": round(hist["succeeded"] - j["created"], 3),
            "mb_s": round(sql_bytes / work / 1e6, 2), "mbit_s": round(sql_bytes * 8 / work / 1e6, 1)}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    logdir = Path(tempfile.mkdtemp(prefix="npbench-backup-"))
    b = Bench(args, out, logdir)
    info = C.machine()
    result: dict = {"benchmark": "backup_restore", "machine": info,
                    "command": " ".join([Path(sys.executable).name] + sys.argv),
                    "settings": {"scale": args.scale, "rounds": args.rounds, "rate": args.rate, "cases": cases,
                                 "limits": "drctl defaults: 1 CPU, 1 GiB, 256 pids, no disk limit; --no-checksums",
                                 "etcd_prefix": b.daemon.prefix, "host_id": b.daemon.host_id}}
    state = {"finished": False}
    with C.Cleanup(out) as cleanup:
        cleanup.add("remove the logs", lambda: C.drop_log(logdir, args.keep_log, state["finished"], out))
        cleanup.add("remove the secrets", lambda: __import__("shutil").rmtree(b.secret_dir, ignore_errors=True))
        cleanup.add("delete the etcd prefix", lambda: C.etcd_delete_prefix(b.daemon.prefix + "/"))
        cleanup.add(f"remove bridge {BRIDGE}", lambda: C.remove_bridge(BRIDGE))
        cleanup.add("stop the daemon", b.daemon.stop)
        for image in (SERVER_IMAGE, TOOLS_IMAGE):
            C.docker("image", "inspect", image)
        b.daemon.start()
        b.daemon.wait_bridge()

        def remove_docker():
            ids = C.docker("ps", "-aq", "--filter", f"label={b.label}", check=False).stdout.split()
            if ids:
                C.docker("rm", "-f", *ids, check=False)
            for net in [*b.nets.values(), *b.br_nets.values()]:
                C.docker("network", "rm", net, check=False)
            C.docker("volume", "rm", "-f", b.volume, check=False)
        cleanup.add("remove containers, networks and the volume", remove_docker)
        for side in ("src", "dst"):
            C.docker("network", "create", "-d", DRIVER, "--ipam-driver", DRIVER, "--subnet",
                     f"{b.subnets[side]}.0/24", "-o", f"vlan={b.vlans[side]}", b.nets[side])
            if "docker-bridge" in cases:
                C.docker("network", "create", "-d", "bridge", "--subnet", f"{b.br_subnets[side]}.0/24",
                         b.br_nets[side])
        cleanup.add("stop the agent", lambda: b.agent.stop(20))
        b.agent.start()
        out.progress("starting the MariaDB servers (2 on netplugin networks, 2 on the host network, 2 on Docker bridges)")
        b.start_db(f"npbench-{b.rtag}-src", b.nets["src"], ip=f"{b.subnets['src']}.10")
        b.start_db(f"npbench-{b.rtag}-dst", b.nets["dst"], ip=f"{b.subnets['dst']}.10")
        b.start_db(f"npbench-{b.rtag}-hsrc", "host", f"--port={b.ports['src']}", "--bind-address=127.0.0.1")
        b.start_db(f"npbench-{b.rtag}-hdst", "host", f"--port={b.ports['dst']}", "--bind-address=127.0.0.1")
        sources = [f"npbench-{b.rtag}-src", f"npbench-{b.rtag}-hsrc"]
        if "docker-bridge" in cases:
            b.start_db(f"npbench-{b.rtag}-bsrc", b.br_nets["src"], ip=f"{b.br_subnets['src']}.10")
            b.start_db(f"npbench-{b.rtag}-bdst", b.br_nets["dst"], ip=f"{b.br_subnets['dst']}.10")
            sources.append(f"npbench-{b.rtag}-bsrc")
        t0 = time.monotonic()
        sql = shop_sql(args.scale)      # the e2e drill's schema, scale times the rows
        for name in sources:
            b.sql(name, sql)
        out.progress(f"generated {120_000 * args.scale} rows on both sources in {time.monotonic() - t0:.1f} s")
        b.netctl("profile", "create", b.profile, "--rate", args.rate)
        src_ip = f"{b.subnets['src']}.10"

        runs: dict[str, list[dict]] = {c: [] for c in cases}
        for r in range(args.rounds):
            order = cases[r % len(cases):] + cases[:r % len(cases)]
            for case in order:
                if case == "profile-src":
                    b.netctl("endpoint", "set", src_ip, "--profile", b.profile)
                    try:
                        bk = b.backup("netplugin-src-limited")
                    finally:
                        b.netctl("endpoint", "set", src_ip, "--clear")
                    sql_bytes = bk["result"]["uncompressed_size"]
                    runs[case].append({"backup": figures(bk, sql_bytes), "restore": None, "sql_bytes": sql_bytes,
                                       "compressed_bytes": bk["result"]["size"]})
                else:
                    bk = b.backup(case)
                    sql_bytes = bk["result"]["uncompressed_size"]
                    rs = b.restore(case, bk["result"]["backup"])
                    runs[case].append({"backup": figures(bk, sql_bytes), "restore": figures(rs, sql_bytes),
                                       "sql_bytes": sql_bytes, "compressed_bytes": bk["result"]["size"]})
                last = runs[case][-1]
                out.progress(f"round {r + 1} {case}: dump {last['backup']['mb_s']} MB/s" +
                             (f", restore {last['restore']['mb_s']} MB/s" if last["restore"] else ""))
        summary = {}
        for case, rs in runs.items():
            row = {"sql_mb": round(rs[0]["sql_bytes"] / 1e6, 1), "compressed_mb": round(rs[0]["compressed_bytes"] / 1e6, 1)}
            for kind in ("backup", "restore"):
                vals = [x[kind] for x in rs if x[kind]]
                if vals:
                    row[kind] = {k: C.rnd(C.median([v[k] for v in vals]), 2) for k in ("work_s", "total_s", "mb_s",
                                                                                        "mbit_s")}
            both = [x for x in rs if x["restore"]]
            if both:
                row["dump_plus_restore_mb_s"] = C.rnd(C.median(
                    [x["sql_bytes"] / (x["backup"]["work_s"] + x["restore"]["work_s"]) / 1e6 for x in both]), 2)
            summary[case] = row
        for base in ("loopback", "docker-bridge"):          # each case's dump against the yardsticks
            ref = summary.get(base, {}).get("backup", {}).get("mb_s")
            for case, row in summary.items():
                if ref and row.get("backup"):
                    row[f"dump_vs_{base}"] = C.rnd(row["backup"]["mb_s"] / ref, 3)
        result["runs"] = runs
        result["summary"] = summary
        headers = ["case", "SQL MB", "dump MB/s", "dump Mbit/s", "dump job s", "restore MB/s", "restore Mbit/s",
                   "restore job s", "dump+restore MB/s", "dump vs loopback", "dump vs docker bridge"]
        rows = []
        for case, s in summary.items():
            bk, rs = s.get("backup", {}), s.get("restore", {})
            rows.append([case, s["sql_mb"], bk.get("mb_s"), bk.get("mbit_s"), bk.get("total_s"), rs.get("mb_s"),
                         rs.get("mbit_s"), rs.get("total_s"), s.get("dump_plus_restore_mb_s"),
                         s.get("dump_vs_loopback"), s.get("dump_vs_docker-bridge")])
        out.say(C.machine_line(info))
        out.say(C.table(headers, rows))
        out.result(result)
        state["finished"] = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
