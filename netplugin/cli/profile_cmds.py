"""``netctl profile create|ls|inspect|rm|set``, ``netctl network set`` and
``netctl endpoint set``: bandwidth limits, applied live on every host."""

from __future__ import annotations

import re

from ..bandwidth import (
    human_rate,
    make_profile,
    parse_burst,
    parse_rate,
    require_profile,
)
from ..errors import InvalidRequest
from .filters import add_filter_option, apply
from .lookup import find_endpoint
from .multi import each_name
from .output import print_fields, print_inspect, print_json, print_listing
from .parsing import command_group

# "-5mbit" after --rate: argparse takes anything starting with '-' for an option
# (and says "expected one argument") unless it looks like a negative number. An
# amount with a unit is one here, so it reaches parse_rate/parse_burst, which
# say what is wrong with it. These parsers have no option that looks like one.
_NEGATIVE_AMOUNT = re.compile(r"^-\d+(\.\d+)?[a-zA-Z]*$")


def _take_negative_amounts(parser) -> None:
    parser._negative_number_matcher = _NEGATIVE_AMOUNT


def register(sub, common) -> None:
    psub = command_group(sub, "profile", "bandwidth profiles", common, aliases=["netprofile"])
    c = psub.add_parser("create", help="create a profile", parents=[common])
    c.add_argument("name")
    c.add_argument("--rate", "-b", required=True, help="e.g. 500kbit, 100mbit, 1gbit")
    c.add_argument("--burst", "-s", help="e.g. 256kb, 2mb (default: 250 ms of the rate)")
    c.set_defaults(run=profile_create)
    _take_negative_amounts(c)
    s = psub.add_parser("set", help="change a profile's rate or burst (applied live)", parents=[common])
    s.add_argument("name")
    s.add_argument("--rate", "-b", help="new rate")
    s.add_argument("--burst", "-s", help="new burst")
    s.set_defaults(run=profile_set)
    _take_negative_amounts(s)
    ls = psub.add_parser("ls", aliases=["list"], help="list profiles", parents=[common])
    add_filter_option(ls, ["name"])
    ls.set_defaults(run=profile_ls)
    ins = psub.add_parser("inspect", help="profiles and what uses them, as JSON", parents=[common])
    ins.add_argument("names", nargs="+", metavar="PROFILE")
    ins.set_defaults(run=profile_inspect)
    rm = psub.add_parser("rm", aliases=["delete"], help="remove profiles (their limits are lifted)",
                         parents=[common])
    rm.add_argument("names", nargs="+", metavar="PROFILE")
    rm.add_argument("--force", "-f", action="store_true", help="no error for a profile that does not exist")
    rm.set_defaults(run=profile_rm)


def add_network_set(network_sub, common) -> None:
    ns = network_sub.add_parser("set", help="attach or detach a bandwidth profile", parents=[common])
    ns.add_argument("name")
    group = ns.add_mutually_exclusive_group(required=True)
    group.add_argument("--profile", "-p", help="profile for every endpoint of the network")
    group.add_argument("--no-profile", action="store_true", help="lift the network's limit")
    ns.set_defaults(run=network_set)


def add_endpoint_set(endpoint_sub, common) -> None:
    es = endpoint_sub.add_parser("set", help="limit one endpoint, overriding its network", parents=[common])
    es.add_argument("ref", metavar="ENDPOINT|IP|CONTAINER")
    group = es.add_mutually_exclusive_group(required=True)
    group.add_argument("--profile", "-p", help="a profile")
    group.add_argument("--rate", "-b", help="a rate of its own, e.g. 50mbit")
    group.add_argument("--clear", action="store_true", help="back to the network's limit")
    es.add_argument("--burst", "-s", help="with --rate: the burst")
    es.set_defaults(run=endpoint_set)
    _take_negative_amounts(es)


def _row(p, users: list[str]) -> dict:
    return {"name": p.name, "rate_kbps": p.rate_kbps, "burst_kb": p.burst_kb, "rate": human_rate(p.rate_kbps),
            "used_by": users}


def _users(ctx, name: str) -> list[str]:
    nets = [f"network {n.label}" for n in ctx.store.list_networks() if n.profile == name]
    eps = [f"endpoint {e.id[:12]}" for e in ctx.store.list_endpoints() if e.limit.get("profile") == name]
    return nets + eps


def profile_create(args, ctx) -> int:
    prof = make_profile(args.name, args.rate, args.burst)
    ctx.store.put_profile(prof, create=True)
    print_json(_row(prof, [])) if ctx.json else print(prof.name)
    return 0


def profile_set(args, ctx) -> int:
    if not args.rate and not args.burst:
        raise InvalidRequest("give --rate and/or --burst")
    current = require_profile(ctx.store.list_profiles(), args.name)
    rate = parse_rate(args.rate) if args.rate else current.rate_kbps
    burst = parse_burst(args.burst, rate) if args.burst else (
        parse_burst(None, rate) if args.rate else current.burst_kb)
    current.rate_kbps, current.burst_kb = rate, burst
    ctx.store.put_profile(current, create=False)
    print_json(_row(current, _users(ctx, args.name))) if ctx.json else print(current.name)
    return 0


def profile_ls(args, ctx) -> int:
    profiles = apply(sorted(ctx.store.list_profiles().values(), key=lambda p: p.name), args.filters,
                     {"name": lambda p: p.name})
    print_listing(ctx, profiles, lambda p: p.name, lambda p: _row(p, _users(ctx, p.name)),
                  ["NAME", "RATE", "BURST", "USED BY"],
                  lambda p: [p.name, human_rate(p.rate_kbps), f"{p.burst_kb}kbit", len(_users(ctx, p.name))])
    return 0


def profile_inspect(args, ctx) -> int:
    profiles = ctx.store.list_profiles()
    found: list[dict] = []
    rc = each_name("netctl", args.names, lambda name: found.append(
        _row(require_profile(profiles, name), _users(ctx, name))))
    if found or not rc:
        print_inspect(ctx, found, _print_profile)
    return rc


def _print_profile(row: dict) -> None:
    print_fields([("Name", row["name"]), ("Rate", f"{row['rate']} ({row['rate_kbps']} kbit/s)"),
                  ("Burst", f"{row['burst_kb']} kbit"), ("Used by", ", ".join(row["used_by"]))])


def profile_rm(args, ctx) -> int:
    """Each profile in turn; -f: one that does not exist is no error."""
    removed = []

    def one(name: str) -> None:
        if args.force and name not in ctx.store.list_profiles():
            return
        users = ctx.store.delete_profile(name)
        removed.append({"name": name, "detached": users})
        if not ctx.json and not ctx.quiet:
            print(name + (f" (limits lifted on {', '.join(users)})" if users else ""), flush=True)
    rc = each_name("netctl", args.names, one)
    if ctx.json:
        print_json(removed)
    return rc


def network_set(args, ctx) -> int:
    net = ctx.store.find_network(args.name)
    name = "" if args.no_profile else args.profile
    if name:
        require_profile(ctx.store.list_profiles(), name)
    net = ctx.store.update_network(net.id, lambda n: setattr(n, "profile", name))
    print_json({"network": net.label, "profile": net.profile or None}) if ctx.json else print(net.label)
    return 0


def endpoint_set(args, ctx) -> int:
    ep = find_endpoint(ctx, args.ref)
    if args.clear:
        limit: dict = {}
    elif args.profile:
        require_profile(ctx.store.list_profiles(), args.profile)
        limit = {"profile": args.profile}
    else:
        rate = parse_rate(args.rate)
        limit = {"rate_kbps": rate, "burst_kb": parse_burst(args.burst, rate)}
    if args.burst and not args.rate:
        raise InvalidRequest("--burst goes with --rate")
    ep = ctx.store.change_endpoint(ep.id, lambda e: setattr(e, "limit", limit))
    print_json({"endpoint": ep.id, "limit": ep.limit or None}) if ctx.json else print(ep.id[:12])
    return 0
