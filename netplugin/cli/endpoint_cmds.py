"""``netctl endpoint ls|inspect|release``, ``netctl host ls|inspect`` and
``netctl reconcile``."""

from __future__ import annotations

import os
import time

from ..errors import InvalidRequest, NetpluginError, NotFound
from ..reconcile_cli import add_arguments as add_reconcile_arguments
from .filters import add_filter_option, apply
from .lookup import find_endpoint
from .multi import each_name
from .output import ago, print_fields, print_inspect, print_json, print_listing
from .parsing import command_group
from .profile_cmds import add_endpoint_set


def register(sub, common) -> None:
    esub = command_group(sub, "endpoint", "container endpoints", common, aliases=["ep"])
    ls = esub.add_parser("ls", aliases=["list"], help="list endpoints", parents=[common])
    ls.add_argument("--network", "-n", help="only this network")
    ls.add_argument("--host", help="only this host")
    add_filter_option(ls, sorted(ENDPOINT_FILTERS))
    ls.set_defaults(run=endpoint_ls)
    ins = esub.add_parser("inspect", help="endpoints, by id (or prefix), IP or container, as JSON",
                          parents=[common])
    ins.add_argument("refs", nargs="+", metavar="ID|IP|CONTAINER")
    ins.set_defaults(run=endpoint_inspect)
    rel = esub.add_parser("release", help="release an endpoint whole: port, veth, record, address",
                          parents=[common])
    rel.add_argument("id", nargs="?", metavar="ID", help="endpoint id or unique prefix")
    rel.add_argument("--ip", help="release by address instead")
    rel.add_argument("--network", "-n", help="network of --ip (needed when several networks could hold it)")
    rel.add_argument("--force", action="store_true", help="even if Docker shows it attached to a running container")
    rel.add_argument("--wait", type=float, default=5.0, help="seconds to wait for another host (default 5)")
    rel.set_defaults(run=endpoint_release)
    add_endpoint_set(esub, common)

    hsub = command_group(sub, "host", "hosts of the cluster", common)
    hls = hsub.add_parser("ls", aliases=["list"], help="list hosts, alive or dead", parents=[common])
    add_filter_option(hls, sorted(HOST_FILTERS))
    hls.set_defaults(run=host_ls)
    hin = hsub.add_parser("inspect", help="hosts, as JSON", parents=[common])
    hin.add_argument("hosts", nargs="+", metavar="HOST")
    hin.set_defaults(run=host_inspect)

    rec = sub.add_parser("reconcile", help="find and release leaks on this host", parents=[common])
    add_reconcile_arguments(rec)
    rec.set_defaults(run=reconcile)


# --filter KEY=VALUE of endpoint ls and host ls
ENDPOINT_FILTERS = {
    "id": lambda e: e.id, "network": lambda e: [e.network, e.network_name], "host": lambda e: e.host,
    "ip": lambda e: e.ip, "mac": lambda e: e.mac, "vlan": lambda e: e.vlan,
}
HOST_FILTERS = {"name": lambda r: r["host"], "host": lambda r: r["host"],
                "state": lambda r: "alive" if r["alive"] else "dead", "version": lambda r: r["version"]}


def _endpoint_row(ep) -> dict:
    return {"id": ep.id, "network": ep.network_name or ep.network, "network_id": ep.network, "host": ep.host,
            "ip": ep.ip, "mac": ep.mac, "vlan": ep.vlan, "port": ep.port, "docker_network": ep.docker_network,
            "sandbox": ep.sandbox, "created": ep.created}


def endpoint_ls(args, ctx) -> int:
    eps = ctx.store.list_endpoints()
    if args.network:
        net = ctx.store.find_network(args.network)
        eps = [e for e in eps if e.network == net.id]
    if args.host:
        eps = [e for e in eps if e.host == args.host]
    eps = apply(eps, args.filters, ENDPOINT_FILTERS)
    eps.sort(key=lambda e: (e.network_name, e.host, e.ip))
    print_listing(ctx, eps, lambda e: e.id, _endpoint_row, ["ENDPOINT", "NETWORK", "HOST", "IP", "MAC", "VLAN", "PORT"],
                  lambda e: [e.id[:12], e.network_name or e.network, e.host, e.ip, e.mac, e.vlan, e.port])
    return 0


def endpoint_inspect(args, ctx) -> int:
    found: list[dict] = []
    rc = each_name("netctl", args.refs, lambda ref: found.append(_endpoint_row(find_endpoint(ctx, ref))))
    if found or not rc:
        print_inspect(ctx, found, _print_endpoint)
    return rc


def _print_endpoint(row: dict) -> None:
    row = dict(row, created=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"])))
    print_fields([(k.replace("_", " ").capitalize(), v) for k, v in row.items()])


def endpoint_release(args, ctx) -> int:
    if bool(args.id) == bool(args.ip):
        raise InvalidRequest("give an endpoint ID or --ip IP (not both)")
    body: dict = {"Force": args.force, "Wait": args.wait}
    if args.id:
        try:
            body["EndpointID"] = find_endpoint(ctx, args.id).id
        except NotFound:
            if len(args.id) != 64:
                raise
            body["EndpointID"] = args.id          # maybe released already: let the API say so
    else:
        network = args.network or _network_of_ip(ctx, args.ip)
        body.update(Network=network, Address=args.ip)
    reply = _release(ctx, body)
    if ctx.json:
        print_json(reply)
    else:
        removed = reply.get("Removed") or {}
        done = ", ".join(f"{k}={v}" for k, v in removed.items() if v)
        print(f"{reply['Status']}" + (f" on host {reply['Host']}" if reply.get("Host") else "")
              + (f": {done}" if done else "") + (f" ({reply['Warning']})" if reply.get("Warning") else ""))
    return 0


def _network_of_ip(ctx, ip: str) -> str:
    import netaddr
    try:
        addr = netaddr.IPAddress(ip)
    except (netaddr.AddrFormatError, ValueError):
        raise InvalidRequest(f"--ip {ip!r} is not an IPv4 address") from None
    for net in ctx.store.list_networks():
        if addr in netaddr.IPNetwork(net.subnet):
            return net.id
    raise NotFound(f"no network holds {ip}: see 'netctl network ls'")


def _release(ctx, body: dict) -> dict:
    """Through the local daemon's socket when it runs; otherwise queue for the owner in etcd."""
    from ..unixhttp import call
    sock = ctx.cfg.socket
    if os.path.exists(sock):
        try:
            status, reply = call(sock, "NetPlugin.ReleaseEndpoint", body, timeout=30)
        except OSError as exc:
            raise NetpluginError(f"netplugin does not answer on {sock} ({exc}): is the daemon running? "
                                 "(systemctl status netplugin)") from None
        if status != 200:
            raise NetpluginError(reply.get("Err") or f"the daemon answered {status}")
        return reply
    ep_id = body.get("EndpointID") or _endpoint_at(ctx, body.get("Network"), body.get("Address"))
    found = ctx.store.get_endpoint(ep_id) if ep_id else None
    if found is None:
        raise NetpluginError(f"netplugin is not running here (no socket at {sock}) and no endpoint record matches: "
                             "run this on a host with a running netplugin daemon, which also releases an "
                             "address that has no endpoint")
    ctx.store.request_release(found[0].host, ep_id, body["Force"], by="netctl")
    return {"Status": "pending", "EndpointID": ep_id, "Host": found[0].host}


def _endpoint_at(ctx, network: str | None, address: str | None) -> str | None:
    """The id of the endpoint holding address in network, from the records."""
    if not network or not address:
        return None
    net_id = ctx.store.find_network(network).id
    for ep in ctx.store.list_endpoints():
        if ep.ip == address and ep.network == net_id:
            return ep.id
    return None


def _host_rows(ctx) -> list[dict]:
    counts: dict[str, int] = {}
    for ep in ctx.store.list_endpoints():
        counts[ep.host] = counts.get(ep.host, 0) + 1
    # last_seen: the time of the host's last heartbeat, which stamps it (hosts.py),
    # alive or dead; by the host's own clock.
    return [{"host": h.host, "alive": alive, "bridge": h.bridge, "datapath_type": h.datapath_type,
             "uplink": h.uplink, "endpoints": counts.get(h.host, 0), "version": h.version,
             "started": h.started, "last_seen": h.last_seen}
            for h, alive in sorted(ctx.store.list_hosts(), key=lambda x: x[0].host)]


def host_ls(args, ctx) -> int:
    rows = apply(_host_rows(ctx), args.filters, HOST_FILTERS)
    print_listing(ctx, rows, lambda r: r["host"], lambda r: r,
                  ["HOST", "STATE", "BRIDGE", "DATAPATH", "UPLINK", "ENDPOINTS", "LAST SEEN"],
                  lambda r: [r["host"], "alive" if r["alive"] else "dead", r["bridge"], r["datapath_type"],
                             r["uplink"], r["endpoints"], ago(r["last_seen"])])
    return 0


def host_inspect(args, ctx) -> int:
    rows = {r["host"]: r for r in _host_rows(ctx)}
    found: list[dict] = []

    def one(host: str) -> None:
        if host not in rows:
            raise NotFound(f"host {host!r} never registered: see 'netctl host ls'")
        found.append(dict(rows[host], last_reconcile=ctx.store.last_reconcile(host)))
    rc = each_name("netctl", args.hosts, one)
    if found or not rc:
        print_inspect(ctx, found, _print_host)
    return rc


def _print_host(row: dict) -> None:
    row = dict(row)
    last = row.pop("last_reconcile")
    for key in ("started", "last_seen"):
        row[key] = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row[key]))} ({ago(row[key])})"
    print_fields([(k.replace("_", " ").capitalize(), v) for k, v in row.items()] +
                 [("Last reconcile", f"{ago(last['started'])}, {len(last['findings'])} finding(s)"
                   if last else None)])


def reconcile(args, ctx) -> int:
    from ..reconcile_cli import run
    overrides = {k: getattr(args, k) for k in ("config", "etcd_endpoints", "etcd_cacert", "etcd_cert",
                                               "etcd_key", "etcd_user", "etcd_password") if hasattr(args, k)}
    return run(args, overrides, ctx.json)
