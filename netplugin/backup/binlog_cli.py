"""``drctl binlog start|ls|stop|prune``: the binlog collector of a target,
and its archive (binlog_runner.py runs the collector, binlog.py checks what
it records, binlog_prune.py removes what no kept backup needs)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from ..cli.output import print_json, print_listing
from ..cli.parsing import command_group
from ..errors import Conflict, InvalidRequest, NotFound
from . import jobs, trust
from .binlog import at_text
from .model import BINLOG, RUNNING, TERMINAL, Job, check_name
from .resources import human_bytes

# A collector runs until stopped: its deadline (and the lease of its slot and
# server lock, which live as long as that deadline) is far away.
COLLECTOR_TIMEOUT = 10 * 365 * 86400.0


def add_commands(sub, common, job_options: Callable[[argparse.ArgumentParser], None]) -> None:
    bl = command_group(sub, "binlog", "binlog archiving for point-in-time restores", common)
    st = bl.add_parser("start", help="a collector job archiving TARGET's binary log until stopped",
                       parents=[common])
    st.add_argument("target", help="the name the archive and PITR restores use (as --target of drctl run)")
    st.add_argument("--volume", "-v", required=True, help="named Docker volume: files go to TARGET/binlog/")
    job_options(st)
    st.set_defaults(run=cmd_start)
    ls = bl.add_parser("ls", help="archived binlog files, oldest first, and the collectors", parents=[common])
    ls.add_argument("target", nargs="?", help="only this target")
    ls.set_defaults(run=cmd_ls)
    sp = bl.add_parser("stop", help="stop TARGET's collector (its archive stays)", parents=[common])
    sp.add_argument("target")
    sp.set_defaults(run=cmd_stop)
    pr = bl.add_parser("prune", help="remove this host's archived files that no kept backup needs "
                                     "(never the newest)", parents=[common])
    pr.add_argument("--target", "-t", help="only this target (default: every target with an archive)")
    pr.add_argument("--dry-run", action="store_true", help="print what would go, remove nothing")
    pr.set_defaults(run=cmd_prune)


def collectors(store, target: str | None = None, live: bool = True) -> list[Job]:
    return [j for j in store.list_jobs() if j.kind == BINLOG and (target is None or j.target == target)
            and (not live or j.state not in TERMINAL)]


def cmd_start(args, ctx) -> int:
    if args.wait:
        raise InvalidRequest("a collector does not end by itself: 'drctl binlog start --wait' waits until it runs")
    req = jobs.Request.of(argparse.Namespace(**{**vars(args), "target": args.target, "no_checksums": True}))
    if req.place:
        raise InvalidRequest("a collector is started with --host (or on this host), not --place")
    spec, target, host = jobs.common_spec(req, ctx.cfg, ctx.np_cfg.host_id, lambda: ctx.np_store.list_profiles())
    if not trust.VOLUME_RE.fullmatch(args.volume):
        raise InvalidRequest(f"volume {args.volume!r} is not a Docker volume name")
    spec.update(database="", volume=args.volume, checksums=False,
                timeout=spec["timeout"] if args.timeout else COLLECTOR_TIMEOUT)
    running = collectors(ctx.store, target)
    if running:
        raise Conflict(f"target {target} has a collector already: job {running[0].id} ({running[0].state}); "
                       f"'drctl binlog stop {target}' first")
    job = jobs.new_job(ctx.cfg, BINLOG, target, host, spec, time.time(), jobs.who())
    job.server = f"binlog+{job.server}"         # one collector per server; backups of it still run
    ctx.store.submit(job)
    if not ctx.store.agent_alive(host):
        print(f"drctl: warning: no drctl agent is running for host {host}: the collector waits until one starts",
              file=sys.stderr)
    print(job.id)
    return 0


def cmd_stop(args, ctx) -> int:
    running = collectors(ctx.store, args.target)
    if not running:
        raise NotFound(f"target {args.target} has no collector running: see 'drctl binlog ls'")
    for j in running:
        jobs.request_cancel(ctx.store, j.id, jobs.who())
        print(j.id)
    return 0


def cmd_ls(args, ctx) -> int:
    files = ctx.store.binlogs(args.target)
    if not ctx.json and not ctx.quiet and not ctx.template:
        for j in collectors(ctx.store, args.target):
            state = j.state if j.state != RUNNING else f"running since {at_text(j.entered(RUNNING) or j.created)} UTC"
            print(f"# collector {j.id} of {j.target} on {j.host}: {state}", file=sys.stderr)
    print_listing(ctx, files, lambda r: r.file, asdict,
                  ["TARGET", "FILE", "SIZE", "POSITIONS", "FIRST EVENT (UTC)", "LAST EVENT (UTC)", "EVENTS", "HOST"],
                  lambda r: [r.target, r.file, human_bytes(r.size), f"{r.start_pos}-{r.end_pos}",
                             at_text(r.first_time), at_text(r.last_time), r.events, r.host])
    return 0


def cmd_prune(args, ctx) -> int:
    from .binlog_prune import prune_all
    from .containers import Containers

    if args.target:
        check_name(args.target, "target")
    reports = prune_all(ctx.store, Containers(ctx.docker).volume_path, ctx.np_cfg.host_id, args.target,
                        dry_run=args.dry_run)
    if ctx.json:
        print_json([asdict(r) for r in reports])
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for r in reports:
        for name in r.removed + r.swept:
            print(f"{verb} {r.target}/{name}: {r.reasons.get(name, '')}")
        for what in r.skipped:
            print(f"skipped {r.target}/{what}")
        if r.bad:
            print(f"skipped {r.bad} bad binlog records of {r.target} (see the log)")
        if not ctx.quiet:
            why = f" ({r.reasons['']})" if "" in r.reasons else ""
            print(f"{r.target}: kept {r.kept} files{why}")
    if not reports and not ctx.quiet:
        print("no archived binlog file" + (f" of {args.target}" if args.target else ""))
    return 0
