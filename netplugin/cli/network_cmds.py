"""``netctl network create|ls|inspect|rm`` and ``netctl ipam show``."""

from __future__ import annotations

import argparse
import time

from .. import networks
from ..errors import InvalidRequest
from ..model import check_subnet, check_vlan
from .output import print_fields, print_json, print_listing, print_table
from .parsing import command_group


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
    nsub = command_group(sub, "network", "global networks", common)

    c = nsub.add_parser("create", help="create a global network", parents=[common])
    c.add_argument("name")
    c.add_argument("--subnet", "-s", required=True, type=subnet_arg, help="IPv4 CIDR, /16 to /30")
    c.add_argument("--gateway", "-g", help="gateway address (default: the first address)")
    c.add_argument("--vlan", "-p", required=True, type=vlan_arg, help="VLAN id, 1-4094")
    c.add_argument("--ip-range", action="append", default=[], help="CIDR that dynamic addresses come from")
    c.add_argument("--aux-address", action="append", default=[], metavar="NAME=IP", type=aux_arg,
                   help="reserve an address for something outside netplugin")
    c.set_defaults(run=create, parser=c)

    ls = nsub.add_parser("ls", help="list global networks (-q: their ids)", parents=[common])
    ls.set_defaults(run=list_networks)

    i = nsub.add_parser("inspect", help="show one network, its pool and endpoints", parents=[common])
    i.add_argument("name")
    i.set_defaults(run=inspect)

    rm = nsub.add_parser("rm", help="remove a network (refused while endpoints exist)", parents=[common])
    rm.add_argument("name")
    rm.add_argument("--force", "-f", action="store_true", help="remove even with endpoints")
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
    nets = sorted(ctx.store.list_networks(), key=lambda n: n.label)
    print_listing(ctx, nets, lambda n: n.id,           # -q: ids, which inspect, rm and ipam show accept too
                  lambda n: {"id": n.id, "name": n.name, "subnet": n.subnet, "gateway": n.gateway, "vlan": n.vlan,
                             "ranges": n.ranges, "origin": n.origin},
                  ["NAME", "SUBNET", "GATEWAY", "VLAN", "USED", "ORIGIN"],
                  lambda n: [n.label, n.subnet, n.gateway, n.vlan, ctx.store.count_allocations(n.subnet), n.origin])
    return 0


def inspect(args, ctx) -> int:
    info = networks.describe(ctx.store, ctx.ipam, ctx.store.find_network(args.name))
    if ctx.json:
        print_json(info)
        return 0
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
    return 0


def remove(args, ctx) -> int:
    net = networks.remove(ctx.store, args.name, force=args.force)
    if ctx.json:
        print_json({"removed": net.label, "id": net.id})
    elif not ctx.quiet:
        print(net.label)
    return 0


def ipam_show(args, ctx) -> int:
    usage = ctx.ipam.usage(ctx.store.find_network(args.name))
    if ctx.json:
        print_json(usage)
    else:
        print_fields([("Subnet", usage["subnet"]), ("Size", usage["size"]), ("Used", usage["used"]),
                      ("Free", usage["free"]), ("Ranges", ", ".join(usage["ranges"])),
                      ("Reserved", ", ".join(usage["reserved"]))])
    return 0
