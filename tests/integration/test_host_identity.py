"""Two daemons, one host id, on real etcd (hosts.py, identity.py, daemon.py):
the second refuses to start, names the first, and never hands out an
address; the first keeps its claim and its addresses. A daemon killed with
kill -9 and started again within its lease's TTL takes its id back at once."""

from __future__ import annotations

import secrets
import time

import pytest

from netplugin.daemon import CLAIM_WAIT
from netplugin.unixhttp import call
from tests.harness.daemon import Daemon, settings_env

pytestmark = pytest.mark.integration

REFUSED_EXIT = 4


def make_daemon(tmp_path, name: str, etcd: str, prefix: str, host_id: str, bridge: str) -> Daemon:
    sock = f"/run/netplugin-test-{secrets.token_hex(3)}.sock"
    return Daemon(sock, tmp_path / f"{name}.log", settings_env(
        isolated=False, etcd_endpoints=etcd, etcd_prefix=prefix, host_id=host_id, bridge=bridge,
        datapath_type="netdev", socket=sock, metrics_address="off"))


def wait_for(cond, timeout: float, step: float = 0.1):
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        got = cond()
        if got:
            return got
        time.sleep(step)
    return cond()


def request_address(d: Daemon, pool: str) -> tuple[int, dict]:
    # Longer than the gate's wait for a first claim (daemon.CLAIM_WAIT), as Docker's own client is.
    return call(d.socket, "IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}},
                timeout=CLAIM_WAIT + 10)


@pytest.fixture
def host(etcd_endpoint, prefix, store, bridge, tmp_path):
    host_id = "nptest-dup-" + secrets.token_hex(3)
    made: list[Daemon] = []

    def daemon(name: str) -> Daemon:
        made.append(make_daemon(tmp_path, name, etcd_endpoint, prefix, host_id, bridge))
        return made[-1]
    yield host_id, daemon
    for d in made:
        d.stop()


def test_a_second_daemon_with_the_same_host_id_refuses_and_issues_nothing(host, store):
    host_id, daemon = host
    first = daemon("first")
    first.start()
    reg = wait_for(lambda: store.host_registration(host_id)[0], 10)
    assert reg is not None, first.tail()
    subnet = f"10.251.{secrets.randbelow(250) + 1}.0/24"
    status, reply = call(first.socket, "IpamDriver.RequestPool",
                         {"AddressSpace": "netplugin", "Pool": subnet, "SubPool": "", "Options": {}, "V6": False})
    assert status == 200, reply
    pool = reply["PoolID"]
    issued = []
    for _ in range(3):
        status, reply = request_address(first, pool)
        assert status == 200, reply
        issued.append(reply["Address"])

    second = daemon("second")
    second.launch()
    assert second.proc is not None
    answered_by_second = []
    while second.proc.poll() is None:                   # it waits up to one lease TTL for the holder to lapse
        if second.answers():
            status, reply = request_address(second, pool)
            assert status == 503, f"the second daemon answered RequestAddress: {status} {reply}"
            answered_by_second.append(reply["Err"])
        status, reply = request_address(first, pool)    # the first keeps working meanwhile
        assert status == 200, reply
        issued.append(reply["Address"])
        time.sleep(0.5)
        assert len(issued) < 200, f"the second daemon did not stop:\n{second.tail()}"
    log = second.tail(6000)
    assert second.proc.returncode == REFUSED_EXIT, log
    assert f"host id {host_id!r} is already running" in log, log
    assert f"pid {reg.instance.pid}" in log and reg.instance.boot_id in log, log
    assert "--host-id" in log, log
    assert answered_by_second, "the second daemon never answered its socket before it stopped"

    # The first still holds the id, and no address was handed out twice.
    now, alive = store.host_registration(host_id)
    assert alive and now is not None and now.instance.token == reg.instance.token
    assert len(issued) == len(set(issued)), f"an address was issued twice: {sorted(issued)}"
    held = [a.ip for _, a in store.list_allocations(subnet)]
    assert len(held) == len(set(held)) and {a.split("/")[0] for a in issued} <= set(held)


def test_a_daemon_killed_and_restarted_within_its_lease_takes_its_id_back(host, store):
    host_id, daemon = host
    first = daemon("first")
    first.start()
    reg = wait_for(lambda: store.host_registration(host_id)[0], 10)
    assert reg is not None, first.tail()
    first.kill9()
    again = daemon("again")
    again.socket = first.socket
    again.env = first.env
    started = time.monotonic()
    again.start()
    back = wait_for(lambda: (store.host_registration(host_id)[0] or reg).instance.token != reg.instance.token
                    and store.host_registration(host_id)[0], 10)
    assert back, f"the restarted daemon did not take its id back:\n{again.tail()}"
    took = time.monotonic() - started
    assert took < 10, f"took {took:.1f} s: it waited for the old lease (15 s) instead of taking its own claim"
    assert back.instance.boot_id == reg.instance.boot_id and back.instance.pid != reg.instance.pid
    assert again.alive()
