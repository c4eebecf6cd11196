"""The daemon listens first and connects later: with etcd down it is on its
socket within 2 s, root-only, and every call fails at once with a clear
"store unavailable" instead of hanging."""

from __future__ import annotations

import os
import secrets
import stat
import time

import pytest

from netplugin.unixhttp import call
from tests.harness.daemon import Daemon, settings_env
from tests.harness.proc import Failed, run

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon_without_etcd(tmp_path):
    sock = f"/run/netplugin-test-{secrets.token_hex(3)}.sock"
    bridge = "nptest" + secrets.token_hex(3)
    d = Daemon(sock, tmp_path / "daemon.log", settings_env(
        isolated=False, etcd_endpoints="http://127.0.0.1:1", etcd_timeout=1, socket=sock, host_id="start-test",
        bridge=bridge, datapath_type="netdev"))
    try:
        listening_after = d.start(within=10)
    except Failed:
        listening_after = None
    yield sock, listening_after, d.proc
    d.stop()
    run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=False)


def test_listens_within_two_seconds_while_etcd_is_down(daemon_without_etcd):
    sock, listening_after, proc = daemon_without_etcd
    assert proc.poll() is None, "the daemon must keep running while etcd is down"
    assert listening_after is not None and listening_after < 2.0, f"listened after {listening_after} s"


def test_socket_is_root_only(daemon_without_etcd):
    sock, _, _ = daemon_without_etcd
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_calls_fail_fast_with_store_unavailable(daemon_without_etcd):
    sock, _, _ = daemon_without_etcd
    started = time.monotonic()
    status, reply = call(sock, "IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.99.0.0/24"})
    elapsed = time.monotonic() - started
    assert status == 503
    assert reply["Err"] == reply["Error"]
    assert "store unavailable" in reply["Err"] and "127.0.0.1:1" in reply["Err"]
    assert elapsed < 5, f"the error took {elapsed:.1f} s"
    # It keeps serving what needs no store.
    assert call(sock, "NetworkDriver.GetCapabilities")[1] == {"Scope": "local", "ConnectivityScope": "global"}
