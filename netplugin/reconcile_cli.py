"""``netplugin-reconcile`` (also ``netctl reconcile``): one reconcile pass on
this host. Prints a human summary, or with --json exactly one JSON line.
On a long pass, a progress line goes to stderr every ``--progress-every``
items or seconds (0: never). Exit code 0 when the pass ran (whatever it
found), 1 when it could not run."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from .errors import NetpluginError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    p.add_argument("--grace", type=float, default=60.0,
                   help="leave alone anything younger than this many seconds (default 60)")
    p.add_argument("--dead-host-after", type=float, default=None, metavar="SECONDS",
                   help="also release endpoints of hosts dead for longer than this (default: the "
                        "reconcile_dead_host_after setting; off when unset)")
    p.add_argument("--host-id", help="this host's id (default: the daemon's setting)")
    p.add_argument("--bridge", help="this host's OVS bridge (default: the daemon's setting)")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="N",
                   help="on a long pass, a progress line on stderr every N seconds and every 100 N items "
                        "(default 10; 0: none)")


class ProgressLines:
    """progress(phase, done, total) as a line on out, at most every ``seconds``
    or ``items`` (and at the end of a phase that printed before), so a short
    pass prints nothing and a long one is never silent."""

    def __init__(self, out: TextIO, seconds: float, items: int, clock: Callable[[], float] = time.monotonic):
        self.out, self.seconds, self.items, self.clock = out, seconds, items, clock
        self.started = clock()
        self.phase, self.last_time, self.last_done, self.printed = "", self.started, 0, False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if phase != self.phase:
            self.phase, self.last_time, self.last_done, self.printed = phase, now, done, False
            return
        ended = done >= total
        if (ended and self.printed) or (not ended and (now - self.last_time >= self.seconds
                                                         or done - self.last_done >= self.items)):
            pct = f" ({100 * done // total}%)" if total else ""
            self.out.write(f"netplugin-reconcile: {phase}: {done} of {total}{pct}, "
                           f"{now - self.started:.0f} s into the pass\n")
            self.out.flush()
            self.last_time, self.last_done, self.printed = now, done, True


def run(args, cfg_overrides: dict, as_json: bool) -> int:
    from .config import load
    from .logs import setup as setup_logs
    from .reconcile import as_json_line, format_human
    from .wiring import make_reconciler, reconcile_settings

    if args.grace < 0:
        print("netplugin-reconcile: --grace must be 0 or more seconds", file=sys.stderr)
        return 2
    overrides = dict(cfg_overrides)
    for key in ("host_id", "bridge"):
        if getattr(args, key, None):
            overrides[key] = getattr(args, key)
    try:
        cfg = reconcile_settings(load(overrides.pop("config", None), overrides=overrides))
        if cfg.log_format == "json":         # its warnings as JSON lines, like the daemon's
            setup_logs(logging.getLevelName(logging.getLogger().getEffectiveLevel()), "json")
        dead_host_after = args.dead_host_after if args.dead_host_after is not None else cfg.reconcile_dead_host_after
        every = getattr(args, "progress_every", 0.0) or 0.0
        progress = ProgressLines(sys.stderr, every, max(1, int(every * 100))) if every > 0 else None
        report = make_reconciler(cfg).run(dry_run=args.dry_run, grace=args.grace, dead_host_after=dead_host_after,
                                          tombstone_max_age=cfg.reconcile_tombstone_max_age, progress=progress)
    except NetpluginError as exc:
        print(f"netplugin-reconcile: {exc.message}", file=sys.stderr)
        return 1
    print(as_json_line(report) if as_json else format_human(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netplugin-reconcile",
                                description="Find and release what crashed containers leaked on this host.")
    add_arguments(p)
    p.add_argument("--config", help="TOML settings file")
    p.add_argument("--etcd-endpoints", help="comma-separated etcd URLs")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = p.parse_args(argv)
    logging.basicConfig(level="WARNING", stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"config": args.config}
    if args.etcd_endpoints:
        overrides["etcd_endpoints"] = args.etcd_endpoints
    return run(args, overrides, args.json)


if __name__ == "__main__":
    sys.exit(main())
