"""``drctl``: backup and restore jobs of MySQL/MariaDB databases, run as limited
containers on netplugin networks.

    drctl run       submit a backup job           drctl restore   submit a restore job
    drctl ls        list jobs                     drctl inspect   jobs, with their history
    drctl logs      a job's log                   drctl cancel    cancel queued or active jobs
    drctl backups   the catalog of good backups   drctl prune     apply retention to a target
    drctl rm        remove ended jobs' containers drctl check     exit 1 when a target has no recent good backup
    drctl agent     the per-host scheduler (one per Docker host, e.g. a systemd service)
    drctl events    changes as they happen (job states, progress, catalog, schedules, agents)
    drctl schedule  backups on a cron schedule      drctl hosts     live agents, labels, free slots

A separate command rather than ``netctl backup``: netctl operates the network
(its users are network operators, its state is networks and addresses); drctl
operates database jobs (DBAs, on-call), runs a long-lived agent, and talks to
Docker. It reads the same settings as netplugin for etcd and the host id.

This module parses and prints; what a command means for jobs is jobs.py's.

Exit codes: 0 ok (``run --wait``: the job succeeded), 1 error or job not
succeeded, 2 usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict

from ..cli import events
from ..cli.filters import add_filter_option, apply
from ..cli.multi import each_name
from ..cli.output import print_fields, print_inspect, print_json, print_listing, print_table
from ..cli.parsing import OutputFlags, Parser, add_output_options, options_parser, run_command, subcommands
from ..config import Config
from ..errors import InvalidRequest, NotFound
from ..store import Store
from . import config as drconfig
from . import jobs
from .containers import Containers, docker_client, is_docker_error
from .jobs import fmt_age, fmt_time, parse_duration, parse_time
from .model import BACKUP, KINDS, QUEUED, RESTORE, STATES, SUCCEEDED, TERMINAL, Job
from .placement import label_map
from .resources import human_bytes, parse_size
from .store import BackupStore

# -- parser -------------------------------------------------------------------------------


def common_options() -> Parser:
    p = options_parser()
    g = p.add_argument_group("settings")
    g.add_argument("--config", default=argparse.SUPPRESS, help="netplugin's TOML file (etcd, host id, docker)")
    g.add_argument("--drctl-config", default=argparse.SUPPRESS,
                   help="drctl's TOML file (default /etc/netplugin/drctl.toml)")
    g.add_argument("--etcd-endpoints", default=argparse.SUPPRESS, help="comma-separated etcd URLs")
    add_output_options(p, "print only ids or names")
    return p


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", "-n", required=True, help="the netplugin network the job container joins")
    p.add_argument("--ip", help="a fixed address on that network")
    p.add_argument("--db-host", required=True, help="the database server's address on that network")
    p.add_argument("--db-port", type=int, default=3306)
    p.add_argument("--option-file", required=True, metavar="PATH",
                   help="MySQL option file with [client] user and password, mode 600; mounted read-only")
    p.add_argument("--host", help="the host whose agent runs the job (default: this host)")
    p.add_argument("--place", action="append", default=[], metavar="LABEL=VALUE",
                   help="instead of --host: the live agent carrying these labels with the most free slots")
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


def _backup_options(run: argparse.ArgumentParser) -> None:
    """What ``drctl run`` takes (``drctl schedule create`` takes the same)."""
    run.add_argument("--target", "-t", help="what is backed up, the lock name (default: DB-HOST-PORT)")
    run.add_argument("--database", "-d", required=True, help="the schema to dump")
    run.add_argument("--volume", "-v", required=True, help="named Docker volume for the backups (created if absent)")
    run.add_argument("--compression", choices=("zstd", "gzip"), help="default: setting, zstd")
    run.add_argument("--keep-last", type=int, help="retention: keep the newest N backups of the target")
    run.add_argument("--max-age", help="retention: delete backups older than this (the newest is always kept)")
    _tier_options(run)
    _job_options(run)


def _tier_options(p: argparse.ArgumentParser) -> None:
    """Tiered retention and the volume budget (retention.py)."""
    p.add_argument("--keep-daily", type=int, metavar="N",
                   help="retention: the newest backup of each of the newest N days")
    p.add_argument("--keep-weekly", type=int, metavar="N", help="retention: ... of the newest N ISO weeks")
    p.add_argument("--keep-monthly", type=int, metavar="N", help="retention: ... of the newest N months")
    p.add_argument("--budget", help="retention: bytes this host's backups may take in the volume, e.g. 50g; "
                                    "the oldest go first, never the newest")


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(prog="drctl", description="MySQL/MariaDB backup and restore jobs on netplugin networks.",
                    parents=[common])
    sub = subcommands(parser, "command", "COMMAND")

    run = sub.add_parser("run", help="submit a backup job", parents=[common])
    run.add_argument("--method", choices=("logical", "physical"),
                     help="logical (default): mariadb-dump; physical: mariadb-backup streamed from a sender next to "
                          "the server's data to this job")
    run.add_argument("--incremental", action="store_true",
                     help="physical: against the target's newest physical backup")
    run.add_argument("--data-volume", help="physical: the Docker volume of the server's /var/lib/mysql")
    run.add_argument("--db-host-id", help="physical: the host whose agent runs the sender, where that volume is "
                                          "(default: this host)")
    _backup_options(run)
    run.set_defaults(run=cmd_run)

    rs = sub.add_parser("restore", help="submit a restore job", parents=[common])
    which = rs.add_mutually_exclusive_group(required=True)
    which.add_argument("--backup", "-b", help="the backup's name (see 'drctl backups')")
    which.add_argument("--latest", metavar="TARGET", help="the newest good backup of TARGET")
    rs.add_argument("--at", help="with --latest: point in time: the newest backup taken before this time, then "
                                 "the archived binlogs replayed up to it (ISO 8601 with its zone, e.g. "
                                 "2026-12-04T05:10:00Z, or epoch seconds; see 'drctl binlog')")
    rs.add_argument("--target", "-t", help="the database being restored into, the lock name (default: DB-HOST-PORT)")
    rs.add_argument("--database", "-d", help="schema to load into (default: the backed-up schema's name)")
    rs.add_argument("--volume", "-v", help="volume holding the backup (default: from the catalog)")
    rs.add_argument("--replace", action="store_true",
                    help="the target schema has tables: load into a staging schema, check every table against "
                         "the manifest, then swap them in (one RENAME TABLE); the old tables are dropped after")
    rs.add_argument("--into-source", action="store_true",
                    help="allow restoring into the very server the backup was taken from")
    rs.add_argument("--method", choices=("logical", "physical"),
                    help="default: the backup's own (catalog); physical: prepare its chain into a fresh data "
                         "volume and start a server on it named --target, at --db-host if an address")
    rs.add_argument("--data-volume", help="physical: the fresh data volume to create (default: TARGET-data)")
    rs.add_argument("--server-image", help="physical: the server image (default: setting drill_image)")
    _job_options(rs)
    rs.set_defaults(run=cmd_restore)

    ls = sub.add_parser("ls", aliases=["list"], help="list jobs", parents=[common])
    add_filter_option(ls, sorted(JOB_FILTERS))
    ls.add_argument("--state", "-s", action="append", choices=(*STATES, "active", "ended"))
    ls.add_argument("--target", "-t")
    ls.add_argument("--kind", choices=KINDS)
    ls.add_argument("--host")
    ls.add_argument("--last", type=int, default=50, help="the newest N (default 50; 0: all)")
    ls.set_defaults(run=cmd_ls)

    ins = sub.add_parser("inspect", help="jobs as JSON: spec, history, limits, result (--format table: "
                                         "for people)", parents=[common])
    ins.add_argument("jobs", nargs="+", metavar="JOB")
    ins.set_defaults(run=cmd_inspect)
    show = sub.add_parser("show", help="deprecated: 'drctl inspect --format table'", parents=[common])
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
    _tier_options(pr)
    pr.add_argument("--dry-run", action="store_true")
    pr.set_defaults(run=cmd_prune)

    rm = sub.add_parser("rm", help="remove ended jobs' containers (volumes stay)", parents=[common])
    rm.add_argument("jobs", nargs="+", metavar="JOB")
    rm.add_argument("--force", "-f", action="store_true", help="no error for a job that does not exist")
    rm.set_defaults(run=cmd_rm)

    ck = sub.add_parser("check", help="exit 1 when a target's newest good backup is too old or its last job failed",
                        parents=[common])
    ck.add_argument("--max-age", default="26h", help="default 26h")
    ck.add_argument("--drill-max-age", help="a target's last restore drill may be this old (default: setting "
                                            "drill_max_age, 8d)")
    ck.add_argument("target", nargs="*")
    ck.set_defaults(run=cmd_check)

    ev = events.add_parser(sub, common, "drctl", ["job", "backup", "schedule", "agent"],
                           ["kind", "target", "host", "state", "cron", "paused"])
    ev.set_defaults(run=cmd_events)

    ag = sub.add_parser("agent", help="run this host's scheduler in the foreground", parents=[common])
    ag.add_argument("--max-jobs", type=int, help="jobs at once on this host (default: setting, 5)")
    ag.add_argument("--host-id", help="default: netplugin's host_id")
    ag.add_argument("--log-level", default="INFO")
    ag.set_defaults(run=cmd_agent)

    from .cli_fleet import add_commands
    add_commands(sub, common, _backup_options)
    from .binlog_cli import add_commands as binlog_commands
    binlog_commands(sub, common, _job_options)
    return parser


# -- context ------------------------------------------------------------------------------

class Context(OutputFlags):
    """drctl's and netplugin's settings and the clients over them, each built on
    first use (etcd through the wiring point, as netctl's)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    @functools.cached_property
    def np_cfg(self) -> Config:
        from ..config import load
        flags = {"etcd_endpoints": self.args.etcd_endpoints} if hasattr(self.args, "etcd_endpoints") else {}
        if getattr(self.args, "host_id", None):
            flags["host_id"] = self.args.host_id
        return load(getattr(self.args, "config", None), overrides=flags)

    @functools.cached_property
    def cfg(self) -> drconfig.BackupConfig:
        over = {}
        if getattr(self.args, "max_jobs", None):
            over["max_jobs"] = self.args.max_jobs
        return drconfig.load(getattr(self.args, "drctl_config", None), overrides=over)

    @functools.cached_property
    def np_store(self) -> Store:
        from ..wiring import make_store
        return make_store(self.np_cfg)

    @functools.cached_property
    def store(self) -> BackupStore:
        return BackupStore.beside(self.np_store)

    @functools.cached_property
    def docker(self):
        return docker_client(self.np_cfg.docker_url)


# -- submitting ---------------------------------------------------------------------------

def _submit(args, ctx, kind: str, kind_fields) -> int:
    """Queue the job that args ask for, then print or follow it. kind_fields(args,
    ctx): the spec fields of that kind, checked after the common ones."""
    spec, target, host = jobs.common_spec(jobs.Request.of(args), ctx.cfg, ctx.np_cfg.host_id,
                                          lambda: ctx.np_store.list_profiles())
    spec.update(kind_fields(args, ctx))
    if kind == RESTORE:
        jobs.check_not_source(ctx.store, spec)
    job = jobs.submit(ctx.store, kind, target, host, spec, ctx.cfg, place=label_map(getattr(args, "place", [])))
    host = job.host
    if not ctx.store.agent_alive(host):
        print(f"drctl: warning: no drctl agent is running for host {host}: the job waits in the queue until one "
              f"starts ('drctl agent'), or expires after {fmt_age(spec['start_timeout'])}", file=sys.stderr)
    return _after_submit(args, ctx, job)


def _backup_fields(args, ctx) -> dict:
    fields = jobs.backup_fields(args.database, args.volume, args.compression or ctx.cfg.compression,
                                args.keep_last, args.max_age, args.keep_daily, args.keep_weekly,
                                args.keep_monthly, args.budget)
    return {**fields, **_physical_backup_fields(args, ctx)}


def _physical_backup_fields(args, ctx) -> dict:
    """--method physical: the server's data volume and the host that holds it (physical_sender.py)."""
    method = getattr(args, "method", None) or "logical"
    if method == "logical":
        if getattr(args, "incremental", False) or getattr(args, "data_volume", None) or \
                getattr(args, "db_host_id", None):
            raise InvalidRequest("--incremental, --data-volume and --db-host-id go with --method physical")
        return {}
    if not args.data_volume:
        raise InvalidRequest("--method physical needs --data-volume: the Docker volume that holds the server's "
                             "/var/lib/mysql on its host")
    if args.compression not in (None, "zstd"):
        raise InvalidRequest("a physical backup is compressed with zstd: leave --compression out")
    return {"method": "physical", "incremental": bool(args.incremental), "data_volume": args.data_volume,
            "db_host_id": args.db_host_id or ctx.np_cfg.host_id, "compression": "zstd"}


def _restore_fields(args, ctx) -> dict:
    if args.at and not args.latest:
        raise InvalidRequest("--at goes with --latest TARGET")
    if args.at:
        from .pitr import restore_fields_at
        def physical(b) -> dict:
            return {"method": "physical", "data_volume": args.data_volume or f"{args.target or b.target}-data",
                    "server_image": args.server_image or ""}
        return restore_fields_at(ctx.store, args.latest, args.at, args.database, args.volume, args.replace,
                                 args.into_source, physical)
    backup = jobs.pick_backup(ctx.store, args.backup, args.latest, parse_time(args.at) if args.at else None)
    fields = jobs.restore_fields(backup, args.database, args.volume, args.replace, args.into_source)
    method = backup.method or "logical"
    if getattr(args, "method", None) and args.method != method:
        raise InvalidRequest(f"backup {backup.name} is a {method} backup: restore it with --method {method} "
                             "(or leave --method out: it is taken from the catalog)")
    if method == "physical":
        fields.update(method="physical", data_volume=args.data_volume or f"{args.target or backup.target}-data",
                      server_image=args.server_image or "")
    elif getattr(args, "data_volume", None) or getattr(args, "server_image", None):
        raise InvalidRequest("--data-volume and --server-image go with a physical backup")
    return fields


def cmd_run(args, ctx) -> int:
    return _submit(args, ctx, BACKUP, _backup_fields)


def cmd_restore(args, ctx) -> int:
    return _submit(args, ctx, RESTORE, _restore_fields)


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


def follow(store, job_id: str, out) -> Job:
    """Wait for the job's end, fed by an etcd watch of its record, showing its
    states and progress on out as they change (a live line on a terminal,
    plain lines otherwise; None: quietly)."""
    from ..cli.progress import ProgressView
    view = ProgressView(out, out.isatty()) if out is not None else None
    stop = threading.Event()
    try:
        for job in store.watch_job(job_id, stop):
            if view is not None:
                view.update(job)
            if job.terminal:
                return job
    finally:
        stop.set()
        if view is not None:
            view.close()
    raise NotFound(f"job {job_id}: its watch ended before the job did")


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


# drctl ls --filter KEY=VALUE
JOB_FILTERS = {"id": lambda j: j.id, "kind": lambda j: j.kind, "target": lambda j: j.target,
               "host": lambda j: j.host, "state": lambda j: j.state}


def cmd_ls(args, ctx) -> int:
    jobs = ctx.store.list_jobs()
    states = set(args.state or [])
    if "active" in states:
        states |= {"starting", "running", "verifying"}
    if "ended" in states:
        states |= set(TERMINAL)
    jobs = [j for j in jobs if (not states or j.state in states) and (not args.target or j.target == args.target)
            and (not args.kind or j.kind == args.kind) and (not args.host or j.host == args.host)]
    jobs = apply(jobs, args.filters, JOB_FILTERS)
    if args.last:
        jobs = jobs[-args.last:]
    agents = ctx.store.agents()
    if ctx.quiet:
        for j in jobs:
            print(j.id)
    elif ctx.custom:
        from ..cli.template import print_formatted
        print_formatted(ctx.custom, [dict(_job_row(j), stale=_stale(ctx, j, agents)) for j in jobs])
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


def cmd_inspect(args, ctx) -> int:
    """As docker inspect: a JSON list of the jobs found; each not found said, exit 1."""
    found: list[Job] = []
    rc = each_name("drctl", args.jobs, lambda ref: found.append(ctx.store.find(ref)))
    if found or not rc:
        by_id = {j.id: j for j in found}
        print_inspect(ctx, [_job_detail(j) for j in found], lambda d: _print_job(by_id[d["id"]]))
    return rc


def cmd_show(args, ctx) -> int:
    """The old name of inspect, printing what it printed then."""
    print("drctl: 'drctl show' is deprecated: use 'drctl inspect' (JSON, as docker's; --format table for "
          "this view)", file=sys.stderr)
    j = ctx.store.find(args.job)
    if ctx.json:
        print_json(_job_detail(j))
        return 0
    _print_job(j)
    return 0


def _print_job(j: Job) -> None:
    spec = j.job_spec
    lim = spec.limits
    pairs: list[tuple[str, object]] = [
        ("Job", j.id), ("Kind", j.kind), ("Target", j.target), ("Server", j.server or "-"), ("Host", j.host),
             ("State", j.state),
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
        except Exception as exc:  # fall back to the tail in etcd
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
    who = jobs.who()
    ids = []
    for ref in args.jobs:
        j = ctx.store.find(ref)
        if j.terminal:
            print(f"drctl: job {j.id} already {j.state}", file=sys.stderr)
            continue
        jobs.request_cancel(ctx.store, j.id, who)
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
    print_listing(ctx, backups, lambda b: b.name, asdict,
                  ["BACKUP", "TARGET", "DATABASE", "CREATED", "SIZE", "TABLES", "ROWS", "VOLUME", "HOST"],
                  lambda b: [b.name, b.target, b.database, fmt_time(b.created), human_bytes(b.size), b.tables, b.rows,
                             b.volume, b.host])
    return 0


def cmd_prune(args, ctx) -> int:
    from . import retention
    tiers = retention.Tiers(args.keep_daily, args.keep_weekly, args.keep_monthly)
    if args.keep_last is None and not args.max_age and not tiers and not args.budget:
        raise InvalidRequest("give --keep-last, --max-age, --keep-daily/--keep-weekly/--keep-monthly and/or --budget")
    report = retention.prune(ctx.store, args.target, args.keep_last,
                             parse_duration(args.max_age, "max-age") if args.max_age else None, time.time(),
                             volume_path=Containers(ctx.docker).volume_path, host=ctx.np_cfg.host_id,
                             dry_run=args.dry_run, tiers=tiers,
                             budget=parse_size(args.budget, "budget") if args.budget else None)
    if ctx.json:
        print_json(asdict(report))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        for name in report.deleted:
            print(f"{verb} {name}" + (f": {report.reasons[name]}" if name in report.reasons else ""))
        for name in report.skipped:
            print(f"skipped {name}")
        if not ctx.quiet:
            print(f"kept {len(report.kept)}: {', '.join(report.kept) or '-'}")
    return 0


def cmd_rm(args, ctx) -> int:
    rc = 0
    for ref in args.jobs:
        try:
            j = ctx.store.find(ref)
        except NotFound:
            if args.force:                  # as docker rm -f: a job that does not exist is no error
                continue
            raise
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
            except Exception as exc:
                if "No such container" not in str(exc):
                    raise
            ctx.store.update(j.id, lambda job: setattr(job, "removed", time.time()))
        if not ctx.quiet:
            print(j.id)
    return rc


def cmd_check(args, ctx) -> int:
    """For monitoring (cron, Nagios, a Prometheus textfile): silence is not success."""
    rows = jobs.check_targets(ctx.store, args.target, parse_duration(args.max_age, "max-age"), time.time(),
                              drill_max_age=parse_duration(args.drill_max_age, "drill-max-age")
                              if args.drill_max_age else ctx.cfg.drill_max_age)
    bad = sum(not r["ok"] for r in rows)
    if ctx.json:
        print_json(rows)
    elif not ctx.quiet:
        print_table(["TARGET", "OK", "NEWEST", "AGE", "PROBLEMS"],
                    [[r["target"], "yes" if r["ok"] else "NO", r["newest"], fmt_age(r["age"]) if r["age"] else "-",
                      "; ".join(r["problems"])] for r in rows])
    return 1 if bad else 0


def cmd_events(args, ctx) -> int:
    """Job states (queued, starting, running ... succeeded), progress, the
    catalog, schedules and agents coming and going, as they change."""
    return events.run(args, ctx, ctx.store, "drctl", ctx.np_store.revision_ago, events.JobStates())


# -- the agent ----------------------------------------------------------------------------

def cmd_agent(args, ctx) -> int:
    from ..logs import setup
    from ..preload import preload
    preload()                       # before the agent's threads: see preload.py
    from .binlog_runner import BinlogRunner
    from .drills import Drilling, sweep_scratch
    from .fleet import fleet_passes
    from .physical_sender import Senders
    from .scheduler import Agent
    setup(args.log_level, ctx.np_cfg.log_format)      # JSON lines when the daemon's log_format is json
    cfg, host = ctx.cfg, ctx.np_cfg.host_id
    os.makedirs(cfg.work_dir, mode=0o700, exist_ok=True)
    ctx.docker.version()            # fail early and clearly when Docker is not there

    def runner():
        client = docker_client(ctx.np_cfg.docker_url)
        return Drilling(BinlogRunner(ctx.store, client, cfg, np_store=ctx.np_store), ctx.store, client, cfg, host)
    # The sending side of physical backups of this host's servers (physical_sender.py), every schedule_poll.
    senders = Senders(ctx.store, docker_client(ctx.np_cfg.docker_url), cfg, host, np_store=ctx.np_store)
    agent = Agent(ctx.store, host, cfg, runner, docker=ctx.docker,
                  sweeps=[lambda: sweep_scratch(ctx.store, ctx.docker, cfg)],
                  fleet=[*fleet_passes(ctx.store, cfg), senders.tick])

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
    # Another agent took this host: a service manager must see a failure, not a clean stop.
    return 1 if agent.host_lost.is_set() else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_command("drctl", args, Context(args))
    except Exception as exc:  # Docker's errors, said plainly
        if is_docker_error(exc):
            text = getattr(exc, "explanation", None) or str(exc)
            print(f"drctl: Docker: {text}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
