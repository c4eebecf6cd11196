"""What the fakes offer beyond what they stand for (failure injection, a
fake etcd going down, bulk loads), and their shape. How they answer is held
to the real things by the suites in tests/contract (test_contract_*.py)."""

from __future__ import annotations

import inspect
import threading

import pytest

from netplugin.dataplane.flows import Flows
from netplugin.dataplane.links import Links
from netplugin.dataplane.ovs import Switch
from netplugin.errors import DataplaneError, StoreUnavailable

from .fakes import FakeDockerNames, FakeFlows, FakeLinks, FakeSwitch, MemoryKV


def test_watch_breaks_when_down():
    kv = MemoryKV()
    stop = threading.Event()
    errors = []

    def follow():
        try:
            for _ in kv.watch_prefix("/", 1, stop):
                pass
        except StoreUnavailable as exc:
            errors.append(exc)
    t = threading.Thread(target=follow)
    t.start()
    kv.set_down(True)
    t.join(5)
    assert not t.is_alive() and errors


@pytest.mark.parametrize("fake,real", [(FakeLinks, Links), (FakeSwitch, Switch), (FakeFlows, Flows)])
def test_fakes_have_the_public_methods_of_the_real_classes(fake, real):
    public = {n for n, f in inspect.getmembers(real, inspect.isfunction) if not n.startswith("_")}
    public -= {"api"}          # Switch's OVSDB handle: internal to the real class
    missing = {n for n in public if not hasattr(fake, n)}
    assert not missing
    for name in public:
        want = list(inspect.signature(getattr(real, name)).parameters)
        got = list(inspect.signature(getattr(fake, name)).parameters)
        assert got == want, name


def test_fake_failure_injection():
    links = FakeLinks()
    links.fail_next("create_veth")
    with pytest.raises(DataplaneError):
        links.create_veth("np1", "nc1", 1500, "02:00:00:00:00:01", False)
    links.create_veth("np1", "nc1", 1500, "02:00:00:00:00:01", False)   # only the next call failed
    assert links.exists("np1") and links.exists("nc1")
    assert links.plug_into_netns("nc1", "/var/run/docker/netns/x", "10.0.0.2", 24, "10.0.0.1") == "eth0"
    assert not links.exists("nc1") and links.netns["/var/run/docker/netns/x"]["eth0"]["ip"] == "10.0.0.2"
    assert links.delete("np1") and links.netns["/var/run/docker/netns/x"] == {}
    switch = FakeSwitch()
    with pytest.raises(DataplaneError):
        switch.add_access_port("nobridge", "np1", 5, {})
    switch.ensure_bridge("br", "netdev")
    switch.add_access_port("br", "np1", 5, {"np-endpoint": "e"})
    assert switch.list_ports("br") == [{"name": "np1", "tag": 5, "external_ids": {"np-endpoint": "e"}}]
    with pytest.raises(AttributeError):
        switch.fail_next("no_such_method")


def test_fake_docker_names():
    names = FakeDockerNames({"a" * 64: "prod"})
    assert names.network_name("a" * 64) == "prod" and names.network_name("b" * 64) is None


def test_load_writes_in_one_revision_and_dump_shows_it():
    kv = MemoryKV()
    kv.load([("/a", "1"), ("/b", b"2")])
    assert kv.dump() == {"/a": (b"1", 2), "/b": (b"2", 2)} and kv.revision == 2


def test_down_fake_etcd_says_so():
    kv = MemoryKV()
    kv.down = True
    with pytest.raises(StoreUnavailable, match=r"^store unavailable: etcd did not answer at .*fake etcd is down"):
        kv.get("/a")
