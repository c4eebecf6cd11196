"""``netctl global show|set``: cluster-wide settings."""

from __future__ import annotations

from ..arp_proxy import MODES
from ..errors import InvalidRequest
from .output import print_fields, print_json
from .parsing import command_group


def register(sub, common) -> None:
    gsub = command_group(sub, "global", "cluster-wide settings", common)
    show = gsub.add_parser("show", aliases=["info"], help="show the settings", parents=[common])
    show.set_defaults(run=global_show)
    st = gsub.add_parser("set", help="change a setting (applied live on every host)", parents=[common])
    st.add_argument("--arp-mode", choices=MODES, required=True,
                    help="proxy: OVS answers ARP for known endpoints; flood: a plain learning switch")
    st.set_defaults(run=global_set)


def global_show(args, ctx) -> int:
    settings = {"arp_mode": ctx.store.arp_mode()}
    print_json(settings) if ctx.json else print_fields([("ARP mode", settings["arp_mode"])])
    return 0


def global_set(args, ctx) -> int:
    if args.arp_mode not in MODES:
        raise InvalidRequest(f"arp mode must be one of {', '.join(MODES)}")
    ctx.store.set_arp_mode(args.arp_mode)
    return global_show(args, ctx)
