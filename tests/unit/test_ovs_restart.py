"""The dataplane restorer: notices an ovs-vswitchd restart (its pid changed)
or lost flows (table 10 empty), and puts back pipeline, limits and ARP answers."""

from __future__ import annotations

from types import SimpleNamespace

from netplugin.errors import DataplaneUnavailable
from netplugin.ovs_restart import DataplaneRestorer, vswitchd_pidfile


class Calls:
    def __init__(self, fail: int = 0):
        self.calls: list[str] = []
        self.fail = fail

    def ensure_pipeline(self):
        if self.fail:
            self.fail -= 1
            raise DataplaneUnavailable("ovs-vswitchd is not reachable")
        self.calls.append("pipeline")

    def resync(self, verify: bool = False, full: bool = False):
        self.calls.append(f"resync verify={verify}" if not full else "resync full")


def restorer(tmp_path, fail: int = 0, lost: bool | None = False):
    calls = Calls(fail)
    cfg = SimpleNamespace(ovsdb=f"unix:{tmp_path}/db.sock", bridge="npunit0", ovs_timeout=1.0)
    r = DataplaneRestorer(cfg, calls, limits=calls, arp=calls, period=0.01)
    r.pipeline_lost = lambda: lost
    return r, calls


def test_pidfile_next_to_the_ovsdb_socket():
    assert vswitchd_pidfile("unix:/var/run/openvswitch/db.sock") == "/var/run/openvswitch/ovs-vswitchd.pid"
    assert vswitchd_pidfile("tcp:10.0.0.1:6640") is None


def test_nothing_happens_while_vswitchd_and_flows_stay(tmp_path):
    (tmp_path / "ovs-vswitchd.pid").write_text("100\n")
    r, calls = restorer(tmp_path)
    r._pid = r.vswitchd_pid()
    assert not r.check_once() and not r.check_once()
    assert calls.calls == [] and r.restores == 0


def test_new_vswitchd_pid_restores_pipeline_limits_then_arp(tmp_path):
    pidfile = tmp_path / "ovs-vswitchd.pid"
    pidfile.write_text("100\n")
    r, calls = restorer(tmp_path)
    r._pid = r.vswitchd_pid()
    pidfile.write_text("200\n")
    assert r.check_once()
    assert calls.calls == ["pipeline", "resync verify=True", "resync full"]
    assert r.restores == 1
    assert not r.check_once()           # the same vswitchd: nothing more to do


def test_lost_flows_restore_even_without_a_pid_change(tmp_path):
    r, calls = restorer(tmp_path, lost=True)
    assert r.check_once() and calls.calls[0] == "pipeline"


def test_unknown_flow_state_does_nothing(tmp_path):
    r, calls = restorer(tmp_path, lost=None)       # no bridge yet, or vswitchd not answering
    assert not r.check_once() and calls.calls == []


def test_retries_until_ovs_answers(tmp_path):
    r, calls = restorer(tmp_path, fail=3, lost=True)
    assert r.check_once()
    assert calls.calls == ["pipeline", "resync verify=True", "resync full"]


def test_table_10_is_looked_at_every_poll(tmp_path):
    """One aggregate request over the open connection, every second: flows a
    restarting vswitchd drops after a first restore come back within a second."""
    (tmp_path / "ovs-vswitchd.pid").write_text("100\n")
    r, calls = restorer(tmp_path)
    looked = []
    r.pipeline_lost = lambda: looked.append(1) and False
    r._pid = r.vswitchd_pid()
    for _ in range(10):
        r.check_once()
    assert len(looked) == 10 and calls.calls == []


def test_lost_means_table_10_holds_no_flow_at_all_and_unknown_when_ovs_does_not_answer(tmp_path):
    from tests.unit.fakes import FakeFlows

    flows = FakeFlows()
    cfg = SimpleNamespace(ovsdb=f"unix:{tmp_path}/db.sock", bridge="npunit0", ovs_timeout=1.0)
    r = DataplaneRestorer(cfg, flows, limits=None, arp=None)
    assert r.pipeline_lost() is True               # not even the table-miss flow
    flows.ensure_pipeline()
    assert r.pipeline_lost() is False              # the table-miss flow alone counts

    def down(table, ours=True):
        raise DataplaneUnavailable("ovs-vswitchd is not reachable")
    flows.count = down
    assert r.pipeline_lost() is None
