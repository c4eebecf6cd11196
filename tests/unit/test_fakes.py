"""The fakes must behave like what they stand for, or the other unit tests
prove nothing: MemoryKV against etcd v3's documented semantics, the
dataplane fakes against Links and Switch."""

from __future__ import annotations

import inspect
import threading

import pytest

from netplugin.dataplane.links import Links
from netplugin.dataplane.ovs import Switch
from netplugin.errors import DataplaneError, StoreUnavailable
from netplugin.kv import Compare, Delete, Put, absent, unchanged

from .fakes import FakeDockerNames, FakeLinks, FakeSwitch, MemoryKV


def test_revisions_follow_etcd():
    kv = MemoryKV()
    assert kv.revision == 1
    assert kv.txn([], [Put("/a", "1")])
    a = kv.get("/a")
    assert (a.value, a.create_revision, a.mod_revision) == (b"1", 2, 2)
    assert kv.txn([], [Put("/a", b"2"), Put("/b", "x")])     # one txn, one revision
    a, b = kv.get("/a"), kv.get("/b")
    assert (a.create_revision, a.mod_revision, b.create_revision, b.mod_revision) == (2, 3, 3, 3)
    assert kv.revision == 3
    assert kv.txn([], [Delete("/a")])
    assert kv.revision == 4 and kv.get("/a") is None
    assert kv.txn([], [Delete("/nothing")])                  # no change, no new revision
    assert kv.revision == 4
    kv.txn([], [Put("/a", "3")])
    assert kv.get("/a").create_revision == 5                 # re-created: a new create revision


def test_compares():
    kv = MemoryKV()
    assert kv.txn([absent("/k")], [Put("/k", "v")])
    assert not kv.txn([absent("/k")], [Put("/k", "w")])      # create-if-absent fails the second time
    assert kv.get("/k").value == b"v"
    rev = kv.get("/k").mod_revision
    assert kv.txn([unchanged("/k", rev)], [Put("/k", "w")])
    assert not kv.txn([unchanged("/k", rev)], [Put("/k", "x")])
    assert kv.txn([Compare("/k", "value", "==", "w")], [])
    assert kv.txn([Compare("/k", "value", "==", b"w")], [])
    assert not kv.txn([Compare("/k", "value", "!=", "w")], [])
    assert kv.txn([Compare("/k", "create", "!=", 0)], [])
    assert kv.txn([Compare("/missing", "mod", "==", 0), Compare("/missing", "create", "==", 0)], [])
    # etcd: a value compare on a missing key is always false, even '!='
    assert not kv.txn([Compare("/missing", "value", "!=", "anything")], [Put("/z", "1")])
    assert not kv.txn([Compare("/missing", "value", "==", "")], [Put("/z", "1")])
    assert kv.get("/z") is None
    # all compares must hold
    assert not kv.txn([absent("/new"), absent("/k")], [Put("/new", "1")])
    assert kv.get("/new") is None


def test_prefix_reads_sorted_and_keys_only():
    kv = MemoryKV()
    kv.txn([], [Put("/p/b", "2"), Put("/p/a", "1"), Put("/p/c/d", "3"), Put("/q", "x"), Put("/p", "self")])
    assert [i.key for i in kv.get_prefix("/p/")] == ["/p/a", "/p/b", "/p/c/d"]
    assert [i.value for i in kv.get_prefix("/p/")] == [b"1", b"2", b"3"]
    assert all(i.value == b"" for i in kv.get_prefix("/p/", keys_only=True))
    assert kv.get_prefix("/p/", keys_only=True)[0].mod_revision == kv.get("/p/a").mod_revision
    assert kv.count_prefix("/p/") == 3 and kv.count_prefix("/p") == 4 and kv.count_prefix("/none") == 0


def test_prefix_delete():
    kv = MemoryKV()
    kv.txn([], [Put("/p/a", "1"), Put("/p/b", "2"), Put("/pq", "3")])
    kv.txn([], [Delete("/p/", prefix=True)])
    assert kv.keys() == ["/pq"]


def test_leases():
    kv = MemoryKV()
    lease = kv.grant_lease(10)
    kv.txn([], [Put("/host/h1", "alive", lease=lease), Put("/keep", "1")])
    kv.refresh_lease(lease)
    kv.revoke_lease(lease)
    assert kv.get("/host/h1") is None and kv.get("/keep") is not None
    with pytest.raises(StoreUnavailable):
        kv.refresh_lease(lease)
    with pytest.raises(StoreUnavailable):
        kv.txn([], [Put("/x", "1", lease=lease)])
    assert kv.get("/x") is None
    # a put without a lease detaches the key from its lease
    lease2 = kv.grant_lease(10)
    kv.txn([], [Put("/y", "1", lease=lease2)])
    kv.txn([], [Put("/y", "2")])
    kv.revoke_lease(lease2)
    assert kv.get("/y").value == b"2"


def test_down_makes_every_call_fail():
    kv = MemoryKV()
    kv.txn([], [Put("/a", "1")])
    kv.down = True
    calls = [lambda: kv.get("/a"), lambda: kv.get_prefix("/"), lambda: kv.count_prefix("/"),
             lambda: kv.txn([], [Put("/b", "1")]), lambda: kv.grant_lease(5), lambda: kv.refresh_lease(1),
             lambda: kv.revoke_lease(1), lambda: kv.snapshot("/")]
    for call in calls:
        with pytest.raises(StoreUnavailable) as exc:
            call()
        assert exc.value.message.startswith("store unavailable: etcd did not answer")
    kv.down = False
    assert kv.keys() == ["/a"]


def test_snapshot_and_watch():
    kv = MemoryKV()
    kv.txn([], [Put("/w/a", "1")])
    items, rev = kv.snapshot("/w/")
    assert [i.key for i in items] == ["/w/a"] and rev == kv.revision
    stop = threading.Event()
    seen = []

    def follow():
        for ev in kv.watch_prefix("/w/", rev + 1, stop):
            seen.append((ev.kind, ev.key, ev.value))
            if len(seen) == 3:
                stop.set()
    t = threading.Thread(target=follow)
    t.start()
    kv.txn([], [Put("/w/b", "2"), Put("/other", "x")])
    kv.txn([], [Delete("/w/a")])
    kv.txn([], [Put("/w/b", "3")])
    t.join(5)
    assert not t.is_alive()
    assert seen == [("put", "/w/b", b"2"), ("delete", "/w/a", b""), ("put", "/w/b", b"3")]


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


def test_thread_safe_claims():
    kv = MemoryKV()
    wins = []

    def claim(i):
        if kv.txn([absent("/one")], [Put("/one", str(i))]):
            wins.append(i)
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and kv.get("/one").value == str(wins[0]).encode()


@pytest.mark.parametrize("fake,real", [(FakeLinks, Links), (FakeSwitch, Switch)])
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
