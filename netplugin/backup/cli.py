"""``drctl``: backup and restore jobs of MySQL/MariaDB databases, run as limited
containers on netplugin networks.

    drctl run       submit a backup job           drctl restore   submit a restore job
    drctl ls        list jobs                     drctl show      one job, with its history
    drctl logs      a job's log                   drctl cancel    cancel queued or active jobs
    drctl backups   the catalog of good backups   drctl prune     apply retention to a target
    drctl rm        remove ended jobs' containers drctl check     exit 1 when a target has no recent good backup
    drctl agent     the per-host scheduler (one per Docker host, e.g. a systemd service)

A separate command rather than ``netctl backup``: netctl operates the network
(its users are network operators, its state is networks and addresses); drctl
operates database jobs (DBAs, on-call), runs a long-lived agent, and talks to
Docker. It reads the same settings as netplugin for etcd and the host id.

Exit codes: 0 ok (``run --wait``: the job succeeded), 1 error or job not
succeeded, 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import asdict

from ..cli.output import print_fields, print_json, print_table
from ..errors import InvalidRequest, NetpluginError, NotFound
from . import config as drconfig
from .resources import human_bytes, make_limits
from .model import (BACKUP, CANCELLED, KINDS, QUEUED, RESTORE, STATES, SUCCEEDED, TERMINAL, Job, JobSpec,
                    check_database, check_db_host, check_name, new_job_id, server_key)

USAGE_ERROR = 2
_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)?\s*", re.I)
_VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def parse_duration(text: str, what: str = "duration") -> float:
    """'90' / '90s' / '10m' / '6h' / '7d' / '2w' -> seconds."""
    m = _DURATION_RE.fullmatch(str(text))
    if m is None:
        raise InvalidRequest(f"{what} {text!r} is not a duration such as 90s, 10m, 6h or 7d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[(m.group(2) or "s").lower()]


def parse_time(text: str) -> float:
    """An ISO time (2026-11-26T04:00, UTC unless an offset is given) or epoch seconds."""
    from datetime import datetime, timezone
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"time {text!r} is not ISO 8601 (2026-11-26T04:00) or epoch seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def fmt_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


# -- parser -------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("settings")
    g.add_argument("--config", default=argparse.SUPPRESS, help="netplugin's TOML file (etcd, host id, docker)")
    g.add_argument("--drctl-config", default=argparse.SUPPRESS, help="drctl's TOML file (default /etc/netplugin/drctl.toml)")
    g.add_argument("--etcd-endpoints", default=argparse.SUPPRESS, help="comma-separated etcd URLs")
    o = p.add_argument_group("output")
    o.add_argument("--json", "-j", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    o.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print only ids or names")
    return p


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", "-n", required=True, help="the netplugin network the job container joins")
    p.add_argument("--ip", help="a fixed address on that network")
    p.add_argument("--db-host", required=True, help="the database server's address on that network")
    p.add_argument("--db-port", type=int, default=3306)
    p.add_argument("--option-file", required=True, metavar="PATH",
                   help="MySQL option file with [client] user and password, mode 600; mounted read-only")
    p.add_argument("--host", help="the host whose agent runs the job (default: this host)")
    p.add_argument("--label", "-l", action="append", default=[], metavar="KEY=VALUE", help="container label")
    p.add_argument("--image", help="tools image (default: the setting 'image')")
    lim = p.add_argument_group("limits (defaults: drctl settings)")
    lim.add_argument("--cpus", help="CPUs, e.g. 0.5 or 2")
    lim.add_argument("--memory", "-m", help="memory, e.g. 512m; swap is always off")
    lim.add_argument("--pids", help="most processes")
    lim.add_argument("--read-bps", help="disk read rate on the volume's disk, e.g. 50mb")
    lim.add_argument("--write-bps", help="disk write rate on the volume's disk, e.g. 50mb")
    lim.add_argument("--read-iops", help="disk read operations per second")
    lim.add_argument("--write-iops", help="disk write operations per second")
    lim.add_argument("--profile", "-p", help="netplugin bandwidth profile for the job's endpoint")
    lim.add_argument("--no-strict", action="store_true",
                     help="run even when Docker or the kernel dropped a limit (recorded in the job)")
    t = p.add_argument_group("deadlines")
    t.add_argument("--start-timeout", help="from submission until running (default: setting, 10m)")
    t.add_argument("--timeout", help="from admission until the end (default: setting, 6h)")
    p.add_argument("--no-checksums", action="store_true", help="no per-table checksums and row counts")
    p.add_argument("--wait", "-w", action="store_true", help="follow the job to its end; exit 0 only if it succeeded")


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(prog="drctl", description="MySQL/MariaDB backup and restore jobs on netplugin networks.",
                    parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    run = sub.add_parser("run", help="submit a backup job", parents=[common])
    run.add_argument("--target", "-t", help="what is backed up, the lock name (default: DB-HOST-PORT)")
    run.add_argument("--database", "-d", required=True, help="the schema to dump")
    run.add_argument("--volume", "-v", required=True, help="named Docker volume for the backups (created if absent)")
    run.add_argument("--compression", choices=("zstd", "gzip"), help="default: setting, zstd")
    run.add_argument("--keep-last", type=int, help="retention: keep the newest N backups of the target")
    run.add_argument("--max-age", help="retention: delete backups older than this (the newest is always kept)")
    _job_options(run)
    run.set_defaults(run=cmd_run)

    rs = sub.add_parser("restore", help="submit a restore job", parents=[common])
    which = rs.add_mutually_exclusive_group(required=True)
    which.add_argument("--backup", "-b", help="the backup's name (see 'drctl backups')")
    which.add_argument("--latest", metavar="TARGET", help="the newest good backup of TARGET")
    rs.add_argument("--at", help="with --latest: the newest backup made at or before this time")
    rs.add_argument("--target", "-t", help="the database being restored into, the lock name (default: DB-HOST-PORT)")
    rs.add_argument("--database", "-d", help="schema to load into (default: the backed-up schema's name)")
    rs.add_argument("--volume", "-v", help="volume holding the backup (default: from the catalog)")
    rs.add_argument("--replace", action="store_true", help="drop the target schema first if it has tables")
    _job_options(rs)
    rs.set_defaults(run=cmd_restore)

    ls = sub.add_parser("ls", help="list jobs", parents=[common])
    ls.add_argument("--state", "-s", action="append", choices=STATES + ("active", "ended"))
    ls.add_argument("--target", "-t")
    ls.add_argument("--kind", choices=KINDS)
    ls.add_argument("--host")
    ls.add_argument("--last", type=int, default=50, help="the newest N (default 50; 0: all)")
    ls.set_defaults(run=cmd_ls)

    show = sub.add_parser("show", help="one job: spec, history, limits, result", parents=[common])
    show.add_argument("job")
    show.set_defaults(run=cmd_show)

    logs = sub.add_parser("logs", help="a job's log (the container's, or the tail kept in etcd)", parents=[common])
    logs.add_argument("job")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(run=cmd_logs)

    cancel = sub.add_parser("cancel", help="cancel queued or active jobs", parents=[common])
    cancel.add_argument("jobs", nargs="+", metavar="JOB")
    cancel.add_argument("--wait", "-w", action="store_true", help="until they ended")
    cancel.set_defaults(run=cmd_cancel)

    bk = sub.add_parser("backups", help="the catalog: verified backups, newest first", parents=[common])
    bk.add_argument("target", nargs="?")
    bk.set_defaults(run=cmd_backups)

    pr = sub.add_parser("prune", help="delete old backups of a target (never the newest)", parents=[common])
    pr.add_argument("target")
    pr.add_argument("--keep-last", type=int)
    pr.add_argument("--max-age")
    pr.add_argument("--dry-run", action="store_true")
    pr.set_defaults(run=cmd_prune)

    rm = sub.add_parser("rm", help="remove ended jobs' containers (volumes stay)", parents=[common])
    rm.add_argument("jobs", nargs="+", metavar="JOB")
    rm.set_defaults(run=cmd_rm)

    ck = sub.add_parser("check", help="exit 1 when a target's newest good backup is too old or its last job failed",
                        parents=[common])
    ck.add_argument("--max-age", default="26h", help="default 26h")
    ck.add_argument("target", nargs="*")
    ck.set_defaults(run=cmd_check)

    ag = sub.add_parser("agent", help="run this host's scheduler in the foreground", parents=[common])
    ag.add_argument("--max-jobs", type=int, help="jobs at once on this host (default: setting, 5)")
    ag.add_argument("--host-id", help="default: netplugin's host_id")
    ag.add_argument("--log-level", default="INFO")
    ag.set_defaults(run=cmd_agent)
    return parser


# -- context ------------------------------------------------------------------------------

class Context:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._np_cfg = None
        self._cfg = None
        self._kv = None
        self._store = None
        self._np_store = None
        self._docker = None

    @property
    def np_cfg(self):
        if self._np_cfg is None:
            from ..config import load
            flags = {"etcd_endpoints": self.args.etcd_endpoints} if hasattr(self.args, "etcd_endpoints") else {}
            if getattr(self.args, "host_id", None):
                flags["host_id"] = self.args.host_id
            self._np_cfg = load(getattr(self.args, "config", None), overrides=flags)
        return self._np_cfg

    @property
    def cfg(self) -> drconfig.BackupConfig:
        if self._cfg is None:
            over = {}
            if getattr(self.args, "max_jobs", None):
                over["max_jobs"] = self.args.max_jobs
            self._cfg = drconfig.load(getattr(self.args, "drctl_config", None), overrides=over)
        return self._cfg

    @property
    def kv(self):
        if self._kv is None:
            from ..kv import EtcdKV
            c = self.np_cfg
            self._kv = EtcdKV(c.etcd_endpoints, timeout=c.etcd_timeout, cacert=c.etcd_cacert, cert=c.etcd_cert,
                              key=c.etcd_key, user=c.etcd_user, password=c.etcd_password)
        return self._kv

    @property
    def store(self):
        if self._store is None:
            from .store import BackupStore
            self._store = BackupStore(self.kv, self.np_cfg.etcd_prefix)
        return self._store

    @property
    def np_store(self):
        if self._np_store is None:
            from ..store import Store
            self._np_store = Store(self.kv, self.np_cfg.etcd_prefix)
        return self._np_store

    @property
    def docker(self):
        if self._docker is None:
            import docker
            self._docker = docker.APIClient(base_url=self.np_cfg.docker_url, timeout=120, version="auto")
        return self._docker

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def quiet(self) -> bool:
        return bool(getattr(self.args, "quiet", False))


# -- submitting ---------------------------------------------------------------------------

def _labels(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"label {item!r} must be KEY=VALUE")
        out[key] = value
    return out


def _common_spec(args, ctx, kind: str) -> tuple[dict, str, str]:
    cfg = ctx.cfg
    check_db_host(args.db_host)
    if not 1 <= args.db_port <= 65535:
        raise InvalidRequest(f"db-port {args.db_port} is not a port")
    if args.ip:
        try:
            ipaddress.IPv4Address(args.ip)
        except ValueError:
            raise InvalidRequest(f"ip {args.ip!r} is not an IPv4 address") from None
    if not os.path.isabs(args.option_file):
        raise InvalidRequest(f"option file {args.option_file!r} must be an absolute path (it is mounted)")
    host = args.host or ctx.np_cfg.host_id
    if host == ctx.np_cfg.host_id:
        if not os.path.isfile(args.option_file):
            raise InvalidRequest(f"option file {args.option_file} does not exist")
        if os.stat(args.option_file).st_mode & 0o077:
            raise InvalidRequest(f"option file {args.option_file} is readable by others: it holds a password; "
                                 f"chmod 600 {args.option_file}")
    limits = make_limits(
        cpus=args.cpus if args.cpus is not None else cfg.cpus,
        memory=args.memory if args.memory is not None else cfg.memory,
        pids=args.pids if args.pids is not None else cfg.pids,
        read_bps=args.read_bps if args.read_bps is not None else cfg.read_bps,
        write_bps=args.write_bps if args.write_bps is not None else cfg.write_bps,
        read_iops=args.read_iops if args.read_iops is not None else cfg.read_iops,
        write_iops=args.write_iops if args.write_iops is not None else cfg.write_iops,
        profile=args.profile if args.profile is not None else cfg.profile)
    if limits.profile and limits.profile not in ctx.np_store.list_profiles():
        raise NotFound(f"profile {limits.profile!r} does not exist: see 'netctl profile ls'")
    spec = {
        "network": args.network, "ip": args.ip or "", "db_host": args.db_host, "db_port": args.db_port,
        "option_file": args.option_file, "image": args.image or "", "limits": asdict(limits),
        "start_timeout": parse_duration(args.start_timeout, "start-timeout") if args.start_timeout else cfg.start_timeout,
        "timeout": parse_duration(args.timeout, "timeout") if args.timeout else cfg.timeout,
        "labels": _labels(args.label), "checksums": not args.no_checksums, "strict": cfg.strict and not args.no_strict,
    }
    target = args.target or re.sub(r"[^A-Za-z0-9_.-]", "-", f"{args.db_host}-{args.db_port}")
    check_name(target, "target")
    return spec, target, host


def resolve_server(network: str, db_host: str, db_port: int, resolve=socket.getaddrinfo) -> str:
    """The lock name of the server a job talks to (model.server_key): a host name is
    resolved to its IPv4 address when this host can; else the name itself is used."""
    address = db_host
    try:
        ipaddress.ip_address(db_host)
    except ValueError:
        try:
            found = resolve(db_host, db_port, socket.AF_INET, socket.SOCK_STREAM)
            if found:
                address = found[0][4][0]
        except (OSError, UnicodeError):
            pass
    return server_key(network, address, db_port)


def _submit(ctx, kind: str, target: str, host: str, spec: dict) -> Job:
    now = time.time()
    JobSpec.from_dict(spec)          # every field known
    job = Job(id=new_job_id(now), kind=kind, target=target, host=host, spec=spec, created=now, updated=now,
              server=resolve_server(spec["network"], spec["db_host"], spec["db_port"]),
              start_by=now + spec["start_timeout"],
              history=[{"state": QUEUED, "time": now, "message": "submitted"}],
              submitted_by=f"{getpass.getuser()}@{socket.gethostname()}")
    ctx.store.submit(job)
    if not ctx.store.agent_alive(host):
        print(f"drctl: warning: no drctl agent is running for host {host}: the job waits in the queue until one "
              f"starts ('drctl agent'), or expires after {fmt_age(spec['start_timeout'])}", file=sys.stderr)
    return job


def cmd_run(args, ctx) -> int:
    spec, target, host = _common_spec(args, ctx, BACKUP)
    check_database(args.database)
    if not _VOLUME_RE.fullmatch(args.volume):
        raise InvalidRequest(f"volume {args.volume!r} is not a Docker volume name")
    if args.keep_last is not None and args.keep_last < 1:
        raise InvalidRequest("keep-last must be at least 1: the last good backup is always kept")
    spec.update(database=args.database, volume=args.volume, compression=args.compression or ctx.cfg.compression,
                keep_last=args.keep_last, max_age=parse_duration(args.max_age, "max-age") if args.max_age else None)
    job = _submit(ctx, BACKUP, target, host, spec)
    return _after_submit(args, ctx, job)


def pick_backup(store, name: str | None, latest: str | None, at: float | None):
    if name:
        return store.find_backup(name)
    found = [b for b in store.backups(latest) if at is None or b.created <= at]
    if not found:
        when = f" made at or before {fmt_time(at)}" if at is not None else ""
        raise NotFound(f"no good backup of {latest}{when}: see 'drctl backups {latest}'")
    return found[0]


def cmd_restore(args, ctx) -> int:
    spec, target, host = _common_spec(args, ctx, RESTORE)
    if args.at and not args.latest:
        raise InvalidRequest("--at goes with --latest TARGET")
    backup = pick_backup(ctx.store, args.backup, args.latest, parse_time(args.at) if args.at else None)
    database = check_database(args.database or backup.database)
    spec.update(backup=backup.name, source_target=backup.target, volume=args.volume or backup.volume,
                database=database, compression=backup.compression, replace=bool(args.replace))
    job = _submit(ctx, RESTORE, target, host, spec)
    return _after_submit(args, ctx, job)


def _after_submit(args, ctx, job: Job) -> int:
    if not args.wait:
        print_json(_job_row(job)) if ctx.json else print(job.id)
        return 0
    if not ctx.json:
        print(job.id, flush=True)
    final = follow(ctx.store, job.id, None if ctx.json else sys.stderr)
    if ctx.json:
        print_json(_job_detail(final))
    else:
        print(f"{final.state}: {final.message}")
    return 0 if final.state == SUCCEEDED else 1


def follow(store, job_id: str, out, poll: float = 0.5) -> Job:
    seen = 0
    while True:
        job = store.get(job_id)[0]
        for h in job.history[seen:]:
            if out is not None:
                print(f"{fmt_time(h['time'])}  {h['state']:<10} {h.get('message', '')}", file=out, flush=True)
        seen = len(job.history)
        if job.terminal:
            return job
        time.sleep(poll)


# -- reading ------------------------------------------------------------------------------

def _job_row(j: Job) -> dict:
    return {"id": j.id, "kind": j.kind, "target": j.target, "host": j.host, "state": j.state,
            "created": j.created, "updated": j.updated, "message": j.message}


def _job_detail(j: Job) -> dict:
    d = asdict(j)
    d["spec"] = dict(j.spec)
    return d


def _stale(ctx, j: Job, agents: dict) -> bool:
    return j.active and j.host not in agents


def cmd_ls(args, ctx) -> int:
    jobs = ctx.store.list_jobs()
    states = set(args.state or [])
    if "active" in states:
        states |= {"starting", "running", "verifying"}
    if "ended" in states:
        states |= set(TERMINAL)
    jobs = [j for j in jobs if (not states or j.state in states) and (not args.target or j.target == args.target)
            and (not args.kind or j.kind == args.kind) and (not args.host or j.host == args.host)]
    if args.last:
        jobs = jobs[-args.last:]
    agents = ctx.store.agents()
    if ctx.quiet:
        for j in jobs:
            print(j.id)
    elif ctx.json:
        print_json([dict(_job_row(j), stale=_stale(ctx, j, agents)) for j in jobs])
    else:
        rows = []
        for j in jobs:
            end = j.updated if j.terminal else time.time()
            began = j.entered("starting") or j.created
            state = j.state + ("?" if _stale(ctx, j, agents) else "")
            rows.append([j.id, j.kind, j.target, j.host, state, fmt_time(j.created),
                         fmt_age(end - began) if j.state != QUEUED else "-", j.message[:70]])
        print_table(["JOB", "KIND", "TARGET", "HOST", "STATE", "SUBMITTED", "TOOK", "MESSAGE"], rows)
        if any(_stale(ctx, j, agents) for j in jobs):
            print("?: active, but no agent is alive on its host: the next agent there adopts it", file=sys.stderr)
    return 0


def cmd_show(args, ctx) -> int:
    j = ctx.store.find(args.job)
    if ctx.json:
        print_json(_job_detail(j))
        return 0
    spec = j.job_spec
    lim = spec.limits
    pairs = [("Job", j.id), ("Kind", j.kind), ("Target", j.target), ("Server", j.server or "-"), ("Host", j.host), ("State", j.state),
             ("Message", j.message), ("Submitted", f"{fmt_time(j.created)} by {j.submitted_by}"),
             ("Network", f"{spec.network}" + (f" at {spec.ip}" if spec.ip else "")),
             ("Database", f"{spec.database} on {spec.db_host}:{spec.db_port}"),
             ("Volume", spec.volume), ("Option file", spec.option_file)]
    if j.kind == RESTORE:
        pairs.append(("Backup", spec.backup))
    pairs += [("Limits", ", ".join(f"{k}={v}" for k, v in lim.items() if v) or "none"),
              ("Strict", spec.strict), ("Container", f"{j.container_name} {j.container[:12]}" if j.container else ""),
              ("Address", j.ip), ("Exit code", j.exit_code), ("OOM-killed", j.oom_killed)]
    if j.result:
        pairs.append(("Result", json.dumps(j.result, sort_keys=True)))
    if j.result.get("warning"):
        pairs.append(("WARNING", j.result["warning"]))
    if j.progress and not j.terminal:
        pairs.append(("Progress", human_bytes(j.progress.get("bytes"))))
    print_fields(pairs)
    print("\nHistory:")
    for h in j.history:
        print(f"  {fmt_time(h['time'])}  {h['state']:<10} {h.get('message', '')}")
    cg = (j.limits_applied or {}).get("cgroup")
    if cg:
        print("\nEnforced (cgroup): " + ", ".join(f"{k}={v}" for k, v in sorted(cg.items())))
    if j.log_tail:
        print("\nLog tail:")
        print("  " + "\n  ".join(j.log_tail.splitlines()[-15:]))
    return 0


def cmd_logs(args, ctx) -> int:
    j = ctx.store.find(args.job)
    if j.host == ctx.np_cfg.host_id and j.container and not j.removed:
        try:
            if args.follow:
                for chunk in ctx.docker.logs(j.container, stream=True, follow=True):
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
            else:
                sys.stdout.write(ctx.docker.logs(j.container).decode(errors="replace"))
            return 0
        except Exception as exc:  # noqa: BLE001 - fall back to the tail in etcd
            if "No such container" not in str(exc):
                raise
    if j.log_tail:
        print(j.log_tail)
        if not j.terminal:
            print(f"drctl: the job runs on host {j.host}: run 'drctl logs {j.id}' there for the live log",
                  file=sys.stderr)
    else:
        print(f"drctl: no log for job {j.id} here" + ("" if j.terminal else f": it runs on host {j.host}"),
              file=sys.stderr)
    return 0


def cmd_cancel(args, ctx) -> int:
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    ids = []
    for ref in args.jobs:
        j = ctx.store.find(ref)
        if j.terminal:
            print(f"drctl: job {j.id} already {j.state}", file=sys.stderr)
            continue

        def change(job: Job):
            if job.terminal:
                return
            job.cancel_requested = who
            if job.state == QUEUED:
                job.move(CANCELLED, f"cancelled by {who} while queued")
        ctx.store.update(j.id, change)
        ids.append(j.id)
        if not ctx.quiet:
            print(j.id)
    if args.wait:
        for job_id in ids:
            final = follow(ctx.store, job_id, None)
            if not ctx.quiet:
                print(f"{job_id}: {final.state}: {final.message}")
    return 0


def cmd_backups(args, ctx) -> int:
    backups = ctx.store.backups(args.target)
    if ctx.quiet:
        for b in backups:
            print(b.name)
    elif ctx.json:
        print_json([asdict(b) for b in backups])
    else:
        print_table(["BACKUP", "TARGET", "DATABASE", "CREATED", "SIZE", "TABLES", "ROWS", "VOLUME", "HOST"],
                    [[b.name, b.target, b.database, fmt_time(b.created), human_bytes(b.size), b.tables, b.rows,
                      b.volume, b.host] for b in backups])
    return 0


def cmd_prune(args, ctx) -> int:
    from . import retention
    if args.keep_last is None and not args.max_age:
        raise InvalidRequest("give --keep-last and/or --max-age")

    def volume_path(volume):
        try:
            vol = ctx.docker.inspect_volume(volume)
        except Exception:  # noqa: BLE001
            return None
        return vol.get("Mountpoint") if vol.get("Driver") == "local" else None
    report = retention.prune(ctx.store, args.target, args.keep_last,
                             parse_duration(args.max_age, "max-age") if args.max_age else None, time.time(),
                             volume_path=volume_path, dry_run=args.dry_run)
    if ctx.json:
        print_json(asdict(report))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for name in report.deleted:
            print(f"{verb} {name}")
        for name in report.skipped:
            print(f"skipped {name}")
        if not ctx.quiet:
            print(f"kept {len(report.kept)}: {', '.join(report.kept) or '-'}")
    return 0


def cmd_rm(args, ctx) -> int:
    rc = 0
    for ref in args.jobs:
        j = ctx.store.find(ref)
        if not j.terminal:
            print(f"drctl: job {j.id} is {j.state}: cancel it first", file=sys.stderr)
            rc = 1
            continue
        if j.host != ctx.np_cfg.host_id:
            print(f"drctl: job {j.id} ran on host {j.host}: remove it there", file=sys.stderr)
            rc = 1
            continue
        if j.container and not j.removed:
            try:
                ctx.docker.remove_container(j.container, v=False)
            except Exception as exc:  # noqa: BLE001
                if "No such container" not in str(exc):
                    raise
            ctx.store.update(j.id, lambda job: setattr(job, "removed", time.time()))
        if not ctx.quiet:
            print(j.id)
    return rc


def cmd_check(args, ctx) -> int:
    """For monitoring (cron, Nagios, a Prometheus textfile): silence is not success."""
    max_age = parse_duration(args.max_age, "max-age")
    now = time.time()
    jobs = ctx.store.list_jobs()
    targets = args.target or sorted(set(ctx.store.targets()) | {j.target for j in jobs if j.kind == BACKUP})
    rows, bad = [], 0
    for t in targets:
        newest = ctx.store.backups(t)[:1]
        last_job = next((j for j in reversed(jobs) if j.target == t and j.kind == BACKUP and j.terminal), None)
        problems = []
        if not newest:
            problems.append("no good backup")
        elif now - newest[0].created > max_age:
            problems.append(f"newest good backup is {fmt_age(now - newest[0].created)} old")
        if last_job and last_job.state != SUCCEEDED:
            problems.append(f"last backup job {last_job.id} {last_job.state}")
        bad += bool(problems)
        rows.append({"target": t, "ok": not problems, "newest": newest[0].name if newest else None,
                     "age": now - newest[0].created if newest else None, "problems": problems})
    if ctx.json:
        print_json(rows)
    elif not ctx.quiet:
        print_table(["TARGET", "OK", "NEWEST", "AGE", "PROBLEMS"],
                    [[r["target"], "yes" if r["ok"] else "NO", r["newest"], fmt_age(r["age"]) if r["age"] else "-",
                      "; ".join(r["problems"])] for r in rows])
    return 1 if bad else 0


# -- the agent ----------------------------------------------------------------------------

def cmd_agent(args, ctx) -> int:
    from ..logs import setup
    from .runner import Runner
    from .scheduler import Agent
    setup(args.log_level, "text")
    cfg, host = ctx.cfg, ctx.np_cfg.host_id
    os.makedirs(cfg.work_dir, mode=0o700, exist_ok=True)
    ctx.docker.version()            # fail early and clearly when Docker is not there

    def runner():
        import docker
        client = docker.APIClient(base_url=ctx.np_cfg.docker_url, timeout=120, version="auto")
        return Runner(ctx.store, client, cfg, np_store=ctx.np_store)
    agent = Agent(ctx.store, host, cfg, runner, docker=ctx.docker)

    def stop(signum, frame):
        logging.getLogger(__name__).info("agent: signal %s: stopping (running jobs go on; the next agent adopts them)",
                                         signum)
        agent.close()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.start()
    logging.getLogger(__name__).info("agent for host %s: up to %s jobs at once, etcd prefix %s", host,
                                     agent.max_jobs, ctx.store.root)
    agent.serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args, Context(args)) or 0)
    except NetpluginError as exc:
        print(f"drctl: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("drctl: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - Docker's errors, said plainly
        if type(exc).__module__.startswith(("docker", "requests", "urllib3")):
            text = getattr(exc, "explanation", None) or str(exc)
            print(f"drctl: Docker: {text}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
