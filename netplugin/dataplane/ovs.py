"""Open vSwitch through ovsdbapp: the bridge, its uplink trunk, and one VLAN
access port per endpoint, each made or removed in a single OVSDB transaction.

Ports carry ``external_ids`` so that everything netplugin made can be found
again without etcd: ``np-endpoint`` (endpoint id), ``np-network`` (network id)
and ``np-host``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from .. import deadline
from ..errors import DataplaneError, DataplaneUnavailable
from . import ovsdb_select

log = logging.getLogger(__name__)

EXT_ENDPOINT = "np-endpoint"
EXT_NETWORK = "np-network"
EXT_HOST = "np-host"
EXT_POOL = "np-pool"          # "1" on a warm pool's parked port (portpool.py)
PARK_VLAN = 4095              # the only VLAN a parked port admits; no network can have it
CONNECT_PATIENCE = 15.0


def describe(exc: BaseException) -> str:
    """str(exc), safe for ovsdbapp exceptions whose __str__ itself can fail."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # noqa: BLE001 - a failing __str__ can raise anything
        return type(exc).__name__


def _unpark(api, table: str, name: str, external_ids: dict[str, str]):
    """An OVSDB command: the row's external_ids become exactly external_ids,
    only if it is still parked (np-pool=1) when the transaction commits
    (verified, so a concurrent change makes the transaction fail, not mix)."""
    from ovsdbapp.backend.ovs_idl.command import BaseCommand

    class Unpark(BaseCommand):
        def run_idl(self, txn):
            record = self.api.lookup(table, name)
            record.verify("external_ids")
            if dict(record.external_ids).get(EXT_POOL) != "1":
                raise DataplaneError(f"port {name} is not a parked pool port")
            record.external_ids = dict(external_ids)

    return Unpark(api)


class Switch:
    """One OVSDB connection, opened on first use and reopened after a failure.

    Opening is bounded by ``timeout``: an ovsdb-server that accepts but never
    answers gives DataplaneUnavailable instead of hanging the caller (the IDL's
    schema fetch has no timeout of its own, so it runs in a helper thread).
    """

    def __init__(self, ovsdb: str = "unix:/var/run/openvswitch/db.sock", timeout: float = 5.0,
                 connect_timeout: float = CONNECT_PATIENCE, snapshot_reads: bool = False):
        """``snapshot_reads``: bridge_exists, list_ports and port_bridges each
        make one select of the columns they need on a connection of their own
        (ovsdb_select) instead of opening the replica of four whole tables: for
        a process that reads once (the reconciler). unix: and tcp: remotes."""
        self.ovsdb = ovsdb
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.snapshot_reads = snapshot_reads and ovsdb_select.supports(ovsdb)
        self._api = None
        self._connecting: tuple[threading.Event, dict] | None = None
        self._lock = threading.Lock()

    def _connect(self):
        from ovsdbapp.backend.ovs_idl import connection
        from ovsdbapp.schema.open_vswitch import impl_idl
        # Only the tables netplugin uses: the first dump of a big database is the slow part.
        idl = connection.OvsdbIdl.from_server(self.ovsdb, "Open_vSwitch",
                                              helper_tables=("Open_vSwitch", "Bridge", "Port", "Interface"))
        conn = connection.Connection(idl=idl, timeout=self.timeout)
        # ovsdbapp keeps one connection per backend class; a class of our own
        # per connection lets a Switch reopen, and two Switches differ.
        backend = type("SwitchIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
        return backend(conn, start=True)

    def api(self):
        with self._lock:
            if self._api is not None:
                return self._api
            if self._connecting is None:
                result: dict = {}
                done = threading.Event()

                def connect():
                    try:
                        result["api"] = self._connect()
                    except Exception as exc:  # noqa: BLE001 - reported to the caller below
                        result["error"] = exc
                    finally:
                        done.set()
                threading.Thread(target=connect, name="ovsdb-connect", daemon=True).start()
                self._connecting = (done, result)
            done, result = self._connecting
        # A first connection downloads the database, which takes longer than one
        # transaction: connect_timeout, but never past the request's deadline.
        # Waited for by an event, not by joining the thread: with eventlet
        # importable (os-ken brings it) the helper thread's exit lingers until
        # the join's whole timeout, though the connection is long made.
        done.wait(min(self.connect_timeout, deadline.remaining(self.connect_timeout)))
        with self._lock:
            if done.is_set():
                self._connecting = None
            if "api" in result:
                self._api = result["api"]
                return self._api
        detail = describe(result["error"]) if "error" in result else "no answer in time"
        raise DataplaneUnavailable(
            f"Open vSwitch unavailable: cannot reach OVSDB at {self.ovsdb} ({detail}); "
            "check that ovsdb-server and ovs-vswitchd are running")

    def _run(self, what: str, commands, wait_vswitchd: bool = True, txn=None) -> list:
        """Run commands in one transaction.

        ovsdbapp's Open_vSwitch transactions bump ``next_cfg`` and wait until
        ovs-vswitchd has applied the whole database (as ``ovs-vsctl`` does
        without ``--no-wait``): 10-30 ms on a busy switch. That wait is what
        makes an added port forward when the call returns, so it is kept for
        changes that need it. Reads and deletions pass ``wait_vswitchd=False``:
        a read is answered from the local replica without a round trip, and
        a deletion returns once ovsdb-server has committed it."""
        api = self.api()
        try:
            if txn is None:
                txn = api.transaction(check_error=True) if wait_vswitchd else self._plain_transaction(api)
            with txn as txn:
                for cmd in commands(api):
                    txn.add(cmd)
            return [c.result for c in txn.commands]
        except Exception as exc:  # noqa: BLE001 - ovsdbapp raises many kinds
            name = type(exc).__name__
            if "Timeout" in name or "NotConnected" in name:
                with self._lock:
                    self._api = None
                raise DataplaneUnavailable(f"Open vSwitch did not answer while trying to {what} "
                                           f"({describe(exc)}); check ovs-vswitchd") from None
            raise DataplaneError(f"Open vSwitch refused to {what}: {describe(exc)}") from None

    def _counted_transaction(self):
        """A transaction that bumps next_cfg, as ovs-vsctl does, and records the
        number (``applied_at``) instead of waiting for ovs-vswitchd to reach it."""
        from ovsdbapp.schema.open_vswitch.impl_idl import OvsVsctlTransaction
        api = self.api()

        class CountedTransaction(OvsVsctlTransaction):
            applied_at = 0

            def do_post_commit(self, txn):
                self.applied_at = txn.get_increment_new_value()

        return CountedTransaction(api, api.ovsdb_connection, check_error=True)

    @staticmethod
    def _plain_transaction(api):
        """ovsdbapp's Open_vSwitch transaction without the next_cfg handshake."""
        from ovsdbapp.schema.open_vswitch.impl_idl import OvsVsctlTransaction

        class NoWaitTransaction(OvsVsctlTransaction):
            def pre_commit(self, txn):
                txn.expected_ifaces = set()       # what add_port records; nothing bumps next_cfg

            def do_post_commit(self, txn):
                pass                              # no waiting for ovs-vswitchd

        return NoWaitTransaction(api, api.ovsdb_connection, check_error=True)

    def ensure_bridge(self, bridge: str, datapath_type: str, uplink: str | None = None) -> None:
        """Create the bridge if missing, with OpenFlow 1.3 for meters; add the uplink as a trunk."""
        def cmds(api):
            yield api.add_br(bridge, may_exist=True, datapath_type=datapath_type)
            yield api.db_set("Bridge", bridge, ("protocols", ["OpenFlow10", "OpenFlow13"]))
            if uplink:
                yield api.add_port(bridge, uplink, may_exist=True)
                yield api.db_set("Port", uplink, ("vlan_mode", "trunk"))
        self._run(f"create bridge {bridge}", cmds)

    def add_access_port(self, bridge: str, port: str, vlan: int, external_ids: dict[str, str],
                        wait_vswitchd: bool = True) -> None:
        """Add port as an access port of vlan, tagged with external_ids, in one transaction.

        ``wait_vswitchd=False`` returns once ovsdb-server has committed it; the
        caller then waits for the port with wait_ofport before traffic may use it."""
        def cmds(api):
            yield api.add_port(bridge, port, may_exist=True)
            yield api.db_set("Port", port, ("tag", vlan), ("vlan_mode", "access"), ("external_ids", external_ids))
            yield api.db_set("Interface", port, ("external_ids", external_ids))
        self._run(f"add port {port} to {bridge}", cmds, wait_vswitchd=wait_vswitchd)

    def add_parked_port(self, bridge: str, port: str, external_ids: dict[str, str]) -> None:
        """Add a warm pool's port, parked from the same transaction that adds it:
        a trunk of VLAN 4095 alone, so ovs-vswitchd drops whatever else enters it
        (untagged or any real VLAN), and the base pipeline drops VLAN 4095."""
        ext = {**external_ids, EXT_POOL: "1"}

        def cmds(api):
            yield api.add_port(bridge, port, may_exist=False)
            yield api.db_set("Port", port, ("vlan_mode", "trunk"), ("trunks", [PARK_VLAN]), ("external_ids", ext))
            yield api.db_set("Interface", port, ("external_ids", ext))
        self._run(f"add pool port {port} to {bridge}", cmds, wait_vswitchd=False)

    def claim_port(self, port: str, vlan: int, external_ids: dict[str, str]) -> int:
        """Make a parked port an access port of vlan with external_ids, in one
        transaction that also removes the parking (refused unless the port is
        still parked). Returns the configuration number that ovs-vswitchd has
        applied it at (wait_applied); it is not waited for here."""
        def cmds(api):
            yield _unpark(api, "Port", port, external_ids)
            yield _unpark(api, "Interface", port, external_ids)
            yield api.db_set("Port", port, ("tag", vlan), ("vlan_mode", "access"), ("trunks", []))
        txn = self._counted_transaction()
        self._run(f"claim pool port {port}", cmds, txn=txn)
        return txn.applied_at

    def wait_applied(self, cfg: int, patience: float) -> None:
        """Until ovs-vswitchd has applied configuration number cfg (read from
        the local replica: no round trip once it has)."""
        give_up = time.monotonic() + patience
        while True:
            (row,) = self._run("read cur_cfg", lambda api: [api.db_get("Open_vSwitch", ".", "cur_cfg")],
                               wait_vswitchd=False)
            if isinstance(row, int) and row >= cfg:
                return
            if time.monotonic() > give_up:
                raise DataplaneUnavailable(f"Open vSwitch did not apply a port change within {patience:.0f} s: "
                                           "check that ovs-vswitchd is running")
            time.sleep(0.002)

    def port_of_endpoint(self, endpoint_id: str) -> str | None:
        """The name of the port whose external_ids name the endpoint (local replica)."""
        rows, = self._run("look up an endpoint's port", lambda api: [api.db_find(
            "Port", ("external_ids", "=", {EXT_ENDPOINT: endpoint_id}), columns=["name"])], wait_vswitchd=False)
        return rows[0]["name"] if rows else None

    def list_pool_ports(self, bridge: str) -> list[dict]:
        """Parked pool ports of the bridge: name, vlan_mode, trunks, tag, external_ids."""
        ports, = self._run("list pool ports", lambda api: [api.db_list(
            "Port", columns=["name", "tag", "trunks", "vlan_mode", "external_ids"])], wait_vswitchd=False)
        names = set(self._run("list bridge ports", lambda api: [api.list_ports(bridge)], wait_vswitchd=False)[0]) \
            if self.bridge_exists(bridge) else set()
        out = []
        for row in ports:
            ext = dict(row.get("external_ids") or {})
            if row["name"] in names and ext.get(EXT_POOL) == "1":
                tag, mode = row.get("tag"), row.get("vlan_mode")
                out.append({"name": row["name"], "tag": tag[0] if isinstance(tag, list) and tag else tag,
                            "vlan_mode": mode[0] if isinstance(mode, list) and mode else mode,
                            "trunks": sorted(row.get("trunks") or []), "external_ids": ext})
        return out

    def wait_ofport(self, port: str, patience: float) -> int:
        """The port's OpenFlow number once ovs-vswitchd has opened it (it has then
        applied the port's VLAN settings too). Read from the local replica, so a
        port that is ready costs no round trip."""
        give_up = time.monotonic() + patience
        while True:
            rows, = self._run("look up an ofport", lambda api: [api.db_find("Interface", ("name", "=", port),
                                                                               columns=["ofport", "error"])],
                              wait_vswitchd=False)
            if not rows:
                raise DataplaneError(f"port {port} is not on the switch: remove the container and start it again")
            value = rows[0]["ofport"]
            value = value[0] if isinstance(value, list) and value else value
            if isinstance(value, int) and value > 0:
                return value
            if value == -1:
                error = rows[0].get("error")
                raise DataplaneError(f"Open vSwitch could not open port {port} ({error or 'no reason given'}): "
                                     "check ovs-vswitchd's log, then remove the container and start it again")
            if time.monotonic() > give_up:
                raise DataplaneUnavailable(f"Open vSwitch did not open port {port} within {patience:.0f} s: "
                                           "check that ovs-vswitchd is running")
            time.sleep(0.002)

    def delete_port(self, port: str, wait_vswitchd: bool = False) -> bool:
        """Remove the port; False when it was not there.

        ``wait_vswitchd=True`` returns only once ovs-vswitchd has let go of the
        device: a caller about to make a new link of the same name needs that,
        because vswitchd restores the flags of the device it held *by name* when
        it lets go, and would take the new link down."""
        if not self.port_exists(port):
            return False
        self._run(f"delete port {port}", lambda api: [api.del_port(port, if_exists=True)],
                  wait_vswitchd=wait_vswitchd)
        return True

    def port_exists(self, port: str) -> bool:
        (rows,) = self._run("look up ports", lambda api: [api.db_find("Port", ("name", "=", port), columns=["name"])],
                            wait_vswitchd=False)
        return bool(rows)

    def ofport(self, port: str) -> int | None:
        """The OpenFlow port number of an interface, None while vswitchd has not given one."""
        rows, = self._run("look up an ofport", lambda api: [api.db_find("Interface", ("name", "=", port),
                                                                           columns=["ofport"])],
                          wait_vswitchd=False)
        value = rows[0]["ofport"] if rows else None
        value = value[0] if isinstance(value, list) and value else value
        return int(value) if isinstance(value, int) and value > 0 else None

    def set_policing(self, port: str, rate_kbps: int, burst_kb: int) -> None:
        """OVS ingress policing on the interface (0, 0 removes it)."""
        self._run(f"set policing on {port}", lambda api: [api.db_set(
            "Interface", port, ("ingress_policing_rate", int(rate_kbps)), ("ingress_policing_burst", int(burst_kb)))])

    def _select(self, what: str, queries: dict[str, list[str]]) -> dict[str, list[dict]]:
        """One select transaction (snapshot_reads), bounded like a first dump."""
        patience = min(self.connect_timeout, deadline.remaining(self.connect_timeout))
        try:
            return ovsdb_select.select(self.ovsdb, queries, patience)
        except ovsdb_select.SelectUnavailable as exc:
            raise DataplaneUnavailable(
                f"Open vSwitch unavailable: cannot {what} from OVSDB at {self.ovsdb} ({exc}); "
                "check that ovsdb-server and ovs-vswitchd are running") from None
        except ovsdb_select.SelectRefused as exc:
            raise DataplaneError(f"Open vSwitch refused to {what}: {exc}") from None

    def _snapshot_ports(self, what: str, port_columns: list[str]) -> tuple[dict[str, set[str]], list[dict]]:
        """Each bridge's port uuids by bridge name, and the Port rows (with _uuid)."""
        tables = self._select(what, {"Bridge": ["name", "ports"], "Port": ["_uuid", *port_columns]})
        bridges: dict[str, set[str]] = {}
        for row in tables["Bridge"]:
            if isinstance(row.get("name"), str):
                bridges[row["name"]] = {u for u in map(ovsdb_select.uuid, ovsdb_select.members(row.get("ports")))
                                        if u}
        ports = [row for row in tables["Port"]
                 if isinstance(row.get("name"), str) and ovsdb_select.uuid(row.get("_uuid"))]
        return bridges, ports

    def port_bridges(self) -> dict[str, str]:
        """Every port on any bridge of this Open vSwitch -> its bridge."""
        if self.snapshot_reads:
            bridges, ports = self._snapshot_ports("list the ports of every bridge", ["name"])
            where = {u: name for name, uuids in bridges.items() for u in uuids}
            return {row["name"]: where[u] for row in ports      # a bridge's own port is not listed (as ovsdbapp)
                    if (u := ovsdb_select.uuid(row["_uuid"])) in where and row["name"] != where[u]}
        bridges, = self._run("list bridges", lambda api: [api.list_br()], wait_vswitchd=False)
        out: dict[str, str] = {}
        for bridge in bridges:
            ports, = self._run(f"list the ports of {bridge}", lambda api, b=bridge: [api.list_ports(b)],
                               wait_vswitchd=False)
            out.update({port: bridge for port in ports})
        return out

    def bridge_exists(self, bridge: str) -> bool:
        if self.snapshot_reads:
            rows = self._select("look up bridges", {"Bridge": ["name"]})["Bridge"]
            return any(row.get("name") == bridge for row in rows)
        (found,) = self._run("look up bridges", lambda api: [api.br_exists(bridge)], wait_vswitchd=False)
        return bool(found)

    def list_ports(self, bridge: str) -> list[dict]:
        """Ports of the bridge that netplugin made: name, tag and external_ids."""
        if self.snapshot_reads:
            return self._snapshot_list_ports(bridge)
        ports, = self._run("list ports", lambda api: [api.db_list("Port", columns=["name", "tag", "external_ids"])],
                           wait_vswitchd=False)
        names = set(self._run("list bridge ports", lambda api: [api.list_ports(bridge)], wait_vswitchd=False)[0]) \
            if self.bridge_exists(bridge) else set()
        out = []
        for row in ports:
            ext = row.get("external_ids") or {}
            if row["name"] in names and EXT_ENDPOINT in ext:
                tag = row.get("tag")
                out.append({"name": row["name"], "tag": tag[0] if isinstance(tag, list) and tag else tag,
                            "external_ids": dict(ext)})
        return out

    def _snapshot_list_ports(self, bridge: str) -> list[dict]:
        bridges, ports = self._snapshot_ports("list ports", ["name", "tag", "external_ids"])
        mine = bridges.get(bridge, set())
        out = []
        for row in ports:
            ext = ovsdb_select.string_map(row.get("external_ids"))
            tag = ovsdb_select.optional(row.get("tag"))
            if ovsdb_select.uuid(row["_uuid"]) not in mine or not ext or EXT_ENDPOINT not in ext:
                continue
            out.append({"name": row["name"], "tag": tag if isinstance(tag, int) else None, "external_ids": ext})
        return out

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                # Closing: a connection that fails to stop is dropped all the same.
                with contextlib.suppress(Exception):
                    self._api.ovsdb_connection.stop()
                self._api = None

