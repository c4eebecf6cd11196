"""``drctl schedule ...`` and ``drctl hosts``: the fleet commands (parsing and
printing only; schedules.py and placement.py hold what they mean).

    drctl schedule create NAME --cron "0 2 * * *" [--tz Europe/Berlin] <what drctl run takes>
    drctl schedule ls [--json] [-q]     next run, last run and its result
    drctl schedule inspect NAME
    drctl schedule pause|resume NAME
    drctl schedule rm NAME
    drctl hosts [--json] [-q]           live agents: labels, cap, jobs held or queued
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from ..cli.output import print_fields, print_json, print_listing
from ..cli.parsing import command_group
from ..errors import InvalidRequest
from . import jobs
from .drills import drill_spec
from .jobs import fmt_age, fmt_time
from .model import BACKUP
from .placement import Placer, eligible, label_map
from .schedules import DRILL, Schedule, check_cron, check_schedule, next_run, zone


def add_commands(sub, common, run_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """The schedule and hosts commands; run_options(parser) adds what ``drctl run`` takes."""
    sc = command_group(sub, "schedule", "backups on a cron schedule, fired by any agent", common)
    cr = sc.add_parser("create", help="a schedule of backup jobs", parents=[common])
    cr.add_argument("name")
    cr.add_argument("--cron", required=True, help="five fields: minute hour day month weekday, e.g. '0 2 * * *'")
    cr.add_argument("--tz", default="UTC", help="the time zone of the cron times (IANA name, default UTC)")
    run_options(cr)
    cr.set_defaults(run=cmd_create)
    ls = sc.add_parser("ls", help="schedules: next run, last run and its result", parents=[common])
    ls.set_defaults(run=cmd_ls)
    for name, helptext, fn in (("inspect", "one schedule, with its missed times", cmd_inspect),
                               ("pause", "stop firing (the jobs already queued go on)", cmd_pause),
                               ("resume", "fire again from the next due time (times passed while paused "
                                          "are not run)", cmd_resume),
                               ("rm", "delete the schedule (its jobs and backups stay)", cmd_rm)):
        p = sc.add_parser(name, help=helptext, parents=[common])
        p.add_argument("name")
        p.set_defaults(run=fn)
    dr = command_group(sub, "drill", "restore drills: prove on a schedule that the latest backup restores", common)
    dc = dr.add_parser("create", help="a drill: scratch server, restore of the latest good backup, verify",
                       parents=[common])
    dc.add_argument("name")
    dc.add_argument("--cron", required=True, help="five fields, e.g. '0 5 * * 0' (Sundays 05:00)")
    dc.add_argument("--tz", default="UTC", help="the time zone of the cron times (default UTC)")
    dc.add_argument("--latest", required=True, metavar="TARGET", help="drill the newest good backup of TARGET")
    dc.add_argument("--network", "-n", required=True, help="the network the scratch server and the job join")
    dc.add_argument("--host", help="the agent that runs it (default: this host)")
    dc.add_argument("--place", action="append", default=[], metavar="LABEL=VALUE",
                    help="instead of --host: a live agent carrying these labels")
    dc.set_defaults(run=cmd_drill_create)
    dl = dr.add_parser("ls", help="drills with their target's last result, RTO and RPO", parents=[common])
    dl.set_defaults(run=cmd_drill_ls)
    drm = dr.add_parser("rm", help="delete a drill (its results stay)", parents=[common])
    drm.add_argument("name")
    drm.set_defaults(run=cmd_rm)
    hs = sub.add_parser("hosts", help="live agents: labels, cap, jobs held or queued", parents=[common])
    hs.set_defaults(run=cmd_hosts)


def cmd_create(args, ctx) -> int:
    if getattr(args, "wait", False):
        raise InvalidRequest("--wait follows one job: a schedule submits many; follow them with 'drctl ls'")
    check_cron(args.cron)
    zone(args.tz)
    req = jobs.Request.of(args)
    spec, target, host = jobs.common_spec(req, ctx.cfg, ctx.np_cfg.host_id, lambda: ctx.np_store.list_profiles())
    spec.update(jobs.backup_fields(args.database, args.volume, args.compression or ctx.cfg.compression,
                                   args.keep_last, args.max_age, args.keep_daily, args.keep_weekly,
                                   args.keep_monthly, args.budget))
    s = Schedule(name=args.name, cron=args.cron, tz=args.tz, kind=BACKUP, target=target, spec=spec, host=host,
                 place=label_map(req.place), created=time.time(), created_by=jobs.who())
    check_schedule(s, ctx.cfg)
    ctx.store.create_schedule(s)
    if s.host and not ctx.store.agent_alive(s.host):
        print(f"drctl: warning: no drctl agent is running for host {s.host}: its jobs wait in the queue until "
              "one starts", file=sys.stderr)
    if not ctx.store.agent_hosts():
        print("drctl: warning: no drctl agent is running anywhere: nothing fires the schedule until one starts",
              file=sys.stderr)
    print_json(_row(ctx, s)) if ctx.json else print(s.name)
    return 0


def cmd_drill_create(args, ctx) -> int:
    check_cron(args.cron)
    zone(args.tz)
    place = label_map(args.place)
    if place and args.host:
        raise InvalidRequest("give --host or --place, not both: --place picks the host")
    if not ctx.store.backups(args.latest):
        print(f"drctl: warning: {args.latest} has no good backup yet: the drill records a miss until it has",
              file=sys.stderr)
    s = Schedule(name=args.name, cron=args.cron, tz=args.tz, kind=DRILL, target=args.latest,
                 spec=drill_spec(args.network, args.latest), host="" if place else (args.host or ctx.np_cfg.host_id),
                 place=place, created=time.time(), created_by=jobs.who())
    check_schedule(s, ctx.cfg)
    ctx.store.create_schedule(s)
    print_json(_row(ctx, s)) if ctx.json else print(s.name)
    return 0


def cmd_drill_ls(args, ctx) -> int:
    results = {r.target: r for r in ctx.store.drill_results()}
    rows = []
    for s in _schedules(ctx):
        if s.kind != DRILL:
            continue
        r = results.get(s.target)
        rows.append({**_row(ctx, s), "result": None if r is None else asdict(r)})
    print_listing(ctx, rows, lambda r: r["name"], lambda r: r,
                  ["DRILL", "TARGET", "CRON", "NEXT RUN", "LAST", "OK", "RTO", "RPO", "MESSAGE"],
                  lambda r: [r["name"], r["target"], r["cron"], "paused" if r["paused"] else fmt_time(r["next_run"]),
                             fmt_time(r["result"]["finished"]) if r["result"] else "-",
                             ("yes" if r["result"]["ok"] else "NO") if r["result"] else "-",
                             _secs(r["result"] and r["result"]["rto"]), _secs(r["result"] and r["result"]["rpo"]),
                             (r["result"]["message"] if r["result"] else "")[:60]])
    return 0


def _secs(v) -> str:
    return "-" if v is None else fmt_age(v)


def _schedules(ctx) -> list[Schedule]:
    """The records that pass check_schedule; the others are counted on stderr."""
    good, bad = [], 0
    for item in ctx.store.schedule_items():
        try:
            s = check_schedule(Schedule.from_json(item.value), ctx.cfg)
        except InvalidRequest:
            bad += 1
            continue
        good.append(s)
    if bad:
        print(f"drctl: {bad} schedule record(s) are not valid and were left out (an agent's log says why)",
              file=sys.stderr)
    return sorted(good, key=lambda s: s.name)


def _result(ctx, s: Schedule) -> str:
    if not s.last_job:
        return "-"
    try:
        found = ctx.store.get(s.last_job)
    except InvalidRequest:
        return "bad record"
    return found[0].state if found else "gone"


def _row(ctx, s: Schedule) -> dict:
    return {"name": s.name, "cron": s.cron, "tz": s.tz, "target": s.target, "host": s.host, "place": s.place,
            "paused": s.paused, "next_run": next_run(s, time.time()), "last_run": s.last_fired,
            "last_job": s.last_job or None, "last_result": _result(ctx, s) if s.last_job else None,
            "runs": s.runs, "missed": s.missed_count}


def cmd_ls(args, ctx) -> int:
    rows = [_row(ctx, s) for s in _schedules(ctx)]
    print_listing(ctx, rows, lambda r: r["name"], lambda r: r,
                  ["SCHEDULE", "CRON", "TZ", "TARGET", "HOST", "NEXT RUN", "LAST RUN", "RESULT", "RUNS", "MISSED"],
                  lambda r: [r["name"], r["cron"], r["tz"], r["target"],
                             r["host"] or ",".join(f"{k}={v}" for k, v in sorted(r["place"].items())),
                             "paused" if r["paused"] else fmt_time(r["next_run"]), fmt_time(r["last_run"]),
                             r["last_result"] or "-", r["runs"], r["missed"]])
    return 0


def cmd_inspect(args, ctx) -> int:
    s, _ = ctx.store.get_schedule(args.name)
    check_schedule(s, ctx.cfg)
    row = _row(ctx, s)
    if ctx.json:
        print_json({**asdict(s), **row, "claims": {str(int(k)): v for k, v in ctx.store.fired(s.name).items()}})
        return 0
    spec = s.spec
    print_fields([("Schedule", s.name), ("Cron", f"{s.cron} ({s.tz})"), ("State", "paused" if s.paused else "active"),
                  ("Target", s.target), ("Host", s.host or "placed: " + ", ".join(f"{k}={v}" for k, v in
                                                                                  sorted(s.place.items()))),
                  *([("Drill", f"the newest good backup of {s.target}, into a scratch server on {spec['network']}")]
                    if s.kind == DRILL else
                    [("Database", f"{spec['database']} on {spec['db_host']}:{spec['db_port']} ({spec['network']})"),
                     ("Volume", spec["volume"])]),
                  ("Created", f"{fmt_time(s.created)} by {s.created_by}"),
                  ("Next run", "paused" if s.paused else fmt_time(row["next_run"])),
                  ("Last run", fmt_time(s.last_fired)), ("Last job", f"{s.last_job} ({row['last_result']})"
                                                         if s.last_job else "-"),
                  ("Runs", s.runs), ("Missed", s.missed_count)])
    if s.missed:
        print("\nMissed (newest last):")
        for m in s.missed:
            print(f"  {fmt_time(m.get('due'))}  {m.get('why', '')}")
    return 0


def cmd_pause(args, ctx) -> int:
    ctx.store.update_schedule(args.name, lambda s: setattr(s, "paused", True))
    print(args.name)
    return 0


def cmd_resume(args, ctx) -> int:
    def change(s: Schedule) -> None:
        if s.paused:
            s.paused, s.last_due = False, None          # re-armed by the next agent pass
    ctx.store.update_schedule(args.name, change)
    print(args.name)
    return 0


def cmd_rm(args, ctx) -> int:
    ctx.store.delete_schedule(args.name)
    print(args.name)
    return 0


def cmd_hosts(args, ctx) -> int:
    agents = ctx.store.agents()
    found = eligible(agents, {})
    rows = [{"host": h.name, "labels": h.labels, "max_jobs": h.cap, "used": h.used, "free": h.free}
            for h in Placer(ctx.store).hosts({})]
    print_listing(ctx, rows, lambda r: r["host"], lambda r: r, ["HOST", "LABELS", "CAP", "HELD+QUEUED", "FREE"],
                  lambda r: [r["host"], ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
                             r["max_jobs"], r["used"], r["free"]])
    odd = sorted(set(agents) - set(found))
    if odd and not ctx.quiet:
        print(f"drctl: agent record(s) without a sound cap or labels, never placed on: {', '.join(odd)}",
              file=sys.stderr)
    return 0
