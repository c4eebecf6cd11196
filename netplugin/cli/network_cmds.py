"""``netctl network create|ls|inspect|rm`` and ``netctl ipam show``."""

from __future__ import annotations

import argparse
import sys
import time

from .. import networks
from ..errors import InvalidRequest, NotFound
from ..model import check_subnet, check_vlan
from .filters import add_filter_option, apply
from .multi import each_name
from .output import print_fields, print_inspect, print_json, print_listing, print_table
from .parsing import command_group

# netctl network ls --filter KEY=VALUE
NETWORK_FILTERS = {
    "name": lambda n: n.label, "id": lambda n: n.id, "subnet": lambda n: n.subnet, "vlan": lambda n: n.vlan,
    "origin": lambda n: n.origin, "profile": lambda n: n.profile or None,
}


def vlan_arg(text: str) -> int:
    """--vlan: a VLAN id, 1-4094; anything else is a usage error (exit 2)."""
    try:
        return check_vlan(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def subnet_arg(text: str) -> str:
    """--subnet: an IPv4 CIDR without host bits, /16 to /30."""
    try:
        return str(check_subnet(text))
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def aux_arg(text: str) -> tuple[str, str]:
    """--aux-address NAME=IP."""
    name, sep, ip = text.partition("=")
    if not sep or not name or not ip:
        raise argparse.ArgumentTypeError(f"{text!r} must look like NAME=IP, e.g. router=10.10.0.2")
    return name, ip


def register(sub, common) -> None:
    nsub = command_group(sub, "network", "global networks", common, aliases=["net"])

    c = nsub.add_parser("create", help="create a global network", parents=[common])
    c.add_argument("name")
    c.add_argument("--subnet", "-s", required=True, type=subnet_arg, help="IPv4 CIDR, /16 to /30")
    c.add_argument("--gateway", "-g", help="gateway address (default: the first address)")
    c.add_argument("--vlan", "-p", required=True, type=vlan_arg, help="VLAN id, 1-4094")
    c.add_argument("--ip-range", action="append", default=[], help="CIDR that dynamic addresses come from")
    c.add_argument("--aux-address", action="append", default=[], metavar="NAME=IP", type=aux_arg,
                   help="reserve an address for something outside netplugin")
    c.set_defaults(run=create, parser=c)

    ls = nsub.add_parser("ls", aliases=["list"], help="list global networks (-q: their ids)", parents=[common])
    add_filter_option(ls, sorted(NETWORK_FILTERS))
    ls.set_defaults(run=list_networks)

    i = nsub.add_parser("inspect", help="networks, their pools and endpoints, as JSON", parents=[common])
    i.add_argument("names", nargs="+", metavar="NETWORK")
    i.set_defaults(run=inspect)

    rm = nsub.add_parser("rm", aliases=["delete"], help="remove networks (refused while endpoints exist)",
                         parents=[common])
    rm.add_argument("names", nargs="+", metavar="NETWORK")
    rm.add_argument("--force", "-f", action="store_true", help="no error for a network that does not exist")
    rm.add_argument("--with-endpoints", action="store_true",
                    help="also remove the records of its endpoints (each host's reconciler removes their ports)")
    rm.set_defaults(run=remove)

    from .profile_cmds import add_network_set
    add_network_set(nsub, common)

    isub = command_group(sub, "ipam", "address pools", common)
    show = isub.add_parser("show", help="pool size, use and reservations of a network", parents=[common])
    show.add_argument("name")
    show.set_defaults(run=ipam_show)


def create(args, ctx) -> int:
    # Every value is checked before etcd is asked: a bad one is a usage error
    # (exit 2); what etcd refuses (name, VLAN or subnet taken) is an error (exit 1).
    aux: dict[str, str] = {}
    for name, ip in args.aux_address:
        if name in aux:
            args.parser.error(f"argument --aux-address: {name!r} is given twice")
        aux[name] = ip
    try:
        net, reserved = networks.plan(args.name, args.subnet, args.vlan, args.gateway, args.ip_range, aux)
    except InvalidRequest as exc:
        args.parser.error(exc.message)
    ctx.store.create_network(net, reserved)
    if ctx.json:
        print_json(networks.describe(ctx.store, ctx.ipam, net))
    else:
        print(net.name)
    return 0


def list_networks(args, ctx) -> int:
    nets = apply(sorted(ctx.store.list_networks(), key=lambda n: n.label), args.filters, NETWORK_FILTERS)
    print_listing(ctx, nets, lambda n: n.id,           # -q: ids, which inspect, rm and ipam show accept too
                  lambda n: {"id": n.id, "name": n.name, "subnet": n.subnet, "gateway": n.gateway, "vlan": n.vlan,
                             "ranges": n.ranges, "origin": n.origin, "profile": n.profile or None,
                             "used": ctx.store.count_allocations(n.subnet)},
                  ["NAME", "SUBNET", "GATEWAY", "VLAN", "USED", "ORIGIN"],
                  lambda n: [n.label, n.subnet, n.gateway, n.vlan, ctx.store.count_allocations(n.subnet), n.origin])
    return 0


def inspect(args, ctx) -> int:
    """As docker's: a JSON list of those found; each one not found said on stderr, exit 1."""
    found = []
    rc = each_name("netctl", args.names, lambda name: found.append(
        networks.describe(ctx.store, ctx.ipam, ctx.store.find_network(name))))
    if found or not rc:
        print_inspect(ctx, found, _print_network)
    return rc


def _print_network(info: dict) -> None:
    pool = info["pool"]
    print_fields([("Name", info["name"]), ("Id", info["id"]), ("Subnet", info["subnet"]),
                  ("Gateway", info["gateway"]), ("VLAN", info["vlan"]), ("Ranges", ", ".join(info["ranges"])),
                  ("Aux", ", ".join(f"{k}={v}" for k, v in info["aux"].items())), ("Origin", info["origin"]),
                  ("Created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["created"]))),
                  ("Pool", f"{pool['used']} used, {pool['free']} free of {pool['size']}"),
                  ("Hosts", ", ".join(info["hosts"])), ("Endpoints", len(info["endpoints"])),
                  ("Problem", info["name_conflict"])])
    if info["endpoints"]:
        print()
        print_table(["ENDPOINT", "HOST", "IP", "MAC"],
                    [[e["id"][:12], e["host"], e["ip"], e["mac"]] for e in info["endpoints"]])


def remove(args, ctx) -> int:
    """Each network in turn; -f: one that does not exist is no error, as with
    docker. Endpoints are removed only with --with-endpoints, said first."""
    removed = []

    def one(name: str) -> None:
        try:
            net = ctx.store.find_network(name)
        except NotFound:
            if args.force:
                return
            raise
        eps = ctx.store.list_network_endpoints(net.id) if args.with_endpoints else []
        if eps:
            print(f"netctl: removing network {net.label} with its {len(eps)} endpoint record(s): "
                  + ", ".join(f"{e.id[:12]} ({e.ip} on {e.host})" for e in eps), file=sys.stderr, flush=True)
        gone = ctx.store.delete_network(net, force=args.with_endpoints)
        removed.append({"removed": net.label, "id": net.id, "endpoints": [e.id for e in gone]})
        if not ctx.json and not ctx.quiet:
            print(net.label, flush=True)
    rc = each_name("netctl", args.names, one)
    if ctx.json:
        print_json(removed)
    return rc


def ipam_show(args, ctx) -> int:
    usage = ctx.ipam.usage(ctx.store.find_network(args.name))
    if ctx.json:
        print_json(usage)
    else:
        print_fields([("Subnet", usage["subnet"]), ("Size", usage["size"]), ("Used", usage["used"]),
                      ("Free", usage["free"]), ("Ranges", ", ".join(usage["ranges"])),
                      ("Reserved", ", ".join(usage["reserved"]))])
    return 0
