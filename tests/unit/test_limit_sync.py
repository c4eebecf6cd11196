"""LimitSync and RateLimiter with fakes for the switch and the flows: which
OpenFlow work happens on CreateEndpoint's and DeleteEndpoint's path, which is
left to the sync loop or a background thread, and what happens while
ovs-vswitchd has not numbered a new port yet."""

from __future__ import annotations

import threading
import time

import pytest

from netplugin import limit_sync as limit_sync_mod
from netplugin.config import Config
from netplugin.dataplane.ratelimit import RateLimiter
from netplugin.errors import DataplaneError
from netplugin.kv import Put
from netplugin.limit_sync import LimitSync
from netplugin.hostview import HostView
from netplugin.model import Binding, Endpoint
from netplugin.store import Store

from .fakes import FakeFlows, MemoryKV


class NumberingSwitch:
    """Ports get an OpenFlow number only when the test says so."""

    def __init__(self):
        self.numbers: dict[str, int] = {}
        self.policing: dict[str, tuple[int, int]] = {}

    def ofport(self, port: str) -> int | None:
        return self.numbers.get(port)

    def port_exists(self, port: str) -> bool:
        return port in self.numbers

    def set_policing(self, port: str, rate: int, burst: int) -> None:
        self.policing[port] = (rate, burst)


class CountingMetrics:
    class _Counter:
        def __init__(self):
            self.value = 0

        def inc(self):
            self.value += 1

    class _Gauge:
        def set(self, value):
            self.value = value

    def __init__(self):
        self.limits_applied = self._Counter()
        self.limited_ports = self._Gauge()


@pytest.fixture
def world():
    cfg = Config(host_id="h1", bridge="nptest0", datapath_type="netdev")
    store = Store(MemoryKV(), cfg.etcd_prefix)
    switch, flows = NumberingSwitch(), FakeFlows()
    metrics = CountingMetrics()
    view = HostView(store, cfg.host_id)
    store.kv.txn([], [Put(store.k_binding("h1", "d" * 64), Binding("d" * 64, "n-000000000001", "h1").to_json())])
    sync = SyncedLimitSync(cfg, store, view.start(), RateLimiter(switch, flows, "meter"), metrics=metrics)
    yield cfg, store, switch, flows, sync
    view.close()


class SyncedLimitSync(LimitSync):
    """A pass begins once the view has caught up with the fake etcd (the
    daemon's loop is woken by the view's own change instead)."""

    def resync(self, verify: bool = False) -> int:
        stop = time.monotonic() + 5
        while not self.view.in_step():
            assert time.monotonic() < stop, "the view did not catch up"
            time.sleep(0.005)
        return super().resync(verify)


def put_record(store, ep: Endpoint) -> None:
    """Write ep's record as it stands (the watch and the sync pass read it)."""
    store.kv.txn([], [Put(store.k_legacy_endpoint(ep.id), ep.to_json())])


def endpoint(n: int, limit: dict | None = None) -> Endpoint:
    eid = f"{n:02x}" * 32
    return Endpoint(id=eid, network="n-000000000001", docker_network="d" * 64, host="h1", ip=f"10.9.0.{n}",
                    prefixlen=24, mac=f"02:00:0a:09:00:{n:02x}", port=f"np{eid[:11]}", peer=f"nc{eid[:11]}",
                    vlan=100, limit=limit or {})


def test_create_without_a_limit_leaves_the_flow_to_the_sync_loop(world):
    _, _, switch, flows, sync = world
    ep = endpoint(1)
    switch.numbers[ep.port] = 5
    sync.apply_endpoint(ep)
    assert flows.calls == []


def test_create_with_a_limit_waits_for_the_port_number_then_meters_it(world):
    _, _, switch, flows, sync = world
    ep = endpoint(2, {"rate_kbps": 10_000, "burst_kb": 2_500})
    threading.Timer(0.15, lambda: switch.numbers.__setitem__(ep.port, 7)).start()
    sync.apply_endpoint(ep)
    assert flows.calls == [("set_port", ep.id, 7, (10_000, 2_500))]
    assert sync.applied[ep.id] == (10_000, 2_500)


def test_create_with_a_limit_fails_clearly_when_the_port_is_never_numbered(world, monkeypatch):
    monkeypatch.setattr(limit_sync_mod, "PORT_WAIT", 0.2)
    _, _, _, flows, sync = world
    ep = endpoint(3, {"rate_kbps": 10_000, "burst_kb": 2_500})
    t0 = time.monotonic()
    with pytest.raises(DataplaneError, match="no OpenFlow port number"):
        sync.apply_endpoint(ep)
    assert time.monotonic() - t0 < 2 and flows.calls == [] and ep.id not in sync.applied


def test_a_port_not_numbered_yet_is_retried_not_forgotten(world):
    cfg, store, switch, flows, sync = world
    ep = endpoint(4)
    put_record(store, ep)
    assert sync.resync() == 0 and ep.id not in sync.applied     # no number yet: nothing recorded
    switch.numbers[ep.port] = 9
    assert sync.resync() == 1
    assert flows.calls == [("set_port", ep.id, 9, None)] and sync.applied[ep.id] is None


def test_delete_defers_only_the_flows_of_a_port_without_meter(world):
    _, _, switch, flows, sync = world
    plain, limited = endpoint(5), endpoint(6)
    switch.numbers.update({plain.port: 11, limited.port: 12})
    flows.meter_ports.add(12)
    later: list[tuple] = []
    sync.limiter.remove(plain.id, plain.port, defer=lambda fn, *a: later.append((fn, a)))
    sync.limiter.remove(limited.id, limited.port, defer=lambda fn, *a: later.append((fn, a)))
    assert flows.calls == [("clear_port", limited.id, 12)]         # the meter goes at once
    assert [(fn.__name__, a) for fn, a in later] == [("delete_endpoint_flows", (plain.id,))]


def test_a_pass_that_read_an_endpoint_before_its_delete_puts_nothing_back(world):
    """The pass read the endpoint, then DeleteEndpoint ran (forget + remove)
    before the pass took the lock: under the lock it sees the endpoint is going."""
    _, _, switch, flows, sync = world
    ep = endpoint(7, {"rate_kbps": 10_000, "burst_kb": 2_500})
    switch.numbers[ep.port] = 13
    sync.forget(ep.id)                     # DeleteEndpoint got there first
    assert sync.limiter.apply(ep.id, ep.port, ep.vlan, (10_000, 2_500), wanted=lambda: ep.id not in sync._gone)
    assert flows.calls == [] and 13 not in flows.meter_ports


def test_a_meter_no_local_limited_port_uses_is_deleted_after_two_full_passes(world):
    _, store, switch, flows, sync = world
    kept = endpoint(8, {"rate_kbps": 10_000, "burst_kb": 2_500})
    switch.numbers[kept.port] = 21
    put_record(store, kept)
    sync.resync(verify=True)               # meters kept's port; 99 is a leftover
    flows.meter_ports.add(99)
    sync.resync(verify=True)               # first sighting: kept
    assert 99 in flows.meter_ports
    sync.resync(verify=True)               # second: deleted
    assert flows.meter_ports == {21} and ("del_meter", 99) in flows.calls


@pytest.mark.parametrize("create_first", [True, False])
def test_create_endpoint_racing_a_pass_counts_the_limit_once(world, create_first):
    """The pass woken by the endpoint's new record read it before CreateEndpoint
    recorded its limit; both set the same meter, one after the other under the
    apply lock, in either order. One limit was set: it is counted once."""
    _, store, switch, flows, sync = world
    ep = endpoint(30, {"rate_kbps": 10_000, "burst_kb": 2_500})
    switch.numbers[ep.port] = 31
    put_record(store, ep)
    lock = sync.limiter._apply_lock
    lock.acquire()
    first = threading.Thread(target=sync.apply_endpoint if create_first else sync.resync,
                             args=(ep,) if create_first else ())
    second = threading.Thread(target=sync.resync if create_first else sync.apply_endpoint,
                              args=() if create_first else (ep,))
    first.start()
    time.sleep(0.1)              # first waits for the lock, having read what it needs
    second.start()
    time.sleep(0.1)              # so does second: the pass saw no recorded limit
    lock.release()
    first.join(5)
    second.join(5)
    assert [c for c in flows.calls if c[0] == "set_port"] == [("set_port", ep.id, 31, (10_000, 2_500))] * 2
    assert sync.applied[ep.id] == (10_000, 2_500)
    assert sync.metrics.limits_applied.value == 1
    # A later change is counted; a pass with nothing changed is not; a repair is.
    assert sync.resync() == 0 and sync.metrics.limits_applied.value == 1
    ep.limit = {"rate_kbps": 20_000, "burst_kb": 5_000}
    put_record(store, ep)
    assert sync.resync() == 1 and sync.metrics.limits_applied.value == 2
    flows.meter_ports.discard(31)          # lost from the bridge: a full pass puts it back
    assert sync.resync(verify=True) == 1 and sync.metrics.limits_applied.value == 3


def test_a_pass_for_an_endpoint_deleted_meanwhile_records_and_counts_nothing(world):
    _, store, switch, flows, sync = world
    ep = endpoint(32, {"rate_kbps": 10_000, "burst_kb": 2_500})
    switch.numbers[ep.port] = 33
    put_record(store, ep)
    lock = sync.limiter._apply_lock
    lock.acquire()
    t = threading.Thread(target=sync.resync)
    t.start()
    time.sleep(0.1)              # the pass read the endpoint and waits for the lock
    sync.forget(ep.id)           # DeleteEndpoint
    lock.release()
    t.join(5)
    assert flows.calls == [] and ep.id not in sync.applied
    assert sync.metrics.limits_applied.value == 0
