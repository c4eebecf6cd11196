"""The reconciler: finds what crashes leaked on this host and releases or
repairs it, without ever touching anything alive.

It compares five views of this host: etcd endpoint records, address
allocations, OVS ports carrying ``np-endpoint``, ``np…`` veths, and Docker's
own (the containers attached to this host's netplugin networks). Rules:

* Nothing younger than the grace period is touched. Even with ``--grace 0``,
  an endpoint or an address claimed less than IN_FLIGHT_FLOOR seconds ago is
  left alone: Docker calls CreateEndpoint and Join right after RequestAddress.
* An endpoint Docker shows attached to a running, paused or restarting
  container is never released; missing pieces of it are repaired instead.
* When Docker cannot be asked, nothing that depends on liveness is released:
  findings are reported only.
* One reconciler per host at a time, through a lease-bound etcd lock. The
  lease is kept alive while the run works; a run that can no longer show it
  holds the lock stops acting.
* A veth or port whose name is that of an endpoint Docker shows live is never
  deleted, even with its record and its port gone. A pooled pair taken by an
  endpoint (``npp…``) is known by the endpoint id in its host end's alias.
* A warm pool's parked pair (portpool.py: its container end still in this
  namespace, its port parked without ``np-endpoint``) is never a leak: the
  daemon adopts or removes those at start.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from time import monotonic

import netaddr

from .config import Config
from .dataplane.links import POOL_HOST_RE, Links, is_host_end, peer_of, veth_names
from .dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK, Switch
from .docker_api import DockerView
from .errors import InvalidRequest, NetpluginError
from .lease import LeaseKeeper
from .limit_sync import LimitSync
from .model import ALLOC_ENDPOINT, Allocation, Endpoint
from .release import Releaser
from .store import Store

log = logging.getLogger(__name__)

IN_FLIGHT_FLOOR = 10.0
LOCK_TTL = 120
LOCK_REFRESH_EVERY = LOCK_TTL / 4      # three refreshes may fail before the lease can expire
LOCK_SAFETY_MARGIN = LOCK_TTL / 4      # stop acting this long before an unconfirmed lease could expire
DEFAULT_TOMBSTONE_MAX_AGE = 7 * 86400.0


def container_netns(attached: dict | None) -> str:
    """A live container's network namespace, from Docker's view (its main
    process): for a record that does not name it (Join records it right after
    answering, so a daemon killed at that moment leaves the record without it)."""
    pid = int((attached or {}).get("sandbox") or 0)
    return f"/proc/{pid}/ns/net" if pid > 0 else ""


@dataclass
class Finding:
    kind: str
    id: str
    detail: str
    action: str            # release | repair | report
    done: bool = False
    error: str = ""


@dataclass
class Report:
    host: str
    started: float
    dry_run: bool
    grace: float
    docker: str = "ok"
    status: str = "done"
    duration_ms: float = 0.0
    tombstones_pruned: int = 0
    findings: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        out["counts"] = counts
        out["released"] = sum(1 for f in self.findings if f.done and f.action == "release")
        out["repaired"] = sum(1 for f in self.findings if f.done and f.action == "repair")
        out["errors"] = sum(1 for f in self.findings if f.error)
        return out


class LockKeeper:
    """Keeps the lock's lease alive from a thread while a run works.

    Each refresh also reads the lock back: the lock is held while its key
    names this run and the last such proof is younger than the lease minus a
    margin. Once another owner (or no owner) is seen, it stays lost."""

    def __init__(self, store: Store, name: str, owner: str, lease: LeaseKeeper, every: float | None = None):
        self.store, self.name, self.owner, self.lease = store, name, owner, lease
        self.every = every or LOCK_REFRESH_EVERY
        self.confirmed = monotonic()
        self.lost = ""

    def start(self) -> LockKeeper:
        self.lease.every = self.every
        self.lease.start(beat=self.refresh)      # its thread ends once the lock is lost
        return self

    def stop(self) -> None:
        self.lease.stop(wait=self.every + 5)

    def refresh(self) -> bool:
        """Renew the lease and read the lock back; False once it is lost."""
        if self.lost:
            return False
        renewed = True
        try:
            self.lease.renew()
        except NetpluginError as exc:
            renewed = False
            log.warning("reconcile lock %s: cannot renew its lease: %s", self.name, exc.message)
        try:
            owner = self.store.lock_owner(self.name)
        except NetpluginError:
            return self.held()                   # etcd unreachable: held while the last proof is recent
        if owner != self.owner:
            self.lost = f"the lock is now held by {owner}" if owner else "the lock's lease expired"
            log.error("reconcile lock %s lost (%s): this run stops acting", self.name, self.lost)
            return False
        if renewed:
            self.confirmed = monotonic()
        return self.held()

    def held(self) -> bool:
        if not self.lost and monotonic() - self.confirmed > LOCK_TTL - LOCK_SAFETY_MARGIN:
            self.lost = f"the lease could not be renewed for {int(monotonic() - self.confirmed)} s"
        return not self.lost


class Reconciler:
    def __init__(self, cfg: Config, store: Store, links: Links, switch: Switch, docker: DockerView,
                 releaser: Releaser, limits: LimitSync):
        self.cfg = cfg
        self.store = store
        self.links = links
        self.switch = switch
        self.docker = docker
        self.releaser = releaser
        self.limits = limits

    # -- the run ------------------------------------------------------------------
    def run(self, dry_run: bool = False, grace: float = 60.0, dead_host_after: float | None = None,
            tombstone_max_age: float | None = DEFAULT_TOMBSTONE_MAX_AGE,
            progress: Callable[[str, int, int], None] | None = None) -> dict:
        """progress(phase, done, total), when given, is told how a long pass goes:
        the networks whose addresses are scanned, then the findings acted on."""
        self._progress = progress or (lambda phase, done, total: None)
        self.check_host()
        report = Report(self.cfg.host_id, time.time(), dry_run, grace)
        lock = f"reconcile-{self.cfg.host_id}"
        lease = self.store.lease_keeper(LOCK_TTL, LOCK_REFRESH_EVERY, f"lock-{lock}", logger=log)
        owner = f"{socket.gethostname()}:{id(self)}"
        if not self.store.try_lock(lock, owner, lease.grant()):
            lease.revoke()
            report.status = f"skipped: another reconciler holds the lock ({self.store.lock_owner(lock)})"
            return self._finish(report, save=False)
        keeper = LockKeeper(self.store, lock, owner, lease).start()
        try:
            self._scan(report, grace)
            if dead_host_after is not None:
                self._scan_dead_hosts(report, dead_host_after)
            if not dry_run and keeper.refresh():
                self._act(keeper)
                if tombstone_max_age is not None and keeper.held():
                    report.tombstones_pruned = self._prune_tombstones(tombstone_max_age)
            if keeper.lost:
                report.status = f"stopped: lost the lock ({keeper.lost}); the rest was not done"
        finally:
            keeper.stop()
            try:
                lease.revoke()
            except NetpluginError as exc:      # expired already: nothing left to give back
                log.info("reconcile lock lease: %s", exc.message)
        return self._finish(report, save=True)

    def check_host(self) -> None:
        """Refuse to act on a host this reconciler may misread: its bridge
        must exist, and a registration of its host id must agree with its
        bridge and datapath type (wiring.make_reconciler adopts the
        registration's settings before building the reconciler)."""
        bridge, host = self.cfg.bridge, self.cfg.host_id
        reg, _ = self.store.host_registration(host)
        if reg is not None:
            for name in ("bridge", "datapath_type"):
                theirs = reg.settings.get(name)
                if theirs is not None and theirs != getattr(self.cfg, name):
                    raise InvalidRequest(
                        f"refused: the daemon of host {host} runs with {name} {theirs!r}, this reconciler with "
                        f"{getattr(self.cfg, name)!r}: nothing was changed. Run it with the daemon's settings "
                        f"(the same settings file, or --{name.replace('_', '-')} {theirs})")
        if not self.switch.bridge_exists(bridge):
            raise InvalidRequest(f"refused: bridge {bridge} does not exist on this host, so its ports and veths "
                                 f"cannot be read: nothing was changed. Check the bridge setting against the "
                                 f"daemon's ('netctl host inspect {host}')")

    def _act(self, keeper: LockKeeper) -> None:
        """Carry out the findings' actions while the lock is ours. Before
        anything is removed, Docker is asked afresh which endpoints run, on
        any network: a port, veth or endpoint of one of them is never
        removed, whatever the scan believed."""
        running = self.docker.running_endpoints() if self._removals else set()
        for i, (finding, act) in enumerate(self._actions):
            self._progress("acting on findings", i, len(self._actions))
            if not keeper.held():
                finding.error = "not done: this run lost its lock"
                continue
            touches = self._removals.get(id(finding))
            if touches is not None:
                why = self._still_running(touches, running)
                if why:
                    finding.error = f"not done: {why}"
                    continue
            try:
                act()
                finding.done = True
            except NetpluginError as exc:
                finding.error = exc.message
            except Exception as exc:
                log.exception("reconcile action failed")
                finding.error = f"{type(exc).__name__}: {exc}"
        self._progress("acting on findings", len(self._actions), len(self._actions))

    def _prune_tombstones(self, max_age: float) -> int:
        """Delete the release tombstones older than max_age of this host and of
        hosts not alive (whose own reconciler cannot); the number deleted."""
        now = time.time()
        alive = {h.host for h, up in self.store.list_hosts() if up and h.host != self.cfg.host_id}
        old = [endpoint_id for endpoint_id, stone in self.store.list_tombstones()
               if now - float(stone.get("time") or 0) > max_age and stone.get("host") not in alive]
        for endpoint_id in old:
            self.store.delete_tombstone(endpoint_id)
        return len(old)

    def _finish(self, report: Report, save: bool) -> dict:
        report.duration_ms = round((time.time() - report.started) * 1000, 1)
        out = report.as_dict()
        if save:
            counters = self.store.reconcile_counters(self.cfg.host_id) or {
                "runs": 0, "found": {}, "released": 0, "repaired": 0, "errors": 0}
            counters["runs"] += 1
            for kind, n in out["counts"].items():
                counters["found"][kind] = counters["found"].get(kind, 0) + n
            for key in ("released", "repaired", "errors"):
                counters[key] += out[key]
            counters["last_run"] = report.started
            self.store.save_reconcile(self.cfg.host_id, out, counters)
        return out

    def _pool_owner(self, name: str) -> str:
        """The endpoint id a taken pool pair's host end carries as its alias, or ''."""
        return self.links.alias(name) if POOL_HOST_RE.fullmatch(name) else ""

    def _still_running(self, touches: tuple[str, ...], running: set[str] | None) -> str:
        """Why a removal touching these endpoint ids and port names may not go ahead, or ''."""
        if running is None:
            return "Docker could not be asked which containers run"
        names = {veth_names(eid)[0] for eid in running}
        hit = [t for t in touches if t in running or t in names or self._pool_owner(t) in running]
        return f"Docker reports the container of {hit[0][:15]} running" if hit else ""

    def _add(self, report: Report, finding: Finding, act=None, removes: tuple[str, ...] = ()) -> None:
        """A finding; ``removes``: the endpoint ids and port or veth names its
        action deletes, checked against Docker right before it runs."""
        if self._docker_unknown:
            finding.action = "report"     # without Docker's view, nothing is provably dead
        report.findings.append(finding)
        if act is not None and finding.action != "report":
            self._actions.append((finding, act))
            if removes:
                self._removals[id(finding)] = removes

    # -- what is there ------------------------------------------------------------------
    def _scan(self, report: Report, grace: float) -> None:
        self._actions: list[tuple[Finding, Callable[[], object]]] = []
        self._removals: dict[int, tuple[str, ...]] = {}
        self._docker_unknown = False
        me = self.cfg.host_id
        now = time.time()

        def old(created: float, floor: float = IN_FLIGHT_FLOOR) -> bool:
            return now - created >= max(grace, floor)

        # The datapath is read before the records: a create writes its record
        # before its port and veth, so whatever port is seen here has its record
        # in the read below, and an endpoint born mid-scan is never taken for a leak.
        ports = {p["external_ids"][EXT_ENDPOINT]: p for p in self.switch.list_ports(self.cfg.bridge)
                 if p["external_ids"].get(EXT_HOST) in (None, me)}
        veths = {name for name in self.links.list_names() if is_host_end(name)}
        # A veth on another bridge belongs to another daemon sharing this kernel
        # (a test rig, a second bridge): never this host's leak.
        veths -= {name for name, bridge in self.switch.port_bridges().items() if bridge != self.cfg.bridge}
        bindings = [b for b in self.store.list_bindings() if b.host == me]
        live = self.docker.live_endpoints([b.docker_network for b in bindings])
        records = {ep.id: ep for ep in self.store.list_host_endpoints(me)}
        networks = {n.id: n for n in self.store.list_networks()}
        self._docker_unknown = live is None
        if live is None:
            report.docker = "unreachable: liveness unknown, findings are only reported"
        live_ips = {(v["network"], v["ip"]) for v in (live or {}).values()}
        # The names a live endpoint's port and veth have: never a leak, whatever else is lost.
        live_ports = {veth_names(eid)[0]: eid for eid in (live or {})}
        bound = {b.docker_network: b for b in bindings}

        for ep in records.values():
            attached = live.get(ep.id) if live is not None else None
            if live is not None and attached is None:
                if old(ep.created):
                    self._add(report, Finding("endpoint_without_container", ep.id,
                                              f"{ep.ip} on {ep.network_name}: no running container has it",
                                              "release"), lambda ep=ep: self.releaser.release_local(ep, "reconciler"),
                              removes=(ep.id, ep.port))
                continue
            has_port, has_veth = ep.id in ports, ep.port in veths
            if not has_veth:
                netns = ep.sandbox or container_netns(attached)
                can = attached is not None and bool(netns)
                self._add(report, Finding("endpoint_without_veth", ep.id,
                                          f"{ep.port} is gone; container {attached['name'] if attached else '?'}",
                                          "repair" if can else "report"),
                          lambda ep=ep, netns=netns: self._replug(ep, networks.get(ep.network), netns))
            elif not has_port:
                self._add(report, Finding("endpoint_without_port", ep.id, f"OVS port {ep.port} is gone", "repair"),
                          lambda ep=ep: self._add_port(ep))

        for eid, port in ports.items():
            if eid in records:
                continue
            attached = live.get(eid) if live is not None else None
            if attached is None and port["name"] in live_ports:
                eid = live_ports[port["name"]]           # ids that disagree with the name: the name's owner is live
                attached = (live or {})[eid]
                if eid in records:
                    continue
            if attached is not None:
                self._add(report, Finding("port_without_record", eid, f"{port['name']}: record lost, container "
                                          f"{attached['name']} alive", "repair"),
                          lambda eid=eid, port=port, attached=attached: self._rebuild_record(eid, port, attached))
            else:
                self._add(report, Finding("port_without_endpoint", eid, f"OVS port {port['name']} has no endpoint",
                                          "release" if live is not None else "report"),
                          lambda port=port, eid=eid: self._drop_port(port["name"], eid), removes=(eid, port["name"]))

        known_ports = {ep.port for ep in records.values()} | {p["name"] for p in ports.values()}
        for name in sorted(veths - known_ports):
            if POOL_HOST_RE.fullmatch(name) and self.links.exists(peer_of(name)):
                continue                   # a parked pool pair (or one being made): the daemon's own
            eid = live_ports.get(name)
            owner = self._pool_owner(name)
            if eid is None and owner in (live or {}):
                eid = owner
            if eid is not None:
                self._add_live_veth(report, name, eid, (live or {})[eid], bound)
                continue
            self._add(report, Finding("veth_without_endpoint", name, f"veth {name} has no endpoint", "release"),
                      lambda name=name: self.links.delete(name), removes=(name,))

        for n, net in enumerate(networks.values()):
            self._progress("scanning the networks' addresses", n, len(networks))
            for offset, alloc in self.store.list_allocations(net.subnet):
                if alloc.kind != ALLOC_ENDPOINT or alloc.host != me:
                    continue
                if alloc.endpoint in records or alloc.endpoint in ports:
                    continue
                if any(ip == alloc.ip for _, ip in live_ips):
                    continue      # Docker has a live container at this address: its record is being rebuilt
                if not old(alloc.created, IN_FLIGHT_FLOOR if not alloc.endpoint else 0):
                    continue
                self._add(report, Finding("ip_without_endpoint", alloc.ip,
                                          f"{alloc.ip} in {net.label}: claimed {int(now - alloc.created)} s ago, "
                                          f"no endpoint", "release"),
                          lambda net=net, offset=offset, alloc=alloc: self._drop_address(net.subnet, offset, alloc),
                          removes=(alloc.endpoint,) if alloc.endpoint else ())
        self._progress("scanning the networks' addresses", len(networks), len(networks))

    def _scan_dead_hosts(self, report: Report, dead_after: float) -> None:
        """Endpoints of hosts whose claim has been gone at least ``dead_after``
        seconds by etcd's lease clock (Store.host_gone_for): no host's clock,
        this one's included, is compared with another's. Each release is
        guarded by the host's claim still being absent."""
        me = self.cfg.host_id
        # Only hosts without a live claim are looked at, and only their own
        # endpoints are read: never the whole cluster's on every host.
        dead = {host for host in self.store.hosts_without_claim() - {me}
                if self.store.host_gone_for(host, me, dead_after)}
        for ep in [ep for host in sorted(dead) for ep in self.store.list_host_endpoints(host)]:
            if ep.host in dead:
                self._add(report, Finding("endpoint_of_dead_host", ep.id, f"{ep.ip} on dead host {ep.host}",
                                          "release"),
                          lambda ep=ep: self.store.release_endpoint(ep, "reconciler", host_gone=True))

    def _add_live_veth(self, report: Report, name: str, eid: str, attached: dict, bound: dict) -> None:
        """A live container's veth whose record and port are both gone: put the
        port back (from Docker's view and the binding), so that the next run
        rebuilds the record from it as for any port_without_record."""
        binding = bound.get(attached["network"])
        net = self.store.get_network(binding.network) if binding else None
        detail = f"veth {name}: record and port lost, container {attached['name']} alive"
        if net is None:
            self._add(report, Finding("veth_of_live_container", eid, detail + "; its network is unknown", "report"))
            return
        ext = {EXT_ENDPOINT: eid, EXT_NETWORK: net.id, EXT_HOST: self.cfg.host_id}
        self._add(report, Finding("veth_of_live_container", eid, detail, "repair"),
                  lambda: self.switch.add_access_port(self.cfg.bridge, name, net.vlan, ext))

    # -- actions -------------------------------------------------------------------------
    def _drop_address(self, subnet: str, offset: int, seen: Allocation) -> None:
        held = self.store.get_allocation(subnet, offset)
        if held and held[0].created == seen.created and held[0].endpoint == seen.endpoint:
            self.store.release_address(subnet, offset, held[1])

    def _drop_port(self, port: str, endpoint_id: str) -> None:
        self.limits.remove(endpoint_id, port)
        self.switch.delete_port(port)
        self.links.delete(port)

    def _add_port(self, ep: Endpoint) -> None:
        self.switch.add_access_port(self.cfg.bridge, ep.port, ep.vlan,
                                    {EXT_ENDPOINT: ep.id, EXT_NETWORK: ep.network, EXT_HOST: ep.host})

    def _replug(self, ep: Endpoint, net, netns: str) -> None:
        """A live container lost its veth: make a new pair and plug it in.

        The stale port goes first, and vswitchd must have let go of it before
        the new pair of the same name exists (see Switch.delete_port); it is
        deleted only while its veth is still missing, so a port that carries
        traffic is never removed to be made again."""
        if self.links.exists(ep.port):
            raise NetpluginError(f"veth {ep.port} is back: nothing was replaced; run again")
        self.switch.delete_port(ep.port, wait_vswitchd=True)
        self.links.create_veth(ep.port, ep.peer, self.cfg.mtu, ep.mac, self.cfg.datapath_type == "netdev")
        self.links.plug_into_netns(ep.peer, netns, ep.ip, ep.prefixlen, net.gateway if net else None)
        self._add_port(ep)

    def _rebuild_record(self, eid: str, port: dict, attached: dict) -> None:
        """A live container's record was lost: write it again from OVS and Docker."""
        net = self.store.get_network(port["external_ids"].get(EXT_NETWORK, ""))
        if net is None:
            raise NetpluginError(f"endpoint {eid[:12]}: its network is gone; cannot rebuild the record")
        subnet = netaddr.IPNetwork(net.subnet)
        ip = attached["ip"]
        offset = int(netaddr.IPAddress(ip)) - subnet.first
        alloc = Allocation(ip, ALLOC_ENDPOINT, self.cfg.host_id, endpoint=eid, network=net.id)
        held = self.store.get_allocation(net.subnet, offset)
        if held is None:
            if not self.store.claim_address(net.subnet, offset, alloc):
                raise NetpluginError(f"address {ip} was taken meanwhile; endpoint {eid[:12]} needs attention")
            held = self.store.get_allocation(net.subnet, offset)
            if held is None:
                raise NetpluginError(f"address {ip} was released meanwhile; endpoint {eid[:12]} needs attention")
        elif held[0].endpoint not in ("", eid) or held[0].host != self.cfg.host_id:
            raise NetpluginError(f"address {ip} of live endpoint {eid[:12]} is held by someone else")
        peer = peer_of(port["name"]) if is_host_end(port["name"]) else veth_names(eid)[1]
        ep = Endpoint(id=eid, network=net.id, docker_network=attached["network"], host=self.cfg.host_id, ip=ip,
                      prefixlen=subnet.prefixlen, mac=attached["mac"], port=port["name"], peer=peer, vlan=net.vlan,
                      network_name=net.label)
        if not self.store.create_endpoint(ep, net.subnet, offset, held[1], alloc):
            raise NetpluginError(f"endpoint {eid[:12]} changed while its record was rebuilt; run again")


def format_human(report: dict) -> str:
    lines = [f"reconcile on {report['host']}: {report['status']}, {len(report['findings'])} finding(s), "
             f"{report['released']} released, {report['repaired']} repaired, {report['errors']} error(s) "
             f"in {report['duration_ms']:.0f} ms{' (dry run)' if report['dry_run'] else ''}"]
    if report["docker"] != "ok":
        lines.append(f"docker: {report['docker']}")
    for f in report["findings"]:
        state = "done" if f["done"] else ("FAILED: " + f["error"] if f["error"] else "not done")
        lines.append(f"  {f['kind']:<26} {f['id'][:15]:<15} {f['action']:<8} {state:<10} {f['detail']}")
    return "\n".join(lines)


def as_json_line(report: dict) -> str:
    return json.dumps(report, sort_keys=True, separators=(",", ":"))
