"""UserspaceTso over a scripted ovs-vsctl: set and restart only when the
setting changed, never on the system datapath, offloads off when unsure."""

from __future__ import annotations

import subprocess

import pytest

from netplugin.dataplane.tso import KEY, UserspaceTso
from netplugin.errors import InvalidRequest

RESTART = ["restart-vswitchd"]


class FakeOvs:
    """Answers ovs-vsctl get/set of other_config:userspace-tso-enable and the restart."""

    def __init__(self, value: str | None, restart_rc: int = 0, set_rc: int = 0, db_up: bool = True):
        self.value, self.restart_rc, self.set_rc, self.db_up = value, restart_rc, set_rc, db_up
        self.calls: list[list[str]] = []
        self.restarts = 0

    def __call__(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        self.calls.append(args)
        if args == RESTART:
            self.restarts += 1
            return subprocess.CompletedProcess(args, self.restart_rc, "", "boom" if self.restart_rc else "")
        assert args[0] == "ovs-vsctl" and args[1].startswith("--db=")
        if not self.db_up:
            return subprocess.CompletedProcess(args, 1, "", "database connection failed")
        if "get" in args:
            assert args[-1] == f"other_config:{KEY}"
            return subprocess.CompletedProcess(args, 0, f'"{self.value}"\n' if self.value else "\n", "")
        assert "set" in args and args[-1] == f"other_config:{KEY}=true"
        if self.set_rc:
            return subprocess.CompletedProcess(args, self.set_rc, "", "refused")
        self.value = "true"
        return subprocess.CompletedProcess(args, 0, "", "")


def make(ovs: FakeOvs, datapath: str = "netdev", wanted: bool = True) -> UserspaceTso:
    return UserspaceTso("unix:/var/run/openvswitch/db.sock", datapath, wanted, run=ovs, restart=RESTART)


@pytest.mark.parametrize("before", [None, "false"])
def test_off_is_turned_on_with_one_restart_and_then_known(before):
    ovs = FakeOvs(before)
    tso = make(ovs)
    assert tso.ensure() is True
    assert ovs.value == "true" and ovs.restarts == 1
    calls = len(ovs.calls)
    assert tso.ensure() is True and tso.in_effect() is True
    assert len(ovs.calls) == calls, "a second ensure must not ask OVSDB or restart again"


def test_already_on_is_not_restarted():
    ovs = FakeOvs("true")
    assert make(ovs).ensure() is True
    assert ovs.restarts == 0 and not any("set" in c for c in ovs.calls)


def test_system_datapath_is_never_touched_and_keeps_offload_decision_off():
    ovs = FakeOvs("false")
    tso = make(ovs, datapath="system")
    assert tso.ensure() is False and tso.in_effect() is False
    assert ovs.calls == []


def test_not_wanted_only_reads_and_never_restarts():
    on, off = FakeOvs("true"), FakeOvs(None)
    assert make(on, wanted=False).ensure() is True        # someone else turned it on: offloads may stay
    assert make(off, wanted=False).ensure() is False
    assert on.restarts == off.restarts == 0
    assert not any("set" in c for c in on.calls + off.calls)


def test_failed_restart_leaves_offloads_off_and_is_tried_again():
    ovs = FakeOvs("false", restart_rc=1)
    tso = make(ovs)
    assert tso.ensure() is False
    assert ovs.value == "true", "the setting was written"
    assert tso.in_effect() is False, "set in OVSDB but vswitchd not restarted: not in effect"
    ovs.restart_rc = 0
    assert tso.ensure() is True and ovs.restarts == 2
    assert tso.in_effect() is True


def test_refused_set_does_not_restart():
    ovs = FakeOvs("false", set_rc=1)
    tso = make(ovs)
    assert tso.ensure() is False and ovs.restarts == 0
    assert tso.in_effect() is False


def test_unreadable_ovsdb_means_offloads_off_until_it_answers():
    ovs = FakeOvs("true", db_up=False)
    tso = make(ovs)
    assert tso.in_effect() is False
    ovs.db_up = True
    assert tso.in_effect() is True


@pytest.mark.parametrize("bad", ["", "db.sock", "unix:/a b", "tcp:1.2.3.4:6640;rm", "--db=x"])
def test_bad_ovsdb_is_refused_with_a_message(bad):
    with pytest.raises(InvalidRequest, match="ovsdb"):
        UserspaceTso(bad, "netdev", True)
